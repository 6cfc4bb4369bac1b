"""The life of a build job: every change of its state, and only here.

A job is created `pending` (or `skipped`, for a target the farm or PyPI already
serves: see master.builds.build_plan, which decides what is created). From there it moves
only by the events of `TRANSITIONS`:

    pending  --queue-->      queued      (the dispatcher sent its Celery message)
    queued   --resend-->     pending     (the message was lost: send it again)
    pending  --claim-->      building    (a builder took it; an attempt is counted)
    queued   --claim-->      building
    building --hand-back-->  pending     (its builder went silent, registered again,
                                          stopped, or no longer runs it)
    building --retry-->      pending     (a transient failure under the attempt cap)
    building --lose-->       failed      (handed back with no attempt left: `lost`)
    building --build-->      built
    building --fail-->       failed      (with the reason the builder classified)
    building --wait-->       dep-wait    (its build needs a build dependency that has no
                                          wheel for its target yet: waiting_for names it)
    dep-wait --resume-->     pending     (the farm published a wheel of that dependency)
    dep-wait --give-up-->    failed      (the dependency failed, or cannot be had)
    active   --cover-->      skipped     (a published wheel already serves the target)
    pending, queued, dep-wait --skip-> skipped  (skip list, yanked or removed upstream; a
                                          build under way is left to finish)
    active   --cancel-->     skipped     (an operator cancelled it)
    failed, skipped --requeue--> pending (an operator asked again: fresh attempts)

So a job gets from `building` back to `pending` by a hand-back or a retry, and nothing
else. An event the table does not allow raises IllegalTransition before anything
changes. Every transition writes one log line with `job_id`, `from`, `to` and `why`,
unlinks the builder when the job leaves `building` (a built, failed or covered job
keeps the builder that ran it, as a record), and stamps `finished_at`
when the job ends.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from common.models import Builder, BuildJob, Release, SourceFile
from common.states import ACTIVE_STATES, FINAL_STATES, FailureReason, JobState, SkipReason

log = logging.getLogger(__name__)

SUMMARY_CHARS = 2000


class Event(StrEnum):
    QUEUE = "queue"
    RESEND = "resend"
    CLAIM = "claim"
    HAND_BACK = "hand-back"
    RETRY = "retry"
    LOSE = "lose"
    BUILD = "build"
    FAIL = "fail"
    COVER = "cover"
    SKIP = "skip"
    CANCEL = "cancel"
    REQUEUE = "requeue"
    WAIT = "wait"
    RESUME = "resume"
    GIVE_UP = "give-up"


# A claim links the job to its builder; an end the builder reported keeps that link, for
# the record. Every other transition leaves the job linked to no builder.
_KEEPS_BUILDER = frozenset({Event.CLAIM, Event.BUILD, Event.FAIL, Event.COVER, Event.WAIT})

_ACTIVE = frozenset(ACTIVE_STATES)
_WAITING = frozenset({JobState.PENDING, JobState.QUEUED})
_BUILDING = frozenset({JobState.BUILDING})
_DEP_WAIT = frozenset({JobState.DEP_WAIT})

# event -> (the states it may leave, the state it enters)
TRANSITIONS: Mapping[Event, tuple[frozenset[JobState], JobState]] = {
    Event.QUEUE: (frozenset({JobState.PENDING}), JobState.QUEUED),
    Event.RESEND: (frozenset({JobState.QUEUED}), JobState.PENDING),
    Event.CLAIM: (_WAITING, JobState.BUILDING),
    Event.HAND_BACK: (_BUILDING, JobState.PENDING),
    Event.RETRY: (_BUILDING, JobState.PENDING),
    Event.LOSE: (_BUILDING, JobState.FAILED),
    Event.BUILD: (_BUILDING, JobState.BUILT),
    Event.FAIL: (_BUILDING, JobState.FAILED),
    Event.COVER: (_ACTIVE, JobState.SKIPPED),
    Event.SKIP: (_WAITING | _DEP_WAIT, JobState.SKIPPED),
    Event.CANCEL: (_ACTIVE, JobState.SKIPPED),
    Event.REQUEUE: (frozenset({JobState.FAILED, JobState.SKIPPED}), JobState.PENDING),
    Event.WAIT: (_BUILDING, JobState.DEP_WAIT),
    Event.RESUME: (_DEP_WAIT, JobState.PENDING),
    Event.GIVE_UP: (_DEP_WAIT, JobState.FAILED),
}


# What the log line of each transition says.
_MESSAGES: Mapping[Event, str] = {
    Event.QUEUE: "job queued",
    Event.RESEND: "job sent again",
    Event.CLAIM: "job claimed",
    Event.HAND_BACK: "job handed back",
    Event.RETRY: "job failed, to be retried",
    Event.LOSE: "job lost",
    Event.BUILD: "job built",
    Event.FAIL: "job failed",
    Event.COVER: "job covered by a published wheel",
    Event.SKIP: "job skipped",
    Event.CANCEL: "job cancelled",
    Event.REQUEUE: "job requeued",
    Event.WAIT: "job waits for a build dependency",
    Event.RESUME: "job's build dependency is published",
    Event.GIVE_UP: "job's build dependency cannot be had",
}


def allowed(state: JobState, event: Event) -> bool:
    return state in TRANSITIONS[event][0]


class IllegalTransition(Exception):
    """An event the table does not allow from the job's state; nothing was changed."""

    def __init__(self, job_id: int | None, state: JobState, event: Event) -> None:
        super().__init__(f"job {job_id} is {state.value}: it cannot {event.value}")
        self.job_id, self.state, self.event = job_id, state, event


class HandBack(StrEnum):
    """Why a building job goes back to the queue. The first two are the build's or the
    board's trouble and count the attempt; the others are a builder giving the job up
    in good order, which does not."""

    BUILDER_SILENT = "its builder stopped heart-beating"
    RE_REGISTERED = "its builder registered again"
    RELEASED = "its builder released it while stopping"
    UNREPORTED = "its builder no longer runs it"

    @property
    def counts_attempt(self) -> bool:
        return self in (HandBack.BUILDER_SILENT, HandBack.RE_REGISTERED)


@dataclass
class ResultReport:
    """What a builder reports at the end of an attempt."""

    outcome: str  # "built" or "failed"
    reason: FailureReason | None
    summary: str
    build_seconds: float | None
    transient: bool = False


def _now() -> datetime:
    return datetime.now(UTC)


def _check(job: BuildJob, event: Event) -> JobState:
    if not allowed(job.state, event):
        raise IllegalTransition(job.id, job.state, event)
    return job.state


def _enter(job: BuildJob, was: JobState, event: Event, why: str) -> None:
    """The state change itself, after the caller has set the job's other fields."""
    to = TRANSITIONS[event][1]
    builder: Builder | None = job.builder
    job.state = to
    if to in FINAL_STATES:
        job.finished_at = _now()
    if was == JobState.BUILDING and builder is not None and builder.current_job_id == job.id:
        builder.current_job_id = None
    if event not in _KEEPS_BUILDER:
        job.builder, job.builder_id = None, None
    log.info(
        _MESSAGES[event],
        extra={
            "job_id": job.id,
            "from": was.value,
            "to": to.value,
            "why": why,
            "builder": builder.name if builder is not None else "",
        },
    )


def _summary(text: str) -> str:
    return text[:SUMMARY_CHARS]


# --- creation ---------------------------------------------------------------


def create(
    session: Session,
    release: Release,
    source: SourceFile,
    target: str,
    arch: str,
    python_tag: str,
    policy: str,
    *,
    priority: int,
    requested_by: str | None = None,
    covered: tuple[SkipReason, str] | None = None,
) -> BuildJob:
    """A new job, `pending`; or `skipped` with the reason and a summary naming the wheel
    that already serves its target. The build plan decides which."""
    job = BuildJob(
        release=release,
        source_file=source,
        target=target,
        arch=arch,
        python_tag=python_tag,
        policy=policy,
        state=JobState.PENDING if covered is None else JobState.SKIPPED,
        priority=priority,
        requested_by=requested_by,
    )
    if covered is not None:
        job.skip_reason, job.summary = covered
        job.finished_at = _now()
    session.add(job)
    session.flush()
    log.info(
        "job created",
        extra={
            "job_id": job.id,
            "to": job.state.value,
            "why": covered[1] if covered else f"requested by {requested_by or 'the feed'}",
            "project": release.project.name,
            "version": release.version,
            "target": target,
            "arch": arch,
            "python_tag": python_tag,
        },
    )
    return job


# --- the dispatcher and the reconciler ----------------------------------------


def queue_batch(session: Session, job_ids: Sequence[int], queue: str) -> list[int]:
    """The jobs whose messages were just sent become `queued`; one a builder claimed
    meanwhile (a duplicate message) is left be. Returns the ids that moved. Logged per
    job at debug level: the dispatcher moves thousands a minute, and logs a summary."""
    sources, to = TRANSITIONS[Event.QUEUE]
    moved = list(
        session.scalars(
            update(BuildJob)
            .where(BuildJob.id.in_(list(job_ids)), BuildJob.state.in_(sources))
            .values(state=to, queued_at=_now())
            .returning(BuildJob.id),
            execution_options={"synchronize_session": False},
        )
    )
    if log.isEnabledFor(logging.DEBUG):
        for job_id in moved:
            log.debug(
                _MESSAGES[Event.QUEUE],
                extra={"job_id": job_id, "from": "pending", "to": to.value, "why": queue},
            )
    return moved


def resend(job: BuildJob, why: str) -> None:
    """A queued job whose message the broker lost is pending again, to be sent anew."""
    was = _check(job, Event.RESEND)
    job.queued_at = None
    _enter(job, was, Event.RESEND, why)


# --- a builder's attempt -------------------------------------------------------


def claim(job: BuildJob, builder: Builder) -> None:
    """A builder takes the job: a new attempt, started now, linked both ways."""
    was = _check(job, Event.CLAIM)
    job.attempts += 1
    job.started_at = _now()
    job.finished_at = None
    job.build_path = None  # the new attempt's, once its builder reports
    job.builder, job.builder_id = builder, builder.id
    builder.current_job_id = job.id
    _enter(job, was, Event.CLAIM, f"claimed by {builder.name}, attempt {job.attempts}")


def hand_back(job: BuildJob, why: HandBack, max_attempts: int) -> JobState:
    """The building job's builder will not finish it: pending again, with nothing left
    of the abandoned attempt (builder, start and queue times), or failed as `lost` when
    a counted attempt was its last. A lost job keeps `started_at`: it names the attempt
    whose streamed log becomes its final log. Returns the state the job entered."""
    lost = why.counts_attempt and job.attempts >= max_attempts
    was = _check(job, Event.LOSE if lost else Event.HAND_BACK)
    if lost:
        job.failure_reason = FailureReason.LOST
        job.rejected_by = None
        job.summary = _summary(f"{why.value}; gave up after {job.attempts} attempts")
        _enter(job, was, Event.LOSE, why.value)
        return job.state
    if not why.counts_attempt:
        job.attempts = max(0, job.attempts - 1)
    job.started_at = job.queued_at = None
    _enter(job, was, Event.HAND_BACK, why.value)
    return job.state


def finish(job: BuildJob, report: ResultReport, max_attempts: int) -> JobState:
    """The builder's report ends the attempt: built, failed with its reason, or, for a
    transient failure (out of memory, network, sdist not yet on the CDN) under the
    attempt cap, pending again for another round. Returns the state entered."""
    built = report.outcome == "built"
    if not built and report.transient and job.attempts < max_attempts:
        event = Event.RETRY
    else:
        event = Event.BUILD if built else Event.FAIL
    was = _check(job, event)
    job.build_seconds = report.build_seconds
    if event == Event.RETRY:
        job.failure_reason = report.reason
        job.summary = _summary(f"attempt {job.attempts} failed, retrying: {report.summary}")
        job.started_at = job.queued_at = None
        _enter(job, was, event, f"transient {_reason(report)}")
        return job.state
    job.failure_reason = None if built else report.reason
    if job.failure_reason != FailureReason.UPLOAD_REJECTED:
        job.rejected_by = None
    job.summary = _summary(report.summary)
    _enter(job, was, event, "built" if built else _reason(report))
    return job.state


def wait_for(job: BuildJob, requirement: str, summary: str, build_seconds: float | None) -> None:
    """The attempt ended for want of a build dependency that the farm can build first:
    the job waits, naming it, until its wheel is published (resume) or cannot be had
    (give_up). The attempt counts; the builder that met the wall stays on record."""
    was = _check(job, Event.WAIT)
    job.build_seconds = build_seconds
    job.failure_reason = FailureReason.MISSING_DEPENDENCY
    job.waiting_for = requirement
    job.summary = _summary(summary)
    _enter(job, was, Event.WAIT, f"waits for {requirement}")


def resume(job: BuildJob, why: str) -> None:
    """The dependency it waited for is published: pending again, to build against it."""
    was = _check(job, Event.RESUME)
    job.waiting_for = None
    job.failure_reason = None
    job.started_at = job.queued_at = None
    job.summary = _summary(f"resumed: {why}")
    _enter(job, was, Event.RESUME, why)


def give_up(job: BuildJob, summary: str) -> None:
    """The dependency it waited for failed or cannot be had: failed, saying why."""
    was = _check(job, Event.GIVE_UP)
    job.failure_reason = FailureReason.MISSING_DEPENDENCY
    job.summary = _summary(summary)
    _enter(job, was, Event.GIVE_UP, summary)


def _reason(report: ResultReport) -> str:
    return report.reason.value if report.reason else "unknown"


# --- ends decided by the farm or an operator -----------------------------------------


def cover(job: BuildJob, summary: str, reason: SkipReason = SkipReason.COVERED_BY_FARM) -> None:
    """The farm's index (or PyPI, `reason` covered-upstream) already serves a wheel this
    job's target installs: skipped, not built."""
    was = _check(job, Event.COVER)
    job.skip_reason = reason
    job.failure_reason = None
    job.summary = _summary(summary)
    _enter(job, was, Event.COVER, summary)


def skip_releases(session: Session, release_ids: Sequence[int], reason: SkipReason) -> int:
    """The waiting jobs of these releases end as skipped (skip list, yanked or removed
    upstream); a build under way may finish. Returns how many ended."""
    if not release_ids:
        return 0
    sources, to = TRANSITIONS[Event.SKIP]
    ending = session.execute(
        select(BuildJob.id, BuildJob.state)
        .where(BuildJob.release_id.in_(list(release_ids)), BuildJob.state.in_(sources))
        .with_for_update(skip_locked=True)
    ).all()
    if not ending:
        return 0
    states = dict(ending)
    moved = list(
        session.scalars(
            update(BuildJob)
            .where(BuildJob.id.in_(list(states)), BuildJob.state.in_(sources))
            .values(
                state=to,
                skip_reason=reason,
                summary=f"skipped: {reason.value}",
                finished_at=_now(),
            )
            .returning(BuildJob.id),
            execution_options={"synchronize_session": False},
        )
    )
    for job_id in moved:
        log.info(
            _MESSAGES[Event.SKIP],
            extra={
                "job_id": job_id,
                "from": states[job_id].value,
                "to": to.value,
                "why": reason.value,
            },
        )
    for stored in session.identity_map.values():
        if isinstance(stored, BuildJob) and stored.id in states:
            session.expire(stored)
    return len(moved)


def cancel(job: BuildJob, actor: str, reason: str) -> None:
    """An operator stops the job, waiting or running (a builder running it is told to
    kill the build at its next heartbeat or log chunk)."""
    was = _check(job, Event.CANCEL)
    job.skip_reason = SkipReason.CANCELLED
    job.summary = _summary(f"cancelled by {actor}: {reason}")
    _enter(job, was, Event.CANCEL, f"{actor}: {reason}")


def requeue(job: BuildJob, actor: str, reason: str) -> None:
    """An operator asks for an ended job again: pending with fresh attempts and nothing
    of its earlier attempts' outcome."""
    was = _check(job, Event.REQUEUE)
    job.attempts = 0
    job.failure_reason = job.skip_reason = job.rejected_by = job.waiting_for = None
    job.builder_id = job.started_at = job.queued_at = job.finished_at = None
    job.summary = _summary(f"requeued by {actor}: {reason}")
    _enter(job, was, Event.REQUEUE, f"{actor}: {reason}")

"""A build job's life (master.builds.jobs): every allowed transition does what it says, every
other (state, event) pair raises and leaves the database as it was, on SQLite and on
PostgreSQL; and the defects that the one table fixed stay fixed."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from common.config import Settings
from common.db import transaction
from common.models import Builder, BuildJob
from common.states import FailureReason, JobState, SkipReason, TokenRole
from master.auth import create_token
from master.builds import jobs
from master.builds.jobs import Event, HandBack, IllegalTransition, ResultReport
from master.builds.reconciler import reconcile
from master.builds.skips import add_rule, remove_rule
from master.web.app import create_app
from tests.seed import add_builder, add_release

P, Q, B = JobState.PENDING, JobState.QUEUED, JobState.BUILDING
BUILT, FAILED, SKIPPED = JobState.BUILT, JobState.FAILED, JobState.SKIPPED
D = JobState.DEP_WAIT

# The specification, written out independently of master.builds.jobs.TRANSITIONS:
# event -> {state it may leave: state it enters}.
EXPECTED: dict[Event, dict[JobState, JobState]] = {
    Event.QUEUE: {P: Q},
    Event.RESEND: {Q: P},
    Event.CLAIM: {P: B, Q: B},
    Event.HAND_BACK: {B: P},
    Event.RETRY: {B: P},
    Event.LOSE: {B: FAILED},
    Event.BUILD: {B: BUILT},
    Event.FAIL: {B: FAILED},
    Event.COVER: {P: SKIPPED, Q: SKIPPED, B: SKIPPED, D: SKIPPED},
    Event.SKIP: {P: SKIPPED, Q: SKIPPED, D: SKIPPED},
    Event.CANCEL: {P: SKIPPED, Q: SKIPPED, B: SKIPPED, D: SKIPPED},
    Event.REQUEUE: {FAILED: P, SKIPPED: P},
    Event.WAIT: {B: D},
    Event.RESUME: {D: P},
    Event.GIVE_UP: {D: FAILED},
}

MAX_ATTEMPTS = 3


def _put_in(session: Session, job: BuildJob, builder: Builder, state: JobState) -> None:
    """Arrange a job in `state` with the fields a job in that state has."""
    now = datetime.now(UTC)
    job.state = state
    job.attempts = 1
    job.queued_at = now if state == Q else None
    if state == B:
        job.builder, job.started_at = builder, now
        builder.current_job_id = job.id
    if state in (BUILT, FAILED, SKIPPED):
        job.finished_at = now
    if state == FAILED:
        job.failure_reason = FailureReason.COMPILE_ERROR
    if state == SKIPPED:
        job.skip_reason = SkipReason.CANCELLED
    if state == D:
        job.failure_reason = FailureReason.MISSING_DEPENDENCY
        job.waiting_for = "numpy>=1.22"
    session.flush()


def _do(session: Session, event: Event, job: BuildJob, builder: Builder) -> None:
    match event:
        case Event.QUEUE:
            jobs.queue_batch(session, [job.id], "build.aarch64.cp311")
        case Event.RESEND:
            jobs.resend(job, "lost by the broker")
        case Event.CLAIM:
            jobs.claim(job, builder)
        case Event.HAND_BACK:
            jobs.hand_back(job, HandBack.UNREPORTED, MAX_ATTEMPTS)
        case Event.RETRY:
            report = ResultReport("failed", FailureReason.NETWORK, "no route", 2.0, True)
            jobs.finish(job, report, MAX_ATTEMPTS)
        case Event.LOSE:
            jobs.hand_back(job, HandBack.BUILDER_SILENT, max_attempts=1)
        case Event.BUILD:
            jobs.finish(job, ResultReport("built", None, "ok", 3.0), MAX_ATTEMPTS)
        case Event.FAIL:
            report = ResultReport("failed", FailureReason.COMPILE_ERROR, "error: x.h", 3.0)
            jobs.finish(job, report, MAX_ATTEMPTS)
        case Event.COVER:
            jobs.cover(job, "armwheels serves demo-1.0-cp311-abi3-manylinux2014_aarch64.whl")
        case Event.SKIP:
            jobs.skip_releases(session, [job.release_id], SkipReason.YANKED_UPSTREAM)
        case Event.CANCEL:
            jobs.cancel(job, "cli:op", "not wanted")
        case Event.REQUEUE:
            jobs.requeue(job, "cli:op", "fixed upstream")
        case Event.WAIT:
            jobs.wait_for(job, "numpy>=1.22", "waits for numpy>=1.22", 4.0)
        case Event.RESUME:
            jobs.resume(job, "numpy-2.0.0-cp39-cp39-manylinux_2_31_armv7l.whl is published")
        case Event.GIVE_UP:
            jobs.give_up(job, "build dependency numpy 2.0.0 failed to build")


def _rows(session: Session) -> list[tuple[Any, ...]]:
    jobs_table = BuildJob.__table__
    builders = Builder.__table__
    return [
        *session.execute(select(jobs_table).order_by(jobs_table.c.id)).all(),
        *session.execute(select(builders).order_by(builders.c.id)).all(),
    ]


@pytest.fixture
def one_job(
    settings: Settings, factory: sessionmaker[Session]
) -> Iterator[Callable[[JobState], tuple[Session, BuildJob, Builder]]]:
    """A fresh job in a given state, with its release and a builder, in an open session."""
    sessions: list[Session] = []
    counter = iter(range(1000))

    def make(state: JobState) -> tuple[Session, BuildJob, Builder]:
        n = next(counter)
        with transaction(factory) as session:
            _, _, [job] = add_release(session, settings, project=f"p{n}")
            builder = add_builder(session, f"b{n}")
            _put_in(session, job, builder, state)
            ids = job.id, builder.id
        session = factory()
        sessions.append(session)
        found, linked = session.get(BuildJob, ids[0]), session.get(Builder, ids[1])
        assert found is not None and linked is not None
        return session, found, linked

    yield make
    for session in sessions:
        session.close()


@pytest.mark.parametrize("event", list(Event))
def test_every_state_event_pair_moves_as_the_table_says_or_changes_nothing(
    event: Event, one_job: Callable[[JobState], tuple[Session, BuildJob, Builder]]
) -> None:
    for state in JobState:
        session, job, builder = one_job(state)
        before = _rows(session)
        expected = EXPECTED[event].get(state)
        if expected is None:
            if event in (Event.QUEUE, Event.SKIP):
                _do(session, event, job, builder)  # bulk moves pass over such jobs
                session.commit()
            else:
                with pytest.raises(IllegalTransition) as refused:
                    _do(session, event, job, builder)
                message = str(refused.value)
                assert f"job {job.id}" in message and state.value in message
                assert event.value in message
                session.rollback()
            assert _rows(session) == before, (state, event)
            continue
        _do(session, event, job, builder)
        session.commit()
        session.expire_all()
        assert job.state == expected, (state, event)
        if expected in (BUILT, FAILED, SKIPPED):
            assert job.finished_at is not None
        if state == B:
            assert builder.current_job_id is None  # the builder runs it no more
        if expected == P:
            assert (job.builder_id, job.started_at, job.queued_at) == (None, None, None)
            assert job.finished_at is None


def test_what_each_transition_records(
    one_job: Callable[[JobState], tuple[Session, BuildJob, Builder]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    session, job, builder = one_job(P)
    job.attempts = 0
    caplog.set_level(logging.INFO, logger="master.builds.jobs")
    jobs.claim(job, builder)
    assert (job.attempts, job.builder_id, builder.current_job_id) == (1, builder.id, job.id)
    assert job.started_at is not None
    [record] = caplog.records
    assert (record.job_id, record.__dict__["from"], record.__dict__["to"]) == (  # type: ignore[attr-defined]
        job.id,
        "pending",
        "building",
    )
    assert "attempt 1" in record.why  # type: ignore[attr-defined]

    # Released by a stopping builder: the attempt is not counted.
    jobs.hand_back(job, HandBack.RELEASED, MAX_ATTEMPTS)
    assert (job.state, job.attempts) == (P, 0)
    jobs.claim(job, builder)
    # A transient failure under the cap goes round again, keeping what failed.
    jobs.finish(job, ResultReport("failed", FailureReason.NETWORK, "timed out", 4.0, True), 3)
    assert (job.state, job.failure_reason, job.attempts) == (P, FailureReason.NETWORK, 1)
    assert job.summary is not None and job.summary.startswith("attempt 1 failed, retrying")
    # Built: the job keeps the builder that built it, the builder is free again.
    jobs.claim(job, builder)
    jobs.finish(job, ResultReport("built", None, "ok", 5.0), MAX_ATTEMPTS)
    assert (job.state, job.failure_reason, job.builder_id, job.build_seconds) == (
        BUILT,
        None,
        builder.id,
        5.0,
    )
    assert builder.current_job_id is None
    session.commit()
    moves = [(r.__dict__["from"], r.__dict__["to"]) for r in caplog.records]
    assert moves == [(P, B), (B, P), (P, B), (B, P), (P, B), (B, BUILT)]


def test_a_transient_failure_on_the_last_attempt_fails_the_job(
    one_job: Callable[[JobState], tuple[Session, BuildJob, Builder]],
) -> None:
    session, job, builder = one_job(P)
    job.attempts = 0
    for _ in range(MAX_ATTEMPTS):
        jobs.claim(job, builder)
        report = ResultReport("failed", FailureReason.OUT_OF_MEMORY, "killed", 1.0, True)
        jobs.finish(job, report, MAX_ATTEMPTS)
    assert (job.state, job.failure_reason, job.attempts) == (
        FAILED,
        FailureReason.OUT_OF_MEMORY,
        MAX_ATTEMPTS,
    )
    session.commit()


# --- the defects -----------------------------------------------------------------


@pytest.fixture
def api(settings: Settings, factory: sessionmaker[Session]) -> Iterator[tuple[TestClient, str]]:
    with transaction(factory) as session:
        token = create_token(session, "b1", TokenRole.BUILDER)
    with TestClient(create_app(settings, factory)) as client:
        yield client, token


def test_a_builder_restarting_with_a_job_cannot_claim_it_past_the_attempt_cap(
    settings: Settings, factory: sessionmaker[Session], api: tuple[TestClient, str]
) -> None:
    """It was handed back uncounted-for on every registration: six claims, still pending."""
    client, token = api
    assert settings.master.max_attempts == MAX_ATTEMPTS
    with transaction(factory) as session:
        _, _, [job] = add_release(session, settings, project="looping")
        job_id = job.id
    auth = {"Authorization": f"Bearer {token}"}
    body = {"arch": "aarch64", "backend": "docker", "python_tags": ["cp311"]}
    claims = 0
    for _ in range(2 * MAX_ATTEMPTS):
        assert client.post("/api/v1/builders/register", headers=auth, json=body).status_code == 200
        if client.post(f"/api/v1/jobs/{job_id}/claim", headers=auth).status_code != 200:
            break
        claims += 1
    with factory() as session:
        found = session.get(BuildJob, job_id)
        assert found is not None
        assert claims == MAX_ATTEMPTS
        assert (found.state, found.failure_reason, found.attempts) == (
            FAILED,
            FailureReason.LOST,
            MAX_ATTEMPTS,
        )
        assert found.finished_at is not None and found.builder_id is None
        assert found.summary is not None and "registered again" in found.summary


def test_a_job_handed_back_by_the_reconciler_keeps_nothing_of_the_abandoned_attempt(
    settings: Settings, factory: sessionmaker[Session]
) -> None:
    long_ago = datetime.now(UTC) - timedelta(hours=1)
    with transaction(factory) as session:
        _, _, [job] = add_release(session, settings, project="abandoned")
        builder = add_builder(session, "gone", last_seen=long_ago)
        job.queued_at = long_ago
        jobs.claim(job, builder)
        job_id = job.id
    with transaction(factory) as session:
        outcome = reconcile(session, settings)
    assert outcome.handed_back == 1
    with factory() as session:
        found = session.get(BuildJob, job_id)
        assert found is not None
        assert (found.state, found.attempts) == (P, 1)
        assert (found.started_at, found.queued_at, found.builder_id) == (None, None, None)
        gone = session.scalar(select(Builder).where(Builder.name == "gone"))
        assert gone is not None and gone.current_job_id is None


def test_a_rebuild_of_a_skipped_project_is_refused_naming_the_skip_entry(
    settings: Settings, factory: sessionmaker[Session], api: tuple[TestClient, str]
) -> None:
    client, _ = api
    with transaction(factory) as session:
        _, _, [job] = add_release(session, settings, project="skipped")
        operator = create_token(session, "op", TokenRole.OPERATOR)
        add_rule(session, "skipped", None, "needs a GPU", "cli:op")
        job_id = job.id
    auth = {"Authorization": f"Bearer {operator}"}
    refused = client.post("/api/v1/projects/skipped/rebuild", headers=auth)
    assert refused.status_code == 409, refused.text
    error = refused.json()["error"]
    assert "skip list" in error and "skipped" in error and "needs a GPU" in error
    with factory() as session:
        states = session.scalars(select(BuildJob.state).order_by(BuildJob.id)).all()
        assert states == [SKIPPED]
    # An operator may remove the skip entry, and the rebuild goes through.
    with transaction(factory) as session:
        remove_rule(session, "skipped", None)
    accepted = client.post("/api/v1/projects/skipped/rebuild", headers=auth)
    assert accepted.status_code == 202, accepted.text
    [created] = accepted.json()["jobs"]
    assert created["state"] == "pending" and created["id"] != job_id


def test_a_job_waiting_for_a_dependency_names_it_until_it_resumes(
    one_job: Callable[[JobState], tuple[Session, BuildJob, Builder]],
) -> None:
    _, job, builder = one_job(B)
    jobs.wait_for(job, "numpy>=1.22", "waits for numpy>=1.22: the farm builds numpy 2.0", 5.0)
    assert (job.state, job.waiting_for) == (D, "numpy>=1.22")
    assert job.failure_reason is FailureReason.MISSING_DEPENDENCY and job.finished_at is None
    assert job.builder_id == builder.id  # the builder that met the wall, on record
    assert builder.current_job_id is None
    jobs.resume(job, "numpy-2.0-cp39-cp39-manylinux_2_31_armv7l.whl is published")
    assert job.state == P and _waits_for_nothing(job)
    assert job.summary is not None and job.summary.startswith("resumed: numpy-2.0")


def _waits_for_nothing(job: BuildJob) -> bool:
    """Back to pending: no dependency named, no builder linked, no failure recorded."""
    return job.waiting_for is None and job.builder_id is None and job.failure_reason is None

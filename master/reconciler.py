"""Finds jobs the broker or a builder lost and puts them back in line.

The database is the source of truth: a job `building` on a builder that stopped
heart-beating, or `queued` for longer than any queue should hold it, is made
`pending` again so the dispatcher sends a fresh message. A builder that later
claims a stale duplicate is refused, so sending twice is harmless. Each hand-back
counts an attempt; past the maximum the job fails with reason `lost`, and the live log
its builder streamed before it went silent becomes the job's log: it is the only record
of how far the build got.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from common.config import Settings
from common.models import Builder, BuildJob
from common.states import FailureReason, JobState
from master import liveness
from master.live_logs import LiveLogs, keep_as_final_log

log = logging.getLogger(__name__)


@dataclass
class ReconcileOutcome:
    handed_back: int = 0
    requeued: int = 0
    lost: int = 0


def _hand_back(
    job: BuildJob,
    settings: Settings,
    why: str,
    outcome: ReconcileOutcome,
    live: LiveLogs | None,
) -> None:
    max_attempts = settings.master.max_attempts
    if job.builder is not None and job.builder.current_job_id == job.id:
        job.builder.current_job_id = None
    job.builder_id = None
    if job.attempts >= max_attempts:
        job.state = JobState.FAILED
        job.failure_reason = FailureReason.LOST
        job.summary = f"{why}; gave up after {job.attempts} attempts"
        job.finished_at = datetime.now(UTC)
        if live is not None:
            keep_as_final_log(job, live, settings.master.max_log_bytes)
        outcome.lost += 1
        log.warning("job lost", extra={"job_id": job.id, "attempts": job.attempts, "why": why})
        return
    job.state = JobState.PENDING
    outcome.handed_back += 1
    log.warning("job handed back", extra={"job_id": job.id, "attempts": job.attempts, "why": why})


def reconcile(
    session: Session,
    settings: Settings,
    now: datetime | None = None,
    live: LiveLogs | None = None,
) -> ReconcileOutcome:
    now = now or datetime.now(UTC)
    outcome = ReconcileOutcome()
    orphans = session.scalars(
        select(BuildJob)
        .outerjoin(Builder, BuildJob.builder_id == Builder.id)
        .where(
            BuildJob.state == JobState.BUILDING,
            or_(Builder.id.is_(None), ~liveness.online(now, settings.master.builder_timeout)),
        )
        .with_for_update(of=BuildJob, skip_locked=True)
    ).all()
    for job in orphans:
        _hand_back(job, settings, "builder stopped heart-beating", outcome, live)
    waited_since = now - timedelta(seconds=settings.master.requeue_after)
    stuck = session.scalars(
        select(BuildJob)
        .where(BuildJob.state == JobState.QUEUED, BuildJob.queued_at < waited_since)
        .with_for_update(skip_locked=True)
    ).all()
    for job in stuck:
        job.state = JobState.PENDING
        outcome.requeued += 1
        log.warning("queued job sent again", extra={"job_id": job.id})
    return outcome

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
from common.states import JobState
from master.builds import jobs, liveness
from master.builds.jobs import HandBack
from master.builds.live_logs import LiveLogs, keep_as_final_log

log = logging.getLogger(__name__)


@dataclass
class ReconcileOutcome:
    handed_back: int = 0
    requeued: int = 0
    lost: int = 0


def _hand_back(
    job: BuildJob, settings: Settings, outcome: ReconcileOutcome, live: LiveLogs | None
) -> None:
    entered = jobs.hand_back(job, HandBack.BUILDER_SILENT, settings.master.max_attempts)
    if entered == JobState.FAILED:
        if live is not None:
            keep_as_final_log(job, live, settings.master.max_log_bytes)
        outcome.lost += 1
        return
    outcome.handed_back += 1  # its live log goes when the next claim streams


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
        _hand_back(job, settings, outcome, live)
    waited_since = now - timedelta(seconds=settings.master.requeue_after)
    stuck = session.scalars(
        select(BuildJob)
        .where(BuildJob.state == JobState.QUEUED, BuildJob.queued_at < waited_since)
        .with_for_update(skip_locked=True)
    ).all()
    for job in stuck:
        jobs.resend(job, f"queued for more than {settings.master.requeue_after:.0f} s")
        outcome.requeued += 1
    return outcome

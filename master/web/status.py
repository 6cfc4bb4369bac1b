"""The farm at a glance, from the database (the broker cannot be inspected reliably)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from common.models import Builder, BuildJob, FeedActionCount, FeedCursor, Project, Release
from common.states import JobState
from master.builds import liveness


def collect(session: Session, builder_timeout: float, recent: int = 20) -> dict[str, Any]:
    """Queues, builders (online as master.builder_timeout says), recent outcomes, feeds."""
    now = datetime.now(UTC)
    # Per arch (as before targets had names) and per target.
    queues: dict[str, dict[str, int]] = {}
    targets: dict[str, dict[str, int]] = {}
    for target, arch, state, count in session.execute(
        select(BuildJob.target, BuildJob.arch, BuildJob.state, func.count()).group_by(
            BuildJob.target, BuildJob.arch, BuildJob.state
        )
    ):
        for key, table in ((arch, queues), (target, targets)):
            counts = table.setdefault(key, {s.value: 0 for s in JobState})
            counts[state.value] += count
    builders = []
    for builder in session.scalars(select(Builder).order_by(Builder.name)):
        builders.append(
            {
                "name": builder.name,
                "slot": builder.slot,
                "target": builder.target,
                "arch": builder.arch,
                "backend": builder.backend,
                "python_tags": builder.python_tags,
                "state": liveness.state(builder, now, builder_timeout),
                "current_job": builder.current_job_id,
                "reported_job": builder.reported_job_id,
                "free_disk": builder.free_disk,
                "last_seen": builder.last_seen_at.isoformat(),
            }
        )
    rows = session.execute(
        select(BuildJob, Release.version, Project.name)
        .join(Release, BuildJob.release_id == Release.id)
        .join(Project, Release.project_id == Project.id)
        .where(BuildJob.finished_at.is_not(None))
        .order_by(BuildJob.finished_at.desc(), BuildJob.id.desc())
        .limit(recent)
    ).all()
    outcomes = [
        {
            "job": job.id,
            "project": name,
            "version": version,
            "target": job.target,
            "arch": job.arch,
            "python_tag": job.python_tag,
            "state": job.state.value,
            "reason": job.failure_reason.value if job.failure_reason else None,
            "summary": job.summary,
            "seconds": job.build_seconds,
            "build_path": job.build_path,
            "finished": job.finished_at.isoformat() if job.finished_at else None,
        }
        for job, version, name in rows
    ]
    return {
        "queues": queues,
        "targets": targets,
        "builders": builders,
        "recent": outcomes,
        "feeds": _feeds(session),
        "skips": _skips(session),
    }


def _feeds(session: Session) -> dict[str, Any]:
    """Where each change feed stands, what kinds of change it saw, what waits for details."""
    feeds: dict[str, Any] = {
        cursor.name: {
            "serial": cursor.serial,
            "updated": cursor.updated_at.isoformat(),
            "actions": {},
        }
        for cursor in session.scalars(select(FeedCursor))
    }
    for row in session.scalars(select(FeedActionCount).order_by(FeedActionCount.kind)):
        feeds.setdefault(row.feed, {"serial": None, "updated": None, "actions": {}})
        feeds[row.feed]["actions"][row.kind] = row.count
    waiting = session.scalar(
        select(func.count()).where(Release.refresh_needed.is_(True), Release.removed_at.is_(None))
    )
    return {"cursors": feeds, "releases_waiting_for_details": waiting or 0}


def _skips(session: Session) -> dict[str, int]:
    """Releases and targets not built, by recorded reason."""
    counts: dict[str, int] = {}
    for reason, count in session.execute(
        select(Release.skip_reason, func.count())
        .where(Release.skip_reason.is_not(None))
        .group_by(Release.skip_reason)
    ):
        if reason is not None:
            counts[f"release:{reason.value}"] = count
    for reason, count in session.execute(
        select(BuildJob.skip_reason, func.count())
        .where(BuildJob.skip_reason.is_not(None))
        .group_by(BuildJob.skip_reason)
    ):
        if reason is not None:
            counts[f"target:{reason.value}"] = count
    return counts

"""Turns new sdists into build jobs (one per target) and hands pending jobs to Celery."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from celery import Celery
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from common.config import TargetSettings
from common.db import transaction
from common.messages import BUILD_TASK, queue_name
from common.models import BuildJob, Release, SourceFile
from common.names import python_version_of_tag
from common.states import ACTIVE_STATES, JobState

log = logging.getLogger(__name__)

PRIORITY_REBUILD = 9
PRIORITY_NEW = 5
PRIORITY_BACKFILL = 1


def target_allowed(requires_python: str | None, python_tag: str, project: str = "") -> bool:
    """Does the release's Requires-Python admit the target's interpreter?"""
    if not requires_python:
        return True
    try:
        spec = SpecifierSet(requires_python)
    except InvalidSpecifier:
        log.warning(
            "invalid Requires-Python ignored",
            extra={"project": project, "requires_python": requires_python},
        )
        return True
    return spec.contains(python_version_of_tag(python_tag) + ".0", prereleases=True)


def create_jobs(
    session: Session,
    release: Release,
    source: SourceFile,
    targets: dict[str, TargetSettings],
    priority: int = PRIORITY_NEW,
    requested_by: str | None = None,
) -> list[BuildJob]:
    """One pending job per (arch, python tag) the release admits and has no active job for."""
    created: list[BuildJob] = []
    for arch, target in sorted(targets.items()):
        for tag in target.python_tags:
            if not target_allowed(release.requires_python, tag, release.project.name):
                continue
            active = session.scalar(
                select(BuildJob.id).where(
                    BuildJob.release_id == release.id,
                    BuildJob.arch == arch,
                    BuildJob.python_tag == tag,
                    BuildJob.state.in_(ACTIVE_STATES),
                )
            )
            if active is not None:
                continue
            job = BuildJob(
                release=release,
                source_file=source,
                arch=arch,
                python_tag=tag,
                policy=target.policy,
                state=JobState.PENDING,
                priority=priority,
                requested_by=requested_by,
            )
            session.add(job)
            created.append(job)
    session.flush()
    for job in created:
        log.info(
            "job created",
            extra={
                "job_id": job.id,
                "project": release.project.name,
                "version": release.version,
                "arch": job.arch,
                "python_tag": job.python_tag,
            },
        )
    return created


def dispatch_pending(factory: sessionmaker[Session], celery: Celery, limit: int = 500) -> int:
    """Send a Celery message for each pending job, highest priority first; returns the count.

    The message goes out before the state changes: a builder accepts a job that is
    pending or queued, so a crash between the two only leaves a job to send again.
    """
    with factory() as session:
        pending = session.execute(
            select(BuildJob.id, BuildJob.arch)
            .where(BuildJob.state == JobState.PENDING)
            .order_by(BuildJob.priority.desc(), BuildJob.id)
            .limit(limit)
        ).all()
    sent = 0
    for job_id, arch in pending:
        celery.send_task(BUILD_TASK, args=[job_id], queue=queue_name(arch))
        with transaction(factory) as session:
            job = session.get(BuildJob, job_id)
            if job is not None and job.state == JobState.PENDING:
                job.state = JobState.QUEUED
                job.queued_at = datetime.now(UTC)
        log.info("job queued", extra={"job_id": job_id, "queue": queue_name(arch)})
        sent += 1
    return sent

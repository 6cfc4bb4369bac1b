"""Decides what the farm builds for a release, and records why it builds nothing.

A release is not built when an operator's skip rule names it, when it has no sdist,
when it is yanked or removed upstream, or when PyPI already serves a pure-Python wheel
for it (piwheels' lesson: never shadow such a wheel). A target is not built when PyPI
already serves a wheel a pip on that target would install, unless the farm is
configured to build covered targets anyway. Every decision leaves a reason behind.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from common.config import Settings, TargetSettings
from common.models import BuildJob, OutputFile, Release, SkipRule, SourceFile
from common.states import JobState, SkipReason
from common.tags import covering_wheel, wheel_tags
from master.scheduler import PRIORITY_NEW, create_jobs, target_allowed

log = logging.getLogger(__name__)

# Jobs ended for these reasons do not settle a target: if the release comes back, build.
REOPENING_REASONS = (SkipReason.YANKED_UPSTREAM, SkipReason.REMOVED_UPSTREAM)


def pure_python_wheel(filenames: Iterable[str]) -> str | None:
    """An upstream wheel that runs everywhere (`py3-none-any` and the like), if any."""
    for filename in sorted(filenames):
        if filename.endswith(".whl") and any(
            tag.platform == "any" and tag.abi == "none" for tag in wheel_tags(filename)
        ):
            return filename
    return None


def skip_rule_for(session: Session, project: str, version: str) -> SkipRule | None:
    return session.scalar(
        select(SkipRule)
        .where(
            SkipRule.project == project,
            or_(SkipRule.version.is_(None), SkipRule.version == version),
        )
        .order_by(SkipRule.version.is_(None))
        .limit(1)
    )


def settle_active_jobs(session: Session, release_ids: list[int], reason: SkipReason) -> int:
    """Jobs not yet taken by a builder end as skipped; a build under way may finish."""
    if not release_ids:
        return 0
    result = session.execute(
        update(BuildJob)
        .where(
            BuildJob.release_id.in_(release_ids),
            BuildJob.state.in_((JobState.PENDING, JobState.QUEUED)),
        )
        .values(state=JobState.SKIPPED, skip_reason=reason, summary=f"skipped: {reason.value}")
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def served_wheels(session: Session, release_id: int) -> list[str]:
    """The wheels of ours the index serves for a release."""
    return list(
        session.scalars(
            select(OutputFile.filename).where(
                OutputFile.release_id == release_id, OutputFile.published.is_(True)
            )
        )
    )


def settle_covered_jobs(session: Session, job: BuildJob, filename: str) -> list[BuildJob]:
    """A newly published wheel ends the release's waiting jobs that it already serves:
    an abi3 wheel built for cp311 makes the cp312 job of the same arch and policy moot.
    A build under way is left to finish; its upload then finds the wheel published."""
    siblings = session.scalars(
        select(BuildJob).where(
            BuildJob.release_id == job.release_id,
            BuildJob.id != job.id,
            BuildJob.state.in_((JobState.PENDING, JobState.QUEUED)),
        )
    ).all()
    settled = []
    for sibling in siblings:
        if covering_wheel([filename], sibling.python_tag, sibling.policy) is None:
            continue
        sibling.state = JobState.SKIPPED
        sibling.skip_reason = SkipReason.COVERED_BY_FARM
        sibling.summary = f"armwheels serves {filename}"
        settled.append(sibling)
        log.info(
            "job covered by a published wheel",
            extra={"job_id": sibling.id, "file": filename, "built_by": job.id},
        )
    return settled


def _settled_targets(session: Session, release_id: int) -> set[tuple[str, str]]:
    rows = session.execute(
        select(BuildJob.arch, BuildJob.python_tag, BuildJob.state, BuildJob.skip_reason).where(
            BuildJob.release_id == release_id
        )
    ).all()
    return {
        (arch, tag)
        for arch, tag, state, reason in rows
        if not (state == JobState.SKIPPED and reason in REOPENING_REASONS)
    }


def plan_builds(
    session: Session,
    release: Release,
    source: SourceFile | None,
    settings: Settings,
    priority: int = PRIORITY_NEW,
    requested_by: str | None = None,
) -> list[BuildJob]:
    """Create the jobs the release needs now; record a skip reason where it needs none."""
    project = release.project.name
    reason: SkipReason | None = None
    rule = skip_rule_for(session, project, release.version)
    if release.removed_at is not None:
        reason = SkipReason.REMOVED_UPSTREAM
    elif rule is not None:
        reason = SkipReason.SKIP_LIST
    elif release.yanked:
        reason = SkipReason.YANKED_UPSTREAM
    elif source is None:
        reason = SkipReason.NO_SDIST
    elif pure_python_wheel(release.upstream_files):
        reason = SkipReason.PURE_PYTHON_UPSTREAM
    release.skip_reason = reason
    if reason is not None:
        settle_active_jobs(session, [release.id], reason)
        log.info(
            "release not built",
            extra={"project": project, "version": release.version, "reason": reason.value},
        )
        return []
    assert source is not None
    settled = _settled_targets(session, release.id)
    ours = served_wheels(session, release.id)
    to_build: dict[str, TargetSettings] = {}
    skipped: list[BuildJob] = []
    for arch, target in sorted(settings.enabled_targets().items()):
        tags: list[str] = []
        for tag in target.python_tags:
            if (arch, tag) in settled or not target_allowed(release.requires_python, tag, project):
                continue
            covered: tuple[SkipReason, str] | None = None
            upstream = covering_wheel(release.upstream_files, tag, target.policy)
            own = covering_wheel(ours, tag, target.policy)
            if upstream is not None and not settings.upstream.build_covered:
                covered = (SkipReason.COVERED_UPSTREAM, f"PyPI serves {upstream}")
            elif own is not None:
                covered = (SkipReason.COVERED_BY_FARM, f"armwheels serves {own}")
            if covered is not None:
                skipped.append(
                    BuildJob(
                        release=release,
                        source_file=source,
                        arch=arch,
                        python_tag=tag,
                        policy=target.policy,
                        state=JobState.SKIPPED,
                        priority=priority,
                        skip_reason=covered[0],
                        summary=covered[1],
                        requested_by=requested_by,
                    )
                )
                continue
            tags.append(tag)
        if tags:
            to_build[arch] = target.model_copy(update={"python_tags": tags})
    session.add_all(skipped)
    return create_jobs(session, release, source, to_build, priority, requested_by)

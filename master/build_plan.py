"""Decides what the farm builds for a release, and records why it builds nothing.

A release is not built when an operator's skip rule names it, when it has no sdist,
when it is yanked or removed upstream, or when PyPI already serves a pure-Python wheel
for it (piwheels' lesson: never shadow such a wheel). A target is not built when PyPI
already serves a wheel a pip on that target would install, unless the farm is
configured to build covered targets anyway. Every decision leaves a reason behind.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from functools import cache

from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import InvalidWheelFilename, parse_wheel_filename
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from common.config import Settings, TargetSettings
from common.models import BuildJob, Release, SkipRule, SourceFile
from common.names import python_version_of_tag
from common.states import JobState, SkipReason
from master.scheduler import PRIORITY_NEW, create_jobs, target_allowed

log = logging.getLogger(__name__)

# Jobs ended for these reasons do not settle a target: if the release comes back, build.
REOPENING_REASONS = (SkipReason.YANKED_UPSTREAM, SkipReason.REMOVED_UPSTREAM)
_MANYLINUX = re.compile(r"^manylinux(?:_(\d+)_(\d+)|(2014|2010|1))_(\w+)$")
_LEGACY = {"2014": (2, 17), "2010": (2, 12), "1": (2, 5)}
_LEGACY_BY_GLIBC = {glibc: f"manylinux{alias}" for alias, glibc in _LEGACY.items()}


@cache
def supported_tags(python_tag: str, policy: str) -> frozenset[Tag]:
    """The tags pip on a target (interpreter x manylinux policy) accepts from an index."""
    major, minor = (int(part) for part in python_version_of_tag(python_tag).split("."))
    match = _MANYLINUX.match(policy)
    platforms: list[str] = []
    if match is None:
        platforms.append(policy)
    else:
        if match.group(3):
            glibc_major, glibc_minor = _LEGACY[match.group(3)]
        else:
            glibc_major, glibc_minor = int(match.group(1)), int(match.group(2))
        arch = match.group(4)
        # A manylinux_2_X system also accepts every older manylinux_2_Y wheel (PEP 600).
        for older in range(glibc_minor, -1, -1):
            platforms.append(f"manylinux_{glibc_major}_{older}_{arch}")
            alias = _LEGACY_BY_GLIBC.get((glibc_major, older))
            if alias:
                platforms.append(f"{alias}_{arch}")
    version = (major, minor)
    tags = list(cpython_tags(version, platforms=platforms))
    tags += list(compatible_tags(version, f"cp{major}{minor}", platforms=platforms))
    return frozenset(tags)


def _wheel_tags(filename: str) -> frozenset[Tag]:
    try:
        return parse_wheel_filename(filename)[3]
    except InvalidWheelFilename:
        return frozenset()


def pure_python_wheel(filenames: Iterable[str]) -> str | None:
    """An upstream wheel that runs everywhere (`py3-none-any` and the like), if any."""
    for filename in sorted(filenames):
        if filename.endswith(".whl") and any(
            tag.platform == "any" and tag.abi == "none" for tag in _wheel_tags(filename)
        ):
            return filename
    return None


def covering_wheel(filenames: Iterable[str], python_tag: str, policy: str) -> str | None:
    """An upstream wheel pip on this target would install instead of ours, if any."""
    wanted = supported_tags(python_tag, policy)
    for filename in sorted(filenames):
        if filename.endswith(".whl") and not _wheel_tags(filename).isdisjoint(wanted):
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
    to_build: dict[str, TargetSettings] = {}
    skipped: list[BuildJob] = []
    for arch, target in sorted(settings.enabled_targets().items()):
        tags: list[str] = []
        for tag in target.python_tags:
            if (arch, tag) in settled or not target_allowed(release.requires_python, tag, project):
                continue
            covering = covering_wheel(release.upstream_files, tag, target.policy)
            if covering is not None and not settings.upstream.build_covered:
                skipped.append(
                    BuildJob(
                        release=release,
                        source_file=source,
                        arch=arch,
                        python_tag=tag,
                        policy=target.policy,
                        state=JobState.SKIPPED,
                        priority=priority,
                        skip_reason=SkipReason.COVERED_UPSTREAM,
                        summary=f"PyPI serves {covering}",
                        requested_by=requested_by,
                    )
                )
                continue
            tags.append(tag)
        if tags:
            to_build[arch] = target.model_copy(update={"python_tags": tags})
    session.add_all(skipped)
    return create_jobs(session, release, source, to_build, priority, requested_by)

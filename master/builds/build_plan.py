"""Decides what the farm builds for a release, and records why it builds nothing.

A release is not built when an operator's skip rule names it, when it has no sdist,
when it is yanked or removed upstream, or when PyPI already serves a pure-Python wheel
for it (piwheels' lesson: never shadow such a wheel). A target is not built when its
interpreter is outside the release's Requires-Python, or when PyPI or the farm already
serves a wheel a pip on that target would install (unless the farm is configured to
build what PyPI covers anyway). Every decision leaves a reason behind. The same rules
answer the feed and a maintainer's rebuild request; master.builds.jobs makes the jobs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from common.config import Settings, TargetSettings
from common.models import BuildJob, OutputFile, Release, SkipRule, SourceFile
from common.names import python_version_of_tag
from common.states import ACTIVE_STATES, FailureReason, JobState, SkipReason
from common.tags import covering_wheel, publishing_index, wheel_tags
from master.builds import jobs

log = logging.getLogger(__name__)

PRIORITY_REBUILD = 9
PRIORITY_NEW = 5
PRIORITY_BACKFILL = 1

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


class NotBuildable(Exception):
    """A rebuild the build plan refuses (answered 409): the message says which rule, and
    what an operator can do about it."""


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
    """One pending job per (target, python tag) the release admits and has no active job
    for."""
    created: list[BuildJob] = []
    for name, target in sorted(targets.items()):
        for tag in target.python_tags:
            if not target_allowed(release.requires_python, tag, release.project.name):
                continue
            active = session.scalar(
                select(BuildJob.id).where(
                    BuildJob.release_id == release.id,
                    BuildJob.target == name,
                    BuildJob.python_tag == tag,
                    BuildJob.state.in_(ACTIVE_STATES),
                )
            )
            if active is None:
                created.append(
                    jobs.create(
                        session,
                        release,
                        source,
                        name,
                        target.arch,
                        tag,
                        target.policy,
                        priority=priority,
                        requested_by=requested_by,
                    )
                )
    return created


# Jobs that no builder has started: a wheel served meanwhile makes them moot.
NOT_STARTED = (JobState.PENDING, JobState.QUEUED, JobState.DEP_WAIT)


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
    A build under way is left to finish; its upload then finds the wheel published.
    The waiting jobs are locked and read again: one a builder claims meanwhile is
    building once the claim commits, and is left be."""
    siblings = session.scalars(
        select(BuildJob)
        .where(
            BuildJob.release_id == job.release_id,
            BuildJob.id != job.id,
            BuildJob.state.in_(NOT_STARTED),
        )
        .with_for_update()
        .execution_options(populate_existing=True)
    ).all()
    settled = []
    index = publishing_index(job.target, job.policy)
    for sibling in siblings:
        # A distribution's wheel serves only its own index's jobs, and a manylinux wheel
        # none of a distribution's (its users are sent to their own index).
        if publishing_index(sibling.target, sibling.policy) != index:
            continue
        if covering_wheel([filename], sibling.python_tag, sibling.policy) is None:
            continue
        jobs.cover(sibling, f"armwheels serves {filename}, built by job {job.id}")
        settled.append(sibling)
    return settled


def _settled_targets(session: Session, release_id: int) -> set[tuple[str, str]]:
    rows = session.execute(
        select(BuildJob.target, BuildJob.python_tag, BuildJob.state, BuildJob.skip_reason).where(
            BuildJob.release_id == release_id
        )
    ).all()
    return {
        (target, tag)
        for target, tag, state, reason in rows
        if not (state == JobState.SKIPPED and reason in REOPENING_REASONS)
    }


def release_not_built(
    session: Session, release: Release, source: SourceFile | None
) -> tuple[SkipReason, str] | None:
    """Why no target of the release is built (None: the targets are looked at one by
    one), and what that reason means for an operator reading it."""
    rule = skip_rule_for(session, release.project.name, release.version)
    if release.removed_at is not None:
        return SkipReason.REMOVED_UPSTREAM, "it was removed from PyPI"
    if rule is not None:
        entry = f"{rule.project} {rule.version or '(all releases)'}"
        return (
            SkipReason.SKIP_LIST,
            f"it is on the skip list ({entry}, added by {rule.created_by}: {rule.reason});"
            f" remove that entry to build it",
        )
    if release.yanked:
        why = f": {release.yanked_reason}" if release.yanked_reason else ""
        return SkipReason.YANKED_UPSTREAM, f"it is yanked on PyPI{why}"
    if source is None:
        return SkipReason.NO_SDIST, "PyPI has no sdist of it"
    pure = pure_python_wheel(release.upstream_files)
    if pure is not None:
        return SkipReason.PURE_PYTHON_UPSTREAM, f"PyPI serves the pure-Python wheel {pure}"
    return None


def target_covered(
    release: Release, ours: list[str], python_tag: str, policy: str, settings: Settings
) -> tuple[SkipReason, str] | None:
    """A wheel that PyPI or the farm serves and a pip on this target would install."""
    upstream = covering_wheel(release.upstream_files, python_tag, policy)
    if upstream is not None and not settings.upstream.build_covered:
        return SkipReason.COVERED_UPSTREAM, f"PyPI serves {upstream}"
    own = covering_wheel(ours, python_tag, policy)
    if own is not None:
        return SkipReason.COVERED_BY_FARM, f"armwheels serves {own}"
    return None


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
    not_built = release_not_built(session, release, source)
    release.skip_reason = not_built[0] if not_built else None
    if not_built is not None:
        jobs.skip_releases(session, [release.id], not_built[0])
        log.info(
            "release not built",
            extra={"project": project, "version": release.version, "reason": not_built[0].value},
        )
        return []
    assert source is not None
    ours = served_wheels(session, release.id)
    _cover_waiting(session, release, ours, settings)
    settled = _settled_targets(session, release.id)
    created: list[BuildJob] = []
    for name, target in sorted(settings.planned_targets().items()):
        for tag in target.python_tags:
            if (name, tag) in settled or not target_allowed(release.requires_python, tag, project):
                continue
            covered = target_covered(release, ours, tag, target.policy, settings)
            job = jobs.create(
                session,
                release,
                source,
                name,
                target.arch,
                tag,
                target.policy,
                priority=priority,
                requested_by=requested_by,
                covered=covered,
            )
            if covered is None:
                created.append(job)
    return created


def _cover_waiting(session: Session, release: Release, ours: list[str], settings: Settings) -> None:
    """Jobs of the release not started yet whose target a wheel now serves (PyPI's,
    uploaded after the sdist, or the farm's) end as covered: planned again, a release
    never builds what its users already get. A build under way is left to finish."""
    waiting = session.scalars(
        select(BuildJob)
        .where(BuildJob.release_id == release.id, BuildJob.state.in_(NOT_STARTED))
        .with_for_update()
    ).all()
    for job in waiting:
        covered = target_covered(release, ours, job.python_tag, job.policy, settings)
        if covered is not None:
            jobs.cover(job, covered[1], covered[0])


def plan_fallbacks(session: Session, job: BuildJob, settings: Settings) -> list[BuildJob]:
    """A job whose wheel needs a newer glibc than its target's policy (it failed
    auditwheel-rejected) hands its release and interpreter to the targets that fall
    back for its target: one job each, unless one is active or a wheel serves it."""
    if job.state != JobState.FAILED or job.failure_reason != FailureReason.AUDITWHEEL_REJECTED:
        return []
    release = job.release
    ours = served_wheels(session, release.id)
    open_targets = {
        name: target.model_copy(update={"python_tags": [job.python_tag]})
        for name, target in settings.fallbacks_of(job.target).items()
        if job.python_tag in target.python_tags
        and target_covered(release, ours, job.python_tag, target.policy, settings) is None
    }
    created = create_jobs(session, release, job.source_file, open_targets, job.priority)
    for fallback in created:
        log.info(
            "build handed to a fallback target",
            extra={"job_id": fallback.id, "from_job": job.id, "target": fallback.target},
        )
    return created


def plan_rebuild(
    session: Session,
    release: Release,
    targets: dict[str, TargetSettings],
    settings: Settings,
    requested_by: str,
) -> tuple[list[BuildJob], list[str]]:
    """A rebuild request, under the feed's rules: refused (NotBuildable) when the release
    is not built at all; otherwise a high-priority job for each target that has no
    active one, is admitted by Requires-Python, and is not served by a wheel already
    (remove that wheel to build it again). Returns the jobs created and, for each target
    passed over, why."""
    project = release.project.name
    source = release.source_files[0] if release.source_files else None
    not_built = release_not_built(session, release, source)
    if not_built is not None:
        raise NotBuildable(f"{project} {release.version} is not built: {not_built[1]}")
    assert source is not None
    ours = served_wheels(session, release.id)
    passed: list[str] = []
    allowed: dict[str, TargetSettings] = {}
    for name, target in sorted(targets.items()):
        tags = []
        for tag in target.python_tags:
            if not target_allowed(release.requires_python, tag, project):
                passed.append(f"{name} {tag}: outside Requires-Python {release.requires_python}")
                continue
            covered = target_covered(release, ours, tag, target.policy, settings)
            if covered is not None:
                passed.append(f"{name} {tag}: {covered[1]}")
                continue
            tags.append(tag)
        if tags:
            allowed[name] = target.model_copy(update={"python_tags": tags})
    created = create_jobs(session, release, source, allowed, PRIORITY_REBUILD, requested_by)
    return created, passed

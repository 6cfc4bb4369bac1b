"""Maintainer rebuild requests: new high-priority jobs for a release, under the build
plan's rules (a release the feed would not build is refused, naming the rule), answered
with the jobs already waiting or running where they would duplicate them."""

from __future__ import annotations

from dataclasses import dataclass

from packaging.version import Version
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from common.config import Settings, TargetSettings
from common.db import lock_rows
from common.models import BuildJob, Project, Release
from common.names import BadName, normalize_project, parse_version
from common.states import ACTIVE_STATES
from common.urls import is_download_url
from master.builds.build_plan import NotBuildable, plan_rebuild


class RebuildError(ValueError):
    """The request names something the farm does not know."""


class UnknownProject(RebuildError):
    """No such project in the farm."""


class RebuildRefused(RebuildError):
    """The build plan's rules do not build what the request asks for (answered 409)."""


@dataclass
class RebuildOutcome:
    """The jobs a request created, and those already waiting or running that it would
    have duplicated (the requester is answered with those)."""

    project: str
    version: str
    created: list[BuildJob]
    existing: list[BuildJob]


def request_rebuild(
    session: Session,
    settings: Settings,
    project_name: str,
    version: str | None = None,
    arch: str | None = None,
    requested_by: str = "cli",
    target: str | None = None,
) -> RebuildOutcome:
    try:
        name = normalize_project(project_name)
        wanted = parse_version(version) if version else None
    except BadName as exc:
        raise RebuildError(str(exc)) from exc
    project = session.scalar(select(Project).where(Project.name == name))
    if project is None:
        hint = _import(name, wanted)
        raise UnknownProject(f"unknown project: {name}: import it first with {hint}")
    releases = list(project.releases)
    if wanted is not None:
        releases = [r for r in releases if Version(r.version) == wanted]
        if not releases:
            raise RebuildError(
                f"{name} has no release {wanted} in the farm:"
                f" import it first with {_import(name, wanted)}"
            )
    releases = [r for r in releases if r.source_files]
    if not releases:
        raise RebuildError(
            f"{name} has no release {version or ''} with an sdist".replace("  ", " ")
        )
    release: Release = max(releases, key=lambda r: Version(r.version))
    if not is_download_url(release.source_files[0].url):
        # Stored before the farm resolved relative links; importing it again repairs it.
        raise RebuildError(
            f"{name} {release.version}: its sdist URL {release.source_files[0].url!r} is no"
            f" http(s) URL: import it again with {_import(name, Version(release.version))}"
        )
    # A rebuild names a fallback target to rebuild for it; otherwise fallbacks follow
    # their primary target's outcome.
    targets = settings.planned_targets()
    if target is not None:
        targets = settings.enabled_targets()
        if target not in targets:
            raise RebuildError(f"{target} is not an enabled target")
        targets = {target: targets[target]}
    if arch is not None:
        targets = {name: t for name, t in targets.items() if t.arch == arch}
        if not targets:
            raise RebuildError(f"arch {arch} has no enabled target")
    try:
        created, passed = _create_once(session, settings, release, targets, requested_by)
    except NotBuildable as exc:
        raise RebuildRefused(str(exc)) from exc
    fresh = {job.id for job in created}
    existing = session.scalars(
        select(BuildJob)
        .where(
            BuildJob.release_id == release.id,
            BuildJob.target.in_(sorted(targets)),
            BuildJob.state.in_(ACTIVE_STATES),
            BuildJob.id.not_in(fresh) if fresh else BuildJob.id.is_not(None),
        )
        .order_by(BuildJob.id)
    ).all()
    if not created and not existing:
        raise RebuildRefused(
            f"nothing to rebuild for {name} {release.version}: " + "; ".join(passed)
        )
    return RebuildOutcome(name, release.version, created, list(existing))


def _import(name: str, version: Version | None) -> str:
    """The command that brings a project (or one release of it) into the farm."""
    return f'"armwheels import {name}=={version}"' if version else f'"armwheels import {name}"'


def _create_once(
    session: Session,
    settings: Settings,
    release: Release,
    targets: dict[str, TargetSettings],
    requested_by: str,
) -> tuple[list[BuildJob], list[str]]:
    """The jobs the release has no active one for, created by one request only: requests
    for one release at the same moment wait on its row lock, and each later one finds
    the first one's jobs and is answered with them. A job the feed created meanwhile
    (it takes no lock) makes the insert fail on the one-active-job index: the request
    then looks again and answers with that job."""
    lock_rows(session, Release.yanked_reason, Release.id == release.id)
    try:
        with session.begin_nested():
            return plan_rebuild(session, release, targets, settings, requested_by)
    except IntegrityError:
        return plan_rebuild(session, release, targets, settings, requested_by)

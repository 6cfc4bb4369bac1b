"""Follows watched projects on an upstream Simple API and records new releases and sdists.

Idempotent by construction: every row is looked up by its natural key before it is
added, and a project's ETag is stored in the same transaction as what it covered.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime

from packaging.version import Version
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from common.config import Settings
from common.db import transaction
from common.models import BuildJob, Project, Release, SourceFile
from common.states import SkipReason
from master.builds.build_plan import plan_builds
from master.pypi.releases import (
    apply_release_files,
    get_or_create_project,
    mark_releases_removed,
    restore_release,
)
from master.pypi.upstream import (
    ProjectPage,
    SimpleClient,
    TransientUpstreamError,
    UpstreamError,
    UpstreamFile,
)

log = logging.getLogger(__name__)


@dataclass
class PollOutcome:
    project: str
    new_releases: int = 0
    new_sdists: int = 0
    new_jobs: int = 0
    removed_releases: int = 0
    unchanged: bool = False


def apply_page(session: Session, page: ProjectPage, settings: Settings) -> PollOutcome:
    outcome = PollOutcome(page.name)
    project = get_or_create_project(session, page.name)
    project.polled_at = datetime.now(UTC)
    if page.not_modified:
        outcome.unchanged = True
        return outcome
    releases = {
        r.version: r
        for r in session.scalars(select(Release).where(Release.project_id == project.id))
    }
    if page.missing:
        # 404 for a project we know: it was removed upstream (it may come back).
        present = [r for r in releases.values() if r.removed_at is None]
        if present:
            outcome.removed_releases = mark_releases_removed(session, present, project.polled_at)
            project.removed_at = project.polled_at
        outcome.unchanged = not present
        return outcome
    by_version: dict[str, list[UpstreamFile]] = defaultdict(list)
    for upstream_file in page.files:
        by_version[upstream_file.version].append(upstream_file)
    # First seen means first seen with files: an earlier 404 or empty page does not count.
    first_sight = not releases
    to_plan: list[tuple[Release, SourceFile]] = []
    for version, files in by_version.items():
        release = releases.get(version)
        if release is None:
            release = Release(project=project, version=version, upstream_files=[])
            session.add(release)
            session.flush()
            releases[version] = release
            outcome.new_releases += 1
        reappeared = release.removed_at is not None
        restore_release(release)
        served_before = release.upstream_files
        applied = apply_release_files(session, release, files)
        if applied.new_source:
            outcome.new_sdists += 1
        # A wheel uploaded after the sdist (a pure-Python one, or one for a target) changes
        # what the release needs: its plan is made again, as the changelog feed's refresh
        # does; a release never planned (first sight, no backfill) stays unplanned.
        files_changed = release.upstream_files != served_before and _planned(session, release)
        if applied.source is not None and (
            applied.new_source
            or reappeared
            or (applied.yank_changed and not release.yanked)
            or files_changed
        ):
            to_plan.append((release, applied.source))
        elif applied.source is None and release.skip_reason is None:
            release.skip_reason = SkipReason.NO_SDIST
    gone = [r for v, r in releases.items() if v not in by_version and r.removed_at is None]
    if gone and by_version:
        outcome.removed_releases = mark_releases_removed(session, gone, project.polled_at)
    session.flush()
    if first_sight and not settings.upstream.backfill and to_plan:
        newest = max(to_plan, key=lambda pair: Version(pair[0].version))
        to_plan = [newest]
    for release, source in to_plan:
        outcome.new_jobs += len(plan_builds(session, release, source, settings))
    project.upstream_etag = page.etag
    project.upstream_serial = page.serial
    return outcome


def _planned(session: Session, release: Release) -> bool:
    """Has the build plan looked at this release before (it has a job, or a reason)?"""
    if release.id is None:
        return False
    if release.skip_reason is not None:
        return True
    job = session.scalar(select(BuildJob.id).where(BuildJob.release_id == release.id).limit(1))
    return job is not None


def poll_project(
    factory: sessionmaker[Session], client: SimpleClient, name: str, settings: Settings
) -> PollOutcome:
    with factory() as session:
        project = session.scalar(select(Project).where(Project.name == name))
        etag = project.upstream_etag if project else None
    page = client.project_page(name, etag)
    with transaction(factory) as session:
        outcome = apply_page(session, page, settings)
    if outcome.new_releases or outcome.new_sdists or outcome.new_jobs or outcome.removed_releases:
        log.info(
            "project polled",
            extra={
                "project": name,
                "new_releases": outcome.new_releases,
                "new_sdists": outcome.new_sdists,
                "new_jobs": outcome.new_jobs,
                "removed_releases": outcome.removed_releases,
            },
        )
    return outcome


def poll_watched(
    factory: sessionmaker[Session], client: SimpleClient, settings: Settings
) -> list[PollOutcome]:
    projects = settings.upstream.projects
    if projects == "all":
        # Following everything needs the changelog feed, not one request per project.
        return []
    outcomes: list[PollOutcome] = []
    for name in projects:
        try:
            outcomes.append(poll_project(factory, client, name, settings))
        except (UpstreamError, TransientUpstreamError) as exc:
            # The next round tries again; nothing was recorded for this project.
            log.warning("project skipped: %s", exc, extra={"project": name})
        except Exception:
            log.exception("poll failed", extra={"project": name})
    return outcomes

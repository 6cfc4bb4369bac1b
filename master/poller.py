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
from common.models import Project, Release, SourceFile
from master.scheduler import create_jobs
from master.upstream import (
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
    unchanged: bool = False


def get_or_create_project(session: Session, name: str, display: str | None = None) -> Project:
    project = session.scalar(select(Project).where(Project.name == name))
    if project is None:
        project = Project(name=name, display_name=display or name)
        session.add(project)
        session.flush()
    return project


def _pick_sdist(files: list[UpstreamFile]) -> UpstreamFile | None:
    candidates = [f for f in files if f.is_sdist and f.sha256]
    candidates.sort(key=lambda f: (not f.filename.endswith(".tar.gz"), f.filename))
    return candidates[0] if candidates else None


def apply_page(session: Session, page: ProjectPage, settings: Settings) -> PollOutcome:
    outcome = PollOutcome(page.name)
    project = get_or_create_project(session, page.name)
    project.polled_at = datetime.now(UTC)
    if page.not_modified or page.missing:
        outcome.unchanged = True
        return outcome
    by_version: dict[str, list[UpstreamFile]] = defaultdict(list)
    for upstream_file in page.files:
        by_version[upstream_file.version].append(upstream_file)
    releases = {
        r.version: r
        for r in session.scalars(select(Release).where(Release.project_id == project.id))
    }
    # First seen means first seen with files: an earlier 404 or empty page does not count.
    first_sight = not releases
    new_sources: list[tuple[Release, SourceFile]] = []
    for version, files in by_version.items():
        sdist = _pick_sdist(files)
        release = releases.get(version)
        if release is None:
            release = Release(
                project=project,
                version=version,
                requires_python=sdist.requires_python if sdist else None,
                upstream_files=[],
            )
            session.add(release)
            releases[version] = release
            outcome.new_releases += 1
        release.upstream_files = sorted(set(release.upstream_files) | {f.filename for f in files})
        yanked = [f for f in files if f.yanked]
        release.yanked = bool(files) and len(yanked) == len(files)
        reasons = [f.yanked for f in yanked if isinstance(f.yanked, str)]
        release.yanked_reason = reasons[0] if release.yanked and reasons else None
        if any(f.is_sdist and not f.sha256 for f in files):
            log.warning("sdist without sha256 ignored", extra={"project": project.name})
        if sdist is None:
            continue
        known = session.scalar(select(SourceFile.id).where(SourceFile.filename == sdist.filename))
        if known is not None:
            continue
        source = SourceFile(
            release=release,
            filename=sdist.filename,
            url=sdist.url,
            sha256=sdist.sha256 or "",
            size=sdist.size,
            upload_time=sdist.upload_time,
        )
        session.add(source)
        new_sources.append((release, source))
        outcome.new_sdists += 1
    session.flush()
    if first_sight and not settings.upstream.backfill and new_sources:
        newest = max(new_sources, key=lambda pair: Version(pair[0].version))
        new_sources = [newest]
    for release, source in new_sources:
        if release.yanked:
            continue
        outcome.new_jobs += len(create_jobs(session, release, source, settings.enabled_targets()))
    project.upstream_etag = page.etag
    project.upstream_serial = page.serial
    return outcome


def poll_project(
    factory: sessionmaker[Session], client: SimpleClient, name: str, settings: Settings
) -> PollOutcome:
    with factory() as session:
        project = session.scalar(select(Project).where(Project.name == name))
        etag = project.upstream_etag if project else None
    page = client.project_page(name, etag)
    with transaction(factory) as session:
        outcome = apply_page(session, page, settings)
    if outcome.new_releases or outcome.new_sdists or outcome.new_jobs:
        log.info(
            "project polled",
            extra={
                "project": name,
                "new_releases": outcome.new_releases,
                "new_sdists": outcome.new_sdists,
                "new_jobs": outcome.new_jobs,
            },
        )
    return outcome


def poll_watched(
    factory: sessionmaker[Session], client: SimpleClient, settings: Settings
) -> list[PollOutcome]:
    projects = settings.upstream.projects
    if projects == "all":
        # Following everything needs a change feed, not one request per project.
        log.warning("upstream.projects = 'all' needs the changelog feed; nothing polled")
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

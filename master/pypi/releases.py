"""Records what upstream serves for a project's releases; shared by every feed.

The Simple API poller, the changelog feed and the JSON API refresh all end here, so a
release looks the same in the database whichever way the farm learnt about it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.models import Project, Release, SourceFile
from common.states import SkipReason
from master.builds.jobs import skip_releases
from master.pypi.upstream import UpstreamFile

log = logging.getLogger(__name__)


def get_or_create_project(session: Session, name: str, display: str | None = None) -> Project:
    project = session.scalar(select(Project).where(Project.name == name))
    if project is None:
        project = Project(name=name, display_name=display or name)
        session.add(project)
        session.flush()
    return project


def pick_sdist(files: list[UpstreamFile]) -> UpstreamFile | None:
    """The sdist to build from: a .tar.gz before a .zip, and only one with a sha256."""
    candidates = [f for f in files if f.is_sdist and f.sha256]
    candidates.sort(key=lambda f: (not f.filename.endswith(".tar.gz"), f.filename))
    return candidates[0] if candidates else None


@dataclass
class FilesApplied:
    source: SourceFile | None  # the sdist to build from, known or new
    new_source: bool = False
    yank_changed: bool = False


def apply_release_files(
    session: Session, release: Release, files: list[UpstreamFile]
) -> FilesApplied:
    """Make the release match the complete list of files upstream serves for it now."""
    project = release.project.name
    release.upstream_files = sorted({f.filename for f in files})
    was_yanked = release.yanked
    yanked = [f for f in files if f.yanked]
    release.yanked = bool(files) and len(yanked) == len(files)
    reasons = [f.yanked for f in yanked if isinstance(f.yanked, str)]
    release.yanked_reason = reasons[0] if release.yanked and reasons else None
    if any(f.is_sdist and not f.sha256 for f in files):
        log.warning(
            "sdist without sha256 ignored", extra={"project": project, "version": release.version}
        )
    sdist = pick_sdist(files)
    if sdist is not None and sdist.requires_python:
        release.requires_python = sdist.requires_python
    elif release.requires_python is None:
        release.requires_python = next(
            (f.requires_python for f in files if f.requires_python), None
        )
    applied = FilesApplied(source=None, yank_changed=was_yanked != release.yanked)
    if was_yanked and not release.yanked and release.skip_reason == SkipReason.YANKED_UPSTREAM:
        release.skip_reason = None
    if release.yanked and not was_yanked:
        skip_releases(session, [release.id], SkipReason.YANKED_UPSTREAM)
    known = session.scalars(select(SourceFile).where(SourceFile.release_id == release.id)).all()
    if known:
        applied.source = known[0]
    if sdist is None:
        return applied
    if any(s.filename == sdist.filename for s in known):
        return applied
    if session.scalar(select(SourceFile.id).where(SourceFile.filename == sdist.filename)):
        # The same filename under another release: upstream data we cannot trust.
        log.warning("sdist named by two releases ignored", extra={"project": project})
        return applied
    if applied.source is None:
        source = SourceFile(
            release=release,
            filename=sdist.filename,
            url=sdist.url,
            sha256=sdist.sha256 or "",
            size=sdist.size,
            upload_time=sdist.upload_time,
        )
        session.add(source)
        session.flush()
        applied.source = source
        applied.new_source = True
    return applied


def mark_releases_removed(
    session: Session, releases: list[Release], when: datetime, settle: bool = True
) -> int:
    """Removed upstream: they leave our index, their rows and jobs' history stay.
    With settle=False the caller ends their waiting jobs itself (in one statement)."""
    gone = [r for r in releases if r.removed_at is None]
    for release in gone:
        release.removed_at = when
        release.refresh_needed = False
        release.skip_reason = SkipReason.REMOVED_UPSTREAM
    if settle:
        skip_releases(
            session, [r.id for r in gone if r.id is not None], SkipReason.REMOVED_UPSTREAM
        )
    for release in gone:
        log.info(
            "release removed upstream",
            extra={"project": release.project.name, "version": release.version},
        )
    return len(gone)


def restore_release(release: Release) -> None:
    """A release that upstream serves again is back in our index."""
    if release.removed_at is not None:
        release.removed_at = None
        if release.skip_reason == SkipReason.REMOVED_UPSTREAM:
            release.skip_reason = None
    project = release.project
    if project.removed_at is not None:
        project.removed_at = None


def utc_from_timestamp(timestamp: int) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)

"""Records what upstream serves for a project's releases; shared by every feed.

The Simple API poller, the changelog feed and the JSON API refresh all end here, so a
release looks the same in the database whichever way the farm learnt about it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.models import Project, Release, SourceFile
from common.states import SkipReason
from common.urls import is_download_url
from master.builds.jobs import skip_releases
from master.pypi.upstream import (
    SDIST_EXTENSIONS,
    UpstreamFile,
    is_standard_sdist,
    sdist_extension,
)

log = logging.getLogger(__name__)


def get_or_create_project(session: Session, name: str, display: str | None = None) -> Project:
    project = session.scalar(select(Project).where(Project.name == name))
    if project is None:
        project = Project(name=name, display_name=display or name)
        session.add(project)
        session.flush()
    return project


def pick_sdist(project: str, files: list[UpstreamFile]) -> UpstreamFile | None:
    """The sdist to build from: one with a sha256 and a URL a builder can download; one
    named as packaging reads sdists before a legacy-named one (`name-1.0-2.tar.gz`,
    built only when it is the release's only sdist), a .tar.gz before a .zip before
    older formats."""
    candidates = [f for f in files if f.is_sdist and f.sha256 and is_download_url(f.url)]
    candidates.sort(
        key=lambda f: (
            not is_standard_sdist(project, f.filename),
            _format_rank(f.filename),
            f.filename,
        )
    )
    return candidates[0] if candidates else None


def _format_rank(filename: str) -> int:
    extension = sdist_extension(filename)
    return SDIST_EXTENSIONS.index(extension) if extension else len(SDIST_EXTENSIONS)


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
    for bad in (f for f in files if f.is_sdist and not is_download_url(f.url)):
        # The clients resolve every URL; this guards the row a job is made from.
        log.warning(
            "sdist without an http(s) URL ignored",
            extra={"project": project, "version": release.version, "file": bad.filename},
        )
    sdist = pick_sdist(project, files)
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
    _repair_urls(known, files, project)
    # No job is made from a URL no builder can download: the release has no sdist then.
    applied.source = next((s for s in known if is_download_url(s.url)), None)
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


def _repair_urls(known: Sequence[SourceFile], files: list[UpstreamFile], project: str) -> None:
    """A stored sdist URL no builder can download (a relative link an earlier release of
    the farm stored as it came) takes the URL upstream gives for the file now."""
    urls = {f.filename: f.url for f in files if f.is_sdist and is_download_url(f.url)}
    for source in known:
        if not is_download_url(source.url) and source.filename in urls:
            log.info(
                "sdist URL repaired",
                extra={"project": project, "file": source.filename, "was": source.url},
            )
            source.url = urls[source.filename]


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

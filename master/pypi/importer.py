"""Backfills existing releases of chosen projects at low priority (`armwheels import`).

New releases reach the farm through a feed; what PyPI already served before the farm
started is imported on purpose, for a list of projects or the top N of a ranking.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from packaging.version import Version
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from common.config import Settings
from common.db import transaction
from common.models import Release
from common.names import BadName, normalize_project
from master.builds.build_plan import PRIORITY_BACKFILL, plan_builds
from master.pypi.json_api import JsonApiClient
from master.pypi.releases import apply_release_files, get_or_create_project, restore_release
from master.pypi.upstream import TransientUpstreamError, UpstreamError

log = logging.getLogger(__name__)


class ProjectListError(ValueError):
    """A --from file that cannot be read as a list of project names."""


def read_project_list(path: Path, top: int | None = None) -> list[str]:
    """Project names from a file, in its order: one name per line ('#' comments), or a
    JSON ranking as published by top-pypi-packages ({"rows": [{"project": ...}]})."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProjectListError(f"{path}: cannot read: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ProjectListError(f"{path}: not UTF-8 text") from exc
    raw: list[str] = []
    if text.lstrip().startswith(("{", "[")):
        try:
            body = json.loads(text)
        except ValueError as exc:
            raise ProjectListError(f"{path}: invalid JSON: {exc}") from exc
        rows = body.get("rows") if isinstance(body, dict) else body
        if not isinstance(rows, list):
            raise ProjectListError(f'{path}: JSON must be a list or have a "rows" list')
        for row in rows:
            name = row.get("project") if isinstance(row, dict) else row
            if not isinstance(name, str):
                raise ProjectListError(f"{path}: entry without a project name: {row!r:.80}")
            raw.append(name)
    else:
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                raw.append(line)
    names: list[str] = []
    seen: set[str] = set()
    for name in raw:
        try:
            normal = normalize_project(name)
        except BadName as exc:
            raise ProjectListError(f"{path}: {exc}") from exc
        if normal not in seen:
            seen.add(normal)
            names.append(normal)
    return names[:top] if top is not None else names


def import_project(
    factory: sessionmaker[Session],
    client: JsonApiClient,
    settings: Settings,
    name: str,
    all_releases: bool = False,
    priority: int = PRIORITY_BACKFILL,
) -> tuple[int, int]:
    """Record a project's releases (its newest with files, or all) and plan their builds;
    returns (releases, jobs). Raises UpstreamError for a project upstream does not have."""
    details = client.project(name)
    if details.missing:
        raise UpstreamError(f"{name}: not found upstream")
    versions = sorted((v for v, files in details.releases.items() if files), key=Version)
    if not all_releases:
        versions = versions[-1:]
    jobs = 0
    with transaction(factory) as session:
        project = get_or_create_project(session, name)
        known = {
            r.version: r
            for r in session.scalars(select(Release).where(Release.project_id == project.id))
        }
        for version in versions:
            release = known.get(version)
            if release is None:
                release = Release(project=project, version=version, upstream_files=[])
                session.add(release)
                session.flush()
            restore_release(release)
            applied = apply_release_files(session, release, details.releases[version])
            jobs += len(plan_builds(session, release, applied.source, settings, priority))
    return len(versions), jobs


@dataclass
class ImportOutcome:
    projects: int = 0
    releases: int = 0
    jobs: int = 0
    failed: dict[str, str] = field(default_factory=dict)


def run_import(
    factory: sessionmaker[Session],
    client: JsonApiClient,
    settings: Settings,
    names: list[str],
    all_releases: bool = False,
    advance: Callable[[str], None] | None = None,
) -> ImportOutcome:
    """Import each project in turn; one project's failure is reported, not fatal."""
    outcome = ImportOutcome()
    for name in names:
        try:
            releases, jobs = import_project(factory, client, settings, name, all_releases)
        except (UpstreamError, TransientUpstreamError) as exc:
            outcome.failed[name] = str(exc)
            log.warning("import failed: %s", exc, extra={"project": name})
        else:
            outcome.projects += 1
            outcome.releases += releases
            outcome.jobs += jobs
            log.info(
                "project imported",
                extra={"project": name, "releases": releases, "jobs": jobs},
            )
        if advance is not None:
            advance(name)
    return outcome

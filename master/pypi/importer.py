"""Backfills existing releases of chosen projects at low priority (`armwheels import`).

New releases reach the farm through a feed; what PyPI already served before the farm
started is imported on purpose, for a list of projects (NAME for its newest release,
NAME==VERSION for that one) or the top N of a ranking. Releases are recorded by the same
code as the feeds' (master.pypi.releases), from the JSON API read as the Simple API is.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from packaging.version import Version
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from common.config import Settings
from common.db import transaction
from common.models import Release
from common.names import BadName, normalize_project, parse_version
from master.builds.build_plan import PRIORITY_BACKFILL, plan_builds
from master.pypi.json_api import JsonApiClient, ProjectDetails
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


@dataclass(frozen=True)
class ImportRequest:
    """A project to import, and the one release of it an operator named (None: the
    newest, or every release with --all-releases)."""

    project: str
    version: str | None = None

    def __str__(self) -> str:
        return f"{self.project}=={self.version}" if self.version else self.project


def parse_import_request(text: str) -> ImportRequest:
    """`NAME` or `NAME==VERSION` (PEP 503 name, PEP 440 version, as packaging reads them);
    BadName says what is wrong with anything else."""
    name, pinned, version = text.partition("==")
    if not pinned and any(c in text for c in "<>=!~,;@["):
        raise BadName(f"invalid release {text!r}: give NAME or NAME==VERSION")
    if not pinned:
        return ImportRequest(normalize_project(name))
    try:
        return ImportRequest(normalize_project(name.strip()), str(parse_version(version.strip())))
    except BadName as exc:
        raise BadName(f"invalid release {text!r}: {exc}") from exc


class ReleaseNotUpstream(UpstreamError):
    """The project is upstream, the release the operator named is not."""


def import_project(
    factory: sessionmaker[Session],
    client: JsonApiClient,
    settings: Settings,
    request: ImportRequest | str,
    all_releases: bool = False,
    priority: int = PRIORITY_BACKFILL,
) -> tuple[int, int]:
    """Record a project's releases (the one named, its newest with files, or all) and plan
    their builds; returns (releases, jobs). Raises UpstreamError for a project or release
    upstream does not have."""
    if isinstance(request, str):
        request = ImportRequest(request)
    name = request.project
    details = client.project(name)
    if details.missing:
        raise UpstreamError(f"{name}: not found upstream")
    versions = sorted((v for v, files in details.releases.items() if files), key=Version)
    if request.version is not None:
        versions = _named_release(details, request.version, versions)
    elif not all_releases:
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


def _named_release(details: ProjectDetails, wanted: str, with_files: list[str]) -> list[str]:
    """[the release the operator named], as upstream spells it; ReleaseNotUpstream naming
    it when upstream has no such release or no file of it."""
    name = details.name
    version = Version(wanted)
    found = [v for v in details.releases if Version(v) == version]
    if not found:
        newest = f" (newest: {with_files[-1]})" if with_files else ""
        raise ReleaseNotUpstream(f"{name} has no release {wanted} upstream{newest}")
    if not details.releases[found[0]]:
        raise ReleaseNotUpstream(f"{name} {wanted} has no sdist or wheel upstream")
    return found[:1]


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
    requests: Sequence[ImportRequest | str],
    all_releases: bool = False,
    advance: Callable[[str], None] | None = None,
) -> ImportOutcome:
    """Import each request in turn; one's failure is reported (keyed by the request as
    the operator wrote it, NAME or NAME==VERSION), not fatal."""
    outcome = ImportOutcome()
    for item in requests:
        request = ImportRequest(item) if isinstance(item, str) else item
        try:
            releases, jobs = import_project(factory, client, settings, request, all_releases)
        except (UpstreamError, TransientUpstreamError) as exc:
            outcome.failed[str(request)] = str(exc)
            log.warning("import failed: %s", exc, extra={"project": request.project})
        else:
            outcome.projects += 1
            outcome.releases += releases
            outcome.jobs += jobs
            log.info(
                "project imported",
                extra={
                    "project": request.project,
                    "version": request.version,
                    "releases": releases,
                    "jobs": jobs,
                },
            )
        if advance is not None:
            advance(str(request))
    return outcome

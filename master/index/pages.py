"""Renders the Simple repository API (PEP 503 HTML, PEP 691 JSON, PEP 658/700 fields).

Pure functions of database rows, so the HTTP server and a static export render the
same bytes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape
from typing import Any

from packaging.version import Version
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from common.models import IndexChange, OutputFile, Project, Release

API_VERSION = "1.1"
JSON_TYPE = "application/vnd.pypi.simple.v1+json"
HTML_TYPE = "application/vnd.pypi.simple.v1+html"
LEGACY_HTML = "text/html"
OFFERED = (JSON_TYPE, HTML_TYPE, LEGACY_HTML)
FORMAT_ALIASES = {"json": JSON_TYPE, "html": HTML_TYPE}
# PEP 691's "latest" meta version: answered with the concrete version we serve.
LATEST = {
    "application/vnd.pypi.simple.latest+json": JSON_TYPE,
    "application/vnd.pypi.simple.latest+html": HTML_TYPE,
}


# A wheel is served while it is published and its release is still on PyPI: a release
# removed upstream leaves the index (its rows stay), a yanked one stays, marked yanked.
PUBLISHED = (OutputFile.published.is_(True), Release.removed_at.is_(None))


def served(index: str = "") -> tuple[Any, ...]:
    """What one index serves: /simple/'s manylinux wheels (""), or a distribution
    target's own."""
    return (*PUBLISHED, OutputFile.index_name == index)


SERVED = served("")


class NotAcceptable(ValueError):
    """The client accepts none of the formats we serve."""


def negotiate(accept: str | None, format_query: str | None = None) -> str:
    """Pick a content type from an Accept header by its q values (PEP 691)."""
    if format_query:
        if format_query in FORMAT_ALIASES:
            return FORMAT_ALIASES[format_query]
        if format_query in OFFERED:
            return format_query
        raise NotAcceptable(f"unknown format {format_query!r}")
    if not accept:
        return LEGACY_HTML
    best: tuple[float, int, str] | None = None
    for position, item in enumerate(accept.split(",")):
        media, *params = (part.strip() for part in item.split(";"))
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality <= 0:
            continue
        if media in ("*/*", "application/*"):
            candidates = [LEGACY_HTML if media == "*/*" else JSON_TYPE]
        elif media == "text/*":
            candidates = [LEGACY_HTML]
        elif media in LATEST:
            candidates = [LATEST[media]]
        else:
            candidates = [media] if media in OFFERED else []
        for candidate in candidates:
            rank = (quality, -position, candidate)
            if best is None or rank[:2] > best[:2]:
                best = rank
    if best is None:
        raise NotAcceptable("none of the accepted types is served")
    return best[2]


@dataclass(frozen=True)
class IndexFile:
    filename: str
    url: str
    sha256: str
    size: int
    requires_python: str | None
    metadata_sha256: str
    upload_time: datetime
    yanked: str | bool
    version: str


# The columns a page needs, read as plain rows: a full regeneration reads a million.
_FILE_COLUMNS = (
    OutputFile.filename,
    OutputFile.sha256,
    OutputFile.size,
    OutputFile.requires_python,
    OutputFile.metadata_sha256,
    OutputFile.uploaded_at,
    Release.version,
    Release.yanked,
    Release.yanked_reason,
)


def _index_file(row: Sequence[Any], project_name: str) -> IndexFile:
    """An IndexFile from the _FILE_COLUMNS of one row."""
    filename, yanked_flag, yanked_reason = row[0], row[7], row[8]
    yanked: str | bool = (yanked_reason or True) if yanked_flag else False
    return IndexFile(
        filename=filename,
        url=f"../../files/{project_name}/{filename}",
        sha256=row[1],
        size=row[2],
        requires_python=row[3],
        metadata_sha256=row[4],
        upload_time=row[5],
        yanked=yanked,
        version=row[6],
    )


def project_files(session: Session, project: Project, index: str = "") -> list[IndexFile]:
    rows = session.execute(
        select(*_FILE_COLUMNS)
        .join(Release, OutputFile.release_id == Release.id)
        .where(Release.project_id == project.id, *served(index))
        .order_by(OutputFile.filename)
    ).all()
    return [_index_file(row, project.name) for row in rows]


def all_served_files(
    session: Session, index: str = ""
) -> Iterator[tuple[int, str, list[IndexFile]]]:
    """Every file one index serves, grouped by project in name order: (project id, name,
    files). Streams, so a full regeneration holds one project's files at a time."""
    rows = session.execute(
        select(Project.id, Project.name, *_FILE_COLUMNS)
        .join(Release, Release.project_id == Project.id)
        .join(OutputFile, OutputFile.release_id == Release.id)
        .where(*served(index))
        .order_by(Project.name, OutputFile.filename)
        .execution_options(yield_per=5000)
    )
    current: tuple[int, str] | None = None
    files: list[IndexFile] = []
    for row in rows:
        project_id, name = row[0], row[1]
        if current is not None and current[0] != project_id:
            yield current[0], current[1], files
            files = []
        current = (project_id, name)
        files.append(_index_file(row[2:], name))
    if current is not None:
        yield current[0], current[1], files


def _upload_time(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def last_serial(session: Session, project_id: int | None = None) -> int:
    """The newest index change (of one project, or of the whole index); 0 if none."""
    query = select(func.max(IndexChange.id))
    if project_id is not None:
        query = query.where(IndexChange.project_id == project_id)
    return session.scalar(query) or 0


def project_serials(session: Session) -> dict[int, int]:
    """Every project's newest index change (its pages' `_last-serial`), by project id."""
    rows = session.execute(
        select(IndexChange.project_id, func.max(IndexChange.id)).group_by(IndexChange.project_id)
    )
    return {project_id: serial for project_id, serial in rows}


def render_project_json(name: str, files: list[IndexFile], serial: int = 0) -> str:
    versions = sorted({f.version for f in files}, key=Version)
    body = {
        "meta": {"api-version": API_VERSION, "_last-serial": serial},
        "name": name,
        "versions": versions,
        "files": [
            {
                "filename": f.filename,
                "url": f.url,
                "hashes": {"sha256": f.sha256},
                "requires-python": f.requires_python,
                # PEP 714: only the new key in JSON. pip 22.3 to 23.1 raise on the old
                # one ("unhashable type: 'dict'"), and Debian 12 ships pip 23.0.1.
                "core-metadata": {"sha256": f.metadata_sha256},
                "yanked": f.yanked,
                "size": f.size,
                "upload-time": _upload_time(f.upload_time),
            }
            for f in files
        ],
    }
    return json.dumps(body, sort_keys=True)


def render_project_html(name: str, files: list[IndexFile], serial: int = 0) -> str:
    lines = [
        "<!DOCTYPE html>",
        "<html>",
        "<head>",
        f'<meta name="pypi:repository-version" content="{API_VERSION}">',
        f"<title>Links for {escape(name)}</title>",
        "</head>",
        "<body>",
        f"<h1>Links for {escape(name)}</h1>",
    ]
    for f in files:
        attrs = [f'href="{escape(f.url)}#sha256={f.sha256}"']
        if f.requires_python:
            attrs.append(f'data-requires-python="{escape(f.requires_python)}"')
        # PEP 714: data-core-metadata, and the legacy name with the same value, which
        # the HTML clients written before PEP 714 read (pip 22.3 to 23.1 among them).
        attrs.append(f'data-core-metadata="sha256={f.metadata_sha256}"')
        attrs.append(f'data-dist-info-metadata="sha256={f.metadata_sha256}"')
        if f.yanked is not False:
            reason = f.yanked if isinstance(f.yanked, str) else ""
            attrs.append(f'data-yanked="{escape(reason)}"')
        lines.append(f"<a {' '.join(attrs)}>{escape(f.filename)}</a><br>")
    lines += ["</body>", "</html>", f"<!--SERIAL {serial}-->", ""]
    return "\n".join(lines)


# Normalised project names (PEP 503) are lowercase letters, digits and dashes: nothing in
# them needs escaping in HTML or JSON, so a list of 100,000 renders without per-name calls.
_PLAIN_NAMES = re.compile(r"[a-z0-9\-\n]*")


def _plain(names: list[str]) -> bool:
    return _PLAIN_NAMES.fullmatch("\n".join(names)) is not None


def render_root_json(names: list[str]) -> str:
    if _plain(names):
        entries = ", ".join(f'{{"name": "{name}"}}' for name in names)
        return f'{{"meta": {{"api-version": "{API_VERSION}"}}, "projects": [{entries}]}}'
    body = {
        "meta": {"api-version": API_VERSION},
        "projects": [{"name": name} for name in names],
    }
    return json.dumps(body, sort_keys=True)


def render_root_html(names: list[str]) -> str:
    if _plain(names):
        links = "\n".join(f'<a href="{name}/">{name}</a><br>' for name in names)
    else:
        links = "\n".join(f'<a href="{escape(n)}/">{escape(n)}</a><br>' for n in names)
    return (
        "<!DOCTYPE html>\n<html>\n<head>\n"
        f'<meta name="pypi:repository-version" content="{API_VERSION}">\n'
        "<title>Simple index</title>\n</head>\n<body>\n"
        f"{links}\n</body>\n</html>\n"
    )


def published_projects(session: Session, index: str = "") -> list[str]:
    """Names in code-point order (the static copy's order, whatever the collation)."""
    return sorted(
        session.scalars(
            select(Project.name)
            .join(Release, Release.project_id == Project.id)
            .join(OutputFile, OutputFile.release_id == Release.id)
            .where(*served(index))
            .distinct()
        )
    )

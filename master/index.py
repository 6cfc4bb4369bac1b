"""Renders the Simple repository API (PEP 503 HTML, PEP 691 JSON, PEP 658/700 fields).

Pure functions of database rows, so the HTTP server and a static export render the
same bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from html import escape

from packaging.version import Version
from sqlalchemy import select
from sqlalchemy.orm import Session

from common.models import OutputFile, Project, Release

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
SERVED = (OutputFile.published.is_(True), Release.removed_at.is_(None))


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


def project_files(session: Session, project: Project) -> list[IndexFile]:
    rows = session.execute(
        select(OutputFile, Release)
        .join(Release, OutputFile.release_id == Release.id)
        .where(Release.project_id == project.id, *SERVED)
        .order_by(OutputFile.filename)
    ).all()
    files = []
    for output, release in rows:
        yanked: str | bool = (release.yanked_reason or True) if release.yanked else False
        files.append(
            IndexFile(
                filename=output.filename,
                url=f"../../files/{project.name}/{output.filename}",
                sha256=output.sha256,
                size=output.size,
                requires_python=output.requires_python,
                metadata_sha256=output.metadata_sha256,
                upload_time=output.uploaded_at,
                yanked=yanked,
                version=release.version,
            )
        )
    return files


def _upload_time(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def render_project_json(name: str, files: list[IndexFile]) -> str:
    versions = sorted({f.version for f in files}, key=Version)
    body = {
        "meta": {"api-version": API_VERSION},
        "name": name,
        "versions": versions,
        "files": [
            {
                "filename": f.filename,
                "url": f.url,
                "hashes": {"sha256": f.sha256},
                "requires-python": f.requires_python,
                "core-metadata": {"sha256": f.metadata_sha256},
                "dist-info-metadata": {"sha256": f.metadata_sha256},
                "yanked": f.yanked,
                "size": f.size,
                "upload-time": _upload_time(f.upload_time),
            }
            for f in files
        ],
    }
    return json.dumps(body, sort_keys=True)


def render_project_html(name: str, files: list[IndexFile]) -> str:
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
        attrs.append(f'data-dist-info-metadata="sha256={f.metadata_sha256}"')
        attrs.append(f'data-core-metadata="sha256={f.metadata_sha256}"')
        if f.yanked is not False:
            reason = f.yanked if isinstance(f.yanked, str) else ""
            attrs.append(f'data-yanked="{escape(reason)}"')
        lines.append(f"<a {' '.join(attrs)}>{escape(f.filename)}</a><br>")
    lines += ["</body>", "</html>", ""]
    return "\n".join(lines)


def render_root_json(names: list[str]) -> str:
    body = {
        "meta": {"api-version": API_VERSION},
        "projects": [{"name": name} for name in names],
    }
    return json.dumps(body, sort_keys=True)


def render_root_html(names: list[str]) -> str:
    links = "\n".join(f'<a href="{escape(n)}/">{escape(n)}</a><br>' for n in names)
    return (
        "<!DOCTYPE html>\n<html>\n<head>\n"
        f'<meta name="pypi:repository-version" content="{API_VERSION}">\n'
        "<title>Simple index</title>\n</head>\n<body>\n"
        f"{links}\n</body>\n</html>\n"
    )


def published_projects(session: Session) -> list[str]:
    return list(
        session.scalars(
            select(Project.name)
            .join(Release, Release.project_id == Project.id)
            .join(OutputFile, OutputFile.release_id == Release.id)
            .where(*SERVED)
            .distinct()
            .order_by(Project.name)
        )
    )

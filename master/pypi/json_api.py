"""Reads release details from PyPI's JSON API when a change feed names only a release.

PyPI documents `/pypi/<project>/<version>/json`, but from the farm's machines it answers
404 while the project document `/pypi/<project>/json` works; the project document also
gives every release of the project in one request, so that is what is read.
Files are read as the Simple API client reads them (master.pypi.upstream): URLs resolved
against the document's own URL (mirrors give them relative), installers and other
projects' files logged as such. Untrusted input: malformed entries are logged with the
project name and skipped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

import httpx
from tenacity.wait import wait_base

from common.names import BadName, parse_version
from master.pypi.backoff import raise_if_transient, upstream_http, wait_retry_after, with_retries
from master.pypi.upstream import (
    KnownVersions,
    TransientUpstreamError,
    UpstreamError,
    UpstreamFile,
    parse_sha256,
    parse_time,
    release_file,
    resolve_file_url,
)

log = logging.getLogger(__name__)


@dataclass
class ProjectDetails:
    """Every release PyPI serves for a project, with its files, keyed by version."""

    name: str
    serial: int | None
    releases: dict[str, list[UpstreamFile]] = field(default_factory=dict)
    missing: bool = False


def _file_entry(
    project: str, document_url: str, known: KnownVersions, entry: Any
) -> UpstreamFile | None:
    if not isinstance(entry, dict):
        log.warning("malformed file entry skipped", extra={"project": project})
        return None
    filename = entry.get("filename")
    href = entry.get("url")
    digests = entry.get("digests")
    if not isinstance(filename, str) or not isinstance(href, str) or not isinstance(digests, dict):
        log.warning("malformed file entry skipped", extra={"project": project})
        return None
    resolved = resolve_file_url(document_url, href)
    if resolved is None:
        log.warning(
            "file entry without a usable URL skipped", extra={"project": project, "file": filename}
        )
        return None
    kind = release_file(project, filename, known)
    if kind is None:
        return None
    yanked: str | bool = False
    if entry.get("yanked") is True:
        reason = entry.get("yanked_reason")
        yanked = reason if isinstance(reason, str) and reason else True
    size = entry.get("size")
    requires = entry.get("requires_python")
    return UpstreamFile(
        filename=filename,
        url=resolved[0],
        sha256=parse_sha256(digests.get("sha256")),
        requires_python=requires if isinstance(requires, str) and requires else None,
        yanked=yanked,
        size=size if isinstance(size, int) and size >= 0 else None,
        upload_time=parse_time(entry.get("upload_time_iso_8601") or entry.get("upload_time")),
        version=kind[0],
        is_sdist=kind[1],
    )


def parse_project_document(project: str, document_url: str, body: Any) -> ProjectDetails:
    """Every release of the document with the files that are its own: a file is filed
    under the release its name says (read as the Simple API client reads it), so that a
    project recorded from either API has the same releases and files."""
    if not isinstance(body, dict) or not isinstance(body.get("releases"), dict):
        raise UpstreamError(f"{project}: JSON API document has no releases")
    serial = body.get("last_serial")
    details = ProjectDetails(project, serial if isinstance(serial, int) else None)
    known = KnownVersions(body["releases"])
    for raw_version, entries in body["releases"].items():
        try:
            version = str(parse_version(raw_version))
        except BadName:
            log.warning("release with invalid version skipped", extra={"project": project})
            continue
        if not isinstance(entries, list):
            log.warning("malformed release skipped", extra={"project": project})
            continue
        details.releases.setdefault(version, [])
        for entry in entries:
            parsed = _file_entry(project, document_url, known, entry)
            if parsed is None:
                continue
            if parsed.version != version:
                log.info(
                    "file filed under the release its name says",
                    extra={
                        "project": project,
                        "file": parsed.filename,
                        "listed_under": version,
                        "version": parsed.version,
                    },
                )
            details.releases.setdefault(parsed.version, []).append(parsed)
    return details


class JsonApiClient:
    """A polite client of one upstream's JSON API (`<base>/<project>/json`)."""

    def __init__(
        self, base_url: str, timeout: float, attempts: int = 5, wait: wait_base | None = None
    ) -> None:
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.attempts = attempts
        self.wait = wait_retry_after(wait)
        self.http = upstream_http(timeout)

    def close(self) -> None:
        self.http.close()

    def project(self, name: str) -> ProjectDetails:
        return with_retries(self._fetch, self.wait, self.attempts, f"json {name}")(name)

    def _fetch(self, name: str) -> ProjectDetails:
        url = urljoin(self.base_url, f"{name}/json")
        try:
            response = self.http.get(url, headers={"Accept": "application/json"})
        except httpx.TransportError as exc:
            raise TransientUpstreamError(f"{name}: {exc!r}") from exc
        raise_if_transient(response, name, TransientUpstreamError)
        if response.status_code == 404:
            return ProjectDetails(name, None, missing=True)
        if response.status_code != 200:
            raise UpstreamError(f"{name}: HTTP {response.status_code}")
        try:
            body = response.json()
        except ValueError as exc:
            raise UpstreamError(f"{name}: invalid JSON") from exc
        return parse_project_document(name, str(response.url), body)

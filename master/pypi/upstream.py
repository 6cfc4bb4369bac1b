"""Reads a project's page from an upstream Simple API (PEP 691 JSON, PEP 503 HTML fallback).

Untrusted input: every malformed entry is logged with the project name and skipped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urldefrag, urljoin

import httpx
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    parse_sdist_filename,
    parse_wheel_filename,
)
from tenacity.wait import wait_base

from master.pypi.backoff import (
    RetryAfterError,
    raise_if_transient,
    upstream_http,
    wait_retry_after,
    with_retries,
)

log = logging.getLogger(__name__)

JSON_TYPE = "application/vnd.pypi.simple.v1+json"
ACCEPT = f"{JSON_TYPE}, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.1"


class TransientUpstreamError(RetryAfterError):
    """Timeouts, 429 and 5xx: retried with backoff, never recorded as data."""


class UpstreamError(Exception):
    """The upstream answered, but not with something usable."""


@dataclass(frozen=True)
class UpstreamFile:
    filename: str
    url: str
    sha256: str | None
    requires_python: str | None
    yanked: str | bool
    size: int | None
    upload_time: datetime | None
    version: str
    is_sdist: bool


@dataclass
class ProjectPage:
    name: str
    etag: str | None
    serial: int | None
    files: list[UpstreamFile] = field(default_factory=list)
    not_modified: bool = False
    missing: bool = False


def classify_filename(project: str, filename: str) -> tuple[str, bool] | None:
    try:
        if filename.endswith(".whl"):
            name, version, _b, _t = parse_wheel_filename(filename)
            is_sdist = False
        else:
            name, version = parse_sdist_filename(filename)
            is_sdist = True
    except (InvalidSdistFilename, InvalidWheelFilename):
        return None
    if name != project:
        log.warning("file of another project skipped", extra={"project": project, "file": filename})
        return None
    return str(version), is_sdist


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def parse_json_page(project: str, page_url: str, body: Any) -> list[UpstreamFile]:
    if not isinstance(body, dict) or not isinstance(body.get("files"), list):
        raise UpstreamError(f"{project}: JSON page has no files list")
    files: list[UpstreamFile] = []
    for entry in body["files"]:
        try:
            filename = entry["filename"]
            href = entry["url"]
            hashes = entry.get("hashes") or {}
            if not isinstance(filename, str) or not isinstance(hashes, dict):
                raise TypeError("bad entry")
            if not isinstance(href, str) or not href:
                raise TypeError("bad entry")
            url = urljoin(page_url, href)
        except (KeyError, TypeError, ValueError):
            log.warning("malformed file entry skipped", extra={"project": project})
            continue
        kind = classify_filename(project, filename)
        if kind is None:
            continue
        size = entry.get("size")
        requires = entry.get("requires-python")
        yanked = entry.get("yanked", False)
        files.append(
            UpstreamFile(
                filename=filename,
                url=url,
                sha256=parse_sha256(hashes.get("sha256")),
                requires_python=requires if isinstance(requires, str) else None,
                yanked=yanked if isinstance(yanked, str | bool) else False,
                size=size if isinstance(size, int) and size >= 0 else None,
                upload_time=parse_time(entry.get("upload-time")),
                version=kind[0],
                is_sdist=kind[1],
            )
        )
    return files


def parse_sha256(value: Any) -> str | None:
    if isinstance(value, str) and len(value) == 64:
        try:
            int(value, 16)
        except ValueError:
            return None
        return value.lower()
    return None


class _AnchorParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.anchors: list[tuple[dict[str, str | None], str]] = []
        self._current: dict[str, str | None] | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._current = dict(attrs)
            self._text = []

    def handle_data(self, data: str) -> None:
        if self._current is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._current is not None:
            self.anchors.append((self._current, "".join(self._text).strip()))
            self._current = None


def parse_html_page(project: str, page_url: str, body: str) -> list[UpstreamFile]:
    parser = _AnchorParser()
    parser.feed(body)
    files: list[UpstreamFile] = []
    for attrs, text in parser.anchors:
        href = attrs.get("href")
        if not href:
            continue
        try:
            url, fragment = urldefrag(urljoin(page_url, href))
        except ValueError:
            log.warning("malformed link skipped", extra={"project": project})
            continue
        filename = text or url.rsplit("/", 1)[-1]
        kind = classify_filename(project, filename)
        if kind is None:
            continue
        algo, _, digest = fragment.partition("=")
        yanked_attr = attrs.get("data-yanked")
        files.append(
            UpstreamFile(
                filename=filename,
                url=url,
                sha256=parse_sha256(digest) if algo == "sha256" else None,
                requires_python=attrs.get("data-requires-python") or None,
                yanked=(yanked_attr or True) if "data-yanked" in attrs else False,
                size=None,
                upload_time=None,
                version=kind[0],
                is_sdist=kind[1],
            )
        )
    return files


class SimpleClient:
    """A polite client of one upstream Simple index."""

    def __init__(
        self, index_url: str, timeout: float, attempts: int = 5, wait: wait_base | None = None
    ) -> None:
        self.index_url = index_url
        self.attempts = attempts
        # Between attempts on a transient error (tests pass tenacity's wait_none()).
        self.wait = wait_retry_after(wait)
        self.http = upstream_http(timeout)

    def close(self) -> None:
        self.http.close()

    def project_page(self, project: str, etag: str | None = None) -> ProjectPage:
        fetch = with_retries(self._fetch, self.wait, self.attempts, f"simple {project}")
        return fetch(project, etag)

    def _fetch(self, project: str, etag: str | None) -> ProjectPage:
        url = urljoin(self.index_url, f"{project}/")
        headers = {"Accept": ACCEPT}
        if etag:
            headers["If-None-Match"] = etag
        try:
            response = self.http.get(url, headers=headers)
        except httpx.TransportError as exc:
            raise TransientUpstreamError(f"{project}: {exc!r}") from exc
        raise_if_transient(response, project, TransientUpstreamError)
        serial_header = response.headers.get("X-PyPI-Last-Serial")
        serial = (
            int(serial_header)
            if serial_header and serial_header.isascii() and serial_header.isdigit()
            else None
        )
        page = ProjectPage(project, response.headers.get("ETag"), serial)
        if response.status_code == 304:
            page.not_modified = True
            page.etag = page.etag or etag
            return page
        if response.status_code == 404:
            page.missing = True
            return page
        if response.status_code != 200:
            raise UpstreamError(f"{project}: HTTP {response.status_code}")
        content_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        page_url = str(response.url)
        if content_type == JSON_TYPE:
            try:
                body = response.json()
            except ValueError as exc:
                raise UpstreamError(f"{project}: invalid JSON") from exc
            page.files = parse_json_page(project, page_url, body)
            meta = body.get("meta") if isinstance(body, dict) else None
            if isinstance(meta, dict) and isinstance(meta.get("_last-serial"), int):
                page.serial = meta["_last-serial"]
        else:
            page.files = parse_html_page(project, page_url, response.text)
        return page

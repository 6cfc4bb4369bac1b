"""Reads a project's page from an upstream Simple API (PEP 691 JSON, PEP 503 HTML fallback),
and what every upstream client shares: which files of a project the farm records (its
sdists and wheels, named as packaging reads them or as legacy uploads did) and their
URLs, resolved against the document that gives them.

Untrusted input: every malformed entry is logged with the project name and skipped; a
file that is not an sdist or wheel of the project is logged as what it is.
"""

from __future__ import annotations

import enum
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urldefrag, urljoin

import httpx
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version
from tenacity.wait import wait_base

from common.urls import is_download_url
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


# Archives pip builds a wheel from, in the order the farm prefers them for a release:
# the two formats PyPI takes today, then those of older uploads.
SDIST_EXTENSIONS = (".tar.gz", ".zip", ".tgz", ".tar.bz2", ".tbz", ".tar.xz", ".txz", ".tar")
# Files of a release that are neither an sdist nor a wheel: installers and eggs
# (bdist_wininst, bdist_msi, bdist_dmg, bdist_rpm, bdist_egg, and packages of systems).
INSTALLER_EXTENSIONS = (".exe", ".msi", ".dmg", ".pkg", ".rpm", ".deb", ".egg")
# bdist_dumb: `name-1.0.linux-x86_64.tar.gz`, an archive of a build for one platform.
_BUILT_FOR_PLATFORM = re.compile(
    r"^[^-]+?\.(linux|win|macosx|darwin|cygwin|freebsd|openbsd|netbsd|sunos|solaris|aix"
    r"|hp-ux|irix)",
    re.IGNORECASE,
)


class FileKind(enum.Enum):
    SDIST = "sdist"
    WHEEL = "wheel"
    INSTALLER = "installer"
    BUILT = "built distribution"
    OTHER_PROJECT = "other project"
    UNRECOGNISED = "unrecognised"


@dataclass(frozen=True)
class FileClass:
    """What a file upstream lists for a project is, and for an sdist or a wheel the
    version of the release it belongs to (packaging's normal form)."""

    kind: FileKind
    version: str | None = None


class KnownVersions:
    """The release versions an upstream document names for a project: how a legacy sdist
    name such as `name-1.0.2-2.tar.gz` (a build suffix after the version) is read as
    release 1.0.2's. The JSON API names them all, as does a Simple API page in JSON with
    PEP 700's `versions`; an HTML page only through its files' standard names."""

    def __init__(self, texts: Iterable[str] = ()) -> None:
        self.releases: dict[Version, str] = {}
        spellings: dict[str, str] = {}
        for text in texts:
            try:
                version = Version(text)
            except InvalidVersion:
                continue
            canonical = self.releases.setdefault(version, str(version))
            spellings[text.lower()] = canonical
            spellings[canonical.lower()] = canonical
        # The longest first: `1.0.2-2` is 1.0.2's where there are both 1.0 and 1.0.2.
        self._spellings = sorted(spellings.items(), key=lambda item: -len(item[0]))

    def release_of(self, version: Version) -> str:
        """The release a file of `version` belongs to: `1.0.0` is release 1.0's where the
        document names 1.0 (PEP 440 holds them equal)."""
        return self.releases.get(version, str(version))

    def prefix_of(self, rest: str) -> str | None:
        """The release whose version `rest` starts with, a dash after it."""
        lowered = rest.lower()
        for text, canonical in self._spellings:
            if lowered.startswith(text + "-"):
                return canonical
        return None


def sdist_extension(filename: str) -> str | None:
    lowered = filename.lower()
    return next((ext for ext in SDIST_EXTENSIONS if lowered.endswith(ext)), None)


def classify_filename(project: str, filename: str, known: KnownVersions | None = None) -> FileClass:
    """Read a file's name as packaging does; an sdist name packaging refuses (a legacy
    one) is still the project's when it starts with the project's name, and its version
    is then a release of `known` it starts with, else all that follows the name."""
    if known is None:
        known = KnownVersions()
    lowered = filename.lower()
    if lowered.endswith(".whl"):
        try:
            name, version, _build, _tags = parse_wheel_filename(filename)
        except InvalidWheelFilename:
            return FileClass(FileKind.UNRECOGNISED)
        if name != project:
            return FileClass(FileKind.OTHER_PROJECT)
        return FileClass(FileKind.WHEEL, known.release_of(version))
    if lowered.endswith(INSTALLER_EXTENSIONS):
        return FileClass(FileKind.INSTALLER)
    extension = sdist_extension(filename)
    if extension is None:
        return FileClass(FileKind.UNRECOGNISED)
    named_other = False  # packaging reads it as a file of another project
    if extension in (".tar.gz", ".zip"):
        try:
            name, version = parse_sdist_filename(filename)
        except InvalidSdistFilename:
            pass
        else:
            if name == project:
                return FileClass(FileKind.SDIST, known.release_of(version))
            named_other = True
    stem = filename[: -len(extension)]
    if "-" not in stem:
        return FileClass(FileKind.UNRECOGNISED)
    rest = _after_name(project, stem)
    if rest is None:
        return FileClass(FileKind.OTHER_PROJECT)
    found = _legacy_sdist(rest, known)
    if found.kind is FileKind.UNRECOGNISED and named_other:
        return FileClass(FileKind.OTHER_PROJECT)
    return found


def is_standard_sdist(project: str, filename: str) -> bool:
    """Named as packaging reads sdists: `<name>-<version>.tar.gz` or `.zip`. The farm
    builds such a one before a legacy-named file of the same release."""
    try:
        name, _version = parse_sdist_filename(filename)
    except InvalidSdistFilename:
        return False
    return name == project


def _after_name(project: str, stem: str) -> str | None:
    """What follows the project's name (and a dash) in `stem`; None when it does not start
    with the name (names compared in their PEP 503 normal form)."""
    for at, char in enumerate(stem):
        if char == "-" and at and canonicalize_name(stem[:at]) == project:
            return stem[at + 1 :]
    return None


def _legacy_sdist(rest: str, known: KnownVersions) -> FileClass:
    try:
        whole: Version | None = Version(rest)
    except InvalidVersion:
        whole = None
    if whole is not None and whole in known.releases:
        return FileClass(FileKind.SDIST, known.releases[whole])
    release = known.prefix_of(rest)
    if release is not None:
        return FileClass(FileKind.SDIST, release)
    if whole is not None:
        return FileClass(FileKind.SDIST, str(whole))
    if _BUILT_FOR_PLATFORM.match(rest):
        return FileClass(FileKind.BUILT)
    return FileClass(FileKind.UNRECOGNISED)


def release_file(
    project: str, filename: str, known: KnownVersions | None = None
) -> tuple[str, bool] | None:
    """(version, is_sdist) for an sdist or a wheel of the project; anything else is
    logged as what it is and None returned."""
    found = classify_filename(project, filename, known)
    if found.version is not None and found.kind in (FileKind.SDIST, FileKind.WHEEL):
        return found.version, found.kind is FileKind.SDIST
    extra = {"project": project, "file": filename}
    if found.kind is FileKind.INSTALLER:
        log.debug("installer file ignored", extra=extra)
    elif found.kind is FileKind.BUILT:
        log.debug("built distribution ignored", extra=extra)
    elif found.kind is FileKind.OTHER_PROJECT:
        log.warning("file of another project skipped", extra=extra)
    else:
        log.info("unrecognised file name ignored", extra=extra)
    return None


def resolve_file_url(document_url: str, href: str) -> tuple[str, str] | None:
    """The absolute URL of a file an upstream document links to, and its fragment: a link
    is relative to the document that gives it (mirrors such as bandersnatch write
    `../../packages/...`), in the JSON API as in the Simple API. None when that is not a
    URL the farm can download from."""
    try:
        url, fragment = urldefrag(urljoin(document_url, href.strip()))
    except ValueError:
        return None
    return (url, fragment) if is_download_url(url) else None


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
    entries: list[tuple[dict[str, Any], str, str, dict[str, Any]]] = []
    for entry in body["files"]:
        try:
            filename = entry["filename"]
            href = entry["url"]
            hashes = entry.get("hashes") or {}
            if not isinstance(filename, str) or not isinstance(hashes, dict):
                raise TypeError("bad entry")
            if not isinstance(href, str) or not href:
                raise TypeError("bad entry")
        except (KeyError, TypeError, ValueError, AttributeError):
            log.warning("malformed file entry skipped", extra={"project": project})
            continue
        resolved = resolve_file_url(page_url, href)
        if resolved is None:
            log.warning(
                "file entry without a usable URL skipped",
                extra={"project": project, "file": filename},
            )
            continue
        entries.append((entry, filename, resolved[0], hashes))
    # PEP 700 names every release; without it, what the files' standard names say.
    versions = body.get("versions")
    known = KnownVersions(
        [v for v in versions if isinstance(v, str)]
        if isinstance(versions, list)
        else _standard_versions(project, [filename for _, filename, _, _ in entries])
    )
    files: list[UpstreamFile] = []
    for entry, filename, url, hashes in entries:
        kind = release_file(project, filename, known)
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


def _standard_versions(project: str, filenames: Iterable[str]) -> list[str]:
    """The versions of the files whose names packaging reads as the project's."""
    versions: list[str] = []
    for filename in filenames:
        try:
            if filename.endswith(".whl"):
                name, version, _build, _tags = parse_wheel_filename(filename)
            else:
                name, version = parse_sdist_filename(filename)
        except (InvalidSdistFilename, InvalidWheelFilename):
            continue
        if name == project:
            versions.append(str(version))
    return versions


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
    links: list[tuple[dict[str, str | None], str, str, str]] = []
    for attrs, text in parser.anchors:
        href = attrs.get("href")
        if not href:
            continue
        resolved = resolve_file_url(page_url, href)
        if resolved is None:
            log.warning("malformed link skipped", extra={"project": project})
            continue
        url, fragment = resolved
        links.append((attrs, text or url.rsplit("/", 1)[-1], url, fragment))
    known = KnownVersions(_standard_versions(project, [filename for _, filename, _, _ in links]))
    files: list[UpstreamFile] = []
    for attrs, filename, url, fragment in links:
        kind = release_file(project, filename, known)
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

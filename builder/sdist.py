"""Downloads an sdist, proves it is the file the master recorded (sha256 and size), and
refuses an archive no build should unpack (paths out of it, links out of it, special
files, decompression bombs) before any of its code runs."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import stat
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import httpx
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from common.job_spec import JobSpec
from common.urls import is_download_url


class SdistUnavailable(Exception):
    """The sdist could not be downloaded. `transient`: worth another attempt later (a
    connection error, a timeout, 5xx, 429); otherwise no attempt can fetch it (not an
    http(s) URL, 404, 410, a scheme refused on a redirect) and the job fails for good."""

    def __init__(self, message: str, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


class SdistMismatch(Exception):
    """The downloaded bytes are not the file the master recorded."""


# Answers that may differ on the next attempt; any other refusal is the URL's for good.
TRANSIENT_STATUSES = frozenset({408, 425, 429})


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, SdistUnavailable) and exc.transient


@retry(
    retry=retry_if_exception(_transient),
    wait=wait_exponential_jitter(multiplier=2, max=60),
    stop=stop_after_attempt(4),
    reraise=True,
)
def fetch_sdist(spec: JobSpec, folder: Path, limit: int = 1024**3) -> Path:
    name = Path(spec.sdist_filename).name
    if not name or name != spec.sdist_filename:
        raise SdistMismatch(f"unsafe sdist filename {spec.sdist_filename!r}")
    url = spec.sdist_url
    if not is_download_url(url):
        raise SdistUnavailable(f"{url!r} is not an http(s) URL", transient=False)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    digest = hashlib.sha256()
    size = 0
    try:
        with httpx.stream("GET", url, follow_redirects=True, timeout=120) as response:
            status = response.status_code
            if status != 200:
                transient = status >= 500 or status in TRANSIENT_STATUSES
                raise SdistUnavailable(f"HTTP {status} for {url}", transient=transient)
            with target.open("wb") as out:
                for chunk in response.iter_bytes(1024 * 1024):
                    size += len(chunk)
                    if size > limit:
                        raise SdistMismatch(f"sdist larger than {limit} bytes")
                    digest.update(chunk)
                    out.write(chunk)
    except httpx.UnsupportedProtocol as exc:
        # A redirect to a scheme that is not http(s): the same on every attempt.
        raise SdistUnavailable(f"{url}: {exc}", transient=False) from exc
    except httpx.TransportError as exc:
        raise SdistUnavailable(f"{url}: {exc!r}", transient=True) from exc
    except (httpx.TooManyRedirects, httpx.DecodingError, httpx.InvalidURL) as exc:
        raise SdistUnavailable(f"{url}: {exc}", transient=False) from exc
    if digest.hexdigest() != spec.sdist_sha256.lower():
        raise SdistMismatch(f"sha256 {digest.hexdigest()} != expected {spec.sdist_sha256}")
    if spec.sdist_size is not None and size != spec.sdist_size:
        raise SdistMismatch(f"size {size} != expected {spec.sdist_size}")
    return target


class SdistRefused(Exception):
    """The archive is not one to unpack: a path out of its root, a link or special file,
    or more unpacked bytes than the builder allows (a decompression bomb)."""


# An sdist unpacks to at most this many times its own size, and never past the work
# directory's cap; below the floor any ratio is fine (small sdists of text compress well).
MAX_RATIO = 100
RATIO_FLOOR = 256 * 1024**2
MAX_MEMBERS = 200_000
READ_BYTES = 64 * 1024


def unpacked_limit(sdist: Path, work_dir_limit: int) -> int:
    """The most bytes the sdist may unpack to."""
    return min(work_dir_limit, max(RATIO_FLOOR, MAX_RATIO * sdist.stat().st_size))


def check_archive(sdist: Path, limit: int) -> int:
    """Refuse an archive a build should not unpack, reading it as data on the host with
    bounded work: member headers only, at most `limit` decompressed bytes. Returns the
    unpacked size its members declare."""
    try:
        if sdist.name.endswith(".zip"):
            return _check_zip(sdist, limit)
        return _check_tar(sdist, limit)
    except (OSError, EOFError, tarfile.TarError, zipfile.BadZipFile, lzma.LZMAError) as exc:
        raise SdistRefused(f"unreadable archive: {exc}") from exc


class _Bounded(io.RawIOBase):
    """A decompressed stream that refuses to give more than `limit` bytes: the headers
    of a tar are read in sequence, and a bomb stops here rather than in memory."""

    def __init__(self, source: io.BufferedIOBase, limit: int) -> None:
        self.source = source
        self.limit = limit
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.source.read(min(len(view), READ_BYTES))
        self.count += len(data)
        if self.count > self.limit:
            raise SdistRefused(f"unpacks to more than {self.limit} bytes (decompression bomb)")
        view[: len(data)] = data
        return len(data)


def _decompressed(sdist: Path) -> io.BufferedIOBase:
    with sdist.open("rb") as handle:
        magic = handle.read(6)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.open(sdist, "rb")
    if magic.startswith(b"BZh"):
        return bz2.open(sdist, "rb")
    if magic.startswith(b"\xfd7zXZ"):
        return lzma.open(sdist, "rb")
    return sdist.open("rb")


def _check_tar(sdist: Path, limit: int) -> int:
    total = 0
    names: list[tuple[str, ...]] = []
    links: set[tuple[str, ...]] = set()
    with _decompressed(sdist) as raw:
        bounded = io.BufferedReader(_Bounded(raw, limit + 2 * tarfile.RECORDSIZE))
        with tarfile.open(fileobj=bounded, mode="r|") as archive:
            for count, member in enumerate(archive, 1):
                if count > MAX_MEMBERS:
                    raise SdistRefused(f"more than {MAX_MEMBERS} members")
                _check_name(member.name)
                names.append(tuple(_parts(member.name)))
                if member.issym() or member.islnk():
                    target = _check_link(member.name, member.linkname, hard=member.islnk())
                    if member.issym():
                        links.add(names[-1])
                    names.append(target)
                elif not (member.isfile() or member.isdir()):
                    raise SdistRefused(f"special file {member.name!r} (device, fifo or other)")
                total += member.size
                if total > limit:
                    raise SdistRefused(f"unpacks to more than {limit} bytes (decompression bomb)")
    # A path through a symbolic link escapes what the checks above saw of it.
    for parts in names:
        for end in range(1, len(parts)):
            if parts[:end] in links:
                raise SdistRefused(
                    f"{'/'.join(parts)!r} goes through the symbolic link {'/'.join(parts[:end])!r}"
                )
    return total


def _check_zip(sdist: Path, limit: int) -> int:
    total = 0
    with zipfile.ZipFile(sdist) as archive:
        members = archive.infolist()
        if len(members) > MAX_MEMBERS:
            raise SdistRefused(f"more than {MAX_MEMBERS} members")
        for info in members:
            _check_name(info.filename)
            kind = stat.S_IFMT(info.external_attr >> 16)
            if kind == stat.S_IFLNK:
                raise SdistRefused(f"symbolic link {info.filename!r} in a zip sdist")
            if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise SdistRefused(f"special file {info.filename!r} (device, fifo or other)")
            total += info.file_size
            if total > limit:
                raise SdistRefused(f"unpacks to more than {limit} bytes (decompression bomb)")
    return total


def _parts(name: str) -> list[str]:
    return [part for part in name.replace("\\", "/").split("/") if part not in ("", ".")]


def _check_name(name: str) -> None:
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise SdistRefused(f"absolute path {name!r}")
    if ".." in _parts(name) or "\x00" in name:
        raise SdistRefused(f"path {name!r} leaves the archive")


def _check_link(name: str, target: str, hard: bool) -> tuple[str, ...]:
    """A link must stay inside the archive: a hard link names a member, a symlink is
    relative to its own folder. Returns the target's path in the archive."""
    kind = "hard link" if hard else "symbolic link"
    if not target or target.startswith(("/", "\\")) or "\x00" in target:
        raise SdistRefused(f"{kind} {name!r} points to {target!r}, outside the archive")
    resolved: list[str] = [] if hard else _parts(name)[:-1]
    for part in _parts(target):
        if part != "..":
            resolved.append(part)
        elif resolved:
            resolved.pop()
        else:
            raise SdistRefused(f"{kind} {name!r} points to {target!r}, outside the archive")
    return tuple(resolved)

"""Where the master keeps wheels, metadata files and compressed build logs.

Every file is written under a temporary name, fsynced and renamed, so the index never
points at a file that is half on disk.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import time
from pathlib import Path
from typing import BinaryIO

from common.log_cap import CappedWriter, Sink, head_tail, omitted_marker

COPY_BYTES = 1024 * 1024
# A temporary file not written to for this long was left by a crash (remove_stale_parts).
STALE_PART_SECONDS = 600.0


class TooLarge(ValueError):
    """More bytes than the configured limit."""


def copy_capped(source: BinaryIO, out: Sink, head: int, tail: int) -> int:
    """Copy the first `head` and last `tail` bytes of `source`, with a marker line for any
    left-out middle, never holding more than `tail` bytes in memory; returns bytes kept."""
    kept = _copy(source, out, head)
    if kept < head:
        return kept
    if source.seekable():
        here = source.tell()
        end = source.seek(0, os.SEEK_END)
        left_out = max(0, end - here - tail)
        if left_out:
            out.write(omitted_marker(left_out))
        source.seek(here + left_out)
        return kept + _copy(source, out, None)
    rest = CappedWriter(out, 0, tail)
    while chunk := source.read(COPY_BYTES):
        rest.write(chunk)
    return kept + rest.finish()


def _copy(source: BinaryIO, out: Sink, limit: int | None) -> int:
    copied = 0
    while limit is None or copied < limit:
        want = COPY_BYTES if limit is None else min(COPY_BYTES, limit - copied)
        chunk = source.read(want)
        if not chunk:
            break
        out.write(chunk)
        copied += len(chunk)
    return copied


class Storage:
    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir
        self.files = data_dir / "files"
        self.logs = data_dir / "logs"
        self.tmp = data_dir / "tmp"
        for folder in (self.files, self.logs, self.tmp):
            folder.mkdir(parents=True, exist_ok=True)

    def wheel_path(self, project: str, filename: str) -> Path:
        return self.files / project / filename

    def metadata_path(self, project: str, filename: str) -> Path:
        return self.files / project / (filename + ".metadata")

    def spool(self, source: BinaryIO, limit: int) -> tuple[Path, str, int]:
        """Copy an upload to a temporary file, hashing it; refuses more than `limit` bytes."""
        digest = hashlib.sha256()
        size = 0
        handle, name = tempfile.mkstemp(dir=self.tmp, suffix=".part")
        path = Path(name)
        try:
            with os.fdopen(handle, "wb") as out:
                while chunk := source.read(1024 * 1024):
                    size += len(chunk)
                    if size > limit:
                        raise TooLarge(f"larger than {limit} bytes")
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path, digest.hexdigest(), size

    def publish(self, spooled: Path, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        spooled.replace(target)
        fsync_dir(target.parent)

    def write_bytes(self, target: Path, data: bytes) -> None:
        handle, name = tempfile.mkstemp(dir=self.tmp, suffix=".part")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            self.publish(Path(name), target)
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise

    def store_log(
        self, project: str, job_id: int, attempt: int, source: BinaryIO, limit: int
    ) -> tuple[Path, int]:
        """Gzip a build log into the log tree. Past `limit` bytes only its first and last
        halves are kept, with a marker line between (as for live logs): the end of a log
        is where a build says why it failed. Returns the path and the bytes kept."""
        target = self.logs / project / f"{job_id}-{attempt}.log.gz"
        handle, name = tempfile.mkstemp(dir=self.tmp, suffix=".log.gz.part")
        try:
            with os.fdopen(handle, "wb") as raw:
                with gzip.GzipFile(fileobj=raw, mode="wb") as out:
                    size = copy_capped(source, out, *head_tail(limit))
                raw.flush()
                os.fsync(raw.fileno())
            self.publish(Path(name), target)
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise
        return target, size

    def read_log(self, path: Path) -> bytes:
        with gzip.open(path, "rb") as handle:
            return handle.read()

    def remove_stale_parts(self, older_than: float = STALE_PART_SECONDS) -> list[Path]:
        """Remove the temporary files of writes interrupted by a crash (`*.part` in tmp
        not written to for `older_than` seconds); returns those removed. A write under
        way, of this master or another sharing the data directory, is never that old:
        every temporary file is written in one go from a local file or memory."""
        cutoff = time.time() - older_than
        removed = []
        for path in self.tmp.glob("*.part"):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed.append(path)
            except FileNotFoundError:
                continue  # renamed into place or removed by its writer meanwhile
        return removed


def file_sha256(path: Path) -> tuple[str, int]:
    """The sha256 (hex) and size of a file, read in chunks: a wheel may be large."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(COPY_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

"""Where the master keeps wheels, metadata files and compressed build logs.

Every file is written under a temporary name, fsynced and renamed, so the index never
points at a file that is half on disk.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO


class TooLarge(ValueError):
    """More bytes than the configured limit."""


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
        _fsync_dir(target.parent)

    def write_bytes(self, target: Path, data: bytes) -> None:
        handle, name = tempfile.mkstemp(dir=self.tmp, suffix=".part")
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        self.publish(Path(name), target)

    def store_log(
        self, project: str, job_id: int, attempt: int, source: BinaryIO, limit: int
    ) -> tuple[Path, int]:
        """Gzip a build log into the log tree; keeps at most `limit` bytes of it."""
        target = self.logs / project / f"{job_id}-{attempt}.log.gz"
        handle, name = tempfile.mkstemp(dir=self.tmp, suffix=".log.gz.part")
        size = 0
        with os.fdopen(handle, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb") as out:
            while chunk := source.read(1024 * 1024):
                keep = chunk[: max(0, limit - size)]
                out.write(keep)
                size += len(keep)
                if size >= limit:
                    out.write(b"\n[armwheels: log truncated at %d bytes]\n" % limit)
                    break
        with open(name, "rb+") as done:
            os.fsync(done.fileno())
        self.publish(Path(name), target)
        return target, size

    def read_log(self, path: Path) -> bytes:
        with gzip.open(path, "rb") as handle:
            return handle.read()

    def remove_tmp(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True, exist_ok=True)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

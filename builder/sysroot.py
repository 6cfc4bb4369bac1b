"""A target image's headers and libraries on the builder's host: the cross path's sysroot.

The cross compiler links against exactly what the emulated build would: the C library,
libstdc++, the Python headers and sysconfig data, and a recipe's system libraries, all
read from the target image (or its recipe derivative) without running any of its code.
They are copied out of a created, never started, container once per image id and kept
under the builder's work directory; a new image (a rebuilt one, another recipe) gets its
own copy. Absolute symbolic links are made relative to the sysroot, so that inside the
cross container they resolve in the target's tree and never in the host's.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import docker
import docker.errors

log = logging.getLogger(__name__)

# What a compile and a link read. /usr/lib also holds the Python stdlib, whose
# _sysconfigdata modules the cross environment needs; its gcc/ (the native compiler's
# own files) is of no use to a cross compiler and is left out.
SYSROOT_PATHS = ("/usr/include", "/usr/lib", "/usr/lib64", "/usr/local/include", "/lib", "/lib64")
LEFT_OUT = (PurePosixPath("usr/lib/gcc"),)
COMPLETE = ".complete"


class SysrootError(RuntimeError):
    """The target image's files could not be copied out."""


class _ChunkReader(io.RawIOBase):
    """A stream of byte chunks (the engine's tar answer) as a file for tarfile."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target: memoryview) -> int:  # type: ignore[override]
        while not self._buffer:
            try:
                self._buffer = next(self._chunks)
            except StopIteration:
                return 0
        size = min(len(target), len(self._buffer))
        target[:size] = self._buffer[:size]
        self._buffer = self._buffer[size:]
        return size


def _relative_link(member: tarfile.TarInfo, parent: PurePosixPath) -> tarfile.TarInfo:
    """An absolute symbolic link, pointed at the same path inside the sysroot."""
    if not member.issym() or not member.linkname.startswith("/"):
        return member
    where = (parent / member.name).parent
    depth = len(where.parts)
    target = PurePosixPath(*([".."] * depth), member.linkname.lstrip("/"))
    return member.replace(linkname=str(target), deep=False)


def _extract(chunks: Iterator[bytes], root: Path, parent: PurePosixPath) -> int:
    """Extract one get_archive answer (members named from the path's basename) under
    root/parent; returns the members written."""
    destination = root / parent
    destination.mkdir(parents=True, exist_ok=True)
    written = 0

    def keep(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
        full = parent / member.name
        if any(full == left or left in full.parents for left in LEFT_OUT):
            return None
        if member.isdev() or member.isfifo():
            return None
        try:
            return tarfile.data_filter(_relative_link(member, parent), path)
        except tarfile.FilterError:
            return None  # a link leaving the tree: of no use to a compiler

    reader = io.BufferedReader(_ChunkReader(chunks), buffer_size=1024 * 1024)
    with tarfile.open(fileobj=reader, mode="r|") as archive:
        for member in archive:
            kept = keep(member, str(destination))
            if kept is None:
                continue
            archive.extract(kept, destination, filter="fully_trusted", set_attrs=False)
            written += 1
    return written


def prune_sysroots(client: docker.DockerClient, cache: Path) -> list[str]:
    """Remove the sysroots of images the engine no longer has (rebuilt build images,
    removed recipe images): ~200 MB each. Returns the keys removed."""
    if not cache.is_dir():
        return []
    current = {str(image.id).split(":")[-1][:16] for image in client.images.list()}
    removed = []
    for entry in cache.iterdir():
        if entry.name.startswith(".") or not entry.is_dir() or entry.name in current:
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry.name)
    if removed:
        log.info("sysroots of removed images pruned", extra={"count": len(removed)})
    return removed


def image_key(client: docker.DockerClient, image: str) -> str:
    """The image's id, short: a new build of a tag is another sysroot."""
    return str(client.images.get(image).id).split(":")[-1][:16]


def target_sysroot(
    client: docker.DockerClient, image: str, cache: Path, labels: dict[str, str]
) -> Path:
    """The sysroot of `image` under `cache`, copied out on first use."""
    key = image_key(client, image)
    root = cache / key
    if (root / COMPLETE).is_file():
        return root
    cache.mkdir(parents=True, exist_ok=True)
    # One per process and thread: build slots of one builder may copy at once.
    partial = cache / f".{key}.{os.getpid()}-{threading.get_native_id()}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    started = time.monotonic()
    container = client.containers.create(image, ["/bin/true"], network_disabled=True, labels=labels)
    members = 0
    try:
        for path in SYSROOT_PATHS:
            try:
                chunks, _ = container.get_archive(path)
            except docker.errors.NotFound:
                continue
            members += _extract(chunks, partial, PurePosixPath(path.lstrip("/")).parent)
    except (docker.errors.APIError, tarfile.TarError, OSError) as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise SysrootError(f"cannot copy the sysroot out of {image}: {exc}") from exc
    finally:
        container.remove(force=True)
    (partial / COMPLETE).write_text(image + "\n")
    try:
        partial.rename(root)
    except OSError:
        # Another builder slot finished the same copy first: theirs is as good.
        shutil.rmtree(partial, ignore_errors=True)
    log.info(
        "sysroot copied out of the target image",
        extra={
            "image": image,
            "sysroot": str(root),
            "members": members,
            "seconds": round(time.monotonic() - started, 1),
        },
    )
    return root

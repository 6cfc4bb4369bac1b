"""Reading wheels (untrusted zips) with `packaging`: names, tags, metadata, modules, grafts."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path, PurePosixPath

from packaging.tags import Tag
from packaging.utils import (
    InvalidWheelFilename,
    NormalizedName,
    parse_wheel_filename,
)
from packaging.version import Version

MAX_METADATA_BYTES = 4 * 1024 * 1024


class BadWheel(ValueError):
    """A file that is not an acceptable wheel, with the reason in one line."""


@dataclass(frozen=True)
class WheelName:
    name: NormalizedName
    version: Version
    tags: frozenset[Tag]

    @property
    def platforms(self) -> set[str]:
        return {tag.platform for tag in self.tags}

    @property
    def interpreters(self) -> set[str]:
        return {tag.interpreter for tag in self.tags}

    @property
    def abis(self) -> set[str]:
        return {tag.abi for tag in self.tags}


def parse_name(filename: str) -> WheelName:
    if not filename or "/" in filename or "\\" in filename or filename.startswith("."):
        raise BadWheel(f"filename must be a plain file name: {filename!r}")
    try:
        name, version, _build, tags = parse_wheel_filename(filename)
    except InvalidWheelFilename as exc:
        raise BadWheel(f"not a valid wheel filename: {filename!r}") from exc
    return WheelName(name, version, tags)


@dataclass(frozen=True)
class WheelContents:
    metadata: bytes
    requires_python: str | None
    top_level_modules: list[str]
    grafted_libraries: list[str]


def _dist_info_dir(names: list[str]) -> str:
    dirs = {PurePosixPath(n).parts[0] for n in names if n.count("/") >= 1}
    dist_infos = sorted(d for d in dirs if d.endswith(".dist-info"))
    if len(dist_infos) != 1:
        raise BadWheel(f"expected one .dist-info directory, found {len(dist_infos)}")
    return dist_infos[0]


def read_contents(path: Path) -> WheelContents:
    """Check a wheel's structure and pull out what the index and the smoke test need."""
    if not zipfile.is_zipfile(path):
        raise BadWheel("not a zip file")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            for name in names:
                parts = PurePosixPath(name).parts
                if name.startswith("/") or ".." in parts:
                    raise BadWheel(f"unsafe path in wheel: {name!r}")
            dist_info = _dist_info_dir(names)
            for required in ("WHEEL", "METADATA", "RECORD"):
                if f"{dist_info}/{required}" not in names:
                    raise BadWheel(f"{dist_info}/{required} is missing")
            info = archive.getinfo(f"{dist_info}/METADATA")
            if info.file_size > MAX_METADATA_BYTES:
                raise BadWheel("METADATA is too large")
            metadata = archive.read(info)
            top_level = _top_level(archive, names, dist_info)
    except zipfile.BadZipFile as exc:
        raise BadWheel(f"corrupt zip: {exc}") from exc
    headers = HeaderParser().parsestr(metadata.decode("utf-8", "replace"))
    grafted = sorted(
        PurePosixPath(n).name
        for n in names
        if len(PurePosixPath(n).parts) == 2 and PurePosixPath(n).parts[0].endswith(".libs")
    )
    return WheelContents(metadata, headers.get("Requires-Python"), top_level, grafted)


def _top_level(archive: zipfile.ZipFile, names: list[str], dist_info: str) -> list[str]:
    declared = f"{dist_info}/top_level.txt"
    if declared in names:
        text = archive.read(declared).decode("utf-8", "replace")
        modules = [line.strip() for line in text.splitlines() if line.strip()]
        return sorted({m.replace("/", ".") for m in modules if m.isascii()})
    found: set[str] = set()
    for name in names:
        parts = PurePosixPath(name).parts
        first = parts[0]
        if first.endswith((".dist-info", ".data", ".libs")):
            continue
        if len(parts) > 1 and f"{first}/__init__.py" in names:
            found.add(first)
        elif len(parts) == 1 and first.endswith((".py", ".so")):
            found.add(first.split(".")[0])
    return sorted(found)

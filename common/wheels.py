"""Reading wheels (untrusted zips) with `packaging`: names, tags, metadata, modules, grafts."""

from __future__ import annotations

import re
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
    # What the smoke test imports (importable_modules).
    modules: list[str]
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
            modules = importable_modules(installed_paths(names, dist_info))
    except zipfile.BadZipFile as exc:
        raise BadWheel(f"corrupt zip: {exc}") from exc
    headers = HeaderParser().parsestr(metadata.decode("utf-8", "replace"))
    grafted = sorted(
        PurePosixPath(n).name
        for n in names
        if len(PurePosixPath(n).parts) == 2 and PurePosixPath(n).parts[0].endswith(".libs")
    )
    return WheelContents(metadata, headers.get("Requires-Python"), modules, grafted)


_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# An extension module's file: `_ext.cpython-311-aarch64-linux-gnu.so`, `_ext.abi3.so`,
# `_ext.so`; the module is named by what comes before the first dot.
_EXTENSION = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:\.[A-Za-z0-9_.-]+)?\.so$")
_INSTALLED_AT_ROOT = ("purelib", "platlib")  # <dist>.data/<scheme>/ goes into site-packages
MAX_SMOKE_MODULES = 1000


def installed_paths(names: list[str], dist_info: str) -> list[PurePosixPath]:
    """Where each file of the wheel lands, relative to site-packages (PEP 427): the
    .dist-info directory and .data schemes other than purelib/platlib are left out."""
    data_dir = dist_info.removesuffix(".dist-info") + ".data"
    paths = []
    for name in names:
        path = PurePosixPath(name)
        if not path.parts or path.parts[0] == dist_info or name.endswith("/"):
            continue
        if path.parts[0] == data_dir:
            if len(path.parts) < 3 or path.parts[1] not in _INSTALLED_AT_ROOT:
                continue
            path = PurePosixPath(*path.parts[2:])
        paths.append(path)
    return paths


def importable_modules(paths: list[PurePosixPath]) -> list[str]:
    """What the smoke test imports, from what the wheel really installs (top_level.txt is
    often stale): each top-level package and module, then every extension module by its
    dotted name, so that an extension that does not load fails the test."""
    top: set[str] = set()
    extensions: set[str] = set()
    for path in paths:
        *folders, filename = path.parts
        if any(not _IDENTIFIER.match(folder) or folder == "__pycache__" for folder in folders):
            continue
        extension = _EXTENSION.match(filename)
        if extension is not None:
            module = extension.group(1)
        elif filename.endswith(".py") and _IDENTIFIER.match(filename[:-3]):
            module = filename[:-3]
        else:
            continue
        if folders:
            top.add(folders[0])
        elif module != "__init__":
            top.add(module)
        if extension is not None and module != "__init__":
            extensions.add(".".join([*folders, module]))
    ordered = sorted(top) + sorted(extensions - top)
    return ordered[:MAX_SMOKE_MODULES]

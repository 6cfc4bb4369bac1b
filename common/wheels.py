"""Reading and verifying wheels (untrusted zips) against their job and the wheel spec.

A builder is not trusted, nor is the sdist it built: a wheel is published only when its
contents are what its job and the binary distribution format (PEP 427, RECORD from
PEP 376) say they must be. One pass over the archive verifies it and extracts what the
index and the smoke test need (metadata, Requires-Python, modules, grafted libraries).
The master runs it on every upload; the builder runs it on its own repaired wheel, so a
bad wheel is a clear failure there rather than a rejection later.

Nothing is read into memory without a cap. The zip's declared sizes refuse a bomb early
but are never relied upon: every member is read in chunks with counters, its RECORD hash
and size checked against the bytes read.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import re
import stat
import struct
import unicodedata
import zipfile
import zlib
from dataclasses import dataclass, field
from email.message import Message
from email.parser import HeaderParser
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import IO

from packaging.tags import Tag, parse_tag
from packaging.utils import (
    InvalidWheelFilename,
    NormalizedName,
    canonicalize_name,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version


class Check(StrEnum):
    """Which check refused an upload: the reason's class, and the label of the
    upload-rejection metric. The first five are the master's own, about the upload."""

    FILENAME = "filename"  # the file name is not a wheel's, or not the job's
    SHA256 = "sha256"  # the bytes are not those the builder declared
    UPLOAD_SIZE = "upload-size"  # larger than master.max_upload_bytes
    UPSTREAM = "upstream"  # PyPI serves that file name
    PUBLISHED = "published"  # the farm serves that file name already
    POLICY = "policy"  # no manylinux tag, or a newer policy than its target allows
    ZIP = "zip"  # not a zip, corrupt, encrypted, an unusual compression
    LIMITS = "limits"  # entry count, sizes, compression ratio
    PATH = "path"  # a name outside the archive root, or not plain UTF-8
    DUPLICATE = "duplicate"  # two entries that are one file once extracted
    FILE_MODE = "file-mode"  # links, devices, fifos, sockets, setuid/setgid/sticky
    DIST_INFO = "dist-info"  # the .dist-info / .data directories are not the job's
    METADATA = "metadata"  # METADATA is missing, malformed or another project's
    WHEEL_FILE = "wheel-file"  # the WHEEL file
    RECORD = "record"  # RECORD is malformed, incomplete or uses weak hashes
    RECORD_HASH = "record-hash"  # a file's bytes do not match its RECORD line
    ELF = "elf"  # machine code for another architecture


class BadWheel(ValueError):
    """A file that is not an acceptable wheel, with the reason in one line."""

    def __init__(self, message: str, check: Check = Check.ZIP) -> None:
        super().__init__(message)
        self.check = check


@dataclass(frozen=True)
class WheelLimits:
    """What a wheel may hold. Far above real wheels (numpy: ~1,000 entries, 60 MB
    inflated; the largest ARM wheels a few hundred MB), far below what would hurt a node."""

    max_entries: int = 30_000
    # The central directory's declared size, checked before zipfile parses it (a real
    # entry takes ~100-200 bytes of it).
    max_directory_bytes: int = 8 * 1024 * 1024
    max_entry_bytes: int = 1024 * 1024 * 1024
    max_total_bytes: int = 2 * 1024 * 1024 * 1024
    # Inflated : compressed, per entry and for the archive as a whole; DEFLATE's own
    # limit is ~1032 (a bomb), real code and data stay under ~20.
    max_ratio: int = 200
    # Entries and archives smaller than this may have any ratio (empty files, zeros).
    ratio_grace_bytes: int = 1024 * 1024
    max_metadata_bytes: int = 4 * 1024 * 1024
    max_wheel_file_bytes: int = 64 * 1024
    max_record_bytes: int = 16 * 1024 * 1024


LIMITS = WheelLimits()
CHUNK_BYTES = 1024 * 1024

# RECORD hashes accepted: sha256 or stronger (never md5 or sha1).
STRONG_HASHES = frozenset(
    {"sha256", "sha384", "sha512", "sha3_256", "sha3_384", "sha3_512", "blake2b", "blake2s"}
)
# A .data directory's subdirectories that installers know (PEP 427).
DATA_SCHEMES = frozenset({"purelib", "platlib", "headers", "scripts", "data"})
# Only these compressions: others need more memory to inflate and no wheel tool uses them.
COMPRESSIONS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED}
_UTF8_NAME_FLAG = 0x800
_ENCRYPTED_FLAG = 0x1
_SPECIAL_BITS = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX


class WheelNameError(BadWheel):
    def __init__(self, message: str) -> None:
        super().__init__(message, Check.FILENAME)


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

    @property
    def arch(self) -> str | None:
        """The arch every platform tag names, of those whose code is checked (None:
        another, or a pure wheel)."""
        for arch in ELF_TARGETS:
            if all(platform.endswith("_" + arch) for platform in self.platforms):
                return arch
        return None


def parse_name(filename: str) -> WheelName:
    if not filename or "/" in filename or "\\" in filename or filename.startswith("."):
        raise WheelNameError(f"filename must be a plain file name: {filename!r}")
    try:
        name, version, _build, tags = parse_wheel_filename(filename)
    except InvalidWheelFilename as exc:
        raise WheelNameError(f"not a valid wheel filename: {filename!r}") from exc
    return WheelName(name, version, tags)


@dataclass(frozen=True)
class Expected:
    """What a wheel must be: its job's project, version and target arch (the master
    passes the job's; by default the wheel's own file name says, as on the builder)."""

    name: NormalizedName
    version: Version
    arch: str | None  # None: a wheel for no target of ours, its ELF files not checked


# --- ELF --------------------------------------------------------------------------------

ELF_MAGIC = b"\x7fELF"
ELFCLASS32, ELFCLASS64 = 1, 2
ELFDATA2LSB = 1
EM_ARM, EM_X86_64, EM_AARCH64 = 40, 62, 183
EF_ARM_EABIMASK = 0xFF000000
EF_ARM_EABI_VER5 = 0x05000000
EF_ARM_ABI_FLOAT_HARD = 0x00000400


@dataclass(frozen=True)
class ElfTarget:
    """The ELF header fields of an arch's code: class, little-endian data, machine, and
    the e_flags bits it must carry (masked)."""

    elf_class: int
    machine: int
    flags_mask: int
    flags: int
    description: str


ELF_TARGETS: dict[str, ElfTarget] = {
    "aarch64": ElfTarget(ELFCLASS64, EM_AARCH64, 0, 0, "64-bit little-endian AArch64"),
    # pip offers manylinux armv7l tags only on hard-float (armhf) systems: EABI5 + VFP.
    "armv7l": ElfTarget(
        ELFCLASS32,
        EM_ARM,
        EF_ARM_EABIMASK | EF_ARM_ABI_FLOAT_HARD,
        EF_ARM_EABI_VER5 | EF_ARM_ABI_FLOAT_HARD,
        "32-bit little-endian ARM EABI5 hard-float",
    ),
    # Soft-float 32-bit ARM (armel), for distribution targets only: no manylinux policy
    # covers it, and a hard-float object would crash there.
    "armel": ElfTarget(
        ELFCLASS32,
        EM_ARM,
        EF_ARM_EABIMASK | EF_ARM_ABI_FLOAT_HARD,
        EF_ARM_EABI_VER5,
        "32-bit little-endian ARM EABI5 soft-float",
    ),
    # Not a farm target: the native backend's tests build for their x86_64 host.
    "x86_64": ElfTarget(ELFCLASS64, EM_X86_64, 0, 0, "64-bit little-endian x86-64"),
}
# e_ident (16), e_type, e_machine, e_version, then e_entry/e_phoff/e_shoff (4 or 8 each)
# before e_flags.
_ELF_HEADER_BYTES = {ELFCLASS32: 52, ELFCLASS64: 64}
_ELF_FLAGS_AT = {ELFCLASS32: 36, ELFCLASS64: 48}


def elf_rule(arch: str, float_abi: str) -> str:
    """The ELF_TARGETS rule of a target's code: its arch, or armel for soft-float ARM."""
    return "armel" if arch == "armv7l" and float_abi == "soft" else arch


def check_elf(head: bytes, arch: str, name: str) -> None:
    """Refuse an ELF file (`head`: its first bytes) that is not code for `arch`."""
    target = ELF_TARGETS.get(arch)
    if target is None:
        raise BadWheel(f"{name} is an ELF file, and {arch} has no ELF rule", Check.ELF)
    elf_class = head[4] if len(head) > 4 else 0
    if elf_class not in _ELF_HEADER_BYTES:
        raise BadWheel(f"{name} is an ELF file of unknown class {elf_class}", Check.ELF)
    if len(head) < _ELF_HEADER_BYTES[elf_class]:
        raise BadWheel(f"{name} is an ELF file with a truncated header", Check.ELF)
    machine = struct.unpack_from("<H", head, 18)[0]
    flags = struct.unpack_from("<I", head, _ELF_FLAGS_AT[elf_class])[0]
    if (
        elf_class != target.elf_class
        or head[5] != ELFDATA2LSB
        or machine != target.machine
        or flags & target.flags_mask != target.flags
    ):
        found = f"class {elf_class}, data {head[5]}, machine {machine}, flags {flags:#x}"
        raise BadWheel(f"{name} is not {target.description} code ({found})", Check.ELF)


# --- the archive ------------------------------------------------------------------------


@dataclass(frozen=True)
class WheelContents:
    metadata: bytes
    requires_python: str | None
    # What the smoke test imports (importable_modules).
    modules: list[str]
    grafted_libraries: list[str]
    # Requires-Dist lines that are not for an extra: what the smoke test installs with
    # the wheel, where the builder can offer them (a C extension importing numpy).
    requires_dist: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RecordLine:
    algorithm: str | None  # None: an unhashed line (RECORD itself, signatures)
    digest: str
    size: int | None


_DRIVE = re.compile(r"^[A-Za-z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SIZE = re.compile(r"^[0-9]{1,20}$")
_VERSION_FIELD = re.compile(r"^([0-9]+)\.([0-9]+)$")


def read_contents(
    path: Path,
    filename: str | None = None,
    *,
    expected: Expected | None = None,
    limits: WheelLimits = LIMITS,
) -> WheelContents:
    """Verify the wheel at `path` (named `filename`, by default its own name) against
    `expected` and the wheel spec, and pull out what the index and the smoke test need;
    raises BadWheel with the check that failed."""
    wheel = parse_name(filename or path.name)
    if expected is None:
        expected = Expected(wheel.name, wheel.version, wheel.arch)
    if not zipfile.is_zipfile(path):
        raise BadWheel("not a zip file")
    try:
        with path.open("rb") as handle:
            _check_directory_size(handle, limits)
            with zipfile.ZipFile(handle) as archive:
                return _verify(archive, path.stat().st_size, wheel, expected, limits)
    except zipfile.BadZipFile as exc:
        raise BadWheel(f"corrupt zip: {exc}") from exc
    except (NotImplementedError, EOFError, zlib.error) as exc:
        raise BadWheel(f"unreadable zip: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise BadWheel("an entry name is marked UTF-8 but is not", Check.PATH) from exc


# Fields of the end record as zipfile's reader returns it.
_ECD_ENTRIES_TOTAL = 4
_ECD_SIZE = 5


def _check_directory_size(handle: IO[bytes], limits: WheelLimits) -> None:
    """zipfile turns the whole central directory into objects when it opens an archive:
    its own end-record reader (private, unchanged since Python 2) gives the directory's
    declared size first, read exactly as zipfile will, so a huge one is refused unread."""
    record = zipfile._EndRecData(handle)  # type: ignore[attr-defined]
    if not record:
        raise BadWheel("not a zip file")
    if record[_ECD_ENTRIES_TOTAL] > limits.max_entries:
        raise BadWheel(
            f"{record[_ECD_ENTRIES_TOTAL]} entries, more than {limits.max_entries}", Check.LIMITS
        )
    if record[_ECD_SIZE] > limits.max_directory_bytes:
        raise BadWheel(
            f"central directory of {record[_ECD_SIZE]} bytes, "
            f"more than {limits.max_directory_bytes}",
            Check.LIMITS,
        )
    handle.seek(0)


def _verify(
    archive: zipfile.ZipFile,
    archive_size: int,
    wheel: WheelName,
    expected: Expected,
    limits: WheelLimits,
) -> WheelContents:
    infos = archive.infolist()
    if len(infos) > limits.max_entries:
        raise BadWheel(f"{len(infos)} entries, more than {limits.max_entries}", Check.LIMITS)
    seen: dict[str, str] = {}
    for info in infos:
        _check_entry(info, seen)
    _check_declared_sizes(infos, archive_size, limits)
    names = [info.filename for info in infos]
    dist_info = _dist_info_dir(names, expected)
    files = {info.filename: info for info in infos if not info.is_dir()}
    for required in ("WHEEL", "METADATA", "RECORD"):
        if f"{dist_info}/{required}" not in files:
            raise BadWheel(f"{dist_info}/{required} is missing", Check.DIST_INFO)
    wheel_file = _read_small(archive, files[f"{dist_info}/WHEEL"], limits.max_wheel_file_bytes)
    _check_wheel_file(wheel_file, wheel)
    metadata = _read_small(archive, files[f"{dist_info}/METADATA"], limits.max_metadata_bytes)
    headers = _check_metadata(metadata, expected)
    record = _read_small(archive, files[f"{dist_info}/RECORD"], limits.max_record_bytes)
    lines = _parse_record(record, dist_info)
    _check_listed(files, lines)
    budget = _Budget(archive_size, limits)
    for name, info in files.items():
        if name != f"{dist_info}/RECORD":
            _check_member(archive, info, lines[name], expected.arch, budget)
    modules = importable_modules(installed_paths(names, dist_info))
    # Libraries auditwheel grafted: <dist>.libs/<soname>.
    grafted = sorted(
        parts[1]
        for parts in (name.split("/") for name in files)
        if len(parts) == 2 and parts[0].endswith(".libs")
    )
    requires = [
        line
        for line in headers.get_all("Requires-Dist") or []
        if isinstance(line, str) and "extra" not in line.partition(";")[2]
    ]
    return WheelContents(metadata, headers.get("Requires-Python"), modules, grafted, requires)


def _check_entry(info: zipfile.ZipInfo, seen: dict[str, str]) -> None:
    """An entry's name stays inside the archive root whatever the separator, encoding or
    file system, collides with no other, and its mode is a plain file's or directory's."""
    raw = info.orig_filename  # zipfile cuts `filename` at a NUL
    if "\x00" in raw:
        raise BadWheel(f"entry name {raw!r} holds a NUL byte", Check.PATH)
    if not info.flag_bits & _UTF8_NAME_FLAG and not raw.isascii():
        raise BadWheel(f"entry name {raw!r} is not marked UTF-8", Check.PATH)
    if _CONTROL.search(raw):
        raise BadWheel(f"entry name {raw!r} holds a control character", Check.PATH)
    for form in (raw, unicodedata.normalize("NFKC", raw)):
        if "\\" in form:
            raise BadWheel(f"entry name {raw!r} holds a backslash", Check.PATH)
        if form.startswith("/") or _DRIVE.match(form):
            raise BadWheel(f"entry name {raw!r} is an absolute path", Check.PATH)
        if any(part in ("", ".", "..") for part in form.removesuffix("/").split("/")):
            raise BadWheel(f"entry name {raw!r} is not a plain relative path", Check.PATH)
    key = unicodedata.normalize("NFKC", raw.removesuffix("/")).casefold()
    if key in seen:
        raise BadWheel(f"entry {raw!r} collides with entry {seen[key]!r}", Check.DUPLICATE)
    seen[key] = raw
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if kind == stat.S_IFLNK:
        raise BadWheel(f"entry {raw!r} is a symbolic link", Check.FILE_MODE)
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR) or (kind == stat.S_IFDIR) != info.is_dir():
        raise BadWheel(f"entry {raw!r} has file mode {stat.filemode(mode)}", Check.FILE_MODE)
    if mode & _SPECIAL_BITS:
        raise BadWheel(f"entry {raw!r} has setuid, setgid or sticky bits", Check.FILE_MODE)
    if info.flag_bits & _ENCRYPTED_FLAG:
        raise BadWheel(f"entry {raw!r} is encrypted")
    if info.compress_type not in COMPRESSIONS:
        raise BadWheel(f"entry {raw!r} uses compression method {info.compress_type}")
    if info.is_dir() and info.file_size:
        raise BadWheel(f"directory entry {raw!r} holds data", Check.PATH)


def _too_compressed(inflated: int, compressed: int, limits: WheelLimits) -> bool:
    return inflated > limits.ratio_grace_bytes and inflated > limits.max_ratio * compressed


def _check_declared_sizes(
    infos: list[zipfile.ZipInfo], archive_size: int, limits: WheelLimits
) -> None:
    """Refuse a bomb from what the zip declares, before inflating anything (reading
    checks the real bytes again)."""
    total = 0
    for info in infos:
        if info.file_size > limits.max_entry_bytes:
            raise BadWheel(
                f"{info.filename} inflates to {info.file_size} bytes, "
                f"more than {limits.max_entry_bytes}",
                Check.LIMITS,
            )
        if _too_compressed(info.file_size, info.compress_size, limits):
            raise BadWheel(
                f"{info.filename} inflates {info.compress_size} bytes to {info.file_size}, "
                f"more than {limits.max_ratio} times",
                Check.LIMITS,
            )
        total += info.file_size
    if total > limits.max_total_bytes:
        raise BadWheel(
            f"the wheel inflates to {total} bytes, more than {limits.max_total_bytes}",
            Check.LIMITS,
        )
    if _too_compressed(total, archive_size, limits):
        raise BadWheel(
            f"the wheel inflates {archive_size} bytes to {total}, "
            f"more than {limits.max_ratio} times",
            Check.LIMITS,
        )


def _dist_info_dir(names: list[str], expected: Expected) -> str:
    """The one .dist-info directory, the job's; .data directories the same distribution's
    with the schemes installers know."""
    tops = {name.split("/", 1)[0] for name in names if "/" in name}
    dist_infos = sorted(top for top in tops if top.endswith(".dist-info"))
    if len(dist_infos) != 1:
        found = f": {', '.join(dist_infos)}" if dist_infos else ""
        raise BadWheel(
            f"expected one .dist-info directory, found {len(dist_infos)}{found}", Check.DIST_INFO
        )
    dist_info = dist_infos[0]
    if not _is_distribution(dist_info.removesuffix(".dist-info"), expected):
        raise BadWheel(
            f"{dist_info} is not the job's ({expected.name} {expected.version})", Check.DIST_INFO
        )
    for top in sorted(tops):
        if top.endswith(".data") and not _is_distribution(top.removesuffix(".data"), expected):
            raise BadWheel(f"{top} is not the job's distribution", Check.DIST_INFO)
    for name in names:
        parts = name.split("/")
        if parts[0].endswith(".data") and len(parts) > 2 and parts[1] not in DATA_SCHEMES:
            raise BadWheel(f"{name} is in an unknown .data scheme", Check.DIST_INFO)
    return dist_info


def _is_distribution(stem: str, expected: Expected) -> bool:
    """`stem` ("{name}-{version}" of a .dist-info or .data directory) names the job's
    distribution, by normalised name and Version."""
    name, dash, version = stem.partition("-")
    if not dash:
        return False
    try:
        return canonicalize_name(name) == expected.name and Version(version) == expected.version
    except InvalidVersion:
        return False


def _read_small(archive: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int) -> bytes:
    """A dist-info file, read with a cap (its declared size is not trusted)."""
    with archive.open(info) as stream:
        data = stream.read(cap + 1)
    if len(data) > cap:
        raise BadWheel(f"{info.filename} is larger than {cap} bytes", Check.LIMITS)
    return data


def _headers(data: bytes, name: str, check: Check) -> Message:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadWheel(f"{name} is not UTF-8", check) from exc
    return HeaderParser().parsestr(text)


def _one(headers: Message, field: str, name: str, check: Check) -> str:
    values = headers.get_all(field) or []
    if len(values) != 1:
        raise BadWheel(f"{name} has {len(values)} {field} fields, not one", check)
    return str(values[0]).strip()


def _check_metadata(data: bytes, expected: Expected) -> Message:
    """METADATA names the job's project and version (as the served .metadata will)."""
    headers = _headers(data, "METADATA", Check.METADATA)
    metadata_version = _one(headers, "Metadata-Version", "METADATA", Check.METADATA)
    if not _VERSION_FIELD.match(metadata_version):
        raise BadWheel(f"METADATA Metadata-Version {metadata_version!r} is invalid", Check.METADATA)
    name = _one(headers, "Name", "METADATA", Check.METADATA)
    if canonicalize_name(name) != expected.name:
        raise BadWheel(f"METADATA Name is {name!r}, the job is for {expected.name}", Check.METADATA)
    version = _one(headers, "Version", "METADATA", Check.METADATA)
    try:
        same = Version(version) == expected.version
    except InvalidVersion:
        same = False
    if not same:
        raise BadWheel(
            f"METADATA Version is {version!r}, the job is for {expected.version}", Check.METADATA
        )
    return headers


def _check_wheel_file(data: bytes, wheel: WheelName) -> None:
    """WHEEL: format 1.x, a generator, Root-Is-Purelib false for a platform wheel, and
    exactly the file name's tags."""
    headers = _headers(data, "WHEEL", Check.WHEEL_FILE)
    version = _VERSION_FIELD.match(_one(headers, "Wheel-Version", "WHEEL", Check.WHEEL_FILE))
    if version is None or version.group(1) != "1":
        raise BadWheel("WHEEL Wheel-Version is not 1.x", Check.WHEEL_FILE)
    if not _one(headers, "Generator", "WHEEL", Check.WHEEL_FILE):
        raise BadWheel("WHEEL Generator is empty", Check.WHEEL_FILE)
    purelib = _one(headers, "Root-Is-Purelib", "WHEEL", Check.WHEEL_FILE).lower()
    if purelib not in ("true", "false"):
        raise BadWheel(f"WHEEL Root-Is-Purelib is {purelib!r}", Check.WHEEL_FILE)
    if purelib == "true" and wheel.platforms != {"any"}:
        raise BadWheel("WHEEL Root-Is-Purelib is true for a platform wheel", Check.WHEEL_FILE)
    tags: set[Tag] = set()
    try:
        for line in headers.get_all("Tag") or []:
            tags |= parse_tag(str(line).strip())
    except ValueError as exc:
        raise BadWheel(f"WHEEL has a malformed Tag line: {exc}", Check.WHEEL_FILE) from exc
    if tags != wheel.tags:
        found = ", ".join(sorted(map(str, tags))) or "none"
        named = ", ".join(sorted(map(str, wheel.tags)))
        raise BadWheel(f"WHEEL tags ({found}) are not the file name's ({named})", Check.WHEEL_FILE)


def _parse_record(data: bytes, dist_info: str) -> dict[str, RecordLine]:
    """RECORD's lines by path: each with a strong hash and a size, except RECORD itself
    and its signatures (which may be unhashed)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadWheel("RECORD is not UTF-8", Check.RECORD) from exc
    unhashed = {f"{dist_info}/RECORD", f"{dist_info}/RECORD.jws", f"{dist_info}/RECORD.p7s"}
    lines: dict[str, RecordLine] = {}
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        raise BadWheel(f"RECORD is not CSV: {exc}", Check.RECORD) from exc
    for number, row in enumerate(rows, 1):
        if not row:
            continue
        if len(row) != 3:
            raise BadWheel(f"RECORD line {number} has {len(row)} fields, not 3", Check.RECORD)
        path, hashed, size = row
        if path in lines:
            raise BadWheel(f"RECORD lists {path} twice", Check.RECORD)
        if path == f"{dist_info}/RECORD" or (path in unhashed and not hashed):
            lines[path] = RecordLine(None, "", None)
            continue
        algorithm, equals, digest = hashed.partition("=")
        if not equals or not digest:
            raise BadWheel(f"RECORD has no hash for {path}", Check.RECORD)
        if algorithm not in STRONG_HASHES:
            raise BadWheel(
                f"RECORD hashes {path} with {algorithm!r}; sha256 or stronger is required",
                Check.RECORD,
            )
        if not _SIZE.match(size):
            raise BadWheel(f"RECORD has no valid size for {path}", Check.RECORD)
        lines[path] = RecordLine(algorithm, digest, int(size))
    return lines


def _check_listed(files: dict[str, zipfile.ZipInfo], lines: dict[str, RecordLine]) -> None:
    """Every file of the archive is in RECORD, and RECORD lists nothing else."""
    unlisted = sorted(set(files) - set(lines))
    if unlisted:
        raise BadWheel(f"{unlisted[0]} is not listed in RECORD", Check.RECORD)
    missing = sorted(set(lines) - set(files))
    if missing:
        raise BadWheel(f"RECORD lists {missing[0]}, which the wheel does not hold", Check.RECORD)


class _Budget:
    """Counts the bytes really inflated, entry by entry and for the whole archive, and
    refuses as soon as a limit is passed (the zip's declared sizes are not trusted)."""

    def __init__(self, archive_size: int, limits: WheelLimits) -> None:
        self.archive_size = archive_size
        self.limits = limits
        self.total = 0

    def take(self, info: zipfile.ZipInfo, entry: int, count: int) -> None:
        """`count` more bytes of `info`, of which `entry` bytes were read before."""
        entry += count
        self.total += count
        limits = self.limits
        if entry > info.file_size or entry > limits.max_entry_bytes:
            raise BadWheel(f"{info.filename} inflates beyond its declared size", Check.LIMITS)
        if (
            self.total > limits.max_total_bytes
            or _too_compressed(entry, info.compress_size, limits)
            or _too_compressed(self.total, self.archive_size, limits)
        ):
            raise BadWheel(f"{info.filename} inflates beyond the wheel's limits", Check.LIMITS)


def _check_member(
    archive: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    line: RecordLine,
    arch: str | None,
    budget: _Budget,
) -> None:
    """Read one file once, in chunks: its size and hash against RECORD, its ELF header
    (by magic, whatever its name) against the arch."""
    name = info.filename
    digest = hashlib.new(line.algorithm) if line.algorithm else None
    size = 0
    with archive.open(info) as stream:
        while chunk := stream.read(CHUNK_BYTES):
            if size == 0 and arch is not None and chunk.startswith(ELF_MAGIC):
                check_elf(chunk, arch, name)
            budget.take(info, size, len(chunk))
            size += len(chunk)
            if digest is not None:
                digest.update(chunk)
    if digest is None:
        return
    encoded = base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()
    if encoded != line.digest:
        raise BadWheel(f"RECORD hash mismatch for {name}", Check.RECORD_HASH)
    if size != line.size:
        raise BadWheel(
            f"RECORD size mismatch for {name}: RECORD says {line.size}, the file holds {size}",
            Check.RECORD_HASH,
        )


# --- what the smoke test imports ----------------------------------------------------------

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

"""Hostile wheels, one per way a builder (or the sdist it built) could try to get a bad
wheel published: each with the check that must refuse it and words its reason must hold.

Made with zipfile (and, where zipfile will not write a field, by patching the bytes it
wrote). Kept apart from the tests so the same cases can be run against any reader.
"""

from __future__ import annotations

import stat
import struct
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.wheels import (
    dist_info_of,
    elf_header,
    record_hash,
    record_of,
    wheel_files,
    zip_entries,
)

AARCH64 = "demo-1.0-cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64.whl"
ARMV7L = "demo-1.0-cp311-cp311-manylinux_2_17_armv7l.manylinux2014_armv7l.whl"
DIST_INFO = "demo-1.0.dist-info"
EXT = "pkg/_x.cpython-311-aarch64-linux-gnu.so"
MIB = 1024 * 1024


@dataclass(frozen=True)
class Case:
    id: str
    check: str  # common.wheels.Check's value
    words: str  # in the reason
    build: Callable[[], bytes]
    filename: str = AARCH64
    limits: dict[str, int] = field(default_factory=dict)  # WheelLimits overrides


def build(
    *,
    filename: str = AARCH64,
    extra: dict[str, bytes] | None = None,
    drop: tuple[str, ...] = (),
    replace: dict[str, bytes] | None = None,
    record: bytes | None = None,
    record_extra: str = "",
    unlisted: dict[str, bytes] | None = None,
    infos: list[tuple[zipfile.ZipInfo, bytes]] | None = None,
) -> bytes:
    """A wheel for `filename` with files added (`extra`, in RECORD), removed, replaced
    after RECORD was written, added but not in RECORD (`unlisted`, `infos`), or with its
    RECORD replaced or extended."""
    files = wheel_files(filename, modules=("pkg",), extra=extra)
    for name in drop:
        files.pop(name)
    dist_info = dist_info_of(filename)
    if record is None:
        record = record_of(files, dist_info) + record_extra.encode()
    files.update(replace or {})
    entries: list[tuple[str | zipfile.ZipInfo, bytes]] = [*files.items()]
    entries += [*(unlisted or {}).items(), *(infos or [])]
    entries.append((f"{dist_info}/RECORD", record))
    return zip_entries(entries)


def _info(name: str, mode: int = 0, flags: int = 0) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = mode << 16
    info.flag_bits |= flags
    return info


def listed(name: str, data: bytes, mode: int) -> bytes:
    """A file with its RECORD line but a special mode."""
    line = f"{name},{record_hash(data)},{len(data)}\n"
    return build(record_extra=line, infos=[(_info(name, mode), data)])


def patch_central(data: bytes, name: bytes, offset: int, fmt: str, value: int) -> bytes:
    """Set a field of `name`'s central directory header (and, at the same field, of its
    local header when `offset` is one the two share), where zipfile will not write it."""
    out = bytearray(data)
    at = out.find(b"PK\x01\x02")
    while at >= 0:
        length = struct.unpack_from("<H", out, at + 28)[0]
        if bytes(out[at + 46 : at + 46 + length]) == name:
            struct.pack_into(fmt, out, at + offset, value)
            local = struct.unpack_from("<L", out, at + 42)[0]
            local_offset = {8: 6, 20: 18, 24: 22}.get(offset)  # flags, sizes
            if local_offset is not None:
                struct.pack_into(fmt, out, local + local_offset, value)
            return bytes(out)
        at = out.find(b"PK\x01\x02", at + 4)
    raise AssertionError(f"no entry {name!r}")


def _rename(data: bytes, old: bytes, new: bytes) -> bytes:
    assert len(old) == len(new) and data.count(old) == 2  # local and central headers
    return data.replace(old, new)


def _zeros_wheel(size: int) -> bytes:
    return build(extra={"pkg/zeros.bin": bytes(size)})


def _two_entries_same_name() -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate it writes
        return build(extra={"pkg/a.py": b"x = 1\n"}, unlisted={"pkg/a.py": b"x = 2\n"})


def _lying_size() -> bytes:
    """A 4 MiB file whose headers declare 1,000 bytes (and a ratio that looks fine)."""
    data = build(extra={"pkg/big.bin": bytes(4 * MIB)})
    # The uncompressed size, in the central and the local header.
    return patch_central(data, b"pkg/big.bin", 24, "<L", 1000)


def _wheel_file(text: str) -> Callable[[], bytes]:
    """A wheel whose WHEEL file is `text` (and RECORD agrees)."""

    def make() -> bytes:
        files = wheel_files(AARCH64, modules=("pkg",))
        files[f"{DIST_INFO}/WHEEL"] = text.encode()
        return zip_entries([*files.items(), (f"{DIST_INFO}/RECORD", record_of(files, DIST_INFO))])

    return make


def _metadata(text: str) -> Callable[[], bytes]:
    def make() -> bytes:
        files = wheel_files(AARCH64, modules=("pkg",))
        files[f"{DIST_INFO}/METADATA"] = text.encode()
        return zip_entries([*files.items(), (f"{DIST_INFO}/RECORD", record_of(files, DIST_INFO))])

    return make


def _record_line(line: str) -> Callable[[], bytes]:
    """pkg/_x.py listed by `line` ({data} and {size} filled in) instead of a sha256."""

    def make() -> bytes:
        data = b"x = 1\n"
        files = wheel_files(AARCH64, modules=("pkg",), extra={"pkg/_x.py": data})
        record = record_of(files, DIST_INFO).decode().splitlines()
        record = [row for row in record if not row.startswith("pkg/_x.py,")]
        record.append(line.format(size=len(data), md5=_digest("md5", data)))
        return zip_entries(
            [*files.items(), (f"{DIST_INFO}/RECORD", ("\n".join(record) + "\n").encode())]
        )

    return make


def _digest(algorithm: str, data: bytes) -> str:
    return record_hash(data, algorithm)


def _moved_dist_info(new: str) -> bytes:
    """The whole wheel under another .dist-info name (RECORD consistent with it)."""
    files = {
        name.replace(DIST_INFO, new): data
        for name, data in wheel_files(AARCH64, modules=("pkg",)).items()
    }
    return zip_entries([*files.items(), (f"{new}/RECORD", record_of(files, new))])


GOOD_WHEEL = Case("valid", "", "", lambda: build(extra={EXT: elf_header("aarch64") + b"code"}))

WHEEL_OK = (
    "Wheel-Version: 1.0\nGenerator: x\nRoot-Is-Purelib: false\n"
    "Tag: cp311-cp311-manylinux_2_17_aarch64\nTag: cp311-cp311-manylinux2014_aarch64\n"
)
METADATA_OK = "Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n"
S_IFREG = stat.S_IFREG

CASES: list[Case] = [
    # METADATA: the job's project and version, once each.
    Case(
        "metadata-names-another-project",
        "metadata",
        "METADATA Name is 'requests'",
        _metadata("Metadata-Version: 2.1\nName: requests\nVersion: 1.0\n"),
    ),
    Case(
        "metadata-other-version",
        "metadata",
        "METADATA Version is '2.0'",
        _metadata("Metadata-Version: 2.1\nName: demo\nVersion: 2.0\n"),
    ),
    Case(
        "metadata-two-names",
        "metadata",
        "2 Name fields",
        _metadata(METADATA_OK + "Name: requests\n"),
    ),
    Case(
        "metadata-no-metadata-version",
        "metadata",
        "0 Metadata-Version fields",
        _metadata("Name: demo\nVersion: 1.0\n"),
    ),
    Case("metadata-not-utf8", "metadata", "not UTF-8", lambda: _metadata_bytes()),
    Case(
        "metadata-missing",
        "dist-info",
        "METADATA is missing",
        lambda: build(drop=(f"{DIST_INFO}/METADATA",)),
    ),
    # .dist-info and .data directories: one, the job's.
    Case(
        "second-dist-info",
        "dist-info",
        "found 2: demo-1.0.dist-info, requests-2.0.dist-info",
        lambda: build(extra={"requests-2.0.dist-info/METADATA": b"Name: requests\n"}),
    ),
    Case(
        "dist-info-of-another-project",
        "dist-info",
        "requests-2.0.dist-info is not the job's",
        lambda: _moved_dist_info("requests-2.0.dist-info"),
    ),
    Case(
        "dist-info-of-another-version",
        "dist-info",
        "demo-2.0.dist-info is not the job's",
        lambda: _moved_dist_info("demo-2.0.dist-info"),
    ),
    Case(
        "data-of-another-project",
        "dist-info",
        "requests-2.0.data is not the job's",
        lambda: build(extra={"requests-2.0.data/purelib/requests/__init__.py": b""}),
    ),
    Case(
        "data-unknown-scheme",
        "dist-info",
        "unknown .data scheme",
        lambda: build(extra={"demo-1.0.data/etc/passwd": b"root::0:0\n"}),
    ),
    Case("no-dist-info", "dist-info", "found 0", lambda: zip_entries([("pkg/__init__.py", b"")])),
    # WHEEL.
    Case(
        "wheel-version-2",
        "wheel-file",
        "not 1.x",
        _wheel_file(WHEEL_OK.replace("Wheel-Version: 1.0", "Wheel-Version: 2.0")),
    ),
    Case(
        "wheel-no-generator",
        "wheel-file",
        "0 Generator fields",
        _wheel_file(WHEEL_OK.replace("Generator: x\n", "")),
    ),
    Case(
        "wheel-purelib-platform",
        "wheel-file",
        "Root-Is-Purelib is true for a platform",
        _wheel_file(WHEEL_OK.replace("Root-Is-Purelib: false", "Root-Is-Purelib: true")),
    ),
    Case(
        "wheel-other-tags",
        "wheel-file",
        "are not the file name's",
        _wheel_file(WHEEL_OK + "Tag: cp311-cp311-manylinux2014_x86_64\n"),
    ),
    Case(
        "wheel-missing-tag",
        "wheel-file",
        "are not the file name's",
        _wheel_file(WHEEL_OK.replace("Tag: cp311-cp311-manylinux2014_aarch64\n", "")),
    ),
    Case(
        "wheel-file-missing",
        "dist-info",
        "WHEEL is missing",
        lambda: build(drop=(f"{DIST_INFO}/WHEEL",)),
    ),
    # RECORD: every file, a strong hash and the size of its bytes.
    Case(
        "record-hash-mismatch",
        "record-hash",
        "RECORD hash mismatch for " + EXT,
        lambda: build(
            extra={EXT: elf_header("aarch64")}, replace={EXT: elf_header("aarch64") + b"trojan"}
        ),
    ),
    Case(
        "record-size-mismatch",
        "record-hash",
        "RECORD size mismatch for pkg/_x.py",
        _record_line("pkg/_x.py,sha256=" + record_hash(b"x = 1\n").split("=", 1)[1] + ",99"),
    ),
    Case("record-md5", "record", "with 'md5'", _record_line("pkg/_x.py,{md5},{size}")),
    Case(
        "record-sha1",
        "record",
        "with 'sha1'",
        _record_line("pkg/_x.py," + record_hash(b"x = 1\n", "sha1") + ",{size}"),
    ),
    Case("record-no-hash", "record", "no hash for pkg/_x.py", _record_line("pkg/_x.py,,{size}")),
    Case(
        "record-no-size",
        "record",
        "no valid size for pkg/_x.py",
        _record_line("pkg/_x.py," + record_hash(b"x = 1\n") + ","),
    ),
    Case(
        "record-twice",
        "record",
        "lists pkg/__init__.py twice",
        lambda: build(record_extra="pkg/__init__.py," + record_hash(b"") + ",0\n"),
    ),
    Case(
        "file-not-in-record",
        "record",
        "pkg/evil.py is not listed in RECORD",
        lambda: build(unlisted={"pkg/evil.py": b"import os\n"}),
    ),
    Case(
        "record-lists-absent-file",
        "record",
        "RECORD lists pkg/gone.py, which the wheel",
        lambda: build(record_extra="pkg/gone.py," + record_hash(b"") + ",0\n"),
    ),
    Case("record-empty", "record", "is not listed in RECORD", lambda: build(record=b"")),
    # Duplicates, also once extracted on a case-insensitive or normalising file system.
    Case(
        "duplicate-name",
        "duplicate",
        "'pkg/a.py' collides with entry 'pkg/a.py'",
        _two_entries_same_name,
    ),
    Case(
        "duplicate-by-case",
        "duplicate",
        "collides",
        lambda: build(extra={"pkg/Mod.py": b"", "pkg/mod.py": b""}),
    ),
    Case(
        "duplicate-by-unicode-form",
        "duplicate",
        "collides",
        lambda: build(extra={"pkg/caf\u00e9.txt": b"", "pkg/cafe\u0301.txt": b""}),
    ),
    # Names outside the archive root, by separator or encoding.
    Case(
        "dot-dot",
        "path",
        "not a plain relative path",
        lambda: build(extra={"pkg/../../tmp/x": b""}),
    ),
    Case("backslashes", "path", "backslash", lambda: build(extra={"..\\..\\tmp\\x": b""})),
    Case("absolute", "path", "absolute", lambda: build(extra={"/etc/cron.d/x": b""})),
    Case("drive-letter", "path", "absolute", lambda: build(extra={"C:/Windows/x.dll": b""})),
    Case(
        "empty-component",
        "path",
        "not a plain relative path",
        lambda: build(extra={"pkg//x.py": b""}),
    ),
    Case(
        "fullwidth-dot-dot",
        "path",
        "not a plain relative path",
        lambda: build(extra={"pkg/\uff0e\uff0e/\uff0e\uff0e/x": b""}),
    ),
    Case("nul-byte", "path", "NUL", lambda: build(infos=[(_nul_info(), b"")])),
    Case(
        "control-character", "path", "control character", lambda: build(extra={"pkg/a\nb.py": b""})
    ),
    Case(
        "invalid-utf8-name",
        "path",
        "not",
        lambda: _rename(build(unlisted={"pkg/\u00e9.py": b""}), "\u00e9".encode(), b"\xff\xfe"),
    ),
    Case(
        "name-not-marked-utf8",
        "path",
        "not marked UTF-8",
        lambda: patch_central(
            build(unlisted={"pkg/\u00e9.py": b""}),
            "\u00e9".encode().join([b"pkg/", b".py"]),
            8,
            "<H",
            0,
        ),
    ),
    # Links and special file modes.
    Case(
        "symlink",
        "file-mode",
        "symbolic link",
        lambda: listed("pkg/passwd", b"/etc/passwd", stat.S_IFLNK | 0o777),
    ),
    Case(
        "setuid", "file-mode", "setuid", lambda: listed("pkg/run", b"#!/bin/sh\n", S_IFREG | 0o4755)
    ),
    Case(
        "setgid", "file-mode", "setgid", lambda: listed("pkg/run", b"#!/bin/sh\n", S_IFREG | 0o2755)
    ),
    Case("sticky", "file-mode", "sticky", lambda: listed("pkg/run", b"x", S_IFREG | 0o1644)),
    Case(
        "char-device",
        "file-mode",
        "file mode c",
        lambda: listed("pkg/dev", b"", stat.S_IFCHR | 0o666),
    ),
    Case(
        "block-device",
        "file-mode",
        "file mode b",
        lambda: listed("pkg/dev", b"", stat.S_IFBLK | 0o666),
    ),
    Case("fifo", "file-mode", "file mode p", lambda: listed("pkg/fifo", b"", stat.S_IFIFO | 0o644)),
    Case(
        "socket", "file-mode", "file mode s", lambda: listed("pkg/sock", b"", stat.S_IFSOCK | 0o644)
    ),
    # Zip features no wheel tool uses.
    Case("bzip2", "zip", "compression method 12", lambda: _bzip2_wheel()),
    Case(
        "encrypted-flag",
        "zip",
        "encrypted",
        lambda: patch_central(build(extra={"pkg/_x.py": b"x"}), b"pkg/_x.py", 8, "<H", 1),
    ),
    Case("not-a-zip", "zip", "not a zip file", lambda: b"PK\x03\x04 but not really a zip"),
    # Limits: entries, sizes, ratio, enforced on declared sizes and again while reading.
    Case("zip-bomb-ratio", "limits", "more than 200 times", lambda: _zeros_wheel(8 * MIB)),
    Case("lying-declared-size", "zip", "CRC", _lying_size),
    Case(
        "too-many-entries",
        "limits",
        "more than 50",
        lambda: build(extra={f"pkg/m{i}.py": b"" for i in range(60)}),
        limits={"max_entries": 50},
    ),
    Case(
        "entry-too-large",
        "limits",
        "more than 100000",
        lambda: build(extra={"pkg/big.bin": bytes(range(256)) * 500}),
        limits={"max_entry_bytes": 100_000},
    ),
    Case(
        "wheel-too-large",
        "limits",
        "more than 150000",
        lambda: build(extra={f"pkg/{i}.bin": bytes(range(256)) * 300 for i in range(3)}),
        limits={"max_total_bytes": 150_000},
    ),
    Case(
        "central-directory-too-large",
        "limits",
        "central directory",
        lambda: build(extra={f"pkg/m{i}.py": b"" for i in range(60)}),
        limits={"max_directory_bytes": 2000},
    ),
    Case(
        "metadata-too-large",
        "limits",
        "METADATA is larger",
        _metadata(METADATA_OK + "Summary: " + "x" * 5000 + "\n"),
        limits={"max_metadata_bytes": 4096},
    ),
    # ELF files (by magic, whatever their name) for the target arch only.
    Case(
        "elf-x86_64",
        "elf",
        "machine 62",
        lambda: build(extra={EXT: elf_header("aarch64", machine=62)}),
    ),
    Case(
        "elf-32-bit-on-aarch64",
        "elf",
        "class 1",
        lambda: build(extra={EXT: elf_header("armv7l", machine=183)}),
    ),
    Case(
        "elf-big-endian", "elf", "data 2", lambda: build(extra={EXT: elf_header("aarch64", data=2)})
    ),
    Case(
        "elf-not-named-so",
        "elf",
        "pkg/data.bin is not",
        lambda: build(extra={"pkg/data.bin": elf_header("armv7l")}),
    ),
    Case("elf-truncated", "elf", "truncated", lambda: build(extra={EXT: b"\x7fELF\x02\x01"})),
    Case(
        "elf-aarch64-in-armv7l-wheel",
        "elf",
        "is not 32-bit little-endian ARM",
        lambda: build(filename=ARMV7L, extra={"pkg/_x.so": elf_header("aarch64")}),
        filename=ARMV7L,
    ),
    Case(
        "elf-armv7l-soft-float",
        "elf",
        "flags 0x5000200",
        lambda: build(filename=ARMV7L, extra={"pkg/_x.so": elf_header("armv7l", flags=0x05000200)}),
        filename=ARMV7L,
    ),
    Case(
        "elf-armv7l-old-eabi",
        "elf",
        "flags 0x4000400",
        lambda: build(filename=ARMV7L, extra={"pkg/_x.so": elf_header("armv7l", flags=0x04000400)}),
        filename=ARMV7L,
    ),
]


def _metadata_bytes() -> bytes:
    files = wheel_files(AARCH64, modules=("pkg",))
    files[f"{DIST_INFO}/METADATA"] = METADATA_OK.encode() + b"Summary: caf\xe9\n"
    return zip_entries([*files.items(), (f"{DIST_INFO}/RECORD", record_of(files, DIST_INFO))])


def _nul_info() -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("pkg/x")
    info.filename = "pkg/x\x00.py"  # ZipInfo() cuts at a NUL; zipfile writes this as is
    return info


def _bzip2_wheel() -> bytes:
    data = b"x = 1\n"
    info = zipfile.ZipInfo("pkg/_x.py")
    info.compress_type = zipfile.ZIP_BZIP2
    line = f"pkg/_x.py,{record_hash(data)},{len(data)}\n"
    return build(record_extra=line, infos=[(info, data)])

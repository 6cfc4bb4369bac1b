"""Wheels made in tests with zipfile: valid ones as build backends write them (METADATA,
WHEEL with the file name's tags, a hashed RECORD), and the parts to make hostile ones."""

from __future__ import annotations

import base64
import hashlib
import io
import struct
import zipfile
from pathlib import Path

from packaging.utils import parse_wheel_filename

# e_machine, ELF class and e_flags of each target arch's code.
ELF_ARCH = {"aarch64": (183, 2, 0), "armv7l": (40, 1, 0x05000400)}

Entry = tuple[str | zipfile.ZipInfo, bytes]


def elf_header(
    arch: str,
    *,
    machine: int | None = None,
    elf_class: int | None = None,
    flags: int | None = None,
    data: int = 1,
) -> bytes:
    """The ELF header of a shared library for `arch` (fields overridable), as the first
    bytes of a file."""
    default_machine, default_class, default_flags = ELF_ARCH[arch]
    machine = default_machine if machine is None else machine
    elf_class = default_class if elf_class is None else elf_class
    flags = default_flags if flags is None else flags
    ident = b"\x7fELF" + bytes([elf_class, data, 1]) + bytes(9)
    order = "<" if data == 1 else ">"
    if elf_class == 2:
        return struct.pack(f"{order}16sHHIQQQIHHHHHH", ident, 3, machine, 1, 0, 64, 0, flags,
                           64, 56, 0, 64, 0, 0)  # fmt: skip
    return struct.pack(f"{order}16sHHIIIIIHHHHHH", ident, 3, machine, 1, 0, 52, 0, flags,
                       52, 32, 0, 40, 0, 0)  # fmt: skip


def record_hash(data: bytes, algorithm: str = "sha256") -> str:
    return record_digest(hashlib.new(algorithm, data))


def record_digest(digest: hashlib._Hash) -> str:
    """A RECORD hash field: algorithm=urlsafe-base64 without padding."""
    encoded = base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()
    return f"{digest.name}={encoded}"


def dist_info_of(filename: str) -> str:
    name, version = filename.split("-")[:2]
    return f"{name}-{version}.dist-info"


def wheel_files(
    filename: str,
    *,
    requires_python: str | None = ">=3.8",
    modules: tuple[str, ...] = ("demo",),
    extra: dict[str, bytes] | None = None,
) -> dict[str, bytes]:
    """A wheel's files but RECORD: packages, METADATA and WHEEL naming the file's tags."""
    name, version = filename.split("-")[:2]
    dist_info = dist_info_of(filename)
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    if requires_python:
        metadata += f"Requires-Python: {requires_python}\n"
    tags = parse_wheel_filename(filename)[3]
    purelib = "true" if all(tag.platform == "any" for tag in tags) else "false"
    wheel = f"Wheel-Version: 1.0\nGenerator: armwheels-tests\nRoot-Is-Purelib: {purelib}\n"
    wheel += "".join(f"Tag: {tag}\n" for tag in sorted(map(str, tags)))
    files = {f"{module}/__init__.py": b"" for module in modules}
    files[f"{dist_info}/METADATA"] = metadata.encode()
    files[f"{dist_info}/WHEEL"] = wheel.encode()
    files.update(extra or {})
    return files


def record_of(files: dict[str, bytes], dist_info: str) -> bytes:
    """RECORD for `files`: a sha256 and size per file, RECORD itself unhashed."""
    lines = [f"{path},{record_hash(data)},{len(data)}" for path, data in files.items()]
    return ("\n".join([*lines, f"{dist_info}/RECORD,,"]) + "\n").encode()


def zip_entries(entries: list[Entry]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for entry, data in entries:
            archive.writestr(entry, data)
    return buffer.getvalue()


def make_wheel(
    filename: str,
    *,
    requires_python: str | None = ">=3.8",
    modules: tuple[str, ...] = ("demo",),
    extra: dict[str, bytes] | None = None,
) -> bytes:
    """A valid wheel, for upload tests."""
    files = wheel_files(filename, requires_python=requires_python, modules=modules, extra=extra)
    dist_info = dist_info_of(filename)
    record = record_of(files, dist_info)
    return zip_entries([*files.items(), (f"{dist_info}/RECORD", record)])


MIB = 1024 * 1024


def bomb_wheel(path: Path, filename: str, inflated: int) -> Path:
    """A wheel valid in every other way (its RECORD hashes the `inflated` bytes of zeros
    it holds) that inflates ~1/1000 of that: written streaming, a MiB in memory at most."""
    files = wheel_files(filename)
    dist_info = dist_info_of(filename)
    digest = hashlib.sha256()
    chunk = bytes(MIB)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("demo/zeros.bin", "w") as stream:
            for _ in range(inflated // MIB):
                stream.write(chunk)
                digest.update(chunk)
        for name, data in files.items():
            archive.writestr(name, data)
        line = f"demo/zeros.bin,{record_digest(digest)},{inflated}\n"
        archive.writestr(f"{dist_info}/RECORD", record_of(files, dist_info) + line.encode())
    return path


def arm32_objects(wheel: Path, float_abi: str) -> list[str]:
    """The wheel's ELF members, each checked to be 32-bit little-endian ARM EABI5 code of
    `float_abi` ("hard": armhf's flag set; "soft": armel's, clear), from the ELF
    specification's numbers rather than the code under test's."""
    found = []
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.namelist():
            head = archive.read(member)[:40]
            if head[:4] != b"\x7fELF":
                continue
            assert (head[4], head[5]) == (1, 1), f"{member}: not 32-bit little-endian"
            assert struct.unpack_from("<H", head, 18)[0] == 40, f"{member}: not ARM"
            flags = struct.unpack_from("<I", head, 36)[0]
            assert flags & 0xFF000000 == 0x05000000, f"{member}: not EABI5 ({flags:#x})"
            assert bool(flags & 0x400) == (float_abi == "hard"), f"{member}: {flags:#x}"
            found.append(member)
    return found

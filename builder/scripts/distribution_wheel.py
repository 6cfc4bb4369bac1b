"""Runs in a distribution target's build container (the image's own python3, standard
library only): the built wheel, which no manylinux policy covers, is given the
distribution's platform tag instead of auditwheel's repair, and the Debian packages of
the libraries its ELF files load are recorded, as piwheels records apt dependencies.

Usage: distribution_wheel.py WHEEL PLATFORM_TAG OUT_DIR PACKAGES_FILE
Exit 13: the wheel could not be tagged (a broken archive); nothing is written.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

_LDD_PATH = re.compile(r"=>\s+(/\S+)")


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode()


def retag(wheel: str, platform: str, out_dir: str) -> str:
    """A copy of `wheel` whose file name and WHEEL file carry `platform` (a compressed
    tag set: one Tag line per platform); RECORD gets the new WHEEL's hash."""
    name = Path(wheel).name[: -len(".whl")]
    parts = name.split("-")
    interpreter, abi = parts[-3], parts[-2]
    new_name = "-".join([*parts[:-1], platform]) + ".whl"
    target = str(Path(out_dir) / new_name)
    with zipfile.ZipFile(wheel) as source:
        infos = source.infolist()
        dist_info = next(
            i.filename.split("/")[0] for i in infos if i.filename.endswith(".dist-info/WHEEL")
        )
        wheel_file = f"{dist_info}/WHEEL"
        record_file = f"{dist_info}/RECORD"
        lines = source.read(wheel_file).decode().splitlines()
        # Header lines only: setuptools ends the file with a blank line, after which a
        # reader would take the new Tag lines for a body.
        kept = [line for line in lines if line.strip() and not line.startswith("Tag:")]
        tags = [
            f"Tag: {i}-{a}-{p}"
            for i in interpreter.split(".")
            for a in abi.split(".")
            for p in platform.split(".")
        ]
        new_wheel = ("\n".join(kept + tags) + "\n").encode()
        record = []
        for line in source.read(record_file).decode().splitlines():
            if line.split(",")[0] == wheel_file:
                line = f"{wheel_file},{_record_hash(new_wheel)},{len(new_wheel)}"
            record.append(line)
        new_record = ("\n".join(record) + "\n").encode()
        with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as out:
            for info in infos:
                if info.filename == wheel_file:
                    out.writestr(info, new_wheel)
                elif info.filename == record_file:
                    out.writestr(info, new_record)
                else:
                    out.writestr(info, source.read(info))
    return target


def _elf_members(wheel: str, scratch: str) -> list[str]:
    paths = []
    with zipfile.ZipFile(wheel) as archive:
        for number, info in enumerate(archive.infolist()):
            with archive.open(info) as member:
                if member.read(4) != b"\x7fELF":
                    continue
            path = Path(scratch) / f"{number}-{Path(info.filename).name}"
            path.write_bytes(archive.read(info))
            paths.append(str(path))
    return paths


class NotFromTheDistribution(Exception):
    """A library the wheel loads is missing, or no package of the distribution has it."""


def linked_packages(wheel: str) -> list[str]:
    """`package=version` of every Debian package that holds a library the wheel's ELF
    files load (ldd, then dpkg -S on the library's real path), sorted. Raises
    NotFromTheDistribution for a library that is missing or no package's: a user of
    the distribution could not install what the wheel needs."""
    libraries = set()
    with tempfile.TemporaryDirectory() as scratch:
        for path in _elf_members(wheel, scratch):
            done = subprocess.run(["ldd", path], capture_output=True, text=True, check=False)
            for line in done.stdout.splitlines():
                if "=> not found" in line:
                    raise NotFromTheDistribution(f"{line.split()[0]} is not found")
                found = _LDD_PATH.search(line)
                if found:
                    libraries.add(os.path.realpath(found.group(1)))
    packages = set()
    for library in sorted(libraries):
        owner = subprocess.run(["dpkg", "-S", library], capture_output=True, text=True)
        if owner.returncode != 0:
            # /lib is a link to /usr/lib on merged-/usr systems: dpkg knows one of them.
            alias = library.replace("/usr/lib/", "/lib/", 1)
            owner = subprocess.run(["dpkg", "-S", alias], capture_output=True, text=True)
        if owner.returncode != 0:
            raise NotFromTheDistribution(f"{library} belongs to no package of this system")
        for line in owner.stdout.splitlines():
            packages.add(line.split(":", 1)[0].strip())
    if not packages:
        return []
    query = subprocess.run(
        ["dpkg-query", "-W", "-f=${Package}=${Version}\\n", *sorted(packages)],
        capture_output=True,
        text=True,
        check=False,
    )
    return sorted(line for line in query.stdout.splitlines() if line)


def main(argv: list[str]) -> int:
    wheel, platform, out_dir, packages_file = argv
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    try:
        tagged = retag(wheel, platform, out_dir)
    except (zipfile.BadZipFile, KeyError, StopIteration, IndexError) as exc:
        print(f"::armwheels:: cannot tag {Path(wheel).name}: {exc}")
        return 13
    print(f"::armwheels:: tagged {Path(tagged).name}")
    try:
        packages = linked_packages(tagged)
    except NotFromTheDistribution as exc:
        print(f"::armwheels:: the wheel loads a library from outside the distribution: {exc}")
        Path(tagged).unlink()
        return 13
    except OSError as exc:  # no ldd or dpkg: not a Debian system
        print(f"::armwheels:: cannot list the packages the wheel links: {exc}")
        Path(tagged).unlink()
        return 13
    Path(packages_file).write_text("".join(f"{package}\n" for package in packages))
    print(f"::armwheels:: system packages: {' '.join(packages) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

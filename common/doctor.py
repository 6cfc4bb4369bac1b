"""armwheels doctor: what this device is, which of the farm's wheels its pip takes, and
why not the others.

It runs on the device itself with nothing but Python and pip (the master serves this
file at /doctor: `curl -s http://FARM/doctor | python3 - PROJECT`), so it imports only
the standard library and pip's own vendored `packaging`: the tags it reports are the
ones that pip accepts, whatever its version. `armwheels doctor` runs the same code.

Exit status: 0 when a wheel fits (or, without a project, when the device was read),
1 when none does, 2 for bad input, an unreachable farm or no pip.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import struct
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

# The farm this copy speaks to: the master writes its public URL here when serving it.
FARM = ""
JSON_PAGE = "application/vnd.pypi.simple.v1+json"
# A project name as PEP 508 allows it, and a version as far as a URL can carry it.
_NAME = re.compile(r"^([A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9._-]*[A-Za-z0-9])$")
_VERSION = re.compile(r"^[A-Za-z0-9.+!_-]{1,100}$")
_MANYLINUX = re.compile(r"^manylinux_(\d+)_(\d+)_(\w+)$")
_LEGACY = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
# ELF: e_machine values and the ARM EABI float-ABI flags of e_flags.
EM_ARM, EM_AARCH64 = 40, 183
EF_ARM_ABI_FLOAT_SOFT, EF_ARM_ABI_FLOAT_HARD = 0x200, 0x400
# The first pip whose vendored packaging knows manylinux_x_y tags (PEP 600).
PEP600_PIP = (20, 3)


class DoctorError(Exception):
    """Bad input, an unreachable farm or no pip: one line, exit 2."""


def _packaging() -> tuple[Any, Any]:
    """pip's own vendored `packaging` (tags, version): its answer is pip's."""
    try:
        from pip._vendor.packaging import tags, version
    except ImportError as exc:
        raise DoctorError(
            f"no pip for {sys.executable}: run this with the python whose pip installs"
            " packages (for example a venv's bin/python)"
        ) from exc
    return tags, version


def pip_version() -> str:
    try:
        import pip
    except ImportError as exc:
        raise DoctorError(f"no pip for {sys.executable}") from exc
    return str(pip.__version__)


def read_elf(path: str) -> dict[str, Any]:
    """The machine, class and ARM float ABI an ELF file (the interpreter) is built for."""
    with open(path, "rb") as handle:
        head = handle.read(64)
    if head[:4] != b"\x7fELF":
        return {"bits": None, "machine": None, "float_abi": None}
    bits = 64 if head[4] == 2 else 32
    order = "<" if head[5] == 1 else ">"
    (machine,) = struct.unpack(order + "H", head[18:20])
    flags_at = 48 if bits == 64 else 36
    (flags,) = struct.unpack(order + "I", head[flags_at : flags_at + 4])
    float_abi = None
    if machine == EM_ARM:
        if flags & EF_ARM_ABI_FLOAT_HARD:
            float_abi = "hard"
        elif flags & EF_ARM_ABI_FLOAT_SOFT or (flags >> 24) >= 5:
            float_abi = "soft"  # EABI5 without the hard-float flag: armel
    names = {EM_ARM: "arm", EM_AARCH64: "aarch64"}
    return {"bits": bits, "machine": names.get(machine, str(machine)), "float_abi": float_abi}


def libc() -> tuple[str, tuple[int, int] | None]:
    """The C library and its version: ("glibc", (2, 36)), ("musl", None), ..."""
    try:
        found = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (AttributeError, ValueError, OSError):
        found = ""
    if found.startswith("glibc "):
        major, minor = found.split()[1].split(".")[:2]
        return "glibc", (int(major), int(minor))
    name, _ = platform.libc_ver()
    return (name or "unknown"), None


def os_release(path: str = "/etc/os-release") -> dict[str, str]:
    """The distribution's os-release fields (empty where there is none)."""
    fields = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, sep, value = line.strip().partition("=")
                if sep:
                    fields[key] = value.strip().strip('"')
    except OSError:
        return {}
    return fields


def debian_arch(elf: dict[str, Any]) -> str:
    """The userland's Debian architecture name, from the interpreter's own ELF header."""
    if elf["machine"] == "arm":
        return "armhf" if elf["float_abi"] == "hard" else "armel"
    return {"aarch64": "arm64", "x86_64": "amd64"}.get(str(elf["machine"]), str(elf["machine"]))


def device() -> dict[str, Any]:
    """What this device is, in the terms that decide which wheels fit it."""
    tags, _ = _packaging()
    elf = read_elf(os.path.realpath(sys.executable))
    release = os_release()
    # A farm's distribution index for exactly this system is named like this.
    codename = release.get("VERSION_CODENAME", "")
    distribution = f"{release.get('ID', 'linux')}-{codename or 'unknown'}-{debian_arch(elf)}"
    kernel = os.uname().machine
    library, glibc = libc()
    supported = [str(tag) for tag in tags.sys_tags()]
    return {
        "machine": platform.machine(),
        "kernel_machine": kernel,
        "kernel_bits": 64 if kernel in ("aarch64", "arm64", "armv8l", "x86_64") else 32,
        "userland_bits": elf["bits"],
        "interpreter_machine": elf["machine"],
        "float_abi": elf["float_abi"],
        "distribution": distribution,
        "libc": library,
        "glibc": None if glibc is None else f"{glibc[0]}.{glibc[1]}",
        "python": ".".join(map(str, sys.version_info[:3])),
        "implementation": platform.python_implementation(),
        "pip": pip_version(),
        "tags": supported,
    }


def _platform_need(platform_tag: str) -> tuple[tuple[int, int] | None, str]:
    """The glibc a platform tag needs (None: no promise) and its arch."""
    found = _MANYLINUX.match(platform_tag)
    if found:
        return (int(found.group(1)), int(found.group(2))), found.group(3)
    for legacy, floor in _LEGACY.items():
        if platform_tag.startswith(legacy + "_"):
            return floor, platform_tag[len(legacy) + 1 :]
    if platform_tag.startswith("linux_"):
        return None, platform_tag[len("linux_") :]
    return None, platform_tag


def _arch_of(tag_platform: str) -> str:
    return _platform_need(tag_platform)[1]


def why_not(filename: str, facts: dict[str, Any], own_index: str | None = None) -> str | None:
    """None when pip here takes `filename`; else why not, in words a user can act on
    (`own_index`: the URL of the farm's index for exactly this device's distribution)."""
    tags, version = _packaging()
    parts = filename[: -len(".whl")].split("-")
    if not filename.endswith(".whl") or len(parts) < 5:
        return "not a wheel"
    offered = tags.parse_tag("-".join(parts[-3:]))
    supported = set(facts["tags"])
    if any(str(tag) in supported for tag in offered):
        return None
    device_arches = {_arch_of(t.split("-")[2]) for t in facts["tags"]} - {"any"}
    interpreters = {t.split("-")[0] for t in facts["tags"]}
    wanted = sorted({tag.interpreter for tag in offered})
    if not any(tag.interpreter in interpreters for tag in offered):
        here = f"{facts['implementation']} {facts['python']}"
        return f"built for {', '.join(wanted)}; this is {here}"
    reasons = []
    for tag in sorted(offered, key=str):
        need, arch = _platform_need(tag.platform)
        # A manylinux armv7l wheel is hard-float; an armel system's pip may still report
        # linux_armv7l (an ARMv7 CPU), but never a manylinux tag.
        if arch == "armv7l" and need is not None and facts.get("float_abi") == "soft":
            where = (
                f": use {own_index}"
                if own_index
                else f"; the farm has no index for {facts.get('distribution')}"
            )
            reasons.append(
                "armhf (hard-float) wheel, this system is armel (soft-float): it would"
                f" install and crash, so pip refuses it{where}"
            )
            continue
        if arch not in device_arches and arch != "any":
            reasons.append(f"{arch} wheel, this device takes {', '.join(sorted(device_arches))}")
            continue
        if need is None:
            continue
        glibc = facts.get("glibc")
        if glibc is None:
            reasons.append(f"needs glibc {need[0]}.{need[1]}, this system has {facts['libc']}")
            continue
        have = tuple(int(p) for p in glibc.split("."))
        if need > have:
            reasons.append(f"needs glibc {need[0]}.{need[1]}, this system has {glibc}")
        elif tag.platform.startswith("manylinux_") and _pip_before(facts["pip"], version):
            reasons.append(
                f"pip {facts['pip']} cannot read {tag.platform} tags: upgrade pip"
                " (python3 -m pip install --upgrade pip)"
            )
    if reasons:
        return "; ".join(dict.fromkeys(reasons))
    return f"none of its tags ({', '.join(map(str, offered))}) is one pip here accepts"


def _pip_before(pip: str, version: Any) -> bool:
    try:
        return tuple(version.Version(pip).release[:2]) < PEP600_PIP
    except version.InvalidVersion:
        return False


def _get_json(url: str, farm: str, accept: str = "application/json") -> dict[str, Any] | None:
    """A JSON document of the farm; None for a 404."""
    request = urllib.request.Request(url, headers={"Accept": accept})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310
            return dict(json.loads(answer.read().decode()))
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise DoctorError(f"{url}: HTTP {exc.code}") from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise DoctorError(f"cannot reach the farm at {farm}: {exc}") from exc


def farm_indexes(farm: str) -> list[dict[str, Any]]:
    """The farm's indexes: /simple/ and its distribution indexes (a farm of an earlier
    release has only /simple/)."""
    found = _get_json(farm.rstrip("/") + "/api/v1/indexes", farm)
    if found is None:
        return [{"path": "/simple/", "kind": "manylinux"}]
    return [dict(entry) for entry in found.get("indexes", []) if isinstance(entry, dict)]


def project_page(farm: str, project: str, index: str = "/simple/") -> dict[str, Any]:
    """The farm's PEP 691 page of `project` in one of its indexes."""
    if urllib.parse.urlsplit(farm).scheme not in ("http", "https"):
        raise DoctorError(f"not an http(s) URL: {farm!r}")
    url = urllib.parse.urljoin(farm.rstrip("/") + "/", f"{index.strip('/')}/{project}/")
    return _get_json(url, farm, JSON_PAGE) or {"files": []}


def check(farm: str, project: str, wanted: str | None, facts: dict[str, Any]) -> dict[str, Any]:
    """Each of the farm's wheels of `project` (of version `wanted` when given) in /simple/
    and in the farm's index for this device's own distribution, whether pip here takes
    it and why not, and the pip line for the best one that fits."""
    _, version = _packaging()
    base = farm.rstrip("/")
    indexes = ["/simple/"]
    own_index = None
    for entry in farm_indexes(farm):
        if entry.get("kind") == "distribution" and entry.get("name") == facts["distribution"]:
            indexes.append(str(entry["path"]))
            own_index = base + str(entry["path"])
    wheels = []
    for index in indexes:
        for entry in project_page(farm, project, index).get("files", []):
            filename = str(entry.get("filename", ""))
            if not filename.endswith(".whl"):
                continue
            file_version = filename.split("-")[1]
            if wanted is not None and version.Version(file_version) != version.Version(wanted):
                continue
            reason = why_not(filename, facts, own_index)
            requires = entry.get("requires-python")
            if reason is None and requires:
                from pip._vendor.packaging.specifiers import SpecifierSet

                if facts["python"] not in SpecifierSet(requires):
                    reason = f"needs Python {requires}, this is {facts['python']}"
            if reason is None and entry.get("yanked"):
                reason = "yanked: pip takes it only when asked for its exact version"
            wheels.append(
                {
                    "filename": filename,
                    "version": file_version,
                    "index": base + index,
                    "fits": reason is None,
                    "why_not": reason,
                }
            )
    fitting = [w for w in wheels if w["fits"]]
    best = max(fitting, key=lambda w: version.Version(w["version"]), default=None)
    command = None
    if best is not None:
        command = (
            f"python3 -m pip install --extra-index-url {best['index']}"
            f" '{project}=={best['version']}'"
        )
    return {
        "project": project,
        "version": wanted,
        "distribution_index": own_index,
        "wheels": wheels,
        "install": command,
    }


def _parse_project(text: str) -> tuple[str, str | None]:
    name, _, wanted = text.partition("==")
    if not _NAME.match(name) or len(name) > 200:
        raise DoctorError(f"not a project name: {name!r}")
    if wanted and not _VERSION.match(wanted):
        raise DoctorError(f"not a version: {wanted!r}")
    if wanted:
        _, version = _packaging()
        try:
            version.Version(wanted)
        except version.InvalidVersion as exc:
            raise DoctorError(f"not a version: {wanted!r}") from exc
    from pip._vendor.packaging.utils import canonicalize_name

    return str(canonicalize_name(name)), (wanted or None)


def report(facts: dict[str, Any], result: dict[str, Any] | None) -> str:
    lines = [
        f"device: {facts['machine']}, {facts['kernel_bits']}-bit kernel"
        f" ({facts['kernel_machine']}), {facts['userland_bits']}-bit userland",
    ]
    if facts["float_abi"]:
        abi = "armhf (hard-float)" if facts["float_abi"] == "hard" else "armel (soft-float)"
        lines.append(f"float ABI: {abi}")
    lines.append(f"libc: {facts['libc']} {facts['glibc'] or ''}".rstrip())
    lines.append(f"distribution: {facts['distribution']}")
    lines.append(f"python: {facts['implementation']} {facts['python']}, pip {facts['pip']}")
    lines.append(f"pip accepts {len(facts['tags'])} tags, first: {', '.join(facts['tags'][:3])}")
    if result is not None:
        wheels = result["wheels"]
        if not wheels:
            lines.append(f"{result['project']}: the farm has no wheel of it")
        if result.get("distribution_index"):
            lines.append(f"this distribution's own index: {result['distribution_index']}")
        for wheel in wheels:
            verdict = "fits" if wheel["fits"] else f"no: {wheel['why_not']}"
            lines.append(f"{wheel['filename']}: {verdict}")
        if result["install"]:
            lines.append(f"install with: {result['install']}")
        elif wheels:
            lines.append("no wheel of the farm fits this device")
    return "\n".join(lines)


def main(argv: list[str] | None = None, farm: str = "") -> int:
    parser = argparse.ArgumentParser(
        prog="armwheels doctor", description="Which of the farm's wheels this device takes."
    )
    parser.add_argument("project", nargs="?", help="PROJECT or PROJECT==VERSION")
    parser.add_argument("--farm", default=farm or FARM, help="the farm's URL")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    try:
        wanted = _parse_project(args.project) if args.project else None
        facts = device()
        result = None
        if wanted is not None:
            if not args.farm:
                raise DoctorError("no farm URL: give --farm http://FARM")
            result = check(args.farm, wanted[0], wanted[1], facts)
    except DoctorError as exc:
        print(f"armwheels doctor: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"device": facts, "project": result}, indent=2))
    else:
        print(report(facts, result))
    if result is not None and result["install"] is None:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

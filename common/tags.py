"""Which wheels a CPython on a target installs: packaging's tag rules, in one place.

The master needs them twice: to accept a builder's wheel for a job (a `cp36-abi3`
wheel is what CPython 3.11 installs) and to decide which targets a wheel already
covers (PyPI's or our own), so the same release is not built again for a later
CPython that the same stable-ABI wheel serves.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import cache

from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import InvalidWheelFilename, parse_wheel_filename

from common.names import python_version_of_tag

_MANYLINUX = re.compile(r"^manylinux(?:_(\d+)_(\d+)|(2014|2010|1))_(\w+)$")
_LEGACY = {"2014": (2, 17), "2010": (2, 12), "1": (2, 5)}
_LEGACY_BY_GLIBC = {glibc: f"manylinux{alias}" for alias, glibc in _LEGACY.items()}


# What platform.machine() says on each kind of ARM system, oldest CPU first: a 32-bit
# userland names its CPU (armv5tel, armv6l, armv7l), and says armv8l under a 64-bit
# kernel; pip's only tag there is linux_<machine>.
DISTRIBUTION_MACHINES: dict[str, tuple[str, ...]] = {
    "aarch64": ("aarch64",),
    "armv7l": ("armv5tel", "armv6l", "armv7l", "armv8l"),
}
# The oldest CPU a 32-bit ARM distribution of each float ABI is built for: soft-float
# (armel: Debian's baseline is ARMv5TE) and hard-float (armhf: ARMv7 with VFP).
FLOAT_ABI_BASELINE = {"soft": "armv5tel", "hard": "armv7l"}


def distribution_machines(arch: str, float_abi: str) -> tuple[str, ...]:
    """The machines a distribution's wheels install on by default: every CPU from the
    float ABI's baseline up."""
    machines = DISTRIBUTION_MACHINES[arch]
    if arch != "armv7l":
        return machines
    return machines[machines.index(FLOAT_ABI_BASELINE[float_abi]) :]


def distribution_platform(machines: Iterable[str]) -> str:
    """The compressed platform tag (PEP 425) of a distribution's wheels: linux_<machine>
    for each machine, so that pip on any of them takes the one file."""
    return ".".join(f"linux_{machine}" for machine in machines)


def is_distribution_policy(policy: str) -> bool:
    """A job's policy names linux_* platforms: its wheels are a distribution's, served
    only under that distribution's own index."""
    return policy.startswith("linux_")


def publishing_index(target: str, policy: str) -> str:
    """The index a job's wheel enters: "" for /simple/, or the distribution target's own
    (served at /<target>/simple/)."""
    return target if is_distribution_policy(policy) else ""


def policy_platforms(policy: str) -> tuple[str, ...]:
    """The platform tags a system meeting `policy` accepts, newest first: a manylinux_2_X
    system also accepts every older manylinux_2_Y wheel and its legacy alias (PEP 600);
    a distribution's system accepts its own linux_* tags."""
    match = _MANYLINUX.match(policy)
    if match is None:
        return tuple(policy.split("."))
    if match.group(3):
        glibc_major, glibc_minor = _LEGACY[match.group(3)]
    else:
        glibc_major, glibc_minor = int(match.group(1)), int(match.group(2))
    arch = match.group(4)
    platforms: list[str] = []
    for older in range(glibc_minor, -1, -1):
        platforms.append(f"manylinux_{glibc_major}_{older}_{arch}")
        alias = _LEGACY_BY_GLIBC.get((glibc_major, older))
        if alias:
            platforms.append(f"{alias}_{arch}")
    return tuple(platforms)


def is_manylinux(platform: str) -> bool:
    """A manylinux platform tag (PEP 600 or a legacy alias): a glibc floor is promised."""
    return _MANYLINUX.match(platform) is not None


def meets_policy(platforms: Iterable[str], policy: str) -> bool:
    """Does a system meeting `policy` accept a wheel with these platform tags?"""
    return not set(platforms).isdisjoint(policy_platforms(policy))


@cache
def interpreter_tags(python_tag: str, platforms: tuple[str, ...]) -> frozenset[Tag]:
    """Every tag CPython `python_tag` installs on those platforms: its own ABI, the
    stable ABI (abi3) of itself and of every older 3.x, `none`, and `py3` tags."""
    major, minor = (int(part) for part in python_version_of_tag(python_tag).split("."))
    version = (major, minor)
    tags = set(cpython_tags(version, abis=[f"cp{major}{minor}"], platforms=platforms))
    tags.update(compatible_tags(version, f"cp{major}{minor}", platforms=platforms))
    return frozenset(tags)


def supported_tags(python_tag: str, policy: str) -> frozenset[Tag]:
    """The tags pip on a target (interpreter x manylinux policy) accepts from an index."""
    return interpreter_tags(python_tag, policy_platforms(policy))


def wheel_tags(filename: str) -> frozenset[Tag]:
    """The tags of a wheel's file name; none for a name that is not a wheel's."""
    try:
        return parse_wheel_filename(filename)[3]
    except InvalidWheelFilename:
        return frozenset()


def installs_on(tags: Iterable[Tag], python_tag: str) -> bool:
    """Would CPython `python_tag` install a wheel with these tags, on its own platforms?"""
    tags = frozenset(tags)
    platforms = tuple(sorted({tag.platform for tag in tags}))
    return not tags.isdisjoint(interpreter_tags(python_tag, platforms))


def covering_wheel(filenames: Iterable[str], python_tag: str, policy: str) -> str | None:
    """A wheel among `filenames` that pip on this target would install, if any."""
    wanted = supported_tags(python_tag, policy)
    for filename in sorted(filenames):
        if filename.endswith(".whl") and not wheel_tags(filename).isdisjoint(wanted):
            return filename
    return None


# What each platform's arch is, in the words device owners know it by.
_ARCH_WORDS = {
    "aarch64": "64-bit ARM (arm64)",
    "armv7l": "32-bit ARM, hard-float (armhf, ARMv7 or newer)",
    "armv6l": "32-bit ARM, hard-float (ARMv6, as Raspberry Pi OS 32-bit)",
    "x86_64": "64-bit x86",
}
# The first pip that reads each kind of manylinux tag.
_PIP_FOR = {"1": "8.1", "2010": "19.0", "2014": "19.3", None: "20.3"}


def who_installs(filename: str, index: str = "") -> str:
    """Which devices a wheel installs on, in words: arch and float ABI, the glibc and pip
    its platform tag needs, and the CPythons it serves; a distribution index's wheel,
    which systems of that distribution. Empty for a name not a wheel's."""
    tags = wheel_tags(filename)
    if not tags:
        return ""
    parts = []
    floors = []
    platforms = sorted({tag.platform for tag in tags})
    if index:
        machines = [p.removeprefix("linux_") for p in platforms if p.startswith("linux_")]
        order = [m for arch in DISTRIBUTION_MACHINES.values() for m in arch]
        machines.sort(key=lambda m: order.index(m) if m in order else len(order))
        parts.append(f"{index} systems only ({', '.join(machines)}), from /{index}/simple/")
        platforms = []
    for platform in platforms:
        match = _MANYLINUX.match(platform)
        if match is None:
            arch = platform.removeprefix("linux_")
            parts.append(f"{_ARCH_WORDS.get(arch, arch)}, no glibc promise")
            continue
        glibc = (
            _LEGACY[match.group(3)]
            if match.group(3)
            else (int(match.group(1)), int(match.group(2)))
        )
        floors.append((glibc, match.group(4), _PIP_FOR[match.group(3)]))
    if floors:
        glibc, arch, _ = min(floors)
        pip = min((pip for _, _, pip in floors), key=lambda v: tuple(map(int, v.split("."))))
        parts.insert(0, f"{_ARCH_WORDS.get(arch, arch)}, glibc {glibc[0]}.{glibc[1]}+, pip {pip}+")
    pythons = []
    for tag in sorted(tags, key=str):
        version = tag.interpreter[2:]
        words = f"{version[0]}.{version[1:]}" if len(version) > 1 else version
        if tag.abi == "abi3":
            pythons.append(f"CPython {words} or newer")
        elif tag.interpreter.startswith("cp"):
            pythons.append(f"CPython {words}")
        else:
            pythons.append(f"Python {words}")
    return "; ".join([*parts, ", ".join(dict.fromkeys(pythons))])

"""How many builds one builder host runs at once (builder.slots).

A long build (a large C++ project under emulation can take over half an hour) must not
hold the whole queue of its arch on a host that has the cores and memory for more. Each
slot is a builder of its own to the master; here is only how many there are.
"""

from __future__ import annotations

import math
import os

from docker.utils import parse_bytes

from common.config import BuilderSettings
from common.protocol import MAX_SLOTS


def host_memory() -> int:
    """The host's physical memory in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def host_cores() -> list[int]:
    """The cores this process may run on (a cgroup or taskset may allow fewer)."""
    return sorted(os.sched_getaffinity(0))


def slot_count(
    settings: BuilderSettings, cpus: int | None = None, memory: int | None = None
) -> int:
    """builder.slots when set; else as many builds as fit the host with builder.cpus and
    builder.memory_limit each, at least one. Without builder.cpus a build may use every
    core, so one slot."""
    if settings.slots is not None:
        return settings.slots
    if not settings.cpus:
        return 1
    by_cpus = math.floor((cpus or len(host_cores())) / settings.cpus)
    by_memory = (memory or host_memory()) // int(parse_bytes(settings.memory_limit))
    return max(1, min(by_cpus, by_memory, MAX_SLOTS))


def slot_cores(settings: BuilderSettings, slot: int, cores: list[int] | None = None) -> list[int]:
    """The cores slot `slot` is pinned to where a backend pins builds (the native one):
    each slot its own `ceil(builder.cpus)` of the host's cores, wrapping round them."""
    cores = cores or host_cores()
    width = min(max(1, math.ceil(settings.cpus or len(cores))), len(cores))
    first = slot * width
    return [cores[(first + i) % len(cores)] for i in range(width)]

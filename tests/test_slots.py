"""builder.slots: how many builds a host runs at once, and which cores each slot has."""

from __future__ import annotations

import pytest

from builder.slots import slot_cores, slot_count
from common.config import BuilderSettings

GIB = 1024**3


@pytest.mark.parametrize(
    ("fields", "cpus", "memory", "slots"),
    [
        ({}, 8, 32 * GIB, 1),  # every build may use every core: one at a time
        ({"cpus": 2}, 8, 32 * GIB, 4),
        ({"cpus": 2, "memory_limit": "16g"}, 8, 32 * GIB, 2),  # memory is the bound
        ({"cpus": 1.5}, 4, 32 * GIB, 2),
        ({"cpus": 4}, 2, 32 * GIB, 1),  # never none
        ({"cpus": 1, "memory_limit": "64g"}, 8, 32 * GIB, 1),
        ({"cpus": 0.5, "memory_limit": "256m"}, 128, 1024 * GIB, 64),  # the protocol's cap
        ({"slots": 3}, 1, GIB, 3),  # the operator's word
    ],
)
def test_slots_follow_the_cores_and_memory_each_build_may_use(
    fields: dict[str, object], cpus: int, memory: int, slots: int
) -> None:
    assert slot_count(BuilderSettings.model_validate(fields), cpus, memory) == slots


def test_each_slot_is_pinned_to_cores_of_its_own() -> None:
    two = BuilderSettings.model_validate({"cpus": 2})
    cores = [0, 1, 2, 3, 4, 5]
    assert [slot_cores(two, n, cores) for n in range(3)] == [[0, 1], [2, 3], [4, 5]]
    assert slot_cores(two, 3, cores) == [0, 1]  # more slots than cores: they wrap round
    assert slot_cores(BuilderSettings.model_validate({"cpus": 1.5}), 1, [2, 3, 5]) == [5, 2]
    assert slot_cores(BuilderSettings(), 0, [0, 1]) == [0, 1]  # no cpus: every core


@pytest.mark.parametrize("slots", [0, 65, -1, "two"])
def test_a_slot_count_out_of_range_is_refused(slots: object) -> None:
    with pytest.raises(ValueError, match="slots"):
        BuilderSettings.model_validate({"slots": slots})

"""common/tags.py in words: which devices a wheel installs on, as the dashboard shows it."""

from __future__ import annotations

import pytest

from common.tags import who_installs


@pytest.mark.parametrize(
    ("filename", "words"),
    [
        (
            "demo-1.0-cp36-abi3-manylinux_2_17_aarch64.manylinux2014_aarch64.whl",
            "64-bit ARM (arm64), glibc 2.17+, pip 19.3+; CPython 3.6 or newer",
        ),
        (
            "demo-1.0-cp311-cp311-manylinux_2_31_armv7l.whl",
            "32-bit ARM, hard-float (armhf, ARMv7 or newer), glibc 2.31+, pip 20.3+; CPython 3.11",
        ),
        (
            "demo-1.0-cp39-cp39-linux_armv7l.whl",
            "32-bit ARM, hard-float (armhf, ARMv7 or newer), no glibc promise; CPython 3.9",
        ),
        ("not-a-wheel.tar.gz", ""),
    ],
)
def test_a_wheel_says_which_devices_install_it(filename: str, words: str) -> None:
    assert who_installs(filename) == words


def test_a_distribution_wheel_is_described_by_its_index() -> None:
    filename = "demo-1.0-cp311-cp311-linux_armv5tel.linux_armv6l.linux_armv7l.linux_armv8l.whl"
    assert who_installs(filename, "debian-bookworm-armel") == (
        "debian-bookworm-armel systems only (armv5tel, armv6l, armv7l, armv8l), from"
        " /debian-bookworm-armel/simple/; CPython 3.11"
    )

"""What an offline build (the default) does when pip asks for a requirement the
wheelhouse lacks: the builder fetches it as a wheel for the target, or fails the job with
a reason that says what to do."""

from __future__ import annotations

import io
from pathlib import Path

from builder.classify import (
    diagnose,
    missing_requirement,
    offline_failure,
    offline_network_failure,
)
from builder.wheelhouse import Wheelhouse
from common.states import FailureReason

PLATFORMS = ["manylinux_2_17_aarch64"]

# What pip prints when a build backend's get_requires_for_build_wheel asks for cmake and
# the index is off (PIP_NO_INDEX=1, PIP_FIND_LINKS=the wheelhouse).
PIP_OFFLINE = b"""\
  Installing backend dependencies: started
  Installing backend dependencies: finished with status 'error'
  error: subprocess-exited-with-error

  \xc3\x97 pip subprocess to install backend dependencies did not run successfully.
  \xe2\x94\x82 exit code: 1
  \xe2\x95\xb0\xe2\x94\x80> [3 lines of output]
      Looking in links: /armwheels/wheelhouse
      ERROR: Could not find a version that satisfies the requirement cmake>=3.15 (from versions: \
none)
      ERROR: No matching distribution found for cmake>=3.15
      [end of output]
"""


def test_the_requirement_pip_could_not_find_is_read_from_the_log() -> None:
    assert missing_requirement(PIP_OFFLINE) == "cmake>=3.15"
    assert missing_requirement(b"error: command 'gcc' failed") is None
    # The cross build's words for a compiled build requirement the host has and the
    # target's wheelhouse lacks.
    cross = b"::armwheels:: the target has no wheel of cython==3.3.1\n::armwheels:: cross build"
    assert missing_requirement(cross) == "cython==3.3.1"


def test_a_requirement_without_a_wheel_fails_the_job_as_missing_dependency(
    tmp_path: Path,
) -> None:
    wheelhouse = Wheelhouse(tmp_path / "wheelhouse", 1024**3)
    log_path = tmp_path / "build.log"
    # Not on PyPI at all, so certainly without a wheel for aarch64.
    name = "armwheels-no-such-project-7f3c"
    with log_path.open("wb") as log:  # pip's output goes there too: a real file
        assert not wheelhouse.fetch_missing(name, "cp311", PLATFORMS, None, log)
    assert f"offline build: pip asked for {name}; fetching its wheel" in log_path.read_text()
    assert wheelhouse.wheels() == []
    # The backend then ends the build's log with its note; the classifier reads it.
    note = f"::armwheels:: {offline_failure(name, 'has no wheel for aarch64 cp311')}\n".encode()
    found = diagnose(11, PIP_OFFLINE.replace(b"cmake>=3.15", name.encode()) + note)
    assert found.reason is FailureReason.MISSING_DEPENDENCY
    assert found.summary == (
        f"{name} has no wheel for aarch64 cp311; a recipe with egress = true lets the build "
        "fetch it"
    )
    assert found.missing == name
    assert not found.transient
    rounds = f"::armwheels:: {offline_failure('cmake>=3.15', 'is still missing after 4 rounds')}"
    found = diagnose(11, PIP_OFFLINE + rounds.encode())
    assert (found.reason, found.missing) == (FailureReason.MISSING_DEPENDENCY, "cmake>=3.15")
    assert found.summary.startswith("cmake>=3.15 is still missing after 4 rounds; a recipe")


def test_a_requirement_naming_a_url_is_never_fetched(tmp_path: Path) -> None:
    wheelhouse = Wheelhouse(tmp_path / "wheelhouse", 1024**3)
    log = io.BytesIO()
    requirement = "six @ https://evil.example/six-1.0-py3-none-any.whl"
    assert not wheelhouse.fetch_missing(requirement, "cp311", PLATFORMS, None, log)
    assert b"names a URL; never fetched" in log.getvalue()


def test_a_requirement_with_a_wheel_comes_in(tmp_path: Path) -> None:
    wheelhouse = Wheelhouse(tmp_path / "wheelhouse", 1024**3)
    with (tmp_path / "build.log").open("wb") as log:
        assert wheelhouse.fetch_missing("six", "cp311", PLATFORMS, None, log)
    assert [path.name.split("-")[0] for path in wheelhouse.wheels()] == ["six"]


def test_an_offline_build_that_downloads_by_itself_is_told_about_egress() -> None:
    """Setup code fetching a file gives up on the missing network: not worth a retry."""
    log = (
        b"Traceback (most recent call last):\n"
        b"urllib3.exceptions.NewConnectionError: <HTTPSConnection object>: Failed to "
        b"establish a new connection: [Errno -3] Temporary failure in name resolution\n"
    )
    assert diagnose(11, log).transient  # online, the same log is worth another try
    note = offline_network_failure(log)
    assert note is not None
    found = diagnose(11, log + f"::armwheels:: {note}\n".encode())
    assert found.reason is FailureReason.NETWORK
    assert not found.transient
    assert found.summary.startswith("the build tried the network (network error: ")
    assert found.summary.endswith("a recipe with egress = true lets it download")
    assert offline_network_failure(b"hello.c:1:1: error: expected ';'") is None

"""The armv7l targets as shipped: `armv7l` (manylinux_2_31, on Debian bullseye, whose
glibc is that policy's floor, with bullseye's CPython 3.9) and `armv7l-bookworm` (the
same policy on bookworm's glibc 2.36 and CPython 3.11), each building a real C
extension; a wheel that needs a newer glibc than the policy is handled as the target's
`newer_policy` says."""

from __future__ import annotations

import platform
from pathlib import Path
from uuid import uuid4

import pytest
from packaging.utils import parse_wheel_filename

from builder.backends.cross import CrossBackend
from builder.backends.docker import DockerBackend
from builder.identity import BuilderIdentity
from common.job_spec import NewerPolicy
from common.states import BuildPath, FailureReason
from tests.builds import build_logged, builder_settings_in, shipped_target, target_spec
from tests.sdists import DLSYM_GLIBC, GETRANDOM_POLICY, dlsym_sdist, getrandom_sdist
from tests.wheels import arm32_objects

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("armv7l")


def test_the_default_armv7l_target_builds_on_bullseye_at_its_policys_floor(
    work: Path, tmp_path: Path
) -> None:
    """Built against glibc 2.31 the wheel cannot link anything newer than its policy; it
    is tagged manylinux_2_31 for CPython 3.9 and imports in the same image."""
    target = shipped_target("armv7l")
    assert (target.suite, target.policy, target.python_tags) == (
        "bullseye",
        "manylinux_2_31_armv7l",
        ["cp39"],
    )
    backend = DockerBackend(
        builder_settings_in(work), "armv7l", target, BuilderIdentity("bullseye", uuid4().hex)
    )
    assert backend.python_tags() == ["cp39"]
    assert backend.glibc_minor == 31
    sdist = getrandom_sdist(tmp_path / "src", tmp_path / "dist")
    spec = target_spec(sdist, target, "fail")
    outcome, log = build_logged(backend, spec, sdist, work, "bullseye")
    assert outcome.built and outcome.wheel is not None, log[-4000:]
    # getrandom() (GLIBC_2.25) makes manylinux_2_26 the most compatible policy it meets;
    # auditwheel names it beside the target's, and nothing newer than 2.31 is linked.
    name, _, _, tags = parse_wheel_filename(outcome.wheel.name)
    assert name == "randbyte"
    assert {(t.interpreter, t.abi) for t in tags} == {("cp39", "cp39")}
    assert {t.platform for t in tags} == {
        f"{GETRANDOM_POLICY}_armv7l",
        "manylinux_2_31_armv7l",
    }
    assert arm32_objects(outcome.wheel, "hard") == [
        "randbyte/_speed.cpython-39-arm-linux-gnueabihf.so"
    ]
    assert "smoke test passed" in log


@pytest.mark.parametrize("newer_policy", ["publish", "fail"])
def test_a_bookworm_wheel_newer_than_manylinux_2_31_is_handled_as_the_target_says(
    work: Path, tmp_path: Path, newer_policy: NewerPolicy
) -> None:
    """dlsym() linked against bookworm's glibc needs GLIBC_2.34: the armv7l-bookworm
    target publishes it under the policy it meets, or fails it naming the symbol."""
    if platform.machine() != "x86_64":
        pytest.skip("the cross path is for x86_64 hosts")
    target = shipped_target("armv7l-bookworm")
    backend = CrossBackend(
        builder_settings_in(work), "armv7l", target, BuilderIdentity("bookworm", uuid4().hex)
    )
    sdist = dlsym_sdist(tmp_path / "src", tmp_path / "dist")
    spec = target_spec(sdist, target, newer_policy)
    outcome, log = build_logged(backend, spec, sdist, work, f"dlsym-{newer_policy}")
    assert outcome.build_path is BuildPath.CROSS, log[-4000:]
    if newer_policy == "fail":
        assert outcome.reason is FailureReason.AUDITWHEEL_REJECTED, log[-4000:]
        assert DLSYM_GLIBC in outcome.summary
        return
    assert outcome.built and outcome.wheel is not None, log[-4000:]
    _, _, _, tags = parse_wheel_filename(outcome.wheel.name)
    [platform_tag] = {tag.platform for tag in tags}
    assert platform_tag.startswith("manylinux_2_") and platform_tag.endswith("_armv7l")
    assert int(platform_tag.split("_")[2]) >= 34, outcome.wheel.name
    assert arm32_objects(outcome.wheel, "hard")
    assert "smoke test passed" in log

"""The native backend (real ARM boards) runs here on the host's own arch: same scripts,
same failure classes, real sdists, real auditwheel.
"""

from __future__ import annotations

import platform
from pathlib import Path

import pytest

from builder.backends import BuildOutcome
from builder.backends.native import NativeBackend
from builder.client import JobSpec
from common.config import BuilderSettings, TargetSettings
from common.states import FailureReason
from tests.sdists import make_sdist, pypi_sdist

CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
ARCH = platform.machine()
POLICY = f"manylinux2014_{ARCH}"
TAG = "cp{}{}".format(*platform.python_version_tuple()[:2])

pytestmark = pytest.mark.skipif(ARCH != "x86_64", reason="written for an x86_64 host")


def _backend(tmp_path: Path, timeout: int = 900) -> NativeBackend:
    settings = BuilderSettings(
        ca_bundle=CA_BUNDLE if CA_BUNDLE.exists() else None,
        work_dir=tmp_path,
        build_timeout=timeout,
    )
    return NativeBackend(settings, ARCH, TargetSettings(image="", python_tags=[TAG], policy=POLICY))


def _build(backend: NativeBackend, sdist: Path, workdir: Path) -> tuple[BuildOutcome, str]:
    name, version = sdist.name.removesuffix(".tar.gz").rsplit("-", 1)
    spec = JobSpec(1, name, version, ARCH, TAG, POLICY, sdist.name, "", "", None, 1)
    log_path = workdir / "build.log"
    with log_path.open("wb") as log:
        outcome = backend.build(spec, sdist, workdir / "job", log)
    return outcome, log_path.read_text(errors="replace")


def test_msgpack_builds_repairs_and_imports(tmp_path: Path) -> None:
    backend = _backend(tmp_path)
    assert backend.python_tags() == [TAG]
    outcome, log = _build(backend, pypi_sdist("msgpack", "1.1.0"), tmp_path)
    assert outcome.built, (outcome.reason, outcome.summary, log[-2000:])
    wheel = outcome.wheel
    assert wheel is not None
    assert f"{TAG}-{TAG}-" in wheel.name and "manylinux2014_x86_64" in wheel.name
    assert "auditwheel repair" in log and "smoke test passed" in log


def _c_sdist(tmp_path: Path, name: str, source: str) -> Path:
    setup = (
        "from setuptools import Extension, setup\n"
        f"setup(ext_modules=[Extension('{name}._speed', ['src/speed.c'])])\n"
    )
    files = {f"{name}/__init__.py": "", "src/speed.c": source, "setup.py": setup}
    return make_sdist(tmp_path / "src", tmp_path / "dist", name, "1.0", files)


def test_missing_header_is_a_missing_system_library_naming_it(tmp_path: Path) -> None:
    sdist = _c_sdist(tmp_path, "needsheader", "#include <nosuchlib.h>\nint x;\n")
    outcome, log = _build(_backend(tmp_path), sdist, tmp_path)
    assert "nosuchlib.h: No such file" in log
    assert outcome.reason == FailureReason.MISSING_SYSTEM_LIBRARY
    assert outcome.summary == "missing header nosuchlib.h"


def test_pure_python_result_is_not_an_arm_build(tmp_path: Path) -> None:
    files = {"purepkg/__init__.py": "X = 1\n"}
    sdist = make_sdist(tmp_path / "src", tmp_path / "dist", "purepkg", "1.0", files)
    outcome, _ = _build(_backend(tmp_path), sdist, tmp_path)
    assert outcome.reason == FailureReason.PURE_PYTHON


def test_a_build_past_its_time_limit_is_killed(tmp_path: Path) -> None:
    files = {
        "slowpkg/__init__.py": "",
        # Sleeps only when a wheel is built, not while this test makes the sdist.
        "setup.py": (
            "import sys, time\n"
            "if 'sdist' not in sys.argv and 'egg_info' not in sys.argv:\n"
            "    time.sleep(600)\n"
            "from setuptools import setup\nsetup()\n"
        ),
    }
    sdist = make_sdist(tmp_path / "src", tmp_path / "dist", "slowpkg", "1.0", files)
    outcome, log = _build(_backend(tmp_path, timeout=10), sdist, tmp_path)
    assert outcome.reason == FailureReason.TIMEOUT
    assert "killed after the time limit" in log

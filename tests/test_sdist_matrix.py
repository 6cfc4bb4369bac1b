"""Real sdists from PyPI (cached by tests/sdists.py) through the docker backend on aarch64
under QEMU: the outcome, failure class and summary each kind of project ends with.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from uuid import uuid4

import pytest
from packaging.utils import parse_wheel_filename

from builder.backends import BuildOutcome
from builder.backends.docker import DockerBackend
from builder.identity import BuilderIdentity
from common.config import BuilderSettings, load_settings
from common.job_spec import JobSpec
from common.recipes import Recipe
from common.states import FailureReason
from tests.builds import build_logged
from tests.sdists import make_sdist, pypi_sdist

pytestmark = [pytest.mark.docker, pytest.mark.slow]

CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
LZO_RECIPE = Recipe(apt=["liblzo2-dev"], yum=["lzo-devel"])


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One work folder for the module: its wheelhouse carries over between builds."""
    return tmp_path_factory.mktemp("matrix")


def _backend(work: Path, timeout: int = 1200) -> DockerBackend:
    builder = BuilderSettings(
        ca_bundle=CA_BUNDLE if CA_BUNDLE.exists() else None,
        work_dir=work / "work",
        build_timeout=timeout,
    )
    target = load_settings(None).targets["aarch64"]
    return DockerBackend(builder, "aarch64", target, BuilderIdentity("matrix-test", uuid4().hex))


def _build(
    sdist: Path, work: Path, job: str, recipe: Recipe | None = None, timeout: int = 1200
) -> tuple[BuildOutcome, str]:
    name, version = sdist.name.removesuffix(".tar.gz").rsplit("-", 1)
    spec = JobSpec(
        1, name, version, "aarch64", "cp311", "manylinux2014_aarch64", sdist.name, "", "", None,
        1, recipe,
    )  # fmt: skip
    backend = _backend(work, timeout)
    return build_logged(backend, spec, sdist, work, job)


def _assert_aarch64_wheel(outcome: BuildOutcome, log: str) -> zipfile.ZipFile:
    assert outcome.built, log[-3000:]
    assert outcome.wheel is not None
    _, _, _, tags = parse_wheel_filename(outcome.wheel.name)
    assert {tag.platform for tag in tags} >= {"manylinux2014_aarch64"}
    assert "smoke test passed" in log
    return zipfile.ZipFile(outcome.wheel)


def test_pure_python_sdist_is_not_an_arm_build(work: Path) -> None:
    outcome, log = _build(pypi_sdist("six", "1.16.0"), work, "six")
    assert outcome.reason is FailureReason.PURE_PYTHON, log[-2000:]
    assert not outcome.transient


# msgpack, a C extension from PyPI, is built, published and imported on arm64 by
# tests/test_e2e.py (`armwheels up`): not built a second time here.


# Cython projects (murmurhash with C++, frozenlist) are cross-built in tests/test_cross.py,
# as the farm builds them on an x86_64 host: not cythonized under QEMU here.


def test_system_library_fails_without_its_recipe_and_names_the_package(work: Path) -> None:
    outcome, log = _build(pypi_sdist("python-lzo", "1.15"), work, "lzo-bare")
    assert outcome.reason is FailureReason.MISSING_SYSTEM_LIBRARY, log[-3000:]
    assert "lzo" in outcome.summary
    assert "liblzo2-dev" in outcome.summary and "lzo-devel" in outcome.summary
    assert not outcome.transient


def test_system_library_builds_with_its_recipe_and_is_grafted(work: Path) -> None:
    outcome, log = _build(pypi_sdist("python-lzo", "1.15"), work, "lzo-recipe", LZO_RECIPE)
    wheel = _assert_aarch64_wheel(outcome, log)
    assert outcome.grafted is not None
    assert any(name.startswith("liblzo2") for name in outcome.grafted), outcome.grafted
    assert any("python_lzo.libs/liblzo2" in name for name in wheel.namelist())
    # The smoke test ran in the plain image, without the recipe's packages.
    assert "import lzo" in log


def test_compile_error_is_classified_with_its_first_error(work: Path) -> None:
    files = {
        "broken.c": "#include <Python.h>\nint broken(void) { return undeclared_thing; }\n",
        "setup.py": "from setuptools import setup, Extension\n"
        "setup(ext_modules=[Extension('broken', ['broken.c'])])\n",
    }
    sdist = make_sdist(work / "src", work / "dist", "broken", "1.0", files)
    outcome, log = _build(sdist, work, "broken")
    assert outcome.reason is FailureReason.COMPILE_ERROR, log[-3000:]
    assert "undeclared_thing" in outcome.summary
    assert not outcome.transient


def test_a_build_past_its_time_limit_is_killed(work: Path) -> None:
    outcome, log = _build(pypi_sdist("msgpack", "1.1.0"), work, "msgpack-slow", timeout=15)
    assert outcome.reason is FailureReason.TIMEOUT, log[-2000:]
    assert "killed after the time limit of 15 s" in log

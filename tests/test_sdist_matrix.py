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
from common.config import AutoPackagesSettings, BuilderSettings, load_settings
from common.job_spec import JobSpec
from common.recipes import Recipe
from common.states import FailureReason
from tests.builds import build_logged
from tests.sdists import make_sdist, pypi_sdist

pytestmark = [pytest.mark.docker, pytest.mark.slow]

CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One work folder for the module: its wheelhouse carries over between builds."""
    return tmp_path_factory.mktemp("matrix")


def _backend(
    work: Path, timeout: int = 1200, auto_packages: AutoPackagesSettings | None = None
) -> DockerBackend:
    builder = BuilderSettings(
        ca_bundle=CA_BUNDLE if CA_BUNDLE.exists() else None,
        work_dir=work / "work",
        build_timeout=timeout,
        auto_packages=auto_packages or AutoPackagesSettings(),
    )
    target = load_settings(None).targets["aarch64"]
    return DockerBackend(builder, "aarch64", target, BuilderIdentity("matrix-test", uuid4().hex))


def _build(
    sdist: Path,
    work: Path,
    job: str,
    recipe: Recipe | None = None,
    timeout: int = 1200,
    auto_packages: AutoPackagesSettings | None = None,
) -> tuple[BuildOutcome, str]:
    name, version = sdist.name.removesuffix(".tar.gz").rsplit("-", 1)
    spec = JobSpec(
        1, name, version, "aarch64", "cp311", "manylinux2014_aarch64", sdist.name, "", "", None,
        1, recipe,
    )  # fmt: skip
    backend = _backend(work, timeout, auto_packages)
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


def test_a_denied_system_package_fails_the_build_with_its_diagnosis(work: Path) -> None:
    deny = AutoPackagesSettings(deny=["liblzo2-dev"])
    outcome, log = _build(pypi_sdist("python-lzo", "1.15"), work, "lzo-denied", auto_packages=deny)
    assert outcome.reason is FailureReason.MISSING_SYSTEM_LIBRARY, log[-3000:]
    assert "lzo" in outcome.summary
    assert "liblzo2-dev" in outcome.summary and "lzo-devel" in outcome.summary
    assert "liblzo2-dev is on builder.auto_packages.deny" in outcome.summary
    assert not outcome.transient and outcome.auto_packages is None


def test_a_missing_system_library_is_installed_by_the_farm_and_grafted(work: Path) -> None:
    """No recipe: the first build fails naming liblzo2-dev, the builder installs it into
    a derived image (the one a recipe with that package gets) and builds again within
    the same attempt; the library is grafted and the wheel imports in the plain image."""
    outcome, log = _build(pypi_sdist("python-lzo", "1.15"), work, "lzo-auto")
    assert "auto packages: the build needs liblzo2-dev (missing " in log, log[-3000:]
    wheel = _assert_aarch64_wheel(outcome, log)
    assert outcome.auto_packages == ["liblzo2-dev"]
    assert outcome.build_packages == ["liblzo2-dev"] and outcome.package_manager == "apt-get"
    assert outcome.grafted is not None
    assert any(name.startswith("liblzo2") for name in outcome.grafted), outcome.grafted
    assert any("python_lzo.libs/liblzo2" in name for name in wheel.namelist())
    # The same derived image a recipe asking for the package builds in.
    assert f"{_backend(work).target.image}-recipe-" in log
    # The smoke test ran in the plain image, without the added package.
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

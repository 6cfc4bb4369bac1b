"""The cross path (builder/backends/cross.py): real sdists compiled on the x86_64 host
for aarch64 and armv7l in the sandboxed cross container, each wheel checked for its
target (every ELF file's machine and class, auditwheel's policy) and imported under
QEMU; what defeats cross-compiling falls back to emulation in the same build, and a
wheel holding a host object is never published.
"""

from __future__ import annotations

import _ctypes
import platform
import struct
import zipfile
from pathlib import Path
from uuid import uuid4

import docker
import docker.errors
import pytest
from packaging.utils import parse_wheel_filename

from builder.backends import BuildOutcome
from builder.backends.cross import CrossBackend
from builder.identity import BuilderIdentity
from common.config import BuilderSettings, TargetSettings
from common.job_spec import JobSpec, NewerPolicy
from common.states import BuildPath, FailureReason
from tests.builds import build_logged
from tests.sdists import GETRANDOM_POLICY, getrandom_sdist, make_sdist, pypi_sdist

pytestmark = [pytest.mark.docker, pytest.mark.slow]

CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# e_machine and EI_CLASS of each target, from the ELF specification, written out here
# rather than read from the code under test.
MACHINES = {"aarch64": (183, 2), "armv7l": (40, 1)}


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One work folder for the module: wheelhouses and sysroots carry over."""
    if platform.machine() != "x86_64":
        pytest.skip("the cross path is for x86_64 hosts")
    settings = BuilderSettings()
    try:
        docker.from_env(timeout=30).images.get(settings.cross_image)
    except docker.errors.ImageNotFound:
        pytest.fail(f"{settings.cross_image} is missing: armwheels image build --cross")
    return tmp_path_factory.mktemp("cross")


def _build(
    sdist: Path,
    work: Path,
    arch: str,
    job: str,
    emulate_because: str | None = None,
    newer_policy: NewerPolicy = "publish",
) -> tuple[BuildOutcome, str]:
    name, version = sdist.name.removesuffix(".tar.gz").rsplit("-", 1)
    spec = JobSpec(
        1, name, version, arch, "cp311", f"manylinux2014_{arch}", sdist.name, "", "", None,
        1, None, emulate_because, newer_policy,
    )  # fmt: skip
    builder = BuilderSettings(
        ca_bundle=CA_BUNDLE if CA_BUNDLE.exists() else None,
        work_dir=work / "work",
        build_timeout=1200,
    )
    # The bookworm images of both arches: the cross image's CPython is bookworm's 3.11.
    target = TargetSettings.model_validate(
        {"arch": arch, "image": f"armwheels/build-{arch}:bookworm", "policy": spec.policy}
    )
    backend = CrossBackend(builder, arch, target, BuilderIdentity("cross-test", uuid4().hex))
    return build_logged(backend, spec, sdist, work, job)


def _elf_files(wheel: Path) -> dict[str, tuple[int, int]]:
    """Every ELF member of the wheel: (e_machine, EI_CLASS)."""
    found = {}
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            head = archive.read(name)[:20]
            if head[:4] == b"\x7fELF":
                found[name] = (struct.unpack_from("<H", head, 18)[0], head[4])
    return found


@pytest.mark.parametrize(
    ("project", "version", "arch"),
    [
        ("msgpack", "1.1.0", "aarch64"),  # C
        ("murmurhash", "1.0.16", "aarch64"),  # Cython and C++, Cython from the wheelhouse
        ("frozenlist", "1.5.0", "armv7l"),  # Cython
    ],
)
def test_real_sdists_are_cross_built_checked_and_imported(
    work: Path, project: str, version: str, arch: str
) -> None:
    wheelhouses = work / "work" / "wheelhouse"
    if project == "frozenlist":
        # murmurhash, built before it, left Cython in the host wheelhouse but only in the
        # aarch64 one; frozenlist asks for Cython at build time (not in pyproject.toml),
        # so the armv7l build finds the host's Cython and must fetch the target's.
        assert list((wheelhouses / "x86_64-for-cross").glob("cython-*"))
        assert not list((wheelhouses / "armv7l").glob("cython-*"))
    outcome, log = _build(pypi_sdist(project, version), work, arch, f"{project}-{arch}")
    assert outcome.built, log[-4000:]
    if project == "frozenlist":
        assert "the target has no wheel of cython==" in log
        assert "offline build: round 2 with cython==" in log
    assert outcome.build_path is BuildPath.CROSS
    assert outcome.wheel is not None
    assert f"cross-compiling for {'aarch64' if arch == 'aarch64' else 'arm'}" in log
    _, _, _, tags = parse_wheel_filename(outcome.wheel.name)
    assert {tag.platform for tag in tags} >= {f"manylinux2014_{arch}"}
    objects = _elf_files(outcome.wheel)
    assert objects, "a C extension's wheel without any ELF file"
    assert set(objects.values()) == {MACHINES[arch]}, objects
    # The import ran in the target's image, under QEMU.
    assert "smoke test passed" in log
    assert "emulated path" not in log


HELPER_SETUP = """
import os, subprocess, sysconfig
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

class with_helper(build_ext):
    # Like projects that probe their target by running a program they compile: the
    # helper must run where it is built for, which a cross build cannot do.
    def run(self):
        os.makedirs(self.build_temp, exist_ok=True)
        helper = os.path.join(self.build_temp, "probe")
        cc = os.environ.get("CC") or sysconfig.get_config_var("CC")
        subprocess.check_call(cc.split() + ["-o", helper, "probe.c"])
        value = subprocess.check_output([helper]).decode().strip()
        with open("probed.h", "w") as header:
            header.write(f"#define PROBED {value}\\n")
        super().run()

setup(
    ext_modules=[Extension("probed", ["probed.c"])],
    py_modules=["probed_six"],
    cmdclass={"build_ext": with_helper},
)
"""
# Imported by the smoke test: the wheel's runtime requirement (not its extra's) must be
# installed with it, from the builder's wheelhouse, though the smoke test is offline.
PROBED_SIX = "import six\n"
PROBE_C = '#include <stdio.h>\nint main(void) { printf("%d\\n", (int) sizeof(long)); return 0; }\n'
PROBED_C = """
#include <Python.h>
#include "probed.h"
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "probed", NULL, -1, NULL};
PyMODINIT_FUNC PyInit_probed(void) {
    PyObject *m = PyModule_Create(&module);
    if (m != NULL) PyModule_AddIntConstant(m, "LONG_SIZE", PROBED);
    return m;
}
"""


def test_a_build_that_runs_its_own_compiled_helper_falls_back_to_emulation(
    work: Path, tmp_path: Path
) -> None:
    files: dict[str, str | bytes] = {
        "setup.py": HELPER_SETUP,
        "probe.c": PROBE_C,
        "probed.c": PROBED_C,
        "probed_six.py": PROBED_SIX,
        "MANIFEST.in": "include probe.c\n",
    }
    sdist = make_sdist(
        tmp_path, tmp_path / "dist", "probed", "1.0", files, dependencies=["six"],
        extras={"colour": ["colorama"]},
    )  # fmt: skip
    outcome, log = _build(sdist, work, "aarch64", "probed")
    assert outcome.built, log[-4000:]
    assert outcome.build_path is BuildPath.EMULATED_AFTER_CROSS
    assert "cross build abandoned" in log
    assert "published from the emulated path" in log
    assert "smoke test: fetching the wheel's requirements: six\n" in log
    assert "installed with its requirements" in log
    assert outcome.wheel is not None
    assert set(_elf_files(outcome.wheel).values()) == {MACHINES["aarch64"]}


PLANTED_SETUP = """
from setuptools import Extension, setup
setup(
    packages=["planted"],
    package_data={"planted": ["*.so"]},
    ext_modules=[Extension("planted._speed", ["speed.c"])],
)
"""
SPEED_C = """
#include <Python.h>
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_speed", NULL, -1, NULL};
PyMODINIT_FUNC PyInit__speed(void) { return PyModule_Create(&module); }
"""


def test_a_wheel_holding_a_host_object_is_never_published(work: Path, tmp_path: Path) -> None:
    """The classic cross-build failure, forced: an x86-64 shared object (one of the test
    interpreter's own) beside a correctly cross-compiled extension. The checks refuse the
    cross-built wheel; the emulated build makes the same wheel and is refused too."""
    files: dict[str, str | bytes] = {
        "setup.py": PLANTED_SETUP,
        "speed.c": SPEED_C,
        "planted/__init__.py": "",
        "planted/host.so": Path(_ctypes.__file__).read_bytes(),
        "MANIFEST.in": "include planted/*.so\n",
    }
    sdist = make_sdist(tmp_path, tmp_path / "dist", "planted", "1.0", files)
    outcome, log = _build(sdist, work, "aarch64", "planted")
    assert not outcome.built, log[-4000:]
    assert outcome.wheel is None
    assert outcome.build_path is BuildPath.EMULATED_AFTER_CROSS
    assert outcome.reason in (FailureReason.UPLOAD_REJECTED, FailureReason.AUDITWHEEL_REJECTED)
    assert "cross build abandoned" in log
    assert "planted/host.so" in log
    assert "smoke test passed" not in log


def test_a_job_the_master_wants_emulated_is_not_cross_built(work: Path, tmp_path: Path) -> None:
    """The master's word (a recipe's emulate = true, a project that fell back before)."""
    files: dict[str, str | bytes] = {
        "setup.py": "from setuptools import Extension, setup\n"
        'setup(ext_modules=[Extension("_speed", ["speed.c"])])\n',
        "speed.c": SPEED_C,
    }
    sdist = make_sdist(tmp_path, tmp_path / "dist", "speed", "1.0", files)
    outcome, log = _build(sdist, work, "aarch64", "speed-emulated", "its recipe says so")
    assert outcome.built, log[-4000:]
    assert outcome.build_path is BuildPath.EMULATED
    assert "build path: emulated, since its recipe says so" in log
    assert "cross-compiling" not in log
    # Built under QEMU, repaired natively: auditwheel ran in the cross image, for aarch64.
    assert "repairing speed-1.0-cp311-cp311-linux_aarch64.whl for aarch64 on x86_64" in log
    assert "repair on the builder's host:" in log


@pytest.mark.parametrize("newer_policy", ["publish", "fail"])
def test_a_wheel_newer_than_its_target_is_handled_as_the_target_says(
    work: Path, tmp_path: Path, newer_policy: NewerPolicy
) -> None:
    """The native backend's case (tests/test_native_backend.py), on the docker backend's
    cross path: against the build image's glibc 2.36 the wheel cannot be manylinux2014.
    Published, it gets the same policy the native backend gives it; failed, auditwheel's
    verdict ends the job, and the emulated path (the same image's C library) is spared."""
    sdist = getrandom_sdist(tmp_path / "src", tmp_path / "dist")
    outcome, log = _build(sdist, work, "aarch64", f"randbyte-{newer_policy}", None, newer_policy)
    if newer_policy == "fail":
        assert outcome.reason is FailureReason.AUDITWHEEL_REJECTED, log[-4000:]
        assert f"the wheel needs {GETRANDOM_POLICY}_aarch64" in outcome.summary
        assert "GLIBC_2.25" in outcome.summary
        assert outcome.build_path is BuildPath.CROSS
        assert "this target fails a wheel that meets only a newer policy" in log
        assert "not built again" in log and "emulated path" not in log
        return
    assert outcome.built, log[-4000:]
    assert outcome.build_path is BuildPath.CROSS
    assert outcome.wheel is not None
    _, _, _, tags = parse_wheel_filename(outcome.wheel.name)
    assert {tag.platform for tag in tags} == {f"{GETRANDOM_POLICY}_aarch64"}
    assert "smoke test passed" in log

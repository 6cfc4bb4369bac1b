"""One release for every CPython of an arch: the shipped armv7l targets for bullseye's
CPython 3.9 (`armv7l`) and bookworm's 3.11 (`armv7l-bookworm`) build the same real
C-extension sdist, each through the backend its builder picks on this host, into a wheel
of its own interpreter's ABI that the farm's smoke test installs and imports in that
target's image under QEMU. Both images are the ones the other armv7l tests build in, so
this costs no image of its own; trixie's 3.13 targets are made the same way
(`armwheels image build --target aarch64-trixie`, docs/targets.md)."""

from __future__ import annotations

import platform
import struct
import zipfile
from pathlib import Path
from uuid import uuid4

import pytest
from packaging.utils import parse_wheel_filename

from builder.backends import BuildOutcome
from builder.identity import BuilderIdentity
from builder.worker import choose_backend
from common.config import Settings, load_settings
from common.states import BuildPath
from tests.builds import build_logged, builder_settings_in, shipped_target, target_spec
from tests.sdists import make_sdist

TARGETS = ("armv7l", "armv7l-bookworm")
# e_machine and EI_CLASS of 32-bit ARM, from the ELF specification.
ARM_ELF = (40, 1)
# Each Debian release's CPython (its python3 package), as ARM devices run them.
DEBIAN_CPYTHON = {"bullseye": "cp39", "bookworm": "cp311", "trixie": "cp313"}

_PARSE_C = """#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdlib.h>

static PyObject *parse(PyObject *self, PyObject *args) {
    const char *text;
    char *end;
    if (!PyArg_ParseTuple(args, "s", &text)) return NULL;
    long value = strtol(text, &end, 0);
    if (end == text || *end != '\\0') {
        PyErr_Format(PyExc_ValueError, "not a number: %s", text);
        return NULL;
    }
    return PyLong_FromLong(value);
}
static PyMethodDef methods[] = {{"parse", parse, METH_VARARGS, ""}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_parse", NULL, -1, methods};
PyMODINIT_FUNC PyInit__parse(void) { return PyModule_Create(&module); }
"""


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One work folder for the module: wheelhouses and sysroots carry over."""
    return tmp_path_factory.mktemp("cpythons")


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`parsenum` 1.0: one C extension (not on the stable ABI), one sdist for every
    target."""
    folder = tmp_path_factory.mktemp("parsenum")
    files = {
        "parsenum/__init__.py": "from parsenum._parse import parse\n",
        "src/_parse.c": _PARSE_C,
        "setup.py": (
            "from setuptools import Extension, setup\n"
            "setup(packages=['parsenum'],\n"
            "      ext_modules=[Extension('parsenum._parse', ['src/_parse.c'])])\n"
        ),
    }
    return make_sdist(folder / "src", folder / "dist", "parsenum", "1.0", files)


@pytest.fixture(scope="module")
def farm(work: Path) -> Settings:
    """The shipped targets, both of them on, built as `armwheels builder --target NAME`
    builds them here: the cross path on an x86_64 host (a job whose CPython the cross
    image lacks is emulated), else emulated."""
    for name in TARGETS:
        shipped_target(name)
    backend = "cross" if platform.machine() == "x86_64" else "docker"
    settings = load_settings(None)
    settings.builder = builder_settings_in(work).model_copy(update={"backend": backend})
    for name in TARGETS:
        settings.targets[name] = settings.targets[name].model_copy(update={"enabled": True})
    return settings


def _build(farm: Settings, name: str, sdist: Path, work: Path) -> tuple[BuildOutcome, str]:
    """The job the master would send for the target (its CPython, policy and newer_policy),
    built by the backend its builder would use."""
    target = farm.targets[name]
    spec = target_spec(sdist, target, farm.newer_policy(name), name=name)
    backend = choose_backend(farm, name, BuilderIdentity(name, uuid4().hex))
    assert backend.python_tags() == target.python_tags
    return build_logged(backend, spec, sdist, work, name)


def _elf_members(wheel: Path) -> dict[str, tuple[int, int]]:
    """Every ELF member of the wheel: (e_machine, EI_CLASS)."""
    found = {}
    with zipfile.ZipFile(wheel) as archive:
        for info in archive.infolist():
            head = archive.read(info)[:20]
            if head[:4] == b"\x7fELF":
                order = "<" if head[5] == 1 else ">"
                found[info.filename] = (struct.unpack(order + "H", head[18:20])[0], head[4])
    return found


def test_each_arch_has_a_target_for_each_debian_cpython() -> None:
    """The shipped targets: per arch, one local image per Debian release, building that
    release's CPython; only aarch64's 3.11 on, and every one publishing a wheel that
    meets only a newer policy."""
    targets = load_settings(None).targets
    for arch in ("aarch64", "armv7l"):
        built = {t.suite: t.python_tags for t in targets.values() if t.arch == arch}
        assert built == {suite: [tag] for suite, tag in DEBIAN_CPYTHON.items()}
        images = {t.image for t in targets.values() if t.arch == arch}
        assert images == {f"armwheels/build-{arch}:{suite}" for suite in DEBIAN_CPYTHON}
    assert [name for name, target in targets.items() if target.enabled] == ["aarch64"]
    assert {target.newer_policy for target in targets.values()} == {"publish"}


@pytest.mark.docker
@pytest.mark.slow
def test_one_release_is_built_for_cpython_3_9_and_3_11_on_armv7l(
    farm: Settings, release: Path, work: Path
) -> None:
    shipped = {name: farm.targets[name] for name in TARGETS}
    assert {n: (t.suite, t.python_tags, t.policy) for n, t in shipped.items()} == {
        "armv7l": ("bullseye", ["cp39"], "manylinux_2_31_armv7l"),
        "armv7l-bookworm": ("bookworm", ["cp311"], "manylinux_2_31_armv7l"),
    }
    # What an operator gets unless they say otherwise: a wheel needing a newer glibc than
    # the policy's is published under the policy it meets.
    assert {farm.newer_policy(name) for name in TARGETS} == {"publish"}
    expected = {
        "armv7l": ("cp39", {"manylinux_2_31_armv7l"}),
        "armv7l-bookworm": ("cp311", {"manylinux_2_31_armv7l"}),
    }
    wheels = {}
    for name, (python_tag, platforms) in expected.items():
        outcome, log = _build(farm, name, release, work)
        assert outcome.built and outcome.wheel is not None, log[-4000:]
        project, version, _, tags = parse_wheel_filename(outcome.wheel.name)
        assert (project, str(version)) == ("parsenum", "1.0")
        assert {(t.interpreter, t.abi) for t in tags} == {(python_tag, python_tag)}
        # The target's policy, and the older ones auditwheel finds the wheel meets too.
        assert {t.platform for t in tags} >= platforms, log[-4000:]
        extension = f"parsenum/_parse.cpython-{python_tag[2:]}-arm-linux-gnueabihf.so"
        assert _elf_members(outcome.wheel) == {extension: ARM_ELF}
        # Installed for the target and imported by its own interpreter under QEMU: the
        # extension module loaded is the one of that CPython.
        imported = log.split("::armwheels:: import parsenum._parse")[-1]
        assert extension.rsplit("/", 1)[1] in imported, log[-4000:]
        assert "::armwheels:: smoke test passed" in log
        wheels[name] = outcome
    if platform.machine() == "x86_64":
        # The cross image's CPython is bookworm's: 3.9 is built under emulation.
        assert wheels["armv7l-bookworm"].build_path is BuildPath.CROSS
        assert wheels["armv7l"].build_path is BuildPath.EMULATED

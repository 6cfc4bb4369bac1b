"""Real sdists for the tests: small projects built here, and real ones from PyPI (cached)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import httpx

CACHE = Path(os.environ.get("ARMWHEELS_TEST_CACHE", Path.home() / ".cache" / "armwheels-tests"))
BUILD_SDIST = (
    "import sys\nfrom setuptools import build_meta\nprint(build_meta.build_sdist(sys.argv[1]))\n"
)


def make_sdist(
    workdir: Path,
    dest: Path,
    name: str,
    version: str,
    files: Mapping[str, str | bytes],
    requires_python: str | None = None,
    dependencies: list[str] | None = None,
    extras: dict[str, list[str]] | None = None,
    build_requires: list[str] | None = None,
) -> Path:
    """Build a real sdist with setuptools (offline: no build isolation needed here).

    `files` maps paths in the source tree to their text; a `setup.py` among them can
    declare C extensions.
    """
    source = workdir / f"src-{name}-{version}"
    for path, text in files.items():
        (source / path).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            (source / path).write_bytes(text)
        else:
            (source / path).write_text(text)
    pyproject = [
        "[build-system]",
        f"requires = {json.dumps(['setuptools', *(build_requires or [])])}",
        'build-backend = "setuptools.build_meta"',
        "",
        "[project]",
        f'name = "{name}"',
        f'version = "{version}"',
    ]
    if requires_python:
        pyproject.append(f'requires-python = "{requires_python}"')
    if dependencies:
        pyproject.append(f"dependencies = {json.dumps(dependencies)}")
    if extras:
        pyproject.append("[project.optional-dependencies]")
        pyproject += [f"{name} = {json.dumps(items)}" for name, items in extras.items()]
    (source / "pyproject.toml").write_text("\n".join(pyproject) + "\n")
    dest.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [sys.executable, "-c", BUILD_SDIST, str(dest)],
        cwd=source,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return dest / result.stdout.strip().splitlines()[-1]


def pypi_sdist(project: str, version: str) -> Path:
    """A real sdist from PyPI (Simple API, through the machine's proxy), cached on disk."""
    # An old release may have both: the .tar.gz, as pip prefers.
    return _pypi_file(project, (f"{project}-{version}.tar.gz", f"{project}-{version}.zip"))


def pypi_wheel(project: str, version: str) -> Path:
    """A real pure-Python wheel from PyPI (for a local upstream index), cached on disk."""
    return _pypi_file(project, (f"{project}-{version}-py3-none-any.whl",))


# The build requirements of the sdists the tests serve from a local upstream index: a
# builder takes build requirements from the farm's upstream index only, as wheels.
BUILD_REQUIREMENT_WHEELS = (("setuptools", "75.8.0"),)


def add_build_requirements(packages: Path) -> None:
    """Put the wheels every test sdist's build needs into a local index's folder."""
    packages.mkdir(parents=True, exist_ok=True)
    for project, version in BUILD_REQUIREMENT_WHEELS:
        wheel = pypi_wheel(project, version)
        shutil.copyfile(wheel, packages / wheel.name)


def _pypi_file(project: str, names: tuple[str, ...]) -> Path:
    """The first of `names` that PyPI has for `project`, downloaded once and checked."""
    CACHE.mkdir(parents=True, exist_ok=True)
    for name in names:
        path = CACHE / name
        expected = path.with_name(path.name + ".sha256")
        if (
            path.exists()
            and expected.exists()
            and hashlib.sha256(path.read_bytes()).hexdigest() == expected.read_text().strip()
        ):
            return path
    page = httpx.get(
        f"https://pypi.org/simple/{project}/",
        headers={"Accept": "application/vnd.pypi.simple.v1+json"},
        timeout=60,
    ).json()
    entry = next(f for name in names for f in page["files"] if f["filename"] == name)
    data = httpx.get(entry["url"], timeout=300, follow_redirects=True).content
    digest = hashlib.sha256(data).hexdigest()
    assert digest == entry["hashes"]["sha256"], f"{entry['filename']}: hash mismatch"
    target = CACHE / str(entry["filename"])
    # Two test workers may fetch the same file: each renames a whole file into place.
    partial = target.with_name(f".{target.name}.{os.getpid()}")
    partial.write_bytes(data)
    partial.replace(target)
    partial.write_text(digest)
    partial.replace(target.with_name(target.name + ".sha256"))
    return target


# Three small C-extension projects whose wheels the farm must judge by their contents.
_MODULE_C = """#define PY_SSIZE_T_CLEAN
#include <Python.h>
{body}
static PyMethodDef methods[] = {{{{"{function}", {function}, METH_VARARGS, ""}},
                                 {{NULL, NULL, 0, NULL}}}};
static struct PyModuleDef module = {{PyModuleDef_HEAD_INIT, "{module}", NULL, -1, methods}};
PyMODINIT_FUNC PyInit_{module}(void) {{ return PyModule_Create(&module); }}
"""
_ADD = """static PyObject *add(PyObject *self, PyObject *args) {
    long a, b;
    if (!PyArg_ParseTuple(args, "ll", &a, &b)) return NULL;
    return PyLong_FromLong(a + b);
}"""


def abi3_sdist(workdir: Path, dest: Path) -> Path:
    """`abidemo`: an extension on the stable ABI, so its wheel is `cp36-abi3`, which every
    CPython from 3.6 on installs. It is named without its `ext_package`, as many setup
    scripts do, so setuptools writes a stale `_speedups` into top_level.txt although the
    module installs as `abidemo._speedups`."""
    files = {
        "abidemo/__init__.py": "from abidemo._speedups import add\n",
        "src/speedups.c": _MODULE_C.format(body=_ADD, function="add", module="_speedups"),
        "setup.py": (
            "from setuptools import Extension, setup\n"
            "setup(\n"
            "    packages=['abidemo'],\n"
            "    ext_package='abidemo',\n"
            "    ext_modules=[Extension('_speedups', ['src/speedups.c'], py_limited_api=True,\n"
            "                           define_macros=[('Py_LIMITED_API', '0x03060000')])],\n"
            "    options={'bdist_wheel': {'py_limited_api': 'cp36'}},\n"
            ")\n"
        ),
    }
    return make_sdist(workdir, dest, "abidemo", "1.0", files)


def _extension_sdist(
    workdir: Path, dest: Path, package: str, module: str, function: str, body: str, init: str = ""
) -> Path:
    """`package` 1.0 with one C extension, `package.module`, whose `function` is `body`."""
    files = {
        f"{package}/__init__.py": init,
        f"src/{module}.c": _MODULE_C.format(body=body, function=function, module=module),
        "setup.py": (
            "from setuptools import Extension, setup\n"
            f"setup(packages=['{package}'],\n"
            f"      ext_modules=[Extension('{package}.{module}', ['src/{module}.c'])])\n"
        ),
    }
    return make_sdist(workdir, dest, package, "1.0", files)


UNRESOLVED_SYMBOL = "armwheels_defined_nowhere"


def unloadable_extension_sdist(workdir: Path, dest: Path) -> Path:
    """`unloadable`: builds and links (a shared object may leave symbols undefined), but
    its extension cannot be imported: the symbol it calls exists in no library."""
    body = (
        f"extern long {UNRESOLVED_SYMBOL}(void);\n"
        "static PyObject *call(PyObject *self, PyObject *args) {\n"
        f"    return PyLong_FromLong({UNRESOLVED_SYMBOL}());\n"
        "}"
    )
    return _extension_sdist(workdir, dest, "unloadable", "_broken", "call", body)


_RAND_BYTE = """#include <sys/random.h>
static PyObject *rand_byte(PyObject *self, PyObject *args) {
    unsigned char byte;
    if (getrandom(&byte, 1, 0) != 1) return PyErr_SetFromErrno(PyExc_OSError);
    return PyLong_FromLong(byte);
}"""
# getrandom() is GLIBC_2.25, past manylinux2014's 2.17; auditwheel has no 2_25 policy, so
# the most compatible one such a wheel meets is manylinux_2_26, on every arch.
GETRANDOM_POLICY = "manylinux_2_26"


def getrandom_sdist(workdir: Path, dest: Path) -> Path:
    """`randbyte`: one call to a glibc 2.25 function, so its wheel meets only a newer
    policy than manylinux2014 wherever it is built against glibc 2.25 or later."""
    init = "from randbyte._speed import rand_byte\n"
    return _extension_sdist(workdir, dest, "randbyte", "_speed", "rand_byte", _RAND_BYTE, init)


_DLSYM_COUNT = """#include <dlfcn.h>
static PyObject *has_symbol(PyObject *self, PyObject *args) {
    const char *name;
    if (!PyArg_ParseTuple(args, "s", &name)) return NULL;
    return PyBool_FromLong(dlsym(RTLD_DEFAULT, name) != NULL);
}"""
# glibc 2.34 moved libdl into libc under the version GLIBC_2.34, on every arch: linked
# against 2.34 or later, a call to dlsym() needs it.
DLSYM_GLIBC = "GLIBC_2.34"


def dlsym_sdist(workdir: Path, dest: Path) -> Path:
    """`hassym`: one call to dlsym(), which needs glibc 2.34 wherever it is linked
    against glibc 2.34 or later, and no more than 2.17 against an older one."""
    init = "from hassym._speed import has_symbol\n"
    return _extension_sdist(workdir, dest, "hassym", "_speed", "has_symbol", _DLSYM_COUNT, init)


_ZLIB_VERSION = """extern const char *zlibVersion(void);
static PyObject *version(PyObject *self, PyObject *args) {
    return PyUnicode_FromString(zlibVersion());
}"""


def zlib_linking_sdist(workdir: Path, dest: Path) -> Path:
    """`zver`: an extension linked against the system's libz.so.1 (no headers needed: it
    declares the one function it calls), so its wheel loads a library of the system's
    own package (zlib1g on Debian, in every base system)."""
    files = {
        "zver/__init__.py": "from zver._speed import version\n",
        "src/_speed.c": _MODULE_C.format(body=_ZLIB_VERSION, function="version", module="_speed"),
        "setup.py": (
            "from setuptools import Extension, setup\n"
            "setup(packages=['zver'],\n"
            "      ext_modules=[Extension('zver._speed', ['src/_speed.c'],\n"
            "                             libraries=[':libz.so.1'])])\n"
        ),
    }
    return make_sdist(workdir, dest, "zver", "1.0", files)

"""Cross-compiles one sdist for an ARM target, in the cross container (the host's arch).

Runs with the tools venv's Python (pyproject_hooks), after cross_build.sh made an empty
build venv of the host's interpreter, the same CPython version as the target's:
  1. the sdist is unpacked and its [build-system] read (setuptools' legacy backend when
     it has none, as pip does);
  2. its build requirements are installed in the build venv as host wheels (from the
     builder's host wheelhouse: they run here), then those the backend asks for
     (get_requires_for_build_wheel);
  3. a requirement also offered as a target wheel (numpy's C API, for one) gets that
     wheel's headers and static libraries over its host ones: the host copy runs, the
     target's files are what the extension compiles and links against;
  4. build_wheel runs with the target's view: its sysconfig data (EXT_SUFFIX, SOABI,
     flags), read from the sysroot with the include and library paths moved into it,
     _PYTHON_HOST_PLATFORM for the wheel's platform tag, and the cross compilers with
     --sysroot for CC, CXX and the link.
argv: sdist, build venv's python, dist folder, arch, GNU triplet, sysroot.
Exit codes as build.sh's: 11 the build failed (pip's own words say when for want of a
requirement), 14 the environment is not fit for a cross build.
"""

from __future__ import annotations

import ast
import json
import os
import pprint
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from pyproject_hooks import BuildBackendHookCaller, default_subprocess_runner

TOOLS_PIP = str(Path(sys.executable).with_name("pip"))  # the tools venv's, 23 or newer
EXIT_BUILD_FAILED = 11
EXIT_ENVIRONMENT = 14
LEGACY_BACKEND = "setuptools.build_meta:__legacy__"
LEGACY_REQUIRES = ["setuptools>=40.8.0", "wheel"]
# Files of a build dependency that a compile or a link reads: the target wheel's own.
LINKED_SUFFIXES = {".h", ".hh", ".hpp", ".hxx", ".inc", ".a", ".pc"}
# The sysconfig paths that point at the target's files: moved into the sysroot.
SYSROOT_VARIABLES = (
    "INCLUDEPY",
    "CONFINCLUDEPY",
    "INCLUDEDIR",
    "CONFINCLUDEDIR",
    "LIBDIR",
    "LIBPL",
)
COMPILER_VARIABLES = ("CC", "CXX", "LDSHARED", "LDCXXSHARED", "BLDSHARED", "CPP")


class CrossFailed(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def step(text: str) -> None:
    print(f"::armwheels:: {text}", flush=True)


def unpack(sdist: Path, into: Path) -> Path:
    """The sdist's project folder. The builder checked the archive on its host already
    (nothing outside its root, no links or special files)."""
    into.mkdir(parents=True, exist_ok=True)
    if sdist.name.endswith(".zip"):
        with zipfile.ZipFile(sdist) as archive:
            archive.extractall(into)  # noqa: S202  (checked on the host, see the docstring)
    else:
        with tarfile.open(sdist) as archive:
            if hasattr(tarfile, "data_filter"):
                archive.extractall(into, filter="data")
            else:  # Python before 3.11.4 (Debian bookworm's): the host's check stands
                archive.extractall(into)  # noqa: S202
    entries = [entry for entry in into.iterdir() if entry.is_dir()]
    if len(entries) == 1 and not (into / "setup.py").exists():
        return entries[0]
    return into


def build_system(source: Path) -> tuple[list[str], str, list[str] | None]:
    """[build-system]'s requires, backend and backend-path (PEP 517 and 518 defaults)."""
    pyproject = source / "pyproject.toml"
    if not pyproject.is_file():
        return LEGACY_REQUIRES, LEGACY_BACKEND, None
    try:
        data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CrossFailed(f"pyproject.toml is not TOML: {exc}", EXIT_BUILD_FAILED) from exc
    system = data.get("build-system", {})
    if not isinstance(system, dict) or "requires" not in system:
        return LEGACY_REQUIRES, LEGACY_BACKEND, None
    requires = [str(item) for item in system.get("requires", [])]
    backend = str(system.get("build-backend", LEGACY_BACKEND))
    path = system.get("backend-path")
    return requires, backend, [str(item) for item in path] if isinstance(path, list) else None


def pip_install(python: str, requirements: Sequence[str]) -> None:
    if not requirements:
        return
    step(f"installing build requirements (host wheels): {' '.join(requirements)}")
    command = [TOOLS_PIP, "--python", python, "install", "--no-cache-dir", "--only-binary=:all:"]
    done = subprocess.run([*command, *requirements], check=False)
    if done.returncode != 0:
        raise CrossFailed("the build requirements could not be installed", EXIT_BUILD_FAILED)


INSTALLED_SCRIPT = """
import importlib.metadata as m, json, re, sys
suffixes = set(sys.argv[1:])
found = {}
for d in m.distributions():
    wheel = d.read_text("WHEEL") or ""
    compiled = "root-is-purelib: false" in wheel.lower()
    linked = [str(f) for f in d.files or () if f.suffix in suffixes]
    name = re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower()
    found[name] = [d.version, str(d.locate_file("")), compiled, linked]
print(json.dumps(found))
"""


def installed(python: str) -> dict[str, tuple[str, Path, bool, list[str]]]:
    """Distribution name (normalised) -> (version, site-packages, compiled, the files a
    compile or link reads) in the build venv."""
    command = [python, "-c", INSTALLED_SCRIPT, *sorted(LINKED_SUFFIXES)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise CrossFailed(f"cannot list the build venv: {done.stderr.strip()}", EXIT_ENVIRONMENT)
    found = json.loads(done.stdout)
    return {
        name: (version, Path(site), bool(compiled), list(linked))
        for name, (version, site, compiled, linked) in found.items()
    }


def overlay_target_files(python: str, target_wheels: Path | None) -> None:
    """Put the target wheel's headers and static libraries over those of each compiled
    host requirement. A compiled requirement with such files and no wheel of the same
    version for the target (a pure one will do: its files are the same everywhere) cannot
    be vouched for: its headers may describe the host's ABI (numpy's sizes of C types),
    so the cross path gives up rather than build a wheel that imports and then fails."""
    offered: dict[tuple[str, str], Path] = {}
    if target_wheels is not None and target_wheels.is_dir():
        for wheel in target_wheels.glob("*.whl"):
            name, version = wheel.name.split("-")[:2]
            offered[(re.sub(r"[-_.]+", "-", name).lower(), version)] = wheel
    for name, (version, site, compiled, linked) in installed(python).items():
        if not compiled or not linked:
            continue
        match = offered.get((name, version))
        if match is None:
            # The builder fetches the target's wheel of it for another round, as it does
            # for a requirement pip found nowhere (builder/classify.py reads this line).
            step(f"the target has no wheel of {name}=={version}")
            message = (
                f"{name} {version} is a compiled build requirement with headers or libraries"
                " and the target has no wheel of it: its files would be the host's"
            )
            raise CrossFailed(message, EXIT_BUILD_FAILED)
        if match.name.endswith("-any.whl"):
            continue
        replaced = 0
        with zipfile.ZipFile(match) as archive:
            for member in archive.infolist():
                path = Path(member.filename)
                if member.is_dir() or path.suffix not in LINKED_SUFFIXES or ".." in path.parts:
                    continue
                destination = site / path
                if not destination.parent.is_dir():
                    continue
                with archive.open(member) as source, open(destination, "wb") as copy:
                    shutil.copyfileobj(source, copy)
                replaced += 1
        step(f"{name} {version}: {replaced} headers and libraries of the target's wheel")


def target_sysconfig(sysroot: Path, triplet: str, folder: Path) -> str:
    """Write the target's sysconfig data, moved into the sysroot, as a module in
    `folder`; returns its name for _PYTHON_SYSCONFIGDATA_NAME."""
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    stdlib = sysroot / "usr" / "lib" / version
    found = sorted(stdlib.glob(f"_sysconfigdata_*{triplet}.py"))
    if not found:
        message = f"the target image has no sysconfig data for {version} ({triplet})"
        raise CrossFailed(message, EXIT_ENVIRONMENT)
    source = found[-1]
    tree = ast.parse(source.read_text(encoding="utf-8"))
    values: dict[str, object] | None = None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "build_time_vars"
            for target in node.targets
        ):
            values = ast.literal_eval(node.value)
    if not isinstance(values, dict):
        raise CrossFailed(f"{source.name} holds no build_time_vars", EXIT_ENVIRONMENT)
    for key in SYSROOT_VARIABLES:
        value = values.get(key)
        if isinstance(value, str) and value.startswith("/"):
            values[key] = f"{sysroot}{value}"
    for key in COMPILER_VARIABLES:
        value = values.get(key)
        if isinstance(value, str) and value.strip():
            values[key] = cross_command(value, triplet, sysroot)
    name = source.stem
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(f"build_time_vars = {pprint.pformat(values)}\n")
    return name


def cross_command(command: str, triplet: str, sysroot: Path) -> str:
    """A compiler command line of the target's, with the cross compiler in front."""
    program, _, rest = command.strip().partition(" ")
    base = Path(program).name
    cxx = base.endswith(("g++", "c++", "clang++"))
    compiler = f"{triplet}-g++" if cxx else f"{triplet}-gcc"
    return f"{compiler} --sysroot={sysroot} {rest}".strip()


def cross_environment(arch: str, triplet: str, sysroot: Path, folder: Path) -> dict[str, str]:
    name = target_sysconfig(sysroot, triplet, folder)
    python_path = os.environ.get("PYTHONPATH", "")
    compiler = f"{triplet}-gcc --sysroot={sysroot}"
    return {
        "_PYTHON_HOST_PLATFORM": f"linux-{arch}",
        "_PYTHON_SYSCONFIGDATA_NAME": name,
        "PYTHONPATH": f"{folder}:{python_path}" if python_path else str(folder),
        "CC": compiler,
        "CXX": f"{triplet}-g++ --sysroot={sysroot}",
        "CPP": f"{compiler} -E",
        "AR": f"{triplet}-ar",
        "RANLIB": f"{triplet}-ranlib",
        "STRIP": f"{triplet}-strip",
        "READELF": f"{triplet}-readelf",
        "PKG_CONFIG_SYSROOT_DIR": str(sysroot),
        "PKG_CONFIG_LIBDIR": (
            f"{sysroot}/usr/lib/{triplet}/pkgconfig:{sysroot}/usr/lib/pkgconfig"
            f":{sysroot}/usr/share/pkgconfig"
        ),
    }


def main(argv: Sequence[str]) -> int:
    sdist, python, dist, arch, triplet, sysroot_text = argv
    sysroot = Path(sysroot_text)
    work = Path(tempfile.mkdtemp(prefix="cross-", dir=os.environ.get("TMPDIR")))
    source = unpack(Path(sdist), work / "source")
    requires, backend, backend_path = build_system(source)
    step(f"build backend {backend}")
    pip_install(python, requires)
    hooks = BuildBackendHookCaller(
        str(source), backend, backend_path=backend_path, python_executable=python
    )
    more = hooks.get_requires_for_build_wheel({})
    pip_install(python, [item for item in more if item not in requires])
    overlay_target_files(
        python, Path(os.environ.get("ARMWHEELS_TARGET_WHEELHOUSE", "/nonexistent"))
    )
    cross = cross_environment(arch, triplet, sysroot, work / "sysconfig")
    sysconfig_name = cross["_PYTHON_SYSCONFIGDATA_NAME"]
    step(f"cross-compiling for {triplet} with {cross['CC']} (sysconfig {sysconfig_name})")

    def runner(
        cmd: Sequence[str],
        cwd: str | None = None,
        extra_environ: Mapping[str, str] | None = None,
    ) -> None:
        default_subprocess_runner(cmd, cwd, {**(extra_environ or {}), **cross})

    started = time.monotonic()
    with hooks.subprocess_runner(runner):
        name = hooks.build_wheel(str(Path(dist).resolve()), {})
    step(f"built {name}")
    step(f"compile step: {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except CrossFailed as exc:
        step(f"cross build failed: {exc}")
        sys.exit(exc.code)
    except subprocess.CalledProcessError as exc:
        step(f"cross build failed: the build backend exited with {exc.returncode}")
        sys.exit(EXIT_BUILD_FAILED)
    except Exception as exc:  # the hooks' own errors: BackendUnavailable and the like
        step(f"cross build failed: {type(exc).__name__}: {exc}")
        sys.exit(EXIT_BUILD_FAILED)

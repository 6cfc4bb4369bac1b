"""Real package installers run on this x86_64 host for an ARM target, against a Simple index.

- pip: the newest patch release of every minor series from 20.3 (the first pip that
  understood PEP 600's manylinux_x_y tags) to the newest, each run straight from its
  wheel file with this host's Python (no venv), so Debian's pips (bullseye 20.3.4,
  bookworm 23.0.1, trixie 25.1.1) are among them.
- uv, from the project's venv.
- poetry and pdm, each installed once into its own venv in the cache.

The wheels and venvs live in ~/.cache/armwheels-tests/clients/ (ARMWHEELS_TEST_CACHE moves
it) and are fetched from PyPI only when absent; every client runs with no configuration of
this machine's, caches of its own under the directory it is given, and only the indexes
it is told about.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import httpx
from packaging.requirements import Requirement
from packaging.version import Version

from tests.sdists import CACHE
from tests.servers import clean_pip_env

CACHE_DIR = CACHE / "clients"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
PYPI_SIMPLE = "https://pypi.org/simple/"
PYPI_PIP_JSON = "https://pypi.org/pypi/pip/json"
TIMEOUT = 300

# The newest patch of each pip minor series since 20.3, as PyPI listed them on 2026-12-02
# (see newest_pip_per_series): version -> (wheel, sha256). All of them run on Python 3.11
# straight from the wheel file.
PIP_WHEELS: dict[str, tuple[str, str]] = {
    "20.3.4": (
        "pip-20.3.4-py2.py3-none-any.whl",
        "217ae5161a0e08c0fb873858806e3478c9775caffce5168b50ec885e358c199d",
    ),
    "21.0.1": (
        "pip-21.0.1-py3-none-any.whl",
        "37fd50e056e2aed635dec96594606f0286640489b0db0ce7607f7e51890372d5",
    ),
    "21.1.3": (
        "pip-21.1.3-py3-none-any.whl",
        "78cb760711fedc073246543801c84dc5377affead832e103ad0211f99303a204",
    ),
    "21.2.4": (
        "pip-21.2.4-py3-none-any.whl",
        "fa9ebb85d3fd607617c0c44aca302b1b45d87f9c2a1649b46c26167ca4296323",
    ),
    "21.3.1": (
        "pip-21.3.1-py3-none-any.whl",
        "deaf32dcd9ab821e359cd8330786bcd077604b5c5730c0b096eda46f95c24a2d",
    ),
    "22.0.4": (
        "pip-22.0.4-py3-none-any.whl",
        "c6aca0f2f081363f689f041d90dab2a07a9a07fb840284db2218117a52da800b",
    ),
    "22.1.2": (
        "pip-22.1.2-py3-none-any.whl",
        "a3edacb89022ef5258bf61852728bf866632a394da837ca49eb4303635835f17",
    ),
    "22.2.2": (
        "pip-22.2.2-py3-none-any.whl",
        "b61a374b5bc40a6e982426aede40c9b5a08ff20e640f5b56977f4f91fed1e39a",
    ),
    "22.3.1": (
        "pip-22.3.1-py3-none-any.whl",
        "908c78e6bc29b676ede1c4d57981d490cb892eb45cd8c214ab6298125119e077",
    ),
    "23.0.1": (
        "pip-23.0.1-py3-none-any.whl",
        "236bcb61156d76c4b8a05821b988c7b8c35bf0da28a4b614e8d6ab5212c25c6f",
    ),
    "23.1.2": (
        "pip-23.1.2-py3-none-any.whl",
        "3ef6ac33239e4027d9a5598a381b9d30880a1477e50039db2eac6e8a8f6d1b18",
    ),
    "23.2.1": (
        "pip-23.2.1-py3-none-any.whl",
        "7ccf472345f20d35bdc9d1841ff5f313260c2c33fe417f48c30ac46cccabf5be",
    ),
    "23.3.2": (
        "pip-23.3.2-py3-none-any.whl",
        "5052d7889c1f9d05224cd41741acb7c5d6fa735ab34e339624a614eaaa7e7d76",
    ),
    "24.0": (
        "pip-24.0-py3-none-any.whl",
        "ba0d021a166865d2265246961bec0152ff124de910c5cc39f1156ce3fa7c69dc",
    ),
    "24.1.2": (
        "pip-24.1.2-py3-none-any.whl",
        "7cd207eed4c60b0f411b444cd1464198fe186671c323b6cd6d433ed80fc9d247",
    ),
    "24.2": (
        "pip-24.2-py3-none-any.whl",
        "2cd581cf58ab7fcfca4ce8efa6dcacd0de5bf8d0a3eb9ec927e07405f4d9e2a2",
    ),
    "24.3.1": (
        "pip-24.3.1-py3-none-any.whl",
        "3790624780082365f47549d032f3770eeb2b1e8bd1f7b2e02dace1afa361b4ed",
    ),
    "25.0.1": (
        "pip-25.0.1-py3-none-any.whl",
        "c46efd13b6aa8279f33f2864459c8ce587ea6a1a59ee20de055868d8f7688f7f",
    ),
    "25.1.1": (
        "pip-25.1.1-py3-none-any.whl",
        "2913a38a2abf4ea6b64ab507bd9e967f3b53dc1ede74b01b0931e1ce548751af",
    ),
    "25.2": (
        "pip-25.2-py3-none-any.whl",
        "6d67a2b4e7f14d8b31b8b52648866fa717f45a1eb70e83002f4331d07e953717",
    ),
    "25.3": (
        "pip-25.3-py3-none-any.whl",
        "9655943313a94722b7774661c21049070f6bbb0a1516bf02f7c8d5d9201514cd",
    ),
    "26.0.1": (
        "pip-26.0.1-py3-none-any.whl",
        "bdb1b08f4274833d62c1aa29e20907365a2ceb950410df15fc9521bad440122b",
    ),
    "26.1.2": (
        "pip-26.1.2-py3-none-any.whl",
        "382ff9f685ee3bc25864f820aa50505825f10f5458ffff07e30a6d96e5715cab",
    ),
    "26.2.1": (
        "pip-26.2.1-py3-none-any.whl",
        "71138adf1f4ca900cdb7d289c21b7494329f2332b6d85f0e1c42108c0384ed3e",
    ),
    "26.3": (
        "pip-26.3-py3-none-any.whl",
        "f3b60b20ffaadd4415ed7957212a38ac63fa4c5fa375bd0f4a797777940fad13",
    ),
}
PIP_VERSIONS: tuple[str, ...] = tuple(PIP_WHEELS)
OLDEST_PIP = Version("20.3")
# What each Debian release ships as python3-pip. Trixie's 25.1.1 is assumed, not checked:
# sources.debian.org is not reachable from here (it is on PyPI's list all the same).
DEBIAN_PIP = {"bullseye": "20.3.4", "bookworm": "23.0.1", "trixie": "25.1.1"}

# pip asks for PEP 691 JSON pages first from 22.2 on; older ones ask for HTML only.
PIP_JSON_SINCE = Version("22.2")
# pip 22.3 to 23.1 read PEP 658 metadata from the pre-PEP 714 names: JSON's
# "dist-info-metadata" as a string (a dict there crashes them) and HTML's
# data-dist-info-metadata. From 23.2 on they read "core-metadata" (PEP 714) as well.
PIP_LEGACY_METADATA = (Version("22.3"), Version("23.2"))
PIP_CORE_METADATA_SINCE = Version("23.2")

POETRY_VERSION = "2.5.1"
POETRY_REQUIREMENTS = (f"poetry=={POETRY_VERSION}", "poetry-plugin-export==1.10.1")
PDM_VERSION = "2.29.4"
# Plain pdm 2.29.4 takes hishel 2.0, which it cannot use ("module 'hishel' has no
# attribute 'SyncSqliteStorage'"); its `locked` extra (hishel 1.4.0) pins a certifi that
# PyPI, as reached from here, does not have.
PDM_REQUIREMENTS = (f"pdm=={PDM_VERSION}", "hishel<2")

LOOPBACK = ("127.0.0.1", "localhost", "::1")


# ---------------------------------------------------------------------------------------
# Runs and their output


@dataclass
class ClientRun:
    """One finished client command."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    @property
    def error(self) -> str | None:
        """The last exception line (`TypeError: ...`) or `ERROR: ...` line printed."""
        for line in reversed(self.output.splitlines()):
            if _ERROR_LINE.match(line.strip()):
                return line.strip()
        return None

    def check(self) -> ClientRun:
        assert self.ok, f"{' '.join(self.args)} exited {self.returncode}:\n{self.output}"
        return self


_ERROR_LINE = re.compile(r"(?:[A-Za-z_][\w.]*(?:Error|Exception|NotFound)|ERROR)(?::|$)")


@dataclass
class Fetch:
    url: str
    status: int


@dataclass
class PipResult(ClientRun):
    """A pip run at -vv, with what it asked for read off its (urllib3) log."""

    version: str = ""
    downloaded: list[Path] = field(default_factory=list)
    # Every GET pip made, in order.
    fetches: list[Fetch] = field(default_factory=list)
    # Index page -> the Content-Type pip says it parsed; pip < 22.2 does not log it (and
    # only ever asks for text/html).
    pages: dict[str, str | None] = field(default_factory=dict)

    @property
    def metadata_urls(self) -> list[str]:
        """PEP 658 metadata files fetched instead of (or before) the wheels."""
        return [f.url for f in self.fetches if f.url.endswith(".metadata")]


def _run(args: Sequence[str], env: Mapping[str, str], cwd: Path) -> ClientRun:
    started = time.monotonic()
    done = subprocess.run(
        list(args),
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    return ClientRun(
        list(args), done.returncode, done.stdout, done.stderr, time.monotonic() - started
    )


def _no_proxy_for_loopback(env: dict[str, str]) -> dict[str, str]:
    """A proxy from the machine is for PyPI: loopback is always reached directly."""
    for key in ("NO_PROXY", "no_proxy"):
        hosts = [h for h in env.get(key, "").split(",") if h]
        env[key] = ",".join([*hosts, *(h for h in LOOPBACK if h not in hosts)])
    return env


def _clean_env(state: Path | None = None, cert: Path | None = None) -> dict[str, str]:
    """This machine's environment without any installer's settings; with `state`, HOME and
    the XDG directories point into it, so no client reads or writes the user's files."""
    env = {
        key: value
        for key, value in clean_pip_env().items()
        if not key.startswith(("UV_", "POETRY_", "PDM_"))
        and key not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "CONDA_PREFIX")
    }
    if state is not None:
        env["HOME"] = str(state / "home")
        for xdg in ("CONFIG", "CACHE", "DATA", "STATE"):
            env[f"XDG_{xdg}_HOME"] = str(state / xdg.lower())
        for key in ("HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME"):
            Path(env[key]).mkdir(parents=True, exist_ok=True)
    if cert is not None:
        env.update({"SSL_CERT_FILE": str(cert), "REQUESTS_CA_BUNDLE": str(cert)})
    return _no_proxy_for_loopback(env)


def _default_cert() -> Path | None:
    return CA_BUNDLE if CA_BUNDLE.is_file() else None


def _http_client() -> httpx.Client:
    cert = _default_cert()
    verify: ssl.SSLContext | bool = (
        ssl.create_default_context(cafile=str(cert)) if cert is not None else True
    )
    return httpx.Client(verify=verify, timeout=120, follow_redirects=True)


@contextmanager
def _locked(name: str) -> Iterator[None]:
    """One process at a time fills a cache entry."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with (CACHE_DIR / f".{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------
# pip


def newest_pip_per_series(releases: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[str]:
    """From PyPI's JSON `releases`: the newest final, unyanked release with a wheel of
    every minor series from 20.3 on, oldest first."""
    newest: dict[tuple[int, int], Version] = {}
    for text, files in releases.items():
        version = Version(text)
        usable = [f for f in files if f["packagetype"] == "bdist_wheel" and not f["yanked"]]
        if version.is_prerelease or version.is_devrelease or version < OLDEST_PIP or not usable:
            continue
        series = (version.major, version.minor)
        if series not in newest or version > newest[series]:
            newest[series] = version
    return [str(newest[series]) for series in sorted(newest)]


@cache
def pypi_pip_releases() -> dict[str, list[dict[str, Any]]]:
    """PyPI's JSON API for pip (through the machine's proxy): version -> files."""
    with _http_client() as client:
        answer = client.get(PYPI_PIP_JSON)
        answer.raise_for_status()
        releases: dict[str, list[dict[str, Any]]] = answer.json()["releases"]
    for files in releases.values():
        for entry in files:  # this mirror answers with URLs relative to the JSON page
            entry["url"] = str(httpx.URL(PYPI_PIP_JSON).join(entry["url"]))
    return releases


def pip_wheel(version: str) -> Path:
    """pip's wheel from the cache, downloaded from PyPI (and checked) only when absent."""
    filename, sha256 = PIP_WHEELS[version]
    path = CACHE_DIR / filename
    if path.is_file() and _sha256_file(path) == sha256:
        return path
    with _locked(filename):
        if path.is_file() and _sha256_file(path) == sha256:
            return path
        [entry] = [f for f in pypi_pip_releases()[version] if f["filename"] == filename]
        with _http_client() as client:
            answer = client.get(entry["url"])
            answer.raise_for_status()
        digest = hashlib.sha256(answer.content).hexdigest()
        assert digest == sha256, f"{filename}: sha256 {digest}, expected {sha256}"
        partial = path.with_name(f"{filename}.{os.getpid()}.part")
        partial.write_bytes(answer.content)
        partial.replace(path)
    return path


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pip_asks_json(version: str) -> bool:
    return Version(version) >= PIP_JSON_SINCE


def pip_reads_core_metadata(version: str) -> bool:
    """Whether this pip fetches PEP 658 metadata from a PEP 714 JSON page."""
    return Version(version) >= PIP_CORE_METADATA_SINCE


def pip_crashes_on_dict_dist_info_metadata(version: str) -> bool:
    """pip 22.3 to 23.1 crash on a JSON page whose "dist-info-metadata" is a dict (PEP 714)."""
    low, high = PIP_LEGACY_METADATA
    return low <= Version(version) < high


def _abi(python_version: str) -> str:
    return "cp" + python_version.replace(".", "")


def _target(platform: str, python_version: str) -> list[str]:
    return [
        "--only-binary=:all:",
        "--platform",
        platform,
        "--python-version",
        python_version,
        "--implementation",
        "cp",
        "--abi",
        _abi(python_version),
        "--no-deps",
    ]


def _indexes(
    index_url: str | None, extra_index_urls: Sequence[str], cert: Path | None
) -> list[str]:
    args = ["--index-url", index_url] if index_url else []
    for url in extra_index_urls:
        args += ["--extra-index-url", url]
    return args + (["--cert", str(cert)] if cert is not None else [])


def run_pip_wheel(version: str, args: Sequence[str], cwd: Path) -> PipResult:
    """`python pip-X.whl/pip ARGS -vv` with this host's Python, in a clean environment
    (no pip configuration, no cache, no version check), never failing the caller."""
    command = [
        sys.executable,
        "-I",
        str(pip_wheel(version) / "pip"),
        *args,
        "-vv",
        "--no-cache-dir",
        "--progress-bar",
        "off",
    ]
    run = _run(command, _clean_env(), cwd)
    fetches, pages = _pip_requests(run.output)
    return PipResult(
        run.args,
        run.returncode,
        run.stdout,
        run.stderr,
        run.seconds,
        version=version,
        fetches=fetches,
        pages=pages,
    )


_GET = re.compile(r'(https?)://([^\s"]+?)(:\d+)? "GET (\S+) HTTP/[\d.]+" (\d{3})')
_FETCHED_PAGE = re.compile(r"Fetched page (\S+) as (.+)$")
_DEFAULT_PORTS = {"http": ":80", "https": ":443"}


def _pip_requests(output: str) -> tuple[list[Fetch], dict[str, str | None]]:
    fetches: list[Fetch] = []
    pages: dict[str, str | None] = {}
    for line in output.splitlines():
        if got := _GET.search(line):
            scheme, host, port, path, status = got.groups()
            port = "" if port in (None, _DEFAULT_PORTS[scheme]) else port
            url = f"{scheme}://{host}{port}{path}"
            fetches.append(Fetch(url, int(status)))
            if "/simple/" in path and not path.endswith((".whl", ".metadata")):
                pages.setdefault(url, None)
        if page := _FETCHED_PAGE.search(line.strip()):
            pages[page.group(1)] = page.group(2).strip()
    return fetches, pages


def pip_download(
    version: str,
    index_url: str,
    requirement: str | Sequence[str],
    platform: str,
    python_version: str,
    dest: Path,
    extra_index_urls: Sequence[str] = (),
    cert: Path | None = None,
) -> PipResult:
    """`pip download --no-deps` of requirements for another platform (wheels only); the
    result lists the files saved in `dest` and every request pip made."""
    requirements = [requirement] if isinstance(requirement, str) else list(requirement)
    dest.mkdir(parents=True, exist_ok=True)
    result = run_pip_wheel(
        version,
        [
            "download",
            *_target(platform, python_version),
            *_indexes(index_url, extra_index_urls, cert),
            "-d",
            str(dest),
            *requirements,
        ],
        cwd=dest.parent,
    )
    result.downloaded = sorted(dest.iterdir())
    return result


def pip_install_hashed(
    version: str,
    requirements: Path,
    platform: str,
    python_version: str,
    target: Path,
    index_url: str | None = None,
    extra_index_urls: Sequence[str] = (),
    cert: Path | None = None,
) -> PipResult:
    """What a device does with an exported lock: `pip install --require-hashes -r FILE`,
    here into `target` for another platform. Indexes named in the file are used too."""
    return run_pip_wheel(
        version,
        [
            "install",
            "--require-hashes",
            *_target(platform, python_version),
            *_indexes(index_url, extra_index_urls, cert),
            "--target",
            str(target),
            "-r",
            str(requirements),
        ],
        cwd=requirements.parent,
    )


# ---------------------------------------------------------------------------------------
# uv


def uv_binary() -> Path:
    uv = Path(sys.executable).with_name("uv")
    assert uv.is_file(), "uv is not installed in the venv (pip install -e '.[test]')"
    return uv


def uv(workdir: Path, *args: str, cert: Path | None = None) -> ClientRun:
    """uv with no configuration, no managed Pythons and a cache of its own in `workdir`."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = _clean_env(cert=cert)
    env.update({"UV_PYTHON_DOWNLOADS": "never", "UV_NO_CONFIG": "1"})
    cache_dir = str(workdir / "uv-cache")
    return _run([str(uv_binary()), *args, "--no-config", "--cache-dir", cache_dir], env, workdir)


def _uv_indexes(index_url: str, extra_index_urls: Sequence[str]) -> list[str]:
    args = ["--index-url", index_url]
    for url in extra_index_urls:
        args += ["--extra-index-url", url]
    return args


def _uv_target(
    python_platform: str, python_version: str, index_url: str, extra_index_urls: Sequence[str]
) -> list[str]:
    """uv's options for resolving wheels only, for a CPython on another platform."""
    return [
        "--python",
        sys.executable,
        "--python-platform",
        python_platform,
        "--python-version",
        python_version,
        *_uv_indexes(index_url, extra_index_urls),
        "--only-binary",
        ":all:",
    ]


def uv_compile(
    workdir: Path,
    requirement: str,
    index_url: str,
    extra_index_urls: Sequence[str] = (),
    python_platform: str = "aarch64-manylinux_2_17",
    python_version: str = "3.11",
    cert: Path | None = None,
) -> ClientRun:
    """`uv pip compile -v --generate-hashes` of one requirement for another platform; the
    pinned requirements are its stdout, its requests are in its (debug) stderr."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "requirements.in").write_text(f"{requirement}\n")
    return uv(
        workdir,
        "pip",
        "compile",
        "-v",
        "requirements.in",
        *_uv_target(python_platform, python_version, index_url, extra_index_urls),
        "--generate-hashes",
        "--no-header",
        "--no-annotate",
        cert=cert,
    )


def uv_install_target(
    workdir: Path,
    requirement: str | Sequence[str],
    target: Path,
    index_url: str,
    extra_index_urls: Sequence[str] = (),
    python_platform: str = "aarch64-manylinux_2_17",
    python_version: str = "3.11",
    cert: Path | None = None,
) -> ClientRun:
    """`uv pip install --target` of requirements for another platform."""
    requirements = [requirement] if isinstance(requirement, str) else list(requirement)
    return uv(
        workdir,
        "pip",
        "install",
        "-v",
        "--target",
        str(target),
        *_uv_target(python_platform, python_version, index_url, extra_index_urls),
        "--no-deps",
        *requirements,
        cert=cert,
    )


_UV_GET = re.compile(r"Sending (?:fresh|revalidation) \w+ request for: (\S+)")


def uv_requests(run: ClientRun) -> list[str]:
    """The URLs uv fetched (from its -v log)."""
    return [m.group(1) for m in _UV_GET.finditer(run.stderr)]


# ---------------------------------------------------------------------------------------
# Tool venvs (poetry, pdm)


def tool_venv(name: str, requirements: Sequence[str]) -> Path:
    """A venv in the cache holding `requirements` from PyPI, made by uv only when absent
    (or made for other requirements, or left half made)."""
    venv = CACHE_DIR / name
    marker = venv / "armwheels-requirements.json"
    wanted = json.dumps(sorted(requirements))
    if marker.is_file() and marker.read_text() == wanted:
        return venv
    with _locked(name):
        if marker.is_file() and marker.read_text() == wanted:
            return venv
        shutil.rmtree(venv, ignore_errors=True)
        work = CACHE_DIR / f".{name}-uv"
        cert = _default_cert()
        uv(work, "venv", "--quiet", "--python", sys.executable, str(venv), cert=cert).check()
        uv(
            work,
            "pip",
            "install",
            "--quiet",
            "--python",
            str(venv / "bin" / "python"),
            "--index-url",
            PYPI_SIMPLE,
            "--link-mode",
            "copy",
            *requirements,
            cert=cert,
        ).check()
        shutil.rmtree(work, ignore_errors=True)
        marker.write_text(wanted)
    return venv


def poetry_binary() -> Path:
    return tool_venv(f"poetry-{POETRY_VERSION}", POETRY_REQUIREMENTS) / "bin" / "poetry"


def pdm_binary() -> Path:
    return tool_venv(f"pdm-{PDM_VERSION}", PDM_REQUIREMENTS) / "bin" / "pdm"


def _toml(value: str) -> str:
    return json.dumps(value)  # a JSON string is a TOML basic string


def _project_table(dependencies: Sequence[str], requires_python: str) -> list[str]:
    return [
        "[project]",
        'name = "client-check"',
        'version = "0.1.0"',
        f"requires-python = {_toml(requires_python)}",
        f"dependencies = [{', '.join(_toml(d) for d in dependencies)}]",
        "",
    ]


STATE = ".client-state"  # a project's HOME, caches and configuration for its tool


# ---------------------------------------------------------------------------------------
# poetry


def write_poetry_project(
    project_dir: Path,
    dependencies: Sequence[str],
    source_url: str,
    priority: str = "supplemental",
    source_name: str = "armwheels",
    requires_python: str = ">=3.11,<3.12",
) -> Path:
    """A non-package poetry project: PyPI stays the primary source and ours is a
    `supplemental` one (asked only for what PyPI lacks) or an `explicit` one (asked only
    for the dependencies pinned to it, here all of them)."""
    lines = [*_project_table(dependencies, requires_python), "[tool.poetry]"]
    lines += ["package-mode = false", ""]
    if priority == "explicit":
        lines.append("[tool.poetry.dependencies]")
        for dependency in dependencies:
            name = Requirement(dependency).name
            lines.append(f"{_toml(name)} = {{ source = {_toml(source_name)} }}")
        lines.append("")
    lines += [
        "[[tool.poetry.source]]",
        f"name = {_toml(source_name)}",
        f"url = {_toml(source_url)}",
        f"priority = {_toml(priority)}",
        "",
    ]
    project_dir.mkdir(parents=True, exist_ok=True)
    path = project_dir / "pyproject.toml"
    path.write_text("\n".join(lines))
    return path


def poetry(project_dir: Path, *args: str, cert: Path | None = None) -> ClientRun:
    """poetry in `project_dir` with its configuration, caches and the project's venv kept
    inside it (the venv is poetry's own Python, which is this host's)."""
    state = project_dir / STATE
    env = _clean_env(state, cert if cert is not None else _default_cert())
    env.update(
        {
            "POETRY_CONFIG_DIR": str(state / "poetry-config"),
            "POETRY_CACHE_DIR": str(state / "poetry-cache"),
            "POETRY_DATA_DIR": str(state / "poetry-data"),
            "POETRY_VIRTUALENVS_IN_PROJECT": "true",
            "POETRY_VIRTUALENVS_USE_POETRY_PYTHON": "true",
            "POETRY_KEYRING_ENABLED": "false",
            "POETRY_NO_INTERACTION": "1",
        }
    )
    return _run([str(poetry_binary()), *args, "--no-ansi"], env, project_dir)


def poetry_lock(project_dir: Path, cert: Path | None = None) -> str:
    """`poetry lock` (platform-independent: every file of a release is recorded, by name
    and sha256, with the source's index URL); the poetry.lock written."""
    poetry(project_dir, "lock", "-vvv", cert=cert).check()
    return (project_dir / "poetry.lock").read_text()


def poetry_export(project_dir: Path, cert: Path | None = None) -> str:
    """The lock as a pip requirements file with hashes (poetry-plugin-export)."""
    poetry(
        project_dir, "export", "--format", "requirements.txt", "--output", "req.txt", cert=cert
    ).check()
    return (project_dir / "req.txt").read_text()


def poetry_install(project_dir: Path, cert: Path | None = None) -> ClientRun:
    """`poetry install` into the project's venv (this host's platform); not checked."""
    return poetry(project_dir, "install", cert=cert)


# ---------------------------------------------------------------------------------------
# pdm


def write_pdm_project(
    project_dir: Path,
    dependencies: Sequence[str],
    source_url: str,
    source_name: str = "armwheels",
    requires_python: str = ">=3.11,<3.12",
) -> Path:
    """A non-package pdm project with PyPI first and our index as a second source (pdm
    looks in both for every package, and takes the best match)."""
    lines = [*_project_table(dependencies, requires_python), "[tool.pdm]"]
    lines += ["distribution = false", ""]
    for name, url in (("pypi", PYPI_SIMPLE), (source_name, source_url)):
        lines += ["[[tool.pdm.source]]", f"name = {_toml(name)}", f"url = {_toml(url)}", ""]
    project_dir.mkdir(parents=True, exist_ok=True)
    path = project_dir / "pyproject.toml"
    path.write_text("\n".join(lines))
    return path


def base_python() -> str:
    """The interpreter this venv was made from: pdm is given it (never a venv's Python,
    which it would take as the environment to install into)."""
    return str(getattr(sys, "_base_executable", sys.executable))


def pdm(project_dir: Path, *args: str, cert: Path | None = None) -> ClientRun:
    state = project_dir / STATE
    env = _clean_env(state, cert if cert is not None else _default_cert())
    env.update(
        {
            "PDM_CONFIG_FILE": str(state / "pdm-config.toml"),
            "PDM_CACHE_DIR": str(state / "pdm-cache"),
            "PDM_CHECK_UPDATE": "false",
            "PDM_NON_INTERACTIVE": "1",
            "PDM_PYTHON": base_python(),
        }
    )
    return _run([str(pdm_binary()), *args], env, project_dir)


def pdm_lock(
    project_dir: Path,
    platform: str | None = "manylinux_2_17_aarch64",
    python: str = "==3.11.*",
    cert: Path | None = None,
) -> str:
    """`pdm lock` for one target (`--platform`, `--python`, CPython) with the files' URLs
    (static_urls strategy); the pdm.lock written. `platform=None` locks for every
    platform."""
    args = ["lock", "-v", "--strategy", "static_urls", "--python", python]
    if platform is not None:
        args += ["--platform", platform, "--implementation", "cpython"]
    pdm(project_dir, *args, cert=cert).check()
    return (project_dir / "pdm.lock").read_text()


def pdm_export(project_dir: Path, fmt: str = "requirements", cert: Path | None = None) -> str:
    """The lock as a pip requirements file with hashes (`fmt="pylock"`: PEP 751)."""
    pdm(project_dir, "export", "--format", fmt, "--output", "req.txt", cert=cert).check()
    return (project_dir / "req.txt").read_text()


def pdm_sync(project_dir: Path, cert: Path | None = None) -> ClientRun:
    """`pdm sync` into the project (this host's platform); not checked."""
    return pdm(project_dir, "sync", cert=cert)

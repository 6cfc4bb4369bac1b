"""The docker backend's sandbox, seen from inside a hostile sdist's setup.py under QEMU:
who it runs as, what it can see and write, and what happens at each limit.
"""

from __future__ import annotations

import http.server
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest

from builder.backends import BuildOutcome
from builder.backends.docker import LABEL, DockerBackend
from builder.identity import BuilderIdentity
from common.config import BuilderSettings, load_settings
from common.job_spec import JobSpec
from common.recipes import Recipe
from common.states import FailureReason
from tests import hostile_sdists as hostile
from tests.sdists import make_sdist
from tests.servers import wait_until
from tests.test_egress import pypi_networks

pytestmark = [pytest.mark.docker, pytest.mark.slow]

CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
SECRET = "s3cret-builder-token-value"

# Prints what it can see and do, then fails so that pip shows its output. FARM, the
# services on the builder host's loopback, is set in front of it.
PROBE = r"""
import glob, os, pathlib, sys

def read(path):
    try:
        return pathlib.Path(path).read_text().strip().replace("\n", " ")
    except OSError as exc:
        return f"unreadable errno {exc.errno}"

def can_write(path):
    try:
        with open(path, "ab"):
            return "writable"
    except OSError as exc:
        return f"errno {exc.errno}"

print("PROBE uid", os.getuid())
print("PROBE env", " ".join(sorted(os.environ)))
print("PROBE values", " ".join(sorted(os.environ.values())))
print("PROBE recipe-var", os.environ.get("RECIPE_VAR"))
print("PROBE constraint", read(os.environ.get("PIP_CONSTRAINT", "/none")))
for name in ("cpu.max", "memory.max", "memory.swap.max", "pids.max",  # cgroup v2
             "cpu/cpu.cfs_quota_us", "memory/memory.limit_in_bytes",  # cgroup v1
             "memory/memory.memsw.limit_in_bytes", "pids/pids.max"):
    print("PROBE", name, read("/sys/fs/cgroup/" + name))
for line in pathlib.Path("/proc/self/mountinfo").read_text().splitlines():
    fields = line.split()
    if fields[4] == "/" or fields[4].startswith("/armwheels"):
        print("PROBE mount:" + fields[4], fields[5].split(",")[0])
for line in pathlib.Path("/proc/self/status").read_text().splitlines():
    if line.startswith(("CapEff", "NoNewPrivs")):
        print("PROBE", line.replace("\t", " "))
print("PROBE sdist", can_write(glob.glob("/armwheels/sdist/*")[0]))
print("PROBE usr", can_write("/usr/lib/probe"))
print("PROBE scripts", can_write("/armwheels/scripts/build.sh"))
print("PROBE tmp", can_write("/tmp/probe"))
print("PROBE home", can_write(os.path.join(os.environ["HOME"], "probe")))
import socket
for name, port in FARM:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        print("PROBE reached", name)
    except OSError as exc:
        print("PROBE unreachable", name, "errno", exc.errno)
print("PROBE interfaces", " ".join(name for _, name in socket.if_nameindex()))
# Two MiB of output: the log keeps its first and last halves of builder.max_log_bytes.
for number in range(2048):
    print("FLOOD", number, "x" * 1000)
print("PROBE flood-end")
sys.exit("PROBE done")
"""

# An egress build trying the farm directly and through the proxy, and PyPI through it.
EGRESS_PROBE = (
    hostile.TUNNEL
    + r"""
import ssl, sys
print("PROBE proxy", proxy.hostname, proxy.port)

for name, port in FARM:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        print("PROBE reached-direct", name)
    except OSError as exc:
        print("PROBE unreachable-direct", name, "errno", exc.errno)
    sock, status = tunnel("127.0.0.1", port)
    sock.close()
    print("PROBE via-proxy", name, status.replace(" ", "_"))
sock, status = tunnel("pypi.org", 443)
print("PROBE via-proxy pypi", status.replace(" ", "_"))
context = ssl.create_default_context(cafile=os.environ.get("SSL_CERT_FILE"))
with context.wrap_socket(sock, server_hostname="pypi.org") as tls:
    tls.sendall(b"HEAD /simple/ HTTP/1.1\r\nHost: pypi.org\r\nConnection: close\r\n\r\n")
    print("PROBE pypi-answer", tls.recv(100).split(b"\r\n", 1)[0].decode().replace(" ", "_"))
sys.exit("PROBE done")
"""
)

BALLOON = r"""
import os, sys, time
with open(os.path.join(os.environ["TMPDIR"], "balloon"), "wb") as out:
    for _ in range(200):
        out.write(b"x" * (1024 * 1024))
print("BALLOON written", flush=True)
time.sleep(300)
"""

SLEEPER = r"""
import os, time
open(os.path.join(os.environ["TMPDIR"], "sleeping"), "w").close()
time.sleep(600)
"""

SECOND = r"""
import sys
sys.exit("SECOND BUILD RAN")
"""

HOG = r"""
import sys
block = b"x" * (1024 * 1024 * 1024)
print("HOG survived", len(block))
sys.exit(1)
"""


@pytest.fixture
def farm() -> Iterator[list[tuple[str, int]]]:
    """The farm's services on the builder host's loopback: Redis and PostgreSQL (running
    on this machine) and a real HTTP server standing in for the master."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    services = [("redis", 6379), ("postgresql", 5432), ("master", int(server.server_address[1]))]
    try:
        for _, port in services:  # the host itself reaches every one
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        yield services
    finally:
        server.shutdown()
        server.server_close()


def _with_farm(code: str, farm: list[tuple[str, int]]) -> str:
    return f"FARM = {farm!r}\n{code}"


def _in_sandbox_only(code: str) -> str:
    """setup.py also runs here, to make the sdist: there it only describes the project."""
    guard = "import os\nif not os.path.isdir('/armwheels/work'):\n"
    guard += "    from setuptools import setup\n    setup()\nelse:\n"
    return guard + f"    exec(compile({code!r}, 'setup.py', 'exec'))\n"


def _backend(tmp_path: Path, **settings: object) -> DockerBackend:
    builder = BuilderSettings.model_validate(
        {
            "ca_bundle": CA_BUNDLE if CA_BUNDLE.exists() else None,
            "work_dir": tmp_path / "work",
            "build_timeout": 900,
            # This machine's resolver answers pypi.org with a documentation-range address
            # that it intercepts: open exactly those to egress builds.
            "egress_allowed_networks": pypi_networks(),
            **settings,
        }
    )
    target = load_settings(None).targets["aarch64"]
    return DockerBackend(
        builder, "aarch64", target, BuilderIdentity(f"sandbox-{tmp_path.name}", uuid4().hex)
    )


def _build(
    backend: DockerBackend, sdist: Path, tmp_path: Path, recipe: Recipe | None = None
) -> tuple[BuildOutcome, str]:
    name, version = sdist.name.removesuffix(".tar.gz").rsplit("-", 1)
    spec = JobSpec(
        7, name, version, "aarch64", "cp311", "manylinux2014_aarch64", sdist.name, "", "", None,
        1, recipe,
    )  # fmt: skip
    log_path = tmp_path / "build.log"
    with log_path.open("wb") as sink:
        outcome = backend.build(spec, sdist, tmp_path / "job", sink)
    return outcome, log_path.read_text(errors="replace")


def _probe(log: str) -> dict[str, str]:
    found = {}
    for line in log.splitlines():
        match = re.match(r"^\s*PROBE (\S+) ?(.*)$", line)
        if match:
            found[match.group(1)] = match.group(2).strip()
    return found


def test_the_build_runs_unprivileged_confined_and_without_builder_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, farm: list[tuple[str, int]]
) -> None:
    # The builder's own secrets are in its environment; none may reach the build.
    monkeypatch.setenv("ARMWHEELS_BUILDER__TOKEN", SECRET)
    monkeypatch.setenv("ARMWHEELS_BUILDER__MASTER_URL", "http://user:pw@master.example/")
    code = _in_sandbox_only(_with_farm(PROBE, farm))
    sdist = make_sdist(tmp_path / "src", tmp_path / "dist", "probe", "1.0", {"setup.py": code})
    backend = _backend(tmp_path, cpus=1.5, memory_limit="1g", pids_limit=512, max_log_bytes=1024**2)
    recipe = Recipe(env={"RECIPE_VAR": "from-the-recipe"}, constraints=["setuptools>=40"])
    try:
        outcome, log = _build(backend, sdist, tmp_path, recipe)
        leftovers = backend.client.containers.list(
            all=True, filters={"label": f"{LABEL}={backend.builder_name}"}
        )
    finally:
        backend.close()
    assert not outcome.built
    probe = _probe(log)
    assert probe["uid"] not in ("", "0"), log
    assert SECRET not in log and "master.example" not in log
    assert not any(name.startswith("ARMWHEELS_BUILDER") for name in probe["env"].split())
    assert probe["recipe-var"] == "from-the-recipe"
    assert probe["constraint"] == "setuptools>=40"
    if probe["cpu.max"].startswith("unreadable"):  # cgroup v1, as on this machine
        assert probe["cpu/cpu.cfs_quota_us"] == "150000"
        assert probe["memory/memory.limit_in_bytes"] == str(1024**3)
        assert probe["memory/memory.memsw.limit_in_bytes"] in (str(1024**3), "unreadable errno 2")
        assert probe["pids/pids.max"] == "512"
    else:
        assert probe["cpu.max"] == "150000 100000"
        assert probe["memory.max"] == str(1024**3)
        assert probe["memory.swap.max"] == "0"
        assert probe["pids.max"] == "512"
    assert probe["CapEff:"] == "0000000000000000"
    assert probe["NoNewPrivs:"] == "1"
    # Read-only mounts: the root filesystem, the sdist, the scripts, the cache.
    assert probe["mount:/"] == "ro"
    assert probe["mount:/armwheels/sdist/probe-1.0.tar.gz"] == "ro"
    assert probe["mount:/armwheels/scripts"] == "ro"
    assert probe["mount:/armwheels/recipe/constraints.txt"] == "ro"
    assert probe["mount:/armwheels/wheelhouse"] == "ro"
    assert probe["mount:/armwheels/work"] == "rw"  # the only writable one, size-capped
    assert probe["usr"] == "errno 30"  # EROFS
    assert probe["sdist"] in ("errno 13", "errno 30")
    assert probe["scripts"] in ("errno 13", "errno 30")
    assert probe["tmp"] == "writable" and probe["home"] == "writable"
    # No network at all: only the container's own loopback, where nothing listens.
    assert probe["interfaces"] == "lo"
    for name, _ in farm:
        assert f"PROBE unreachable {name} errno 111" in log, name
    assert "PROBE reached" not in log
    assert "offline build: network 'none', no package index" in log
    # The flood: its middle left out, the probe's first lines and its end kept.
    assert probe["flood-end"] == ""
    assert "bytes of this step's output left out (the first and last halves" in log
    assert len(log.encode()) < 1024**2 + 64 * 1024
    assert leftovers == []


def test_an_egress_build_reaches_the_outside_through_the_proxy_and_never_the_farm(
    tmp_path: Path, farm: list[tuple[str, int]]
) -> None:
    """One build: the farm directly (no network), the farm through the proxy (refused,
    noted), pypi.org:443 through the proxy (a real TLS answer)."""
    code = _in_sandbox_only(_with_farm(EGRESS_PROBE, farm))
    sdist = make_sdist(tmp_path / "src", tmp_path / "dist", "egress", "1.0", {"setup.py": code})
    # The farm's ports are allowed here, so that only the address check stands between
    # the build and the farm.
    backend = _backend(tmp_path, egress_ports=[443, *(port for _, port in farm)])
    try:
        outcome, log = _build(backend, sdist, tmp_path, Recipe(egress=True))
    finally:
        backend.close()
    assert not outcome.built
    assert "PROBE proxy 127.0.0.1 3128" in log, log[-3000:]
    for name, port in farm:
        assert f"PROBE unreachable-direct {name} errno 111" in log, name
        assert f"PROBE via-proxy {name} HTTP/1.1_403_Forbidden" in log, name
        assert f"egress refused 127.0.0.1:{port}: 127.0.0.1 is a loopback address" in log
    assert "PROBE reached" not in log
    assert "PROBE via-proxy pypi HTTP/1.1_200_Connection_established" in log
    assert "PROBE pypi-answer HTTP/1.1_200_OK" in log
    assert "::armwheels:: egress to pypi.org:443" in log


def test_a_build_filling_its_work_directory_is_killed(tmp_path: Path) -> None:
    sdist = make_sdist(
        tmp_path / "src",
        tmp_path / "dist",
        "balloon",
        "1.0",
        {"setup.py": _in_sandbox_only(BALLOON)},
    )
    backend = _backend(tmp_path, work_dir_limit=100 * 1024**2)
    try:
        outcome, log = _build(backend, sdist, tmp_path)
    finally:
        backend.close()
    assert outcome.reason is FailureReason.WORK_DIR_LIMIT, log
    assert "passed its limit of 104857600 bytes" in outcome.summary


def test_a_build_past_its_memory_is_out_of_memory(tmp_path: Path) -> None:
    sdist = make_sdist(
        tmp_path / "src", tmp_path / "dist", "hog", "1.0", {"setup.py": _in_sandbox_only(HOG)}
    )
    backend = _backend(tmp_path, memory_limit="256m")
    try:
        outcome, log = _build(backend, sdist, tmp_path)
    finally:
        backend.close()
    assert "HOG survived" not in log
    assert outcome.reason is FailureReason.OUT_OF_MEMORY, log
    assert outcome.transient


def test_an_offline_build_gets_what_its_backend_asks_for_in_another_round(
    tmp_path: Path,
) -> None:
    """No network and no index: setuptools comes from the wheelhouse the builder filled
    beforehand; `six`, which the build backend asks for only at build time (setuptools'
    get_requires_for_build_wheel returns setup_requires), makes the first round fail,
    the builder fetches its wheel and the second round builds. The project is pure Python
    so that the build stops at its wheel (a pure-Python result is not an ARM build): the
    rounds are what is tested here, compiling and repairing are tested elsewhere."""
    files = {
        "hello.py": "GREETING = 'hello'\n",
        "setup.py": _in_sandbox_only(
            "from setuptools import setup\nsetup(setup_requires=['six'], py_modules=['hello'])\n"
        ),
    }
    sdist = make_sdist(tmp_path / "src", tmp_path / "dist", "hello", "1.0", files)
    backend = _backend(tmp_path)
    try:
        outcome, log = _build(backend, sdist, tmp_path)
        assert backend.wheelhouse is not None
        cached = [path.name for path in backend.wheelhouse.wheels()]
    finally:
        backend.close()
    assert outcome.reason is FailureReason.PURE_PYTHON, log[-3000:]
    assert "pure-Python wheel hello-1.0-py3-none-any.whl" in log, log[-3000:]
    assert any(name.startswith("setuptools-") for name in cached), cached
    assert any(name.startswith("six-") for name in cached), cached
    assert "build dependencies offered from the wheelhouse" in log
    assert "offline build: pip asked for six; fetching its wheel" in log
    assert "offline build: round 2 with six" in log
    assert "offline build: round 3" not in log


def test_a_cancelled_build_is_killed_and_the_next_one_runs(tmp_path: Path) -> None:
    """cancel() (the master took the job back) kills the container under way and ends that
    build; after reset(), which the runner calls when it takes its next job, the same
    backend builds again."""
    sleeper = make_sdist(
        tmp_path / "src",
        tmp_path / "dist",
        "sleeper",
        "1.0",
        {"setup.py": _in_sandbox_only(SLEEPER)},
    )
    second = make_sdist(
        tmp_path / "src", tmp_path / "dist", "second", "1.0", {"setup.py": _in_sandbox_only(SECOND)}
    )
    backend = _backend(tmp_path)
    asleep = tmp_path / "job" / "sandbox" / "temp" / "sleeping"
    done: list[tuple[BuildOutcome, str]] = []
    try:
        building = threading.Thread(target=lambda: done.append(_build(backend, sleeper, tmp_path)))
        building.start()
        wait_until(asleep.exists, 600, "the build to sleep", 1)
        backend.cancel()
        building.join(120)
        assert not building.is_alive(), "the build outlived its cancel()"
        [(outcome, log)] = done
        assert (outcome.reason, outcome.summary) == (FailureReason.BUILDER_ERROR, "build cancelled")
        assert "killed: the build was cancelled" in log
        left = backend.client.containers.list(all=True, filters={"label": LABEL})
        assert not [c for c in left if c.labels.get(LABEL) == backend.builder_name]
        backend.reset()
        (tmp_path / "next").mkdir()
        outcome, log = _build(backend, second, tmp_path / "next")
    finally:
        backend.close()
    assert "SECOND BUILD RAN" in log, log
    assert outcome.summary != "build cancelled"

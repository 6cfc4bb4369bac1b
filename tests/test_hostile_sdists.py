"""Hostile sdists built for real in the native backend's sandbox, on this host's arch: each
is contained (refused, killed at its limit, or finds nothing), classified with a reason
that names the limit, and the same backend builds a good sdist afterwards. Nothing
outside the build's work directory changes (canary files), no build process outlives
its build, and the farm's services on the host's loopback see nothing.

Small limits keep every hostile build a few seconds long: 12 s for the endless ones,
512 MiB per process, 64 processes, 1 MiB of log per step, 256 MiB of work directory.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import pwd
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pytest
from pydantic import SecretStr

from builder.backends import BuildOutcome
from builder.backends.native import NativeBackend
from builder.sdist import SdistRefused, check_archive
from common.config import BuilderSettings, TargetSettings
from common.job_spec import JobSpec
from common.recipes import Recipe
from common.states import FailureReason
from tests import hostile_sdists as hostile
from tests.sdists import abi3_sdist
from tests.test_egress import pypi_networks
from tests.test_native_backend import ARCH, CA_BUNDLE, POLICY, TAG, build_user_tools

IS_ROOT = os.geteuid() == 0
BUILD_USER = "nobody"
SECRET = "aw_hostile-test-secret-9876543210"
# Generous for the builds that end by themselves (this host may be busy); the endless
# ones are given the short one.
TIME_LIMIT = 300
SHORT_TIME_LIMIT = 12
LOG_LIMIT = 1024 * 1024
WORK_DIR_LIMIT = 256 * 1024**2
HOST_TMP_ESCAPE = Path("/tmp/armwheels-escaped")

pytestmark = [
    pytest.mark.skipif(ARCH != "x86_64", reason="written for an x86_64 host"),
    pytest.mark.skipif(not IS_ROOT, reason="the native backend runs only as root"),
    pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) missing"),
]


class _Master(http.server.BaseHTTPRequestHandler):
    """A stand-in for the master on the builder's loopback: counts what reaches it."""

    requests: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        _Master.requests.append(self.path)
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass
class Farm:
    """One sandboxed builder among the farm's services, with canaries around it."""

    backend: NativeBackend
    work_root: Path
    sdists: Path
    logs: Path
    config: Path
    master_port: int
    canaries: dict[Path, bytes] = field(default_factory=dict)
    holders: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def build(self, sdist: Path, recipe: Recipe | None = None) -> tuple[BuildOutcome, str]:
        name, version = sdist.name.removesuffix(".tar.gz").removesuffix(".zip").rsplit("-", 1)
        spec = JobSpec(1, name, version, ARCH, TAG, POLICY, sdist.name, "", "", None, 1, recipe)
        workdir = self.work_root / f"job-{name}"
        log_path = self.logs / f"{name}.log"
        with log_path.open("wb") as log:
            outcome = self.backend.build(spec, sdist, workdir, log)
        shutil.rmtree(workdir, ignore_errors=True)
        return outcome, log_path.read_text(errors="replace")


def _build_processes(work_root: Path) -> list[str]:
    """The build user's processes working under `work_root` (other builds on this host,
    docker's, run as the same uid elsewhere), once the kernel has had a moment to tear
    the build's PID namespace down."""
    uid = pwd.getpwnam(BUILD_USER).pw_uid
    deadline = time.monotonic() + 10
    while True:
        found = []
        for entry in Path("/proc").iterdir():
            with contextlib.suppress(OSError):
                if entry.name.isdigit() and entry.stat().st_uid == uid:
                    cwd = (entry / "cwd").readlink()
                    if cwd.is_relative_to(work_root):
                        found.append(f"{entry.name}: {(entry / 'cmdline').read_bytes()!r}")
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


@pytest.fixture(scope="module")
def farm() -> Iterator[Farm]:
    tools_bin = build_user_tools()
    top = Path(tempfile.mkdtemp(prefix="armwheels-hostile-", dir="/var/tmp"))
    top.chmod(0o755)
    work_root, outside, private = top / "work", top / "outside", top / "private"
    for folder in (work_root, outside):
        folder.mkdir(mode=0o755)
    private.mkdir(mode=0o700)
    # The builder's configuration, holding its token, readable by root only.
    config = top / "armwheels.toml"
    config.write_text(f'[builder]\ntoken = "{SECRET}"\n')
    config.chmod(0o600)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Master)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    # Processes holding the token in their environment and command line, as a builder's
    # do: one of root and one of the build user (whose /proc files that user may read).
    env = dict(os.environ, ARMWHEELS_BUILDER__TOKEN=SECRET)
    holding = ["sh", "-c", "sleep 900", "holder", SECRET]  # the secret in its cmdline too
    holders = [
        subprocess.Popen(holding, env=env),
        subprocess.Popen(holding, env=env, user=BUILD_USER, cwd="/"),
    ]
    previous = os.environ.get("ARMWHEELS_BUILDER__TOKEN")
    os.environ["ARMWHEELS_BUILDER__TOKEN"] = SECRET
    HOST_TMP_ESCAPE.unlink(missing_ok=True)
    settings = BuilderSettings.model_validate(
        {
            "ca_bundle": CA_BUNDLE if CA_BUNDLE.exists() else None,
            "work_dir": work_root,
            "build_timeout": TIME_LIMIT,
            "memory_limit": "512m",
            "pids_limit": 64,
            "max_log_bytes": LOG_LIMIT,
            "work_dir_limit": WORK_DIR_LIMIT,
            "token": SecretStr(SECRET),
            # The farm's ports are allowed to egress builds here, so that only the
            # address check stands between them and the farm; and PyPI's addresses, which
            # this machine's resolver answers with non-global ones.
            "egress_ports": [443, 6379, 5432, server.server_port],
            "egress_allowed_networks": pypi_networks(),
        }
    )
    target = TargetSettings.model_construct(arch=ARCH, image="", python_tags=[TAG], policy=POLICY)
    backend = NativeBackend(
        settings, ARCH, target, build_user=BUILD_USER, tools_bin=tools_bin, config_file=config
    )
    farm = Farm(backend, work_root, top / "sdists", top / "logs", config, server.server_port)
    farm.logs.mkdir()
    farm.holders = holders
    for canary in (outside / "canary.txt", work_root / "canary.txt", private / "canary.txt"):
        canary.write_bytes(b"the builder's own file\n")
        canary.chmod(0o644)
        farm.canaries[canary] = canary.read_bytes()
    try:
        yield farm
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()
        server.shutdown()
        server.server_close()
        backend.close()
        if previous is None:
            os.environ.pop("ARMWHEELS_BUILDER__TOKEN", None)
        else:
            os.environ["ARMWHEELS_BUILDER__TOKEN"] = previous
        shutil.rmtree(top, ignore_errors=True)


ARCHIVES = {
    "traversal": (hostile.traversal_sdist, "leaves the archive"),
    "ziptraversal": (hostile.zip_traversal_sdist, "leaves the archive"),
    "absolute": (hostile.absolute_path_sdist, "absolute path"),
    "symlinkescape": (hostile.symlink_escape_sdist, "points to"),
    "abslink": (hostile.absolute_symlink_sdist, "outside the archive"),
    "hardlink": (hostile.hardlink_escape_sdist, "hard link"),
}


@pytest.mark.parametrize("kind", sorted(ARCHIVES))
def test_an_archive_reaching_out_of_its_folder_is_refused_before_it_runs(
    farm: Farm, kind: str
) -> None:
    make, said = ARCHIVES[kind]
    target = next(iter(farm.canaries))
    outcome, log = farm.build(make(farm.sdists, target))
    assert outcome.reason is FailureReason.SDIST_REFUSED, log[-2000:]
    assert outcome.summary.startswith("sdist refused: ") and said in outcome.summary
    assert "build runs as user" not in log, "nothing of the sdist ran"


def test_device_nodes_and_a_decompression_bomb_are_refused(farm: Farm) -> None:
    outcome, _ = farm.build(hostile.device_sdist(farm.sdists))
    assert outcome.reason is FailureReason.SDIST_REFUSED
    assert "special file 'devices-1.0/mem'" in outcome.summary
    bomb = hostile.bomb_sdist(farm.sdists, 4 * 1024**3)
    assert bomb.stat().st_size < 8 * 1024**2
    outcome, _ = farm.build(bomb)
    assert outcome.reason is FailureReason.SDIST_REFUSED
    assert f"unpacks to more than {WORK_DIR_LIMIT} bytes" in outcome.summary


def test_a_fork_bomb_and_an_endless_loop_are_killed_at_the_time_limit(farm: Farm) -> None:
    for name, attack in (("forkbomb", hostile.FORK_BOMB), ("endless", hostile.ENDLESS_LOOP)):
        farm.backend.settings.build_timeout = SHORT_TIME_LIMIT
        try:
            outcome, log = farm.build(hostile.attack_sdist(farm.sdists, name, attack))
        finally:
            farm.backend.settings.build_timeout = TIME_LIMIT
        assert outcome.reason is FailureReason.TIMEOUT, (name, log[-2000:])
        assert outcome.summary == f"build exceeded {SHORT_TIME_LIMIT} s"
        assert f"killed after the time limit of {SHORT_TIME_LIMIT} s" in log
        assert _build_processes(farm.work_root) == [], f"{name}: a process outlived it"


def test_a_memory_hog_is_out_of_memory_at_its_limit(farm: Farm) -> None:
    outcome, log = farm.build(hostile.attack_sdist(farm.sdists, "hog", hostile.MEMORY_HOG))
    assert outcome.reason is FailureReason.OUT_OF_MEMORY, log[-2000:]
    assert "memory limit 512m" in outcome.summary


def test_gigabytes_of_log_through_pip_end_at_the_memory_limit(farm: Farm) -> None:
    """pip holds a backend's output until it ends: a flood fills pip's memory up to its
    limit, pip gives the build up, and neither the builder's disk nor its log grow."""
    # Long lines: pip reads its backend's output a line at a time.
    flood = hostile.log_flood(2 * 1024**3, line=1024**2)
    outcome, log = farm.build(hostile.attack_sdist(farm.sdists, "flood", flood))
    assert (farm.logs / "flood.log").stat().st_size < 64 * 1024
    assert outcome.reason is FailureReason.COMPILE_ERROR, log[-2000:]
    assert "Failed building wheel for flood" in log


def test_gigabytes_of_log_straight_to_the_builder_are_capped_head_and_tail_kept(
    farm: Farm,
) -> None:
    """A recipe that runs the sdist's code itself gives it the build log's pipe: 2 GiB
    arrive, 1 MiB is kept, the build goes on to its end within its limits."""
    sdist = hostile.attack_sdist(farm.sdists, "floodrecipe", hostile.log_flood(2 * 1024**3))
    recipe = Recipe(build_command=hostile.RUN_BACKEND_DIRECTLY)
    outcome, log = farm.build(sdist, recipe)
    size = (farm.logs / "floodrecipe.log").stat().st_size
    assert size < LOG_LIMIT + 64 * 1024, size
    assert outcome.reason is FailureReason.COMPILE_ERROR, log[-2000:]
    assert f"log capped at {LOG_LIMIT} bytes per step" in outcome.summary
    head, _, tail = log.partition(" bytes of the log left out here]")
    assert "build runs as user" in head and "x" * 1023 in head
    assert hostile.FLOOD_END in tail, "the end of the log is kept"
    assert f"log capped at {LOG_LIMIT} bytes" in tail


def test_a_build_finds_no_secret_and_reaches_none_of_the_farm(farm: Farm) -> None:
    redis, postgres = 6379, 5432
    attack = hostile.spy(
        SECRET,
        {"redis": redis, "postgres": postgres, "master": farm.master_port},
        ["/run/postgresql/.s.PGSQL.5432", "/var/run/postgresql/.s.PGSQL.5432"],
        [str(farm.work_root.parent), "/tmp", "/var/tmp", "/run", "/etc/armwheels"],
        [str(path) for path in farm.canaries],
    )
    outcome, log = farm.build(hostile.attack_sdist(farm.sdists, "spy", attack))
    [line] = [line for line in log.splitlines() if hostile.REPORT_PREFIX in line]
    report = json.loads(line.partition(hostile.REPORT_PREFIX)[2])
    assert outcome.reason is FailureReason.COMPILE_ERROR, log[-2000:]
    assert report["leaks"] == []
    for service, said in report["tcp"].items():
        assert said.startswith("ConnectionRefusedError"), (service, said)
    assert set(report["unix"].values()) == {"FileNotFoundError"}
    assert _Master.requests == []
    # Its own PID namespace: the build's few processes, none of the host's.
    assert 1 in report["pids"] and len(report["pids"]) < 20, report["pids"]
    assert report["written"] == [str(HOST_TMP_ESCAPE)], "only into its private /tmp"
    assert not HOST_TMP_ESCAPE.exists()
    assert SECRET not in log


EGRESS_ATTACK = """import json

def status(host, port):
    sock, line = tunnel(host, port)
    sock.close()
    return line

report = {"proxy": f"{proxy.hostname}:{proxy.port}"}
for name, port in FARM.items():
    report[name] = status("127.0.0.1", port)
report["pypi"] = status("pypi.org", 443)
_say(PREFIX + json.dumps(report))
"""


def test_an_egress_recipe_reaches_pypi_through_the_proxy_and_never_the_farm(farm: Farm) -> None:
    """The native sandbox joins the same filtering proxy as the docker backend's: the
    farm's services are refused by address, PyPI is let through."""
    services = {"redis": 6379, "postgres": 5432, "master": farm.master_port}
    attack = f"FARM = {services!r}\nPREFIX = {hostile.REPORT_PREFIX!r}\n"
    attack += hostile.TUNNEL + EGRESS_ATTACK
    sdist = hostile.attack_sdist(farm.sdists, "egressor", attack)
    outcome, log = farm.build(sdist, Recipe(egress=True))
    lines = [line for line in log.splitlines() if hostile.REPORT_PREFIX in line]
    assert len(lines) == 1, log[-3000:]
    [line] = lines
    report = json.loads(line.partition(hostile.REPORT_PREFIX)[2])
    assert outcome.reason is FailureReason.COMPILE_ERROR, log[-2000:]
    assert report["proxy"] == "127.0.0.1:3128"
    for name, port in services.items():
        assert report[name] == "HTTP/1.1 403 Forbidden", (name, report)
        assert f"egress refused 127.0.0.1:{port}: 127.0.0.1 is a loopback address" in log
    assert report["pypi"] == "HTTP/1.1 200 Connection established", report
    assert _Master.requests == []


def test_after_the_hostile_ones_a_good_sdist_builds_and_nothing_outside_changed(
    farm: Farm,
) -> None:
    outcome, log = farm.build(abi3_sdist(farm.sdists / "src", farm.sdists))
    assert outcome.built, (outcome.reason, outcome.summary, log[-3000:])
    for canary, content in farm.canaries.items():
        assert canary.read_bytes() == content, canary
    assert not HOST_TMP_ESCAPE.exists()
    leftovers = [path.name for path in farm.work_root.iterdir()]
    assert sorted(leftovers) == ["canary.txt", "wheelhouse"], leftovers


def _links_tar(path: Path, links: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, target in links.items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            archive.addfile(info)
    return path


def test_links_inside_the_archive_pass_and_chains_out_of_it_are_refused(tmp_path: Path) -> None:
    """No build runs here: only the host-side check of the archive."""
    inside = {"p-1.0/docs/README": "../README", "p-1.0/lib": "src/lib"}
    assert check_archive(_links_tar(tmp_path / "ok.tar.gz", inside), WORK_DIR_LIMIT) == 0
    # Each link stays inside on its own; through one another they climb out.
    chain = {"up": "p-1.0", "p-1.0/up": "..", "p-1.0/out": "up/up/etc"}
    with pytest.raises(SdistRefused, match="goes through the symbolic link"):
        check_archive(_links_tar(tmp_path / "chain.tar.gz", chain), WORK_DIR_LIMIT)

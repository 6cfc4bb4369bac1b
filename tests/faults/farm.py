"""A whole farm as real processes, for the fault suite to disturb: its own redis-server,
its own PostgreSQL cluster, the master and native builders (tests/faults/proc.py), each
builder talking to the master through a proxy of its own (tests/faults/proxy.py).

Every process it starts is stopped by stop(), the builds of a builder killed -9 included.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from common.db import make_engine, make_sessionmaker, transaction, upgrade
from common.models import BuildJob, Release, SourceFile
from common.states import JobState, TokenRole
from master.auth import create_token
from master.pypi.releases import get_or_create_project
from tests.faults.proc import TOOLS_ENV
from tests.faults.proxy import Proxy
from tests.sdists import make_sdist
from tests.servers import ROOT, free_port, process_gone, wait_until
from tests.test_log_stream import file_server
from tests.test_native_backend import ARCH, CA_BUNDLE, POLICY, TAG, build_user_tools

FINAL = (JobState.BUILT, JobState.FAILED, JobState.SKIPPED)
REGISTERED = 'msg="builder registered"'
# A small C extension: compiled, repaired and smoke-tested in seconds.
SPEED_C = """#define PY_SSIZE_T_CLEAN
#include <Python.h>
static PyObject *twice(PyObject *self, PyObject *args) {
    long a;
    if (!PyArg_ParseTuple(args, "l", &a)) return NULL;
    return PyLong_FromLong(2 * a);
}
static PyMethodDef methods[] = {{"twice", twice, METH_VARARGS, ""}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_speed", NULL, -1, methods};
PyMODINIT_FUNC PyInit__speed(void) { return PyModule_Create(&module); }
"""
# SLOW_BUILD seconds of compiling, so that a fault lands while the build runs.
SETUP = """import os, sys, time
from setuptools import Extension, setup
if "bdist_wheel" in sys.argv:
    time.sleep(float({seconds!r}))
setup(packages=[{module!r}], ext_modules=[Extension({module!r} + "._speed", ["speed.c"])])
"""


def _run(command: list[str], **kwargs: object) -> None:
    subprocess.run(command, check=True, capture_output=True, **kwargs)  # type: ignore[call-overload]


class RedisServer:
    """redis-server on its own port, without persistence (as scripts/services runs it):
    a restart loses every message."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_until(self._answers, 20, "redis-server", 0.05)

    def _answers(self) -> bool:
        try:
            with redis.Redis(port=self.port, socket_timeout=1) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def flush(self) -> None:
        with redis.Redis(port=self.port) as client:
            client.flushall()


class PostgresCluster:
    """A PostgreSQL cluster of its own (initdb as the postgres user), so that the suite
    can stop it as a crash would (`pg_ctl stop -m immediate`) and start it again."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.data = folder / "data"
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/armwheels"

    def _as_postgres(self, *command: str) -> None:
        _run(["runuser", "-u", "postgres", "--", *command], cwd="/")

    def init(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.folder, "postgres")
        self._as_postgres(
            "initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync",
            "-E", "UTF8",
        )  # fmt: skip
        self.start()
        admin = create_engine(
            self.url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT"
        )
        with admin.connect() as connection:
            connection.execute(text("CREATE DATABASE armwheels"))
        admin.dispose()

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._as_postgres(
            "pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.folder / "log"),
            "-w", "start",
        )  # fmt: skip

    def stop(self, mode: str = "immediate") -> None:
        """`immediate`: as a crash, with recovery at the next start."""
        self._as_postgres("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()


@dataclass
class Node:
    """A master or builder process, in a session of its own, logging to a file."""

    name: str
    command: list[str]
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> None:
        self.starts += 1
        with self.log.open("ab") as out:
            out.write(f"--- start {self.starts} ---\n".encode())
            out.flush()
            self.process = subprocess.Popen(
                self.command,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill9(self) -> None:
        """SIGKILL to the process alone (not its group), as a crash or the OOM killer."""
        if self.alive():
            assert self.process is not None
            self.process.kill()
            self.process.wait()

    def stop(self, timeout: float = 30) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            with _no_such_process():
                os.killpg(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
        with _no_such_process():
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def said(self, text: str) -> bool:
        return text in self.log.read_text(errors="replace")

    def said_times(self, text: str) -> int:
        return self.log.read_text(errors="replace").count(text) if self.log.exists() else 0


def _no_such_process() -> contextlib.suppress:
    return contextlib.suppress(ProcessLookupError, PermissionError)


@dataclass
class Batch:
    """The jobs of one scenario: one release per sdist, one job each."""

    name: str
    jobs: list[int]
    projects: list[str]


@dataclass
class Farm:
    root: Path
    work_root: Path
    tools_bin: Path
    redis: RedisServer
    postgres: PostgresCluster
    files_url: str
    sdists: Path
    master_port: int = field(default_factory=free_port)
    config: Path | None = None
    master: Node | None = None
    builders: dict[str, Node] = field(default_factory=dict)
    proxies: dict[str, Proxy] = field(default_factory=dict)
    factory: sessionmaker[Session] | None = None
    # The master's data directory and the builders' work directory are small file
    # systems of their own (tmpfs), which the disk faults fill.
    small_disks: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.master_port}"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def session(self) -> Session:
        assert self.factory is not None
        return self.factory()

    def write_config(self) -> None:
        ca = f'ca_bundle = "{CA_BUNDLE}"\n' if CA_BUNDLE.exists() else ""
        self.config = self.root / "farm.toml"
        self.config.write_text(
            f'[database]\nurl = "{self.postgres.url}"\n'
            f'[broker]\nurl = "{self.redis.url}"\n'
            # Build requirements (setuptools) come from PyPI through the machine's proxy:
            # builders ask the farm's upstream index only, and the file server is none.
            '[upstream]\nindex_url = "https://pypi.org/simple/"\n'
            f'json_url = "{self.files_url}/pypi/"\n'
            "[master]\n"
            f'port = {self.master_port}\ndata_dir = "{self.data_dir}"\n'
            "dispatch_interval = 0.5\nbuilder_timeout = 30\nrequeue_after = 60\n"
            "http_workers = 1\ndisk_full_retry_after = 1\n"
            f'[targets.{ARCH}]\nimage = ""\npython_tags = ["{TAG}"]\npolicy = "{POLICY}"\n'
            f'[builder]\nwork_dir = "{self.work_root}"\nbuild_timeout = 300\n{ca}'
        )

    def _command(self, node: str) -> list[str]:
        assert self.config is not None
        return [sys.executable, "-m", "tests.faults.proc", node, "--config", str(self.config)]

    def start_master(self) -> None:
        if self.master is None:
            env = dict(os.environ, PYTHONPATH=str(ROOT))
            self.master = Node("master", self._command("master"), env, self.root / "master.log")
        self.master.start()
        wait_until(self.master_answers, 60, "the master", 0.1)

    def master_answers(self) -> bool:
        assert self.master is not None
        if not self.master.alive():
            raise AssertionError(f"the master exited: see {self.master.log}")
        try:
            return httpx.get(f"{self.url}/api/v1/status", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def add_builder(self, name: str, slots: int = 1) -> Node:
        with transaction(self.factory) as session:  # type: ignore[arg-type]
            token = create_token(session, name, TokenRole.BUILDER)
        proxy = Proxy("127.0.0.1", self.master_port)
        proxy.start()
        self.proxies[name] = proxy
        env = dict(
            os.environ,
            PYTHONPATH=str(ROOT),
            ARMWHEELS_BUILDER__TOKEN=token,
            ARMWHEELS_BUILDER__NAME=name,
            ARMWHEELS_BUILDER__SLOTS=str(slots),
            ARMWHEELS_BUILDER__MASTER_URL=f"http://127.0.0.1:{proxy.port}",
            **{TOOLS_ENV: str(self.tools_bin)},
        )
        command = [*self._command("builder"), "--arch", ARCH, "--backend", "native"]
        node = Node(name, command, env, self.root / f"{name}.log")
        self.builders[name] = node
        self.start_builder(name)
        return node

    def start_builder(self, name: str) -> None:
        node = self.builders[name]
        before = node.said_times(REGISTERED)
        node.start()

        def registered() -> bool:
            if not node.alive():
                raise AssertionError(f"builder {name} exited: see {node.log}")
            return node.said_times(REGISTERED) > before

        wait_until(registered, 120, f"builder {name} to register", 0.1)

    def builder_of(self, job_id: int) -> str | None:
        with self.session() as session:
            job = session.get(BuildJob, job_id)
            if job is None or job.builder is None or job.state != JobState.BUILDING:
                return None
            return job.builder.name

    def add_batch(self, name: str, count: int, build_seconds: float = 0.0) -> Batch:
        """`count` new releases (one sdist each), their jobs pending for the dispatcher."""
        projects = [f"{name}-{n}" for n in range(count)]
        jobs = []
        assert self.factory is not None
        with transaction(self.factory) as session:
            for project in projects:
                module = project.replace("-", "_")
                files = {
                    f"{module}/__init__.py": "from ._speed import twice\n",
                    "speed.c": SPEED_C,
                    "setup.py": SETUP.format(seconds=build_seconds, module=module),
                }
                sdist = make_sdist(self.root / "src", self.sdists, project, "1.0", files)
                data = sdist.read_bytes()
                owner = get_or_create_project(session, project)
                release = Release(project=owner, version="1.0", upstream_files=[sdist.name])
                source = SourceFile(
                    release=release,
                    filename=sdist.name,
                    url=f"{self.files_url}/{sdist.name}",
                    sha256=hashlib.sha256(data).hexdigest(),
                    size=len(data),
                )
                job = BuildJob(
                    release=release,
                    source_file=source,
                    target=ARCH,
                    arch=ARCH,
                    python_tag=TAG,
                    policy=POLICY,
                    state=JobState.PENDING,
                    priority=5,
                )
                session.add_all([release, source, job])
                session.flush()
                jobs.append(job.id)
        return Batch(name, jobs, projects)

    def states(self, jobs: Iterable[int]) -> dict[int, BuildJob]:
        with self.session() as session:
            found = {job_id: session.get(BuildJob, job_id) for job_id in jobs}
            for job in found.values():
                if job is not None:
                    session.expunge(job)
            return {job_id: job for job_id, job in found.items() if job is not None}

    def settled(self, jobs: Iterable[int]) -> bool:
        """Every job final (built, failed or skipped)."""
        try:
            found = self.states(list(jobs))
        except Exception:  # the database is down for a moment
            return False
        return all(job.state in FINAL for job in found.values())

    def wait_settled(self, jobs: Iterable[int], timeout: float) -> None:
        wait_until(lambda: self.settled(jobs), timeout, "the jobs to end", 0.5)

    def wait_state(self, job_id: int, state: JobState, timeout: float = 120) -> None:
        wait_until(lambda: self._state(job_id) == state, timeout, f"job {job_id} {state}", 0.1)

    def _state(self, job_id: int) -> JobState | None:
        try:
            job = self.states([job_id]).get(job_id)
        except Exception:
            return None
        return None if job is None else job.state

    def build_pids(self) -> list[int]:
        """Processes of builds (the sandboxes' own and their children): those whose
        environment names the farm's work root."""
        marker = str(self.work_root).encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                environment = (entry / "environ").read_bytes()
            except OSError:
                continue
            if marker in environment and not process_gone(int(entry.name)):
                found.append(int(entry.name))
        return found

    def stop(self) -> None:
        for node in self.builders.values():
            node.stop()
        if self.master is not None:
            self.master.stop()
        for pid in self.build_pids():
            with _no_such_process():
                os.kill(pid, signal.SIGKILL)
        for proxy in self.proxies.values():
            proxy.stop()


def mount_tmpfs(folder: Path, size: str) -> bool:
    """A small file system of its own at `folder` (root only); False when not allowed."""
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(folder)],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


def unmount(folder: Path) -> None:
    if folder.is_mount():
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, check=False)


@contextmanager
def running_farm(root: Path, builders: int = 2) -> Iterator[Farm]:
    """A farm with its master and `builders` builders up, and nothing to build yet."""
    tools_bin = build_user_tools()
    # Reachable by the build user (pytest's tmp_path is not) and by postgres.
    work_root = Path(tempfile.mkdtemp(prefix="armwheels-faults-", dir="/var/tmp"))
    work_root.chmod(0o755)
    sdists = root / "sdists"
    sdists.mkdir()
    disks = [root / "data", work_root / "work"]
    small_disks = mount_tmpfs(disks[0], "64m") and mount_tmpfs(disks[1], "256m")
    redis_server = RedisServer(root)
    postgres = PostgresCluster(work_root / "postgres")
    farm: Farm | None = None
    try:
        with file_server(sdists) as files:
            redis_server.start()
            postgres.init()
            farm = Farm(root, disks[1], tools_bin, redis_server, postgres, files, sdists)
            farm.small_disks = small_disks
            engine = make_engine(postgres.url)
            upgrade(engine)
            farm.factory = make_sessionmaker(engine)
            farm.write_config()
            try:
                farm.start_master()
                for number in range(1, builders + 1):
                    farm.add_builder(f"b{number}")
                yield farm
            finally:
                farm.stop()
                engine.dispose()
    finally:
        redis_server.stop()
        if postgres.running():
            with _no_such_process():
                postgres.stop("fast")
        for disk in disks:
            unmount(disk)
        shutil.rmtree(work_root, ignore_errors=True)

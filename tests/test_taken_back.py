"""A job the master takes back from a running build (an operator cancels it) is killed on the
builder at once and never reported; the builder then takes its next job as usual.

Real parts end to end: a master under uvicorn on loopback with SQLite, the sdists served by
Python's HTTP server, the builder's JobRunner with the real native backend (as root, every
build runs as the unprivileged build user). Two ways for the builder to learn: its live log
refused (a build that keeps printing), and its heartbeat answered `stop` (a quiet build).

This host is x86_64 and builds x86_64 wheels, which the master takes only for an x86_64 job
from an x86_64 builder: the test's job and builder rows say so, since the master's
configuration names ARM targets only.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from builder.backends.native import NativeBackend
from builder.client import MasterClient
from builder.worker import Heartbeats, JobRunner
from common.config import Settings, TargetSettings, load_settings
from common.db import transaction
from common.models import Builder, BuildJob, OutputFile
from common.states import JobState, SkipReason, TokenRole
from master.auth import create_token
from master.storage import Storage
from master.web.app import create_app
from tests.sdists import make_sdist
from tests.seed import add_release
from tests.servers import free_port, process_gone, serve_app, wait_until
from tests.test_log_stream import file_server
from tests.test_native_backend import (
    ARCH,
    BUILD_USER,
    CA_BUNDLE,
    POLICY,
    PROBE_C,
    TAG,
    build_user_tools,
    reachable_work_root,
)

pytestmark = pytest.mark.skipif(ARCH != "x86_64", reason="written for an x86_64 host")

# Kept going far longer than the test waits: only a kill ends these builds early.
SLEEP_SECONDS = 600
# A quiet build: writes the pid of the process that runs its setup.py, then sleeps.
SLEEPER_SETUP = f"""import os, sys, time
if "bdist_wheel" in sys.argv:
    path = os.path.join(os.environ["TMPDIR"], "sleeper.pid")
    with open(path + ".new", "w") as out:
        out.write(str(os.getpid()))
    os.rename(path + ".new", path)
    time.sleep({SLEEP_SECONDS})
from setuptools import setup
setup()
"""
# A build that keeps printing, with the recipe's own command instead of pip.
CHATTY_COMMAND = (
    f"echo $$ > $TMPDIR/chatty.pid; for i in $(seq {SLEEP_SECONDS * 5}); do"
    " echo tick $i; sleep 0.2; done"
)
CHATTY_RECIPE = f'[recipes.chatty]\nbuild_command = "{CHATTY_COMMAND}"\n'
QUICK_SETUP = (
    "from setuptools import Extension, setup\n"
    "setup(packages=['quick'], ext_modules=[Extension('quick._speed', ['src/speed.c'])])\n"
)


@pytest.fixture(scope="session")
def tools_bin() -> Path:
    return build_user_tools()


@pytest.fixture
def work_root() -> Iterator[Path]:
    yield from reachable_work_root()


@pytest.fixture
def settings(tmp_path: Path, work_root: Path) -> Settings:
    """SQLite is enough here (the master's side runs on PostgreSQL in test_heartbeat); the
    work directory is one the build user reaches."""
    recipes = tmp_path / "recipes.toml"
    recipes.write_text(CHATTY_RECIPE)
    return load_settings(
        None,
        database={"url": f"sqlite:///{tmp_path / 'armwheels.db'}"},
        master={"data_dir": tmp_path / "data", "recipes": recipes},
        builder={
            "work_dir": work_root,
            "ca_bundle": CA_BUNDLE if CA_BUNDLE.exists() else None,
            # Builds have no network: setuptools comes from the builder's wheelhouse.
            "wheelhouse": True,
        },
    )


def _sdists(folder: Path) -> dict[str, Path]:
    src, dist = folder / "src", folder / "dist"
    return {
        "sleeper": make_sdist(
            src, dist, "sleeper", "1.0", {"sleeper/__init__.py": "", "setup.py": SLEEPER_SETUP}
        ),
        "chatty": make_sdist(src, dist, "chatty", "1.0", {"chatty/__init__.py": ""}),
        "quick": make_sdist(
            src,
            dist,
            "quick",
            "1.0",
            {"quick/__init__.py": "", "src/speed.c": PROBE_C, "setup.py": QUICK_SETUP},
        ),
    }


def _x86_64_jobs(
    settings: Settings, factory: sessionmaker[Session], files: str, sdists: dict[str, Path]
) -> dict[str, int]:
    """One job per sdist, for this host's arch, interpreter and policy, fetching from
    `files` with the real hash."""
    jobs: dict[str, int] = {}
    with transaction(factory) as session:
        for project, sdist in sdists.items():
            _, _, [job] = add_release(session, settings, project=project)
            job.arch, job.python_tag, job.policy = ARCH, TAG, POLICY
            data = sdist.read_bytes()
            job.source_file.filename = sdist.name
            job.source_file.url = f"{files}/{sdist.name}"
            job.source_file.sha256 = hashlib.sha256(data).hexdigest()
            job.source_file.size = len(data)
            session.flush()
            jobs[project] = job.id
    return jobs


def _pid_in(work_root: Path, job_id: int, name: str) -> int | None:
    """The pid a build wrote in its temporary directory, once it has, as this host sees
    it: the build runs in a PID namespace of its own, where it has another number."""
    for path in work_root.glob(f"job-{job_id}-*/scratch/tmp/{name}"):
        text = path.read_text().strip()
        if text.isdigit():
            return _host_pid(int(text), f"TMPDIR={work_root}".encode())
    return None


def _host_pid(inner: int, marker: bytes) -> int | None:
    """The host's pid of the process numbered `inner` in its own PID namespace with a
    variable starting with `marker` (a TMPDIR under the builds' work root: no other
    namespace's process)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            environment = (entry / "environ").read_bytes()
        except OSError:
            continue
        line = next((line for line in status.splitlines() if line.startswith("NSpid:")), "")
        numbers = line.split()[1:]
        variables = environment.split(b"\0")
        if (
            len(numbers) > 1
            and numbers[-1] == str(inner)
            and any(variable.startswith(marker) for variable in variables)
        ):
            return int(entry.name)
    return None


def _live_total(url: str, job_id: int) -> int:
    return int(httpx.get(f"{url}/api/v1/jobs/{job_id}/log").headers.get("X-Log-Total", "0"))


def _quiet(url: str, job_id: int) -> bool:
    """The live log did not grow for longer than a tick of the streamer (2 s)."""
    before = _live_total(url, job_id)
    time.sleep(3)
    return _live_total(url, job_id) == before


@pytest.fixture
def caught(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.INFO, logger="builder")
    caplog.set_level(logging.INFO, logger="master.web.builder_api")
    caplog.set_level(logging.INFO, logger="master.builds.jobs")
    yield caplog


def _said(caplog: pytest.LogCaptureFixture, message: str, job_id: int) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.getMessage().startswith(message) and getattr(r, "job_id", None) == job_id
    ]


def test_a_cancelled_build_is_killed_at_once_and_the_builder_goes_on(
    settings: Settings,
    factory: sessionmaker[Session],
    tmp_path: Path,
    work_root: Path,
    tools_bin: Path,
    caught: pytest.LogCaptureFixture,
) -> None:
    with transaction(factory) as session:
        token = create_token(session, "b1", TokenRole.BUILDER)
        operator = create_token(session, "op", TokenRole.OPERATOR)
    sdists = _sdists(tmp_path / "sdists")
    target = TargetSettings.model_construct(arch=ARCH, image="", python_tags=[TAG], policy=POLICY)
    backend = NativeBackend(settings.builder, ARCH, target, BUILD_USER, tools_bin)
    assert backend.python_tags() == [TAG]
    with (
        file_server(sdists["quick"].parent) as files,
        serve_app(create_app(settings, factory), free_port()) as url,
    ):
        jobs = _x86_64_jobs(settings, factory, files, sdists)
        client = MasterClient(url, token)
        client.register("aarch64", "aarch64", backend.name, [TAG], "test")
        with transaction(factory) as session:
            me = session.scalar(select(Builder).where(Builder.name == "b1"))
            assert me is not None
            me.arch = ARCH
        runner = JobRunner(settings, ARCH, backend, client)

        def cancel(project: str) -> None:
            answer = httpx.post(
                f"{url}/api/v1/jobs/{jobs[project]}/cancel",
                headers={"Authorization": f"Bearer {operator}"},
                json={"reason": "not wanted"},
            )
            assert answer.status_code == 200, answer.text

        def cancelled_while_building(project: str, pid_file: str) -> float:
            """Run the job in the background, cancel it once its build runs, and return
            how long the runner took to give up."""
            job_id = jobs[project]
            running = threading.Thread(target=runner.run, args=(job_id,), name=project)
            running.start()
            wait_until(lambda: _pid_in(work_root, job_id, pid_file) is not None, 300, pid_file)
            pid = _pid_in(work_root, job_id, pid_file)
            assert pid is not None and not process_gone(pid)
            if project == "sleeper":
                # Quiet from now on: the streamer has sent all there is and sends no more.
                wait_until(lambda: _quiet(url, job_id), 60, "a quiet live log", 0)
            cancelled = time.monotonic()
            cancel(project)
            wait_until(lambda: process_gone(pid), 30, f"the {project} build to be killed", 0.1)
            running.join(60)
            assert not running.is_alive(), "run() still running after the build was killed"
            return time.monotonic() - cancelled

        # A build that keeps printing learns from its live log: no heartbeats yet.
        took = cancelled_while_building("chatty", "chatty.pid")
        assert took < SLEEP_SECONDS / 10
        assert _said(caught, "live log refused", jobs["chatty"])
        assert not _said(caught, "builder told to stop", jobs["chatty"])
        # A quiet build learns from its heartbeat, beating often while it builds.
        heartbeats = Heartbeats(client, runner, lambda: None, idle=30.0, busy=0.5)
        heartbeats.start()
        try:
            took = cancelled_while_building("sleeper", "sleeper.pid")
            assert took < SLEEP_SECONDS / 10
            assert _said(caught, "builder told to stop", jobs["sleeper"])
            assert not _said(caught, "live log refused", jobs["sleeper"])
            # The same runner and backend build the next job, and report it.
            runner.run(jobs["quick"])
            assert not runner.abandon(jobs["quick"], "too late: it is done")
        finally:
            heartbeats.stop()
            heartbeats.join(10)
        client.close()
    for project in ("chatty", "sleeper"):
        [abandoned] = _said(caught, "job abandoned: the master took it back", jobs[project])
        assert getattr(abandoned, "why", None) == "skipped (cancelled)"
        # Neither reported nor handed back: the master has only the operator's word.
        for message in ("job reported", "job handed back", "result rejected", "job not handed"):
            assert not _said(caught, message, jobs[project]), message
    with factory() as session:
        for project in ("chatty", "sleeper"):
            job = session.get(BuildJob, jobs[project])
            assert job is not None
            assert (job.state, job.skip_reason) == (JobState.SKIPPED, SkipReason.CANCELLED)
            assert job.summary == "cancelled by op: not wanted"
            assert job.build_seconds is None
            # What the builder streamed before the cancel is the job's final log.
            assert job.log_path is not None
            kept = Storage(settings.master.data_dir).read_log(Path(job.log_path))
            assert kept.startswith(f"::armwheels:: job {job.id} attempt 1: {project} 1.0".encode())
        quick = session.get(BuildJob, jobs["quick"])
        assert quick is not None
        assert quick.state == JobState.BUILT, quick.summary
        outputs = session.scalars(select(OutputFile)).all()
        assert [o.job_id for o in outputs] == [jobs["quick"]]
        assert outputs[0].filename.startswith(f"quick-1.0-{TAG}-{TAG}-")
    assert runner.current_job is None and not list(work_root.glob("job-*"))

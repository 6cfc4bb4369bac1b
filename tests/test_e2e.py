"""The whole loop, real at every step: upstream index -> master -> QEMU builder -> our index -> pip.

Needs a Docker engine with binfmt/QEMU and the local arm64 build image
(`armwheels image build --arch aarch64`); scripts/test prepares both.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import docker
import httpx
import pytest
import redis
from sqlalchemy import select

from builder.backends.docker import LABEL
from common.config import Settings, load_settings
from common.db import make_engine, make_sessionmaker
from common.models import BuildJob, OutputFile
from common.states import JobState
from tests.conftest import _postgres_database
from tests.sdists import add_build_requirements, make_sdist
from tests.servers import (
    ROOT,
    clean_pip_env,
    free_port,
    pypiserver,
    stop_process,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.docker]

IMAGE = "armwheels/build-aarch64:bookworm"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
CLI = [sys.executable, "-m", "armwheels.cli"]


@dataclass(frozen=True)
class Project:
    """What a test farm follows upstream, and how its wheel is checked on an arm64 box:
    `check` is Python run there, printing the machine and the extension's file."""

    name: str
    check: str


MSGPACK = Project(
    "msgpack",
    "import msgpack, platform; "
    'assert msgpack.unpackb(msgpack.packb({"a": [1, 2]})) == {"a": [1, 2]}; '
    "from msgpack import _cmsgpack; print(platform.machine(), _cmsgpack.__file__)",
)
# A small real extension (a few seconds of compiling under QEMU, where msgpack takes
# about a minute) for the tests about the farm's parts rather than about compiling.
ABIDEMO = Project(
    "abidemo",
    "import abidemo, platform; from abidemo import _speedups; "
    "assert abidemo.add(2, 3) == 5; print(platform.machine(), _speedups.__file__)",
)


def _farm_config(tmp_path: Path, index_url: str, port: int, project: Project = MSGPACK) -> Path:
    config = tmp_path / "farm.toml"
    ca = f'ca_bundle = "{CA_BUNDLE}"\n' if CA_BUNDLE.exists() else ""
    config.write_text(
        f'[upstream]\nindex_url = "{index_url}"\nprojects = ["{project.name}"]\n'
        "poll_interval = 2\n"
        f'[master]\nport = {port}\ndata_dir = "{tmp_path / "data"}"\ndispatch_interval = 1\n'
        f'[targets.aarch64]\nimage = "{IMAGE}"\npython_tags = ["cp311"]\n'
        f'policy = "manylinux2014_aarch64"\n'
        f'[builder]\nwork_dir = "{tmp_path / "work"}"\nbuild_timeout = 1800\n{ca}'
    )
    return config


def _finished_jobs(database_url: str) -> list[BuildJob]:
    engine = make_engine(database_url)
    try:
        with make_sessionmaker(engine)() as session:
            return list(
                session.scalars(
                    select(BuildJob).where(BuildJob.state.in_([JobState.BUILT, JobState.FAILED]))
                )
            )
    finally:
        engine.dispose()


def _master_answers(url: str) -> bool:
    try:
        answer = httpx.get(f"{url}/api/v1/status", timeout=5)
        return answer.status_code == 200 and "queues" in answer.json()
    except (httpx.HTTPError, ValueError):
        return False


def _import_in_arm64_container(wheel: Path, project: Project) -> str:
    client = docker.from_env()
    script = (
        "python3 -m venv /tmp/v && /tmp/v/bin/pip install -q --no-index /w/" + wheel.name + " && "
        f"/tmp/v/bin/python -c '{project.check}'"
    )
    output = client.containers.run(
        IMAGE,
        ["/bin/sh", "-c", script],
        network_mode="none",
        volumes={str(wheel.parent): {"bind": "/w", "mode": "ro"}},
        remove=True,
    )
    return bytes(output).decode()


def _check_published_wheel(
    settings: Settings,
    farm_url: str,
    tmp_path: Path,
    project: Project = MSGPACK,
    build_path: str | None = None,
) -> None:
    """The built wheel is in our index, pip fetches it, its hash matches, it imports on ARM;
    the builder took `build_path` (by default, what `auto` takes on this host)."""
    build_path = build_path or CROSS_OR_EMULATED
    wait_until(lambda: _master_answers(farm_url), 600, "the master to start")
    wait_until(
        lambda: bool(_finished_jobs(settings.database.url)),
        1500,
        f"the {project.name} build to finish",
        step=5,
    )
    [job] = _finished_jobs(settings.database.url)
    assert job.state == JobState.BUILT, (job.failure_reason, job.summary)
    engine = make_engine(settings.database.url)
    with make_sessionmaker(engine)() as session:
        output = session.scalars(select(OutputFile)).one()
    engine.dispose()
    assert "manylinux2014_aarch64" in output.platform_tag.split(".")
    assert output.grafted == []  # self-contained: nothing for auditwheel to graft
    downloads = tmp_path / "downloads"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--only-binary=:all:",
            "--no-deps",
            "--platform",
            "manylinux2014_aarch64",
            "--python-version",
            "3.11",
            "--index-url",
            f"{farm_url}/simple/",
            "--dest",
            str(downloads),
            project.name,
        ],
        check=True,
        env=clean_pip_env(),
    )
    [wheel] = list(downloads.glob("*.whl"))
    assert wheel.name == output.filename
    assert "manylinux2014_aarch64" in wheel.name
    assert hashlib.sha256(wheel.read_bytes()).hexdigest() == output.sha256
    machine, module = _import_in_arm64_container(wheel, project).split()
    assert machine == "aarch64" and module.endswith(".so")
    status = httpx.get(f"{farm_url}/api/v1/status").json()
    assert status["queues"]["aarch64"]["built"] == 1
    build_log = httpx.get(f"{farm_url}/logs/{job.id}").text
    assert "auditwheel repair" in build_log
    # x86_64 hosts publish through the cross path: compiled natively, imported under QEMU.
    assert f"build path: {build_path}" in build_log
    assert job.build_path == build_path


CROSS_OR_EMULATED = "cross" if platform.machine() == "x86_64" else "emulated"
BUILDER = ["builder", "--arch", "aarch64", "--backend", "auto"]


def _spawn(
    args: list[str], config: Path, env: dict[str, str], log: BinaryIO
) -> subprocess.Popen[bytes]:
    """An armwheels command running in the background, its output in `log`."""
    return subprocess.Popen(
        [*CLI, *args, "--config", str(config)],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def _cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([*CLI, *args], env=env, cwd=ROOT, capture_output=True, check=True)
    return done.stdout.decode().strip()


def _build_containers() -> set[str]:
    """Ids of every build container on the engine (of any builder, this test's or not)."""
    containers = docker.from_env().containers.list(all=True, filters={"label": LABEL})
    return {str(c.id) for c in containers}


def _no_build_containers_left(before: set[str], builders: str) -> None:
    """The builders this test started (named `builders`, or starting with it) left no
    container behind; one that was already there, or another builder's (a test running
    beside this one on the shared engine), is not theirs to remove."""
    containers = docker.from_env().containers.list(all=True, filters={"label": LABEL})
    left = [
        (c.name, c.labels, c.status)
        for c in containers
        if str(c.id) not in before and c.labels.get(LABEL, "").startswith(builders)
    ]
    assert left == []


def test_armwheels_up_builds_an_aarch64_wheel_into_our_index(
    tmp_path: Path, msgpack_upstream: str
) -> None:
    """`armwheels up`: embedded SQLite database and SQLite broker, one process per node."""
    port = free_port()
    config = _farm_config(tmp_path, msgpack_upstream, port)
    settings = load_settings(config)
    before = _build_containers()
    with (tmp_path / "farm.log").open("wb") as log:
        farm = subprocess.Popen(
            [*CLI, "up", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
        )
        try:
            _check_published_wheel(settings, f"http://127.0.0.1:{port}", tmp_path)
        finally:
            stop_process(farm)
    assert farm.returncode == 0
    # Its builders name themselves <host>-<target>-<instance> (builder/identity.py).
    _no_build_containers_left(before, f"{platform.node()}-")


@pytest.mark.redis
@pytest.mark.postgres
def test_master_and_builder_on_redis_and_postgresql(tmp_path: Path, abidemo_upstream: str) -> None:
    """Separate master and builder processes, Redis broker, PostgreSQL database (a small
    extension: `armwheels up` above builds msgpack)."""
    port = free_port()
    config = _farm_config(tmp_path, abidemo_upstream, port, ABIDEMO)
    broker_db = 12
    broker = redis.Redis(host="127.0.0.1", port=6379, db=broker_db)
    broker.flushdb()
    before = _build_containers()
    processes: list[subprocess.Popen[bytes]] = []
    for database_url in _postgres_database():
        env = dict(
            os.environ,
            ARMWHEELS_DATABASE__URL=database_url,
            ARMWHEELS_BROKER__URL=f"redis://127.0.0.1:6379/{broker_db}",
        )
        settings = load_settings(config, database={"url": database_url})
        _cli(env, "db", "upgrade", "--config", str(config))
        token_name = f"builder-{uuid.uuid4().hex[:8]}"
        token = _cli(
            env, "token", "create", token_name, "--role", "builder", "--config", str(config)
        )
        assert token.startswith("aw_")
        builder_env = dict(env, ARMWHEELS_BUILDER__TOKEN=token, ARMWHEELS_BUILDER__NAME=token_name)
        with (
            (tmp_path / "master.log").open("wb") as master_log,
            (tmp_path / "builder.log").open("wb") as builder_log,
        ):
            try:
                processes.append(_spawn(["master"], config, env, master_log))
                wait_until(lambda: _master_answers(f"http://127.0.0.1:{port}"), 120, "master")
                processes.append(_spawn(BUILDER, config, builder_env, builder_log))
                _check_published_wheel(settings, f"http://127.0.0.1:{port}", tmp_path, ABIDEMO)
                status = httpx.get(f"http://127.0.0.1:{port}/api/v1/status").json()
                assert [b["name"] for b in status["builders"]] == [token_name]
            finally:
                for process in reversed(processes):
                    stop_process(process)
                broker.flushdb()
                broker.close()
    _no_build_containers_left(before, token_name)


def test_build_image_carries_tools_and_nothing_else() -> None:
    """The local image has auditwheel and patchelf, and no mount or secret baked in."""
    client = docker.from_env()
    config = client.images.get(IMAGE).attrs["Config"]
    assert not config.get("Volumes")
    assert not [e for e in config.get("Env") or [] if e.startswith(("PIP_", "SSL_"))]
    output = client.containers.run(
        IMAGE,
        ["/bin/sh", "-c", "uname -m && auditwheel --version && patchelf --version"],
        network_mode="none",
        remove=True,
    )
    machine, *rest = bytes(output).decode().splitlines()
    assert machine == "aarch64"
    assert any(line.startswith("auditwheel ") for line in rest)
    assert any(line.startswith("patchelf ") for line in rest)


def _jobs(database_url: str) -> list[BuildJob]:
    engine = make_engine(database_url)
    try:
        with make_sessionmaker(engine)() as session:
            return list(session.scalars(select(BuildJob)))
    finally:
        engine.dispose()


def test_sigterm_hands_the_running_job_back(tmp_path: Path) -> None:
    """A builder told to stop kills its build, hands the job back and leaves no container."""
    packages = tmp_path / "upstream"
    # Hangs when built into a wheel, not when the test makes the sdist.
    setup = (
        "import sys, time\n"
        "if 'sdist' not in sys.argv:\n    time.sleep(3600)\n"
        "from setuptools import setup\nsetup()\n"
    )
    sleeper = make_sdist(
        tmp_path / "src",
        tmp_path / "dist",
        "sleeper",
        "1.0",
        {"sleeper/__init__.py": "", "setup.py": setup},
    )
    add_build_requirements(packages)
    shutil.copy(sleeper, packages)
    port = free_port()
    with pypiserver(packages) as index_url:
        config = _farm_config(tmp_path, index_url, port)
        config.write_text(config.read_text().replace('["msgpack"]', '["sleeper"]'))
        env = {k: v for k, v in os.environ.items() if not k.startswith("ARMWHEELS_")}
        settings = load_settings(config)
        _cli(env, "db", "upgrade", "--config", str(config))
        name = f"stopper-{uuid.uuid4().hex[:6]}"
        token = _cli(env, "token", "create", name, "--role", "builder", "--config", str(config))
        builder_env = dict(env, ARMWHEELS_BUILDER__TOKEN=token, ARMWHEELS_BUILDER__NAME=name)
        with (
            (tmp_path / "master.log").open("wb") as master_log,
            (tmp_path / "builder.log").open("wb") as builder_log,
        ):
            master = _spawn(["master"], config, env, master_log)
            builder = _spawn(BUILDER, config, builder_env, builder_log)
            try:
                client = docker.from_env()
                running: dict[str, str | list[str] | bool] = {
                    "label": f"armwheels.builder={name}",
                    "status": "running",
                }
                wait_until(
                    lambda: (
                        any(j.state == JobState.BUILDING for j in _jobs(settings.database.url))
                        and bool(client.containers.list(filters=running))
                    ),
                    600,
                    "the sleeper build to start",
                    step=1,
                )
                builder.send_signal(signal.SIGTERM)
                assert builder.wait(timeout=120) == 0
                [job] = _jobs(settings.database.url)
                assert (job.state, job.attempts, job.builder_id) in {
                    (JobState.PENDING, 0, None),
                    (JobState.QUEUED, 0, None),  # the master already sent it again
                }
                labelled: dict[str, str | list[str] | bool] = {"label": f"armwheels.builder={name}"}
                assert client.containers.list(all=True, filters=labelled) == []
                assert "job handed back" in (tmp_path / "builder.log").read_text()
            finally:
                stop_process(builder)
                stop_process(master)

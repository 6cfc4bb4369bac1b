"""`armwheels up`: the whole farm on one machine with embedded defaults.

SQLite for the database and the broker, a local data directory, one builder per
enabled target. Each node runs as its own process, as it would on separate machines.
Where the configuration chooses no upstream, the farm follows PyPI's changelog when it
answers at start-up, else a small watch list (master/pypi/watch.py); its first log lines
say which, where the dashboard and index are, and how to add a project.
"""

from __future__ import annotations

import logging
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from common.config import CONFIG_ENV, Settings, load_settings
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

    with (
        open_engine(settings.database.url) as engine,
        transaction(make_sessionmaker(engine)) as session,
    ):
        return {
            name: rotate_token(session, f"local-{name}", TokenRole.BUILDER)
            for name in settings.enabled_targets()
        }


def _upgrade_database(settings: Settings) -> int | None:
    """The schema at head; returns the changelog cursor of an earlier run, if any."""
    from master.pypi.feed import read_cursor

    with open_engine(settings.database.url) as engine:
        upgrade(engine)
        with make_sessionmaker(engine)() as session:
            return read_cursor(session)


@dataclass
class FarmStart:
    """What every process of the farm runs with: the settings as chosen at start-up, and
    the environment that hands them to the master and the builders."""

    settings: Settings
    config: Path | None
    env: dict[str, str] = field(default_factory=dict)

    def command(self, *args: str) -> list[str]:
        """The `armwheels` command line of one node of the farm."""
        config_args = ["--config", str(self.config)] if self.config else []
        return [sys.executable, "-m", "armwheels.cli", *args, *config_args]


def start_farm(config: Path | None) -> FarmStart:
    """Settings, the database at head and, on the embedded default, the upstream chosen
    (master.pypi.watch); then the first log lines: what the farm watches, where its
    dashboard and index are, how to add a project."""
    from master.pypi.changelog import PROBE_SECONDS
    from master.pypi.watch import choose_upstream, how_to_add, is_embedded_default, watching

    settings = load_settings(config)
    settings.master.data_dir.mkdir(parents=True, exist_ok=True)
    cursor = _upgrade_database(settings)
    env = dict(os.environ)
    env["ARMWHEELS_DATABASE__URL"] = settings.database.url
    env["ARMWHEELS_BROKER__URL"] = settings.broker.url
    env["ARMWHEELS_MASTER__DATA_DIR"] = str(settings.master.data_dir)
    upstream = settings.upstream
    from_file = config is not None or bool(os.environ.get(CONFIG_ENV))
    if not from_file and is_embedded_default(upstream):
        choice = choose_upstream(upstream, PROBE_SECONDS)
        if choice.fallback is not None:
            log.warning(
                "PyPI's changelog cannot be reached: watching the default list through the"
                " Simple API instead",
                extra={
                    "tried": f"changelog_last_serial at {upstream.xmlrpc_url}"
                    f" (at most {PROBE_SECONDS:g} s)",
                    "error": choice.fallback,
                    "instead": f"{len(choice.upstream.projects)} projects at {upstream.index_url}",
                },
            )
        settings.upstream = upstream = choice.upstream
        env.update(choice.environment())
    url = settings.master.public_url
    log.info(
        f"watching {watching(upstream, cursor)}",
        extra={
            "feed": upstream.feed,
            "upstream": upstream.xmlrpc_url if upstream.feed == "changelog" else upstream.index_url,
        },
    )
    log.info(
        f"dashboard at {url}/, index at {url}/simple/",
        extra={"dashboard": f"{url}/", "index": f"{url}/simple/"},
    )
    log.info(f"to add a project: {how_to_add(upstream)}")
    return FarmStart(settings, config, env)


def run_up(config: Path | None) -> int:
    start = start_farm(config)
    settings = start.settings
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
    children: list[subprocess.Popen[bytes]] = [
        subprocess.Popen(start.command("master"), env=start.env)
    ]
    for name, backend in backends.items():
        # No name given: each builder names itself after the host and its own instance id
        # (builder/identity.py), so that two farms on one Docker host never share one.
        builder_env = dict(start.env, ARMWHEELS_BUILDER__TOKEN=tokens[name])
        children.append(
            subprocess.Popen(
                start.command("builder", "--target", name, "--backend", backend),
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

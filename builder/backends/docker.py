"""Docker backend: each build and each smoke test in its own throw-away container.

Containers carry labels so that a restarted builder can remove any its predecessor left,
and they are removed in every case, including timeouts.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from pathlib import Path
from typing import BinaryIO

import docker
import docker.errors
import requests.exceptions
from docker.models.containers import Container

from builder.backends import SCRIPTS, BuildOutcome, note, passthrough_environment, run_recipe
from builder.client import JobSpec
from common.config import BuilderSettings, TargetSettings

log = logging.getLogger(__name__)

LABEL = "armwheels.builder"
CA_PATH = "/armwheels/ca-bundle.crt"
CONTAINER_HOME = "/tmp"  # noqa: S108 (a path inside the throw-away container)


# Prints one tag (cp311) per interpreter found; errors and non-CPython ones print nothing.
INTERPRETER_PROBE = """
for py in /opt/python/*/bin/python /usr/bin/python3 /usr/bin/python3.* /usr/local/bin/python3.*; do
    case "$py" in *-config|*m) continue ;; esac
    [ -x "$py" ] || continue
    "$py" -c "import platform, sys
if platform.python_implementation() == 'CPython': print('cp%d%d' % sys.version_info[:2])" \
        2>/dev/null
done
true
"""
_TAG = re.compile(r"^cp3\d{1,2}$")


class DockerUnavailable(RuntimeError):
    """No Docker engine answers, or the build image is missing."""


class DockerBackend:
    name = "docker"

    def __init__(
        self, settings: BuilderSettings, arch: str, target: TargetSettings, builder_name: str
    ) -> None:
        self.settings = settings
        self.arch = arch
        self.target = target
        self.builder_name = builder_name
        try:
            self.client = docker.from_env(timeout=120)
            self.client.ping()
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise DockerUnavailable(f"no Docker engine answers: {exc}") from exc
        try:
            self.client.images.get(target.image)
        except docker.errors.ImageNotFound as exc:
            raise DockerUnavailable(f"build image {target.image} is missing") from exc
        self.remove_stale()
        self.interpreters = self.discover_interpreters()
        self._current: Container | None = None
        self._cancelled = threading.Event()

    def close(self) -> None:
        self.client.close()

    def discover_interpreters(self) -> list[str]:
        """The CPython tags the build image has: manylinux images keep theirs under
        /opt/python/, Debian images have /usr/bin/python3.X. Asked once, at start."""
        try:
            output = self.client.containers.run(
                self.target.image,
                ["/bin/sh", "-c", INTERPRETER_PROBE],
                network_mode="none",
                labels={LABEL: self.builder_name},
                remove=True,
                stdout=True,
                stderr=False,
            )
        except docker.errors.DockerException as exc:
            message = f"cannot start the build image {self.target.image}: {exc}"
            raise DockerUnavailable(message) from exc
        text = output.decode("utf-8", "replace") if isinstance(output, bytes) else ""
        found = sorted({line.strip() for line in text.splitlines() if _TAG.match(line.strip())})
        log.info(
            "interpreters in build image",
            extra={"image": self.target.image, "python_tags": ",".join(found)},
        )
        return found

    def python_tags(self) -> list[str]:
        """The configured tags this image can build (the master sends only these)."""
        return [tag for tag in self.target.python_tags if tag in self.interpreters]

    def remove_stale(self) -> None:
        """Remove containers a previous run of this builder left behind."""
        stale = self.client.containers.list(
            all=True, filters={"label": f"{LABEL}={self.builder_name}"}
        )
        for container in stale:
            container.remove(force=True)
            log.warning("stale build container removed", extra={"container": container.name})

    def _environment(self) -> dict[str, str]:
        ca_path = CA_PATH if self.settings.ca_bundle is not None else None
        env = passthrough_environment(self.settings, ca_path)
        env.update({"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONDONTWRITEBYTECODE": "1"})
        env["HOME"] = CONTAINER_HOME
        return env

    def _run(
        self,
        command: list[str],
        volumes: dict[str, dict[str, str]],
        network: str,
        job_id: int,
        log_sink: BinaryIO,
        timeout: float,
    ) -> int | None:
        """Run a container to completion; None means it was killed at the time limit."""
        if self.settings.ca_bundle is not None:
            volumes[str(self.settings.ca_bundle)] = {"bind": CA_PATH, "mode": "ro"}
        volumes[str(SCRIPTS)] = {"bind": "/armwheels/scripts", "mode": "ro"}
        container: Container = self.client.containers.create(
            self.target.image,
            command,
            labels={LABEL: self.builder_name, "armwheels.job": str(job_id)},
            volumes=volumes,
            network_mode=network,
            environment=self._environment(),
            mem_limit=self.settings.memory_limit,
            pids_limit=4096,
            working_dir=CONTAINER_HOME,
            detach=True,
        )
        pump = threading.Thread(target=self._pump, args=(container, log_sink), daemon=True)
        self._current = container
        try:
            if self._cancelled.is_set():
                return None
            container.start()
            pump.start()
            try:
                status = container.wait(timeout=timeout)
            except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
                container.kill()
                pump.join(timeout=10)
                note(log_sink, f"killed after the time limit of {timeout:.0f} s")
                return None
            pump.join(timeout=30)
            if self._cancelled.is_set():
                note(log_sink, "killed: the builder is stopping")
                return None
            return int(status.get("StatusCode", 1))
        finally:
            self._current = None
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)

    def cancel(self) -> None:
        self._cancelled.set()
        container = self._current
        if container is not None:
            with contextlib.suppress(docker.errors.APIError):
                container.kill()

    @staticmethod
    def _pump(container: Container, log_sink: BinaryIO) -> None:
        try:
            for chunk in container.logs(stream=True, follow=True):
                log_sink.write(chunk)
                log_sink.flush()
        except (docker.errors.APIError, requests.exceptions.RequestException, ValueError):
            pass

    def build(self, spec: JobSpec, sdist: Path, workdir: Path, log_sink: BinaryIO) -> BuildOutcome:
        out = workdir / "out"
        out.mkdir(parents=True, exist_ok=True)
        sdist_in = f"/armwheels/sdist/{sdist.name}"
        note(log_sink, f"build container from {self.target.image} for job {spec.job_id}")
        timeout = self.settings.build_timeout

        def run_build() -> int | None:
            volumes = {
                str(sdist): {"bind": sdist_in, "mode": "ro"},
                str(out): {"bind": "/armwheels/out", "mode": "rw"},
            }
            command = [
                "/bin/bash",
                "/armwheels/scripts/build.sh",
                sdist_in,
                spec.python_tag,
                spec.policy,
            ]
            return self._run(
                command, volumes, self.settings.network, spec.job_id, log_sink, float(timeout)
            )

        def run_smoke(wheel: Path, modules: list[str]) -> int | None:
            inside = f"/armwheels/wheel/{wheel.name}"
            command = [
                "/bin/bash",
                "/armwheels/scripts/smoke.sh",
                inside,
                spec.python_tag,
                *modules,
            ]
            return self._run(
                command,
                {str(wheel): {"bind": inside, "mode": "ro"}},
                "none",
                spec.job_id,
                log_sink,
                600.0,
            )

        return run_recipe(out, log_sink, timeout, run_build, run_smoke)

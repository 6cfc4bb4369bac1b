"""How a builder runs a build: one interface, several backends (docker, native).

Every backend runs the same two scripts (builder/scripts): build.sh turns the sdist
into a repaired wheel, smoke.sh installs it in a fresh environment and imports it.
A backend only decides where those scripts run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

from packaging.requirements import InvalidRequirement, Requirement

from builder.classify import Diagnosis, diagnose
from builder.sdist import SdistRefused, check_archive, unpacked_limit
from common.config import BuilderSettings
from common.job_spec import JobSpec
from common.recipes import Recipe
from common.states import BuildPath, FailureReason
from common.wheels import BadWheel, read_contents

if TYPE_CHECKING:
    from builder.wheelhouse import Wheelhouse

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
TAIL_BYTES = 256 * 1024  # what the classifier scans


class FarmFault(RuntimeError):
    """The farm, not the sdist, failed the build: the container engine answered an error,
    a build container was removed from under the builder. How the build would have ended
    is unknown, so nothing is reported: the builder hands the job back."""


@dataclass
class BuildOutcome:
    built: bool
    wheel: Path | None = None
    reason: FailureReason | None = None
    summary: str = ""
    grafted: list[str] | None = None
    # Worth another attempt (out of memory, network, a flaky emulator): the master retries
    # it automatically, up to its attempt cap.
    transient: bool = False
    build_path: BuildPath | None = None
    # A distribution target's wheel: `package=version` of the distribution's packages
    # that hold the libraries it loads (what a user installs beside it).
    system_packages: list[str] | None = None
    # A failed build's diagnosis (None: the failure was not diagnosed from its log): what
    # builder/auto_packages.py reads to build again with the missing package.
    diagnosis: Diagnosis | None = None
    # The system packages installed on top of the build image for this build (the
    # recipe's, the learned ones, the farm's own additions), the part the farm added
    # during this attempt, and the image's package manager they are named for.
    build_packages: list[str] | None = None
    auto_packages: list[str] | None = None
    package_manager: str | None = None
    # A build requirement with no wheel for the target on the upstream index nor the
    # farm's own: the master may build it first and let the job wait (dep-wait).
    waiting_for: str | None = None


class Backend(Protocol):
    name: str

    def python_tags(self) -> list[str]:
        """Interpreter tags this backend can build for."""
        ...

    def build(self, spec: JobSpec, sdist: Path, workdir: Path, log: BinaryIO) -> BuildOutcome:
        """Build, repair and smoke-test one wheel; every byte of output goes to `log`.
        Raises FarmFault when the farm failed it."""
        ...

    def cancel(self) -> None:
        """Kill the build under way, from another thread or a signal handler, and refuse
        its further steps until reset(): the builder is stopping (it hands the job back),
        or the master took the job back (its build is not reported)."""
        ...

    def reset(self) -> None:
        """Forget an earlier cancel(): the next build runs. The runner calls it when it
        takes a new job, so that a cancelled job does not kill the next one."""
        ...

    def close(self) -> None: ...


def passthrough_environment(settings: BuilderSettings, ca_path: str | None) -> dict[str, str]:
    """The host variables operators chose to pass (proxies) and the CA bundle, nothing else."""
    env = {name: os.environ[name] for name in settings.pass_env if name in os.environ}
    if ca_path is not None:
        env.update({"PIP_CERT": ca_path, "SSL_CERT_FILE": ca_path, "REQUESTS_CA_BUNDLE": ca_path})
    return env


def note(log: BinaryIO, text: str) -> None:
    log.write(f"::armwheels:: {text}\n".encode())
    log.flush()


@dataclass
class StepExit:
    """How a sandboxed step ended, beyond its exit code."""

    code: int | None  # None: the builder killed it (see killed_for)
    killed_for: str | None = None  # "timeout", "work-dir" or "cancelled"
    oom_killed: bool = False  # the kernel's OOM killer, as Docker reports it
    detail: str = ""


# Runs a script to completion: its exit code, or None when it was killed at the time
# limit, or a StepExit with the details.
Step = int | None | StepExit
RunBuild = Callable[[], Step]
# The wheel, the modules to import, its runtime requirements (Requires-Dist, no extras).
RunSmoke = Callable[[Path, list[str], list[str]], Step]


def _exit(step: Step) -> StepExit:
    if isinstance(step, StepExit):
        return step
    return StepExit(step, killed_for="timeout" if step is None else None)


def recipe_environment(recipe: Recipe | None, constraints: str | None) -> dict[str, str]:
    """What the operator's recipe adds to the build's environment."""
    if recipe is None:
        return {}
    env = dict(recipe.env)
    if recipe.constraints and constraints is not None:
        env["PIP_CONSTRAINT"] = constraints
    if recipe.build_command:
        env["ARMWHEELS_BUILD_COMMAND"] = recipe.build_command
    return env


def repair_environment(spec: JobSpec) -> dict[str, str]:
    """What repair.sh, on every backend, is told of the target's rule for a wheel that
    meets only a newer policy than the job's (publish it under that one, or fail it)."""
    return {"ARMWHEELS_NEWER_POLICY": spec.newer_policy}


def write_constraints(recipe: Recipe | None, folder: Path) -> Path | None:
    """The recipe's pip constraints as a file the build can read (None without any)."""
    if recipe is None or not recipe.constraints:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "constraints.txt"
    path.write_text("".join(f"{line}\n" for line in recipe.constraints))
    path.chmod(0o644)
    return path


def cancelled_outcome() -> BuildOutcome:
    """A build cancel() stopped: never reported (the runner hands the job back or drops it)."""
    return BuildOutcome(False, reason=FailureReason.BUILDER_ERROR, summary="build cancelled")


def offer_runtime_requirements(
    wheelhouse: Wheelhouse | None,
    requirements: list[str],
    python_tag: str,
    platforms: list[str],
    log: BinaryIO,
) -> bool:
    """Fetch a wheel's runtime requirements into the wheelhouse (the same safe way as
    build requirements) for the smoke test, which has no network: True when they all
    came in and the smoke test may install them with the wheel."""
    if wheelhouse is None or not requirements:
        return False
    parsed = []
    for line in requirements:
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            note(log, f"smoke test: {line!r} is not a requirement; installing without it")
            return False
        if requirement.url:
            note(log, f"smoke test: {line} names a URL; never fetched")
            return False
        parsed.append(requirement)
    note(log, f"smoke test: fetching the wheel's requirements: {', '.join(map(str, parsed))}")
    if wheelhouse.prefetch(parsed, python_tag, platforms, None, wheelhouse.pip_environment(), log):
        return True
    note(log, "smoke test: not every requirement has a wheel here; installing without them")
    return False


def note_log_capped(log: BinaryIO, left_out: int, limit: int) -> None:
    note(
        log,
        f"log capped at {limit} bytes: {left_out} bytes of this step's output left out"
        " (the first and last halves are kept)",
    )


def refuse_unsafe_archive(
    sdist: Path, settings: BuilderSettings, log: BinaryIO
) -> BuildOutcome | None:
    """The failure of an sdist no build should unpack (paths out of its root, links or
    special files, a decompression bomb), found by reading its headers on the host with
    bounded work before any of its code runs; None when it may be built."""
    try:
        size = check_archive(sdist, unpacked_limit(sdist, settings.work_dir_limit))
    except SdistRefused as exc:
        summary = f"sdist refused: {exc}"
        note(log, summary)
        return BuildOutcome(False, reason=FailureReason.SDIST_REFUSED, summary=summary)
    note(log, f"sdist archive checked: {size} bytes unpacked, nothing outside its root")
    return None


def run_recipe(
    out: Path, log: BinaryIO, timeout: int, run_build: RunBuild, run_smoke: RunSmoke
) -> BuildOutcome:
    """The sequence every backend follows, with the failure class of each step. A failure
    is diagnosed from what this build wrote to the log, not from an earlier path's or
    round's (a cross build before an emulated one, a round before auto packages)."""
    start = log_offset(log)
    step = _exit(run_build())
    if step.killed_for == "cancelled":
        return cancelled_outcome()
    if step.killed_for == "work-dir":
        return BuildOutcome(False, reason=FailureReason.WORK_DIR_LIMIT, summary=step.detail)
    code = step.code
    if code is None:
        return BuildOutcome(
            False, reason=FailureReason.TIMEOUT, summary=f"build exceeded {timeout} s"
        )
    if code != 0:
        diagnosis = diagnose(code, log_since(log, start), oom_killed=step.oom_killed)
        return BuildOutcome(
            False,
            reason=diagnosis.reason,
            summary=diagnosis.summary,
            transient=diagnosis.transient,
            diagnosis=diagnosis,
            waiting_for=diagnosis.needs_wheel,
        )
    wheels = sorted((out / "wheelhouse").glob("*.whl"))
    if len(wheels) != 1:
        return BuildOutcome(
            False,
            reason=FailureReason.BUILDER_ERROR,
            summary=f"expected one repaired wheel, found {len(wheels)}",
        )
    wheel = wheels[0]
    try:
        # The master's own verification (common.wheels), against what the wheel's name
        # says: a wheel it would refuse fails here, with the reason it would give.
        contents = read_contents(wheel)
    except BadWheel as exc:
        note(log, f"the repaired wheel fails verification ({exc.check}): {exc}")
        return BuildOutcome(
            False,
            reason=FailureReason.UPLOAD_REJECTED,
            summary=f"the repaired wheel would be refused ({exc.check}): {exc}",
        )
    if contents.modules:
        note(log, f"smoke test: import {' '.join(contents.modules)}")
    else:
        note(log, "smoke test: the wheel installs no importable module; install only")
    smoke = _exit(run_smoke(wheel, contents.modules, contents.requires_dist))
    if smoke.killed_for == "cancelled":
        return cancelled_outcome()
    if smoke.code != 0:
        return BuildOutcome(
            False,
            reason=FailureReason.SMOKE_TEST_FAILED,
            summary="the repaired wheel did not install or import",
        )
    packages_file = out / "system-packages.txt"
    packages = None
    if packages_file.is_file():
        packages = [p for p in packages_file.read_text(errors="replace").split() if p]
    return BuildOutcome(
        True,
        wheel=wheel,
        summary=f"built {wheel.name}",
        grafted=contents.grafted_libraries,
        system_packages=packages,
    )


def log_offset(log: BinaryIO) -> int:
    """Where the log stands now: what a step writes next starts there."""
    try:
        return log.tell()
    except (OSError, ValueError):
        return 0


def log_since(log: BinaryIO, start: int = 0) -> bytes:
    """What was written to the log from `start` on (its last TAIL_BYTES, what the
    classifier scans), read back by name."""
    try:
        with open(log.name, "rb") as handle:
            handle.seek(0, 2)
            handle.seek(max(start, handle.tell() - TAIL_BYTES))
            return handle.read()
    except (OSError, AttributeError, TypeError):
        return b""

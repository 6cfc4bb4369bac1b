"""Build states and the classes of failure a build can end with.

As in Debian's wanna-build, a job goes pending (known, not yet queued) -> queued ->
building -> built | failed | skipped; the database is the source of truth and the broker
only carries work, so a job whose message or builder is lost is found and queued again.
A job whose build needs a build dependency that has no wheel for its target yet waits in
dep-wait (wanna-build's dep-wait) until the farm publishes one, then is pending again.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal, get_args


class JobState(StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    BUILDING = "building"
    # Its build needs a build dependency with no wheel for its target on PyPI or here
    # (build_jobs.waiting_for names it): pending again once the farm publishes one.
    DEP_WAIT = "dep-wait"
    BUILT = "built"
    FAILED = "failed"
    SKIPPED = "skipped"


ACTIVE_STATES: tuple[JobState, ...] = (
    JobState.PENDING,
    JobState.QUEUED,
    JobState.BUILDING,
    JobState.DEP_WAIT,
)
FINAL_STATES: tuple[JobState, ...] = (JobState.BUILT, JobState.FAILED, JobState.SKIPPED)


class FailureReason(StrEnum):
    """Why a build failed; the builder picks one and the master records it."""

    SDIST_UNAVAILABLE = "sdist-unavailable"
    HASH_MISMATCH = "hash-mismatch"
    NO_INTERPRETER = "no-interpreter"
    COMPILE_ERROR = "compile-error"
    PURE_PYTHON = "pure-python"
    AUDITWHEEL_REJECTED = "auditwheel-rejected"
    SMOKE_TEST_FAILED = "smoke-test-failed"
    TIMEOUT = "timeout"
    BUILDER_ERROR = "builder-error"
    UPLOAD_REJECTED = "upload-rejected"
    LOST = "lost"
    # Appended for log diagnosis (builder/classify.py); stored as strings, no migration.
    OUT_OF_MEMORY = "out-of-memory"
    MISSING_DEPENDENCY = "missing-dependency"
    MISSING_SYSTEM_LIBRARY = "missing-system-library"
    MISSING_BUILD_TOOL = "missing-build-tool"
    UNSUPPORTED_PYTHON = "unsupported-python"
    NETWORK = "network"
    # The sandbox's own limits and the operator's recipe.
    WORK_DIR_LIMIT = "work-dir-limit"
    RECIPE_FAILED = "recipe-failed"
    # The sdist's archive is not one to unpack (paths or links out of it, special files,
    # a decompression bomb): refused before any of its code runs.
    SDIST_REFUSED = "sdist-refused"


class SkipReason(StrEnum):
    """Why a release or a target is not built; recorded so operators can see it."""

    SKIP_LIST = "skip-list"
    NO_SDIST = "no-sdist"
    COVERED_UPSTREAM = "covered-upstream"
    # The farm already serves a wheel this target installs (a stable-ABI `cp36-abi3`
    # wheel built for an older CPython serves every later one).
    COVERED_BY_FARM = "covered-by-farm"
    PURE_PYTHON_UPSTREAM = "pure-python-upstream"
    REMOVED_UPSTREAM = "removed-upstream"
    YANKED_UPSTREAM = "yanked-upstream"
    CANCELLED = "cancelled"  # an operator cancelled the job (audit log says who and why)


class BuildPath(StrEnum):
    """How a builder produced a job's wheel (or its last failure): recorded per job, so
    that operators see what the cross path takes and what falls back to emulation."""

    CROSS = "cross"  # cross-compiled on the host's CPU, smoke-tested under emulation
    EMULATED_AFTER_CROSS = "emulated-after-cross"  # the cross build failed; emulated
    EMULATED = "emulated"  # built in the target's image under QEMU
    NATIVE = "native"  # built on an ARM host of the target's arch


class TokenRole(StrEnum):
    BUILDER = "builder"
    MAINTAINER = "maintainer"
    OPERATOR = "operator"


# The ARM architectures the farm builds for, by their `uname -m` names: the type of every
# body and setting that names one, and ARCHES (the same names, for loops and choices).
Arch = Literal["aarch64", "armv7l"]
ARCHES: tuple[Arch, ...] = get_args(Arch)

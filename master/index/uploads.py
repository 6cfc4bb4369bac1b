"""Checks a builder's result against its job before anything is published.

The master trusts nothing a builder says about a wheel: it parses the name with
`packaging`, hashes the bytes itself and verifies the zip against the job and the wheel
spec (common/wheels.py) before anything is written where the index serves from. A
refusal names the check that failed, recorded on the job for the dashboard and metrics.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from packaging.utils import canonicalize_name
from packaging.version import Version
from sqlalchemy import select
from sqlalchemy.orm import Session

from common.config import FloatAbi, PushTarget
from common.db import lock_rows
from common.job_spec import NewerPolicy
from common.models import Builder, BuildJob, OutputFile, Release
from common.states import FailureReason, JobState, SkipReason
from common.tags import (
    installs_on,
    is_distribution_policy,
    is_manylinux,
    meets_policy,
    policy_platforms,
    publishing_index,
)
from common.wheels import (
    BadWheel,
    Check,
    Expected,
    WheelContents,
    WheelName,
    elf_rule,
    parse_name,
    read_contents,
)
from master.builds.build_plan import settle_covered_jobs
from master.index.pushes import queue_pushes
from master.storage import Storage, TooLarge

log = logging.getLogger(__name__)


class Rejected(Exception):
    """An upload refused with an HTTP status and a one-line reason. A refusal because the
    job is no longer the builder's says why in `taken_back` (and the job's `state`), so
    that the builder stops building it. A refused wheel says which `check` refused it."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        taken_back: str | None = None,
        state: str | None = None,
        check: Check | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.taken_back = taken_back
        self.state = state
        self.check = check


def not_building_here(job: BuildJob | None, builder: Builder) -> str | None:
    """Why `job` is not building on `builder` any more (None: it still is), in words for
    the builder's log: the job is gone, finished, cancelled, back in line or elsewhere."""
    if job is None:
        return "no such job"
    if job.state != JobState.BUILDING:
        settled: SkipReason | FailureReason | None = None
        if job.state == JobState.SKIPPED:
            settled = job.skip_reason
        elif job.state == JobState.FAILED:
            settled = job.failure_reason
        return f"{job.state.value} ({settled.value})" if settled else job.state.value
    if job.builder_id != builder.id:
        return "building on another builder"
    return None


def check_job_owner(job: BuildJob | None, builder: Builder) -> BuildJob:
    why = not_building_here(job, builder)
    if job is None:
        raise Rejected(404, "no such job", taken_back=why)
    if job.builder_id != builder.id:
        message = f"job {job.id} is not assigned to builder {builder.name}"
        raise Rejected(403, message, taken_back=why, state=job.state.value)
    if job.state != JobState.BUILDING:
        message = f"job {job.id} is {job.state.value}, not building"
        raise Rejected(409, message, taken_back=why, state=job.state.value)
    return job


def check_wheel_name(job: BuildJob, filename: str, newer_policy: NewerPolicy = "fail") -> WheelName:
    try:
        wheel = parse_name(filename)
    except BadWheel as exc:
        raise Rejected(400, str(exc), check=exc.check) from exc
    release = job.release
    if wheel.name != release.project.name:
        message = f"wheel is for project {wheel.name}, job is for {release.project.name}"
        raise Rejected(400, message, check=Check.FILENAME)
    if wheel.version != Version(release.version):
        message = f"wheel is version {wheel.version}, job is for {release.version}"
        raise Rejected(400, message, check=Check.FILENAME)
    if is_distribution_policy(job.policy):
        check_distribution_platforms(job, sorted(wheel.platforms))
    else:
        if any(not platform.endswith("_" + job.arch) for platform in wheel.platforms):
            message = f"wheel platform {sorted(wheel.platforms)} is not for {job.arch}"
            raise Rejected(400, message, check=Check.FILENAME)
        check_policy(job, sorted(wheel.platforms), newer_policy)
    if not installs_on(wheel.tags, job.python_tag):
        # A cp36-abi3 wheel passes for a cp311 job: CPython 3.11 installs it.
        tags = sorted(f"{tag.interpreter}-{tag.abi}" for tag in wheel.tags)
        message = f"wheel is for {tags}, which {job.python_tag} does not install"
        raise Rejected(400, message, check=Check.FILENAME)
    if filename in release.upstream_files:
        message = f"{filename} exists upstream; publishing it would shadow PyPI"
        raise Rejected(409, message, check=Check.UPSTREAM)
    return wheel


def check_policy(job: BuildJob, platforms: list[str], newer_policy: NewerPolicy) -> None:
    """The index under /simple/ promises a glibc floor: a `linux_*` wheel never enters
    it, and one meeting only a newer policy than its target's enters only where the
    target publishes such wheels (the same rule the builders follow, checked here for
    every backend and every builder release)."""
    promiseless = [platform for platform in platforms if not is_manylinux(platform)]
    if promiseless:
        message = f"wheel platform {promiseless} promises no glibc: not a manylinux wheel"
        raise Rejected(400, message, check=Check.POLICY)
    if newer_policy == "fail" and not meets_policy(platforms, job.policy):
        message = (
            f"wheel platform {platforms} needs a newer system than {job.policy}, and"
            f" targets.{job.target}.newer_policy is fail"
        )
        raise Rejected(400, message, check=Check.POLICY)


def check_distribution_platforms(job: BuildJob, platforms: list[str]) -> None:
    """A distribution target's wheel carries exactly its machines' linux_* tags: the index
    it enters is that distribution's alone, and the name says which systems take it."""
    wanted = sorted(policy_platforms(job.policy))
    if platforms != wanted:
        message = f"wheel platform {platforms} is not target {job.target}'s ({'.'.join(wanted)})"
        raise Rejected(400, message, check=Check.POLICY)


class AlreadyServed(Exception):
    """The job's wheel is one the index already serves for the release, built by the job
    of another CPython that installs it too (a stable-ABI wheel): the job is covered."""

    def __init__(self, existing: OutputFile) -> None:
        super().__init__(f"armwheels serves {existing.filename} (built by job {existing.job_id})")
        self.existing = existing


def check_not_published(session: Session, job: BuildJob, filename: str) -> None:
    existing = session.scalar(select(OutputFile).where(OutputFile.filename == filename))
    if existing is None:
        return
    if existing.release_id == job.release_id and existing.job.python_tag != job.python_tag:
        raise AlreadyServed(existing)
    raise Rejected(409, f"{filename} is already published", check=Check.PUBLISHED)


def check_hash(declared: str, actual: str) -> None:
    if declared.lower() != actual:
        message = f"sha256 mismatch: declared {declared[:16]}, received {actual[:16]}"
        raise Rejected(400, message, check=Check.SHA256)


def check_contents(
    path: Path, filename: str, job: BuildJob, elf: str | None = None
) -> WheelContents:
    """Verify the spooled wheel against its job: project, version and the target's code
    (`elf`: its ELF_TARGETS rule, by default the job's arch)."""
    release = job.release
    expected = Expected(
        canonicalize_name(release.project.name), Version(release.version), elf or job.arch
    )
    try:
        return read_contents(path, filename, expected=expected)
    except BadWheel as exc:
        raise Rejected(400, f"not a valid wheel: {exc}", check=exc.check) from exc


def accept_wheel(
    session: Session,
    storage: Storage,
    job: BuildJob,
    filename: str,
    declared_sha256: str,
    source: BinaryIO,
    limit: int,
    *,
    push_targets: Sequence[PushTarget] = (),
    newer_policy: NewerPolicy = "fail",
    float_abi: FloatAbi = "hard",
    system_packages: Sequence[str] = (),
) -> OutputFile:
    """Verify an uploaded wheel and move it into the file tree; raises Rejected (and
    notes on the job which check refused it), leaving nothing published. A distribution
    target's wheel enters its own index only, and is never pushed to another."""
    try:
        wheel = check_wheel_name(job, filename, newer_policy)
        # One wheel of a release is checked, written and recorded at a time: the jobs of
        # two CPythons uploading the one stable-ABI wheel they both build would both find
        # it unpublished, the second would write over the first's file, and its row would
        # fail the unique filename. The second now waits, then finds it served.
        lock_rows(session, Release.yanked_reason, Release.id == job.release_id)
        check_not_published(session, job, filename)
        try:
            spooled, sha256, size = storage.spool(source, limit)
        except TooLarge as exc:
            raise Rejected(413, f"wheel is {exc}", check=Check.UPLOAD_SIZE) from exc
        try:
            check_hash(declared_sha256, sha256)
            contents = check_contents(spooled, filename, job, elf_rule(job.arch, float_abi))
            project = job.release.project.name
            metadata_sha256 = _sha256(contents.metadata)
            storage.write_bytes(storage.metadata_path(project, filename), contents.metadata)
            storage.publish(spooled, storage.wheel_path(project, filename))
        finally:
            spooled.unlink(missing_ok=True)
    except Rejected as exc:
        job.rejected_by = exc.check.value if exc.check else None
        raise
    tag = next(iter(sorted(wheel.tags, key=str)))
    output = OutputFile(
        job=job,
        release=job.release,
        filename=filename,
        sha256=sha256,
        size=size,
        python_tag=".".join(sorted(wheel.interpreters)),
        abi_tag=".".join(sorted(wheel.abis)),
        platform_tag=".".join(sorted(wheel.platforms)),
        requires_python=contents.requires_python,
        metadata_sha256=metadata_sha256,
        grafted=contents.grafted_libraries,
        published=True,
        index_name=publishing_index(job.target, job.policy),
        # Only a distribution's packages mean something to its users; a manylinux wheel
        # carries (grafts) what it links.
        system_packages=list(system_packages) if is_distribution_policy(job.policy) else [],
    )
    session.add(output)
    if not output.index_name:
        queue_pushes(session, output, push_targets)
    settle_covered_jobs(session, job, filename)
    log.info(
        "wheel published",
        extra={
            "job_id": job.id,
            "file": filename,
            "sha256": sha256,
            "size": size,
            "tag": str(tag),
            "grafted": ",".join(contents.grafted_libraries),
        },
    )
    return output


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()

"""One job through a build backend, as a builder runs it, with the log it wrote; the
shipped targets and the builder settings such builds use."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import docker
import docker.errors
import pytest

from builder.backends import Backend, BuildOutcome
from common.config import BuilderSettings, TargetSettings, load_settings
from common.job_spec import DEFAULT_NEWER_POLICY, JobSpec, NewerPolicy

CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def build_logged(
    backend: Backend, spec: JobSpec, sdist: Path, work: Path, job: str
) -> tuple[BuildOutcome, str]:
    """Build `sdist` in `work/<job>`, log to `work/<job>.log`; the backend is closed."""
    log_path = work / f"{job}.log"
    try:
        with log_path.open("wb") as sink:
            outcome = backend.build(spec, sdist, work / job, sink)
    finally:
        backend.close()
    return outcome, log_path.read_text(errors="replace")


def builder_settings_in(work: Path) -> BuilderSettings:
    """A builder working in `work/work` (wheelhouses and sysroots carry over between the
    builds of a module) with the machine's CA bundle, for the proxy to PyPI."""
    return BuilderSettings(
        ca_bundle=CA_BUNDLE if CA_BUNDLE.exists() else None,
        work_dir=work / "work",
        build_timeout=1200,
    )


def shipped_target(name: str) -> TargetSettings:
    """A default target as shipped; the test fails, saying how to make it, when its
    local image is missing."""
    target = load_settings(None).targets[name]
    try:
        docker.from_env(timeout=30).images.get(target.image)
    except docker.errors.ImageNotFound:
        pytest.fail(f"{target.image} is missing: armwheels image build --target {name}")
    return target


def target_spec(
    sdist: Path,
    target: TargetSettings,
    newer_policy: NewerPolicy = DEFAULT_NEWER_POLICY,
    python_tag: str | None = None,
    name: str = "",
) -> JobSpec:
    """The job the master sends for `sdist` on `target` (its first CPython unless told)."""
    project, version = sdist.name.removesuffix(".tar.gz").rsplit("-", 1)
    return JobSpec(
        1, project, version, target.arch, python_tag or target.python_tags[0], target.policy,
        sdist.name, "", "", None, 1, None, None, newer_policy, name,
    )  # fmt: skip


class ScriptedBackend:
    """A backend whose build a test writes (override `build`): one cp311 interpreter,
    nothing to cancel, reset or close. For tests of the runner around a build."""

    name = "test"

    def python_tags(self) -> list[str]:
        return ["cp311"]

    def build(self, spec: JobSpec, sdist: Path, workdir: Path, log: BinaryIO) -> BuildOutcome:
        raise NotImplementedError

    def cancel(self) -> None:
        pass

    def reset(self) -> None:
        pass

    def close(self) -> None:
        pass

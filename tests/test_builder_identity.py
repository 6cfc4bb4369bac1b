"""Two builders on one Docker host never take each other's containers for their own, and a
build the farm failed (the engine's error, a container removed from under the builder) is
handed back, never reported as a failure of the release.

Seen once: two farms started by `armwheels up` on one host both named their builder
`local-aarch64`; the second one's start-up cleanup force-removed the first one's running
build, whose removal then answered 409 "removal already in progress", and a good build
ended as a permanent builder-error.
"""

from __future__ import annotations

import hashlib
import io
import os
import platform
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO
from uuid import uuid4

import docker
import docker.errors
import pytest
from sqlalchemy.orm import Session, sessionmaker

from builder.backends import BuildOutcome, FarmFault
from builder.backends.docker import INSTANCE, LABEL, DockerBackend, remove_left_behind
from builder.backends.recipe_image import installer_prefix
from builder.client import MasterClient
from builder.identity import take_identity
from builder.worker import MAX_FAULT_PAUSE_SECONDS, JobRunner
from common.config import BuilderSettings, Settings, TargetSettings
from common.db import transaction
from common.job_spec import JobSpec
from common.models import BuildJob, OutputFile
from common.states import FailureReason, JobState
from master.web.app import create_app
from tests.builds import ScriptedBackend
from tests.servers import free_port, serve_app, wait_until
from tests.test_log_stream import file_server, live_farm

# --- identity -------------------------------------------------------------------------


def test_builders_sharing_a_work_dir_get_their_own_identity(tmp_path: Path) -> None:
    first = take_identity(tmp_path, "aarch64")
    second = take_identity(tmp_path, "aarch64")
    other_arch = take_identity(tmp_path, "armv7l")
    elsewhere = take_identity(tmp_path / "other-farm", "aarch64")
    instances = {i.instance for i in (first, second, other_arch, elsewhere)}
    assert len(instances) == 4
    assert len({i.name for i in (first, second, other_arch, elsewhere)}) == 4
    assert first.name == f"{platform.node()}-aarch64-{first.instance[:8]}"
    # A restart takes its slot again, with its id: it cleans what its last run left.
    first.release()
    again = take_identity(tmp_path, "aarch64")
    assert (again.instance, again.name) == (first.instance, first.name)
    named = take_identity(tmp_path, "aarch64", "rack-3")
    assert named.name == "rack-3" and named.instance not in instances
    for held in (second, other_arch, elsewhere, again, named):
        held.release()


def test_a_killed_builder_leaves_its_slot_to_the_next_one(tmp_path: Path) -> None:
    """The lock dies with the process (kill -9 included): its successor takes its id."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from builder.identity import take_identity;"
            f"i = take_identity(__import__('pathlib').Path({str(tmp_path)!r}), 'aarch64');"
            "print(i.instance, flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        assert holder.stdout is not None
        held = holder.stdout.readline().decode().strip()
        meanwhile = take_identity(tmp_path, "aarch64")
        assert meanwhile.instance != held
        meanwhile.release()
    finally:
        holder.kill()
        holder.wait()
    assert take_identity(tmp_path, "aarch64").instance == held


# --- the docker backend on a real engine ----------------------------------------------

TINY_IMAGE = "armwheels-test/tiny:identity"


def _engine() -> docker.DockerClient:
    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except Exception as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"no Docker engine: {exc}")
    return client


@pytest.fixture(scope="module")
def tiny_image() -> Iterator[str]:
    """An image of the host's own /bin/sh and sleep with their libraries: enough to start
    a container (and for the backend's interpreter probe to find none) in a second."""
    client = _engine()
    files = {"/bin/sh", "/usr/bin/sleep"}
    linked = subprocess.run(
        ["ldd", *sorted(files)], capture_output=True, text=True, check=True
    ).stdout
    files |= {w for w in linked.split() if w.startswith("/") and not w.endswith(":")}
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        for path in sorted(files):
            tar.add(os.path.realpath(path), arcname=path.lstrip("/"))
    repository, _, tag = TINY_IMAGE.partition(":")
    client.api.import_image_from_data(data.getvalue(), repository=repository, tag=tag)
    try:
        yield TINY_IMAGE
    finally:
        client.images.remove(TINY_IMAGE, force=True)
        client.close()


def _backend(work: Path, image: str, name: str) -> DockerBackend:
    settings = BuilderSettings(work_dir=work, wheelhouse=False)
    target = TargetSettings(
        arch="aarch64", image=image, python_tags=["cp311"], policy="manylinux2014_aarch64"
    )
    return DockerBackend(settings, "aarch64", target, take_identity(work, "aarch64", name))


def _containers(client: docker.DockerClient, instance: str) -> list[str]:
    found = client.containers.list(all=True, filters={"label": f"{INSTANCE}={instance}"})
    return sorted(str(c.name) for c in found)


@pytest.mark.docker
def test_cleanup_removes_only_what_this_instance_left(tiny_image: str) -> None:
    client = _engine()
    mine, theirs = uuid4().hex, uuid4().hex
    try:
        for instance in (mine, theirs):
            # Both builders carry the same name: only the instance id tells them apart.
            labels = {LABEL: "local-aarch64", INSTANCE: instance}
            client.containers.create(tiny_image, ["/usr/bin/sleep", "1"], labels=labels)
            client.containers.create(
                tiny_image, ["/usr/bin/sleep", "1"], name=f"{installer_prefix(instance)}0123"
            )
        kept = _containers(client, theirs)
        removed = remove_left_behind(client, mine)
        assert len(removed) == 2 and f"{installer_prefix(mine)}0123" in removed
        assert _containers(client, mine) == []
        assert _containers(client, theirs) == kept
        assert client.containers.get(f"{installer_prefix(theirs)}0123")
    finally:
        remove_left_behind(client, mine)
        remove_left_behind(client, theirs)
        client.close()


def _step(backend: DockerBackend, seconds: int, sink: BinaryIO, done: list[object]) -> None:
    """One sandboxed step (a sleep) as a build runs it; its StepExit or what it raised."""
    command = ["/usr/bin/sleep", str(seconds)]
    try:
        done.append(backend._run(backend.target.image, command, {}, "none", 7, sink, 120, {}))
    except Exception as exc:
        done.append(exc)


@pytest.mark.docker
def test_a_second_builder_starting_on_the_host_leaves_a_running_build_alone(
    tmp_path: Path, tiny_image: str
) -> None:
    """Two farms' builders, both named local-aarch64: the second one starts (and cleans up)
    while the first one's build runs; that build ends as it would have alone."""
    first = _backend(tmp_path / "farm-1", tiny_image, "local-aarch64")
    done: list[object] = []
    with (tmp_path / "log").open("wb") as sink:
        running = threading.Thread(target=_step, args=(first, 3, sink, done))
        running.start()
        wait_until(lambda: bool(_containers(first.client, first.instance)), 30, "the build")
        second = _backend(tmp_path / "farm-2", tiny_image, "local-aarch64")
        second.close()
        running.join(60)
    first.close()
    [step] = done
    assert not isinstance(step, Exception), step
    assert getattr(step, "code", None) == 0


@pytest.mark.docker
def test_a_build_container_removed_from_under_the_builder_is_a_farm_fault(
    tmp_path: Path, tiny_image: str
) -> None:
    backend = _backend(tmp_path / "work", tiny_image, "b1")
    done: list[object] = []
    log = tmp_path / "log"
    with log.open("wb") as sink:
        running = threading.Thread(target=_step, args=(backend, 120, sink, done))
        running.start()
        wait_until(lambda: bool(_containers(backend.client, backend.instance)), 30, "the build")
        [name] = _containers(backend.client, backend.instance)
        backend.client.containers.get(name).remove(force=True)
        running.join(60)
    backend.close()
    [fault] = done
    # Not the exit code of the kill (137, which would read as out of memory).
    assert isinstance(fault, FarmFault), fault
    assert "removed from under the builder" in str(fault)
    assert b"removed from under the builder" in log.read_bytes()


# --- the runner hands a job the farm failed back --------------------------------------


class _FaultyBackend(ScriptedBackend):
    """Stands for an engine that fails (the real one does it above): raises `error`."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def build(self, spec: JobSpec, sdist: Path, workdir: Path, log: BinaryIO) -> BuildOutcome:
        raise self.error


def _run_once(
    settings: Settings, factory: sessionmaker[Session], tmp_path: Path, error: Exception
) -> tuple[BuildJob, JobRunner]:
    sdist = b"an sdist the backend never reaches"
    upstream = tmp_path / "upstream"
    upstream.mkdir()
    (upstream / "demo-1.0.tar.gz").write_bytes(sdist)
    with file_server(upstream) as files, live_farm(settings, factory) as farm:
        # The farm's builder b1 claimed the job; hand it back for the runner to claim.
        farm.client.post(f"/api/v1/jobs/{farm.job_id}/release", headers=farm.auth())
        with transaction(factory) as session:
            job = session.get(BuildJob, farm.job_id)
            assert job is not None
            job.source_file.url = f"{files}/demo-1.0.tar.gz"
            job.source_file.sha256 = hashlib.sha256(sdist).hexdigest()
            job.source_file.size = len(sdist)
        with serve_app(create_app(settings, factory), free_port()) as url:
            client = MasterClient(url, farm.token)
            runner = JobRunner(settings, "aarch64", _FaultyBackend(error), client)
            runner.fault_pause = 0.01
            runner.run(farm.job_id)
            client.close()
        with factory() as session:
            found = session.get(BuildJob, farm.job_id)
            assert found is not None
            assert session.query(OutputFile).count() == 0
            session.expunge(found)
            return found, runner


def test_a_farm_fault_hands_the_job_back_without_counting_it(
    settings: Settings, factory: sessionmaker[Session], tmp_path: Path
) -> None:
    fault = FarmFault("Docker engine error: 409 Conflict (removal already in progress)")
    job, runner = _run_once(settings, factory, tmp_path, fault)
    assert (job.state, job.attempts, job.failure_reason) == (JobState.PENDING, 0, None)
    assert job.builder_id is None and job.started_at is None and job.finished_at is None
    assert runner.faults_in_a_row == 1
    # The pause before the next job doubles with each fault in a row, up to its cap.
    runner.fault_pause = 5.0
    pauses = []
    for runner.faults_in_a_row in range(1, 10):
        pauses.append(runner.pause_after_fault())
    assert pauses[:4] == [5.0, 10.0, 20.0, 40.0] and pauses[-1] == MAX_FAULT_PAUSE_SECONDS


def test_the_builders_own_error_is_retried_not_a_failure_of_the_release(
    settings: Settings, factory: sessionmaker[Session], tmp_path: Path
) -> None:
    job, runner = _run_once(settings, factory, tmp_path, KeyError("a builder bug"))
    # Counted (a bug that always fails stops at the master's attempt cap), and retried.
    assert (job.state, job.attempts) == (JobState.PENDING, 1)
    assert job.failure_reason == FailureReason.BUILDER_ERROR
    assert (job.summary or "").startswith("attempt 1 failed, retrying: builder error: KeyError")
    assert runner.faults_in_a_row == 0

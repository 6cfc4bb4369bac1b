"""Races between the master's own workers on one PostgreSQL database: each wheel is
published once and its file is the bytes its row hashes, a claim that commits while a
wheel is published stands, and a builder registering while the reconciler takes its job
back does not deadlock."""

from __future__ import annotations

import hashlib
import io
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, text
from sqlalchemy.orm import Session, sessionmaker

from common.config import Settings, TargetSettings, load_settings
from common.db import make_engine, make_sessionmaker, transaction, upgrade
from common.models import Builder, BuildJob, OutputFile, Release, SourceFile
from common.states import JobState, TokenRole
from master.auth import create_token
from master.builds import jobs
from master.builds.build_plan import create_jobs
from master.builds.reconciler import reconcile
from master.index.uploads import AlreadyServed, accept_wheel
from master.pypi.releases import get_or_create_project
from master.storage import Storage, file_sha256
from master.web.app import create_app
from tests.conftest import _postgres_database
from tests.seed import add_builder
from tests.servers import wait_until
from tests.wheels import make_wheel

pytestmark = pytest.mark.postgres

MAX_ATTEMPTS = 3
TAGS = ("cp311", "cp312")
PLATFORM = "manylinux_2_17_aarch64.manylinux2014_aarch64"


@dataclass(frozen=True)
class JobInfo:
    id: int
    project: str
    python_tag: str
    abi3: bool

    def wheel_name(self) -> str:
        tags = "cp37-abi3" if self.abi3 else f"{self.python_tag}-{self.python_tag}"
        return f"{self.project}-1.0-{tags}-{PLATFORM}.whl"


def _add_releases(session: Session, settings: Settings, count: int) -> dict[int, JobInfo]:
    """`count` releases with a job per CPython of TAGS each, through the build plan."""
    targets = {"aarch64": settings.targets["aarch64"]}
    infos = {}
    for number in range(count):
        project = get_or_create_project(session, f"race{number}")
        release = Release(project=project, version="1.0", upstream_files=[])
        source = SourceFile(
            release=release,
            filename=f"race{number}-1.0.tar.gz",
            url=f"http://127.0.0.1:1/race{number}-1.0.tar.gz",
            sha256="0" * 64,
            size=10,
        )
        session.add_all([release, source])
        session.flush()
        for job in create_jobs(session, release, source, targets):
            infos[job.id] = JobInfo(job.id, project.name, job.python_tag, number % 2 == 0)
    assert len(infos) == count * len(TAGS)
    return infos


@contextmanager
def _database(tmp_path: Path) -> Iterator[tuple[Settings, sessionmaker[Session]]]:
    """A fresh PostgreSQL database, migrated, with settings building for TAGS on aarch64."""
    with contextmanager(_postgres_database)() as url:
        settings = load_settings(
            None,
            database={"url": url},
            master={"data_dir": tmp_path / "data", "max_attempts": MAX_ATTEMPTS},
            targets={
                "aarch64": TargetSettings(
                    image="armwheels/build-aarch64:bookworm",
                    python_tags=list(TAGS),
                    policy="manylinux2014_aarch64",
                )
            },
        )
        engine = make_engine(url)
        try:
            upgrade(engine)
            yield settings, make_sessionmaker(engine)
        finally:
            engine.dispose()


def test_a_stable_abi_wheel_uploaded_for_two_targets_at_once_is_published_once(
    tmp_path: Path,
) -> None:
    """The cp311 and cp312 jobs of a stable-ABI release upload the one wheel they both
    build at the same moment: the first is published, the second finds it served (its
    job is covered), and the file stays the bytes the published row hashes."""
    with _database(tmp_path) as (settings, factory):
        with transaction(factory) as session:
            first_job, second_job = _add_releases(session, settings, 1).values()
        storage = Storage(settings.master.data_dir)
        filename = first_job.wheel_name()
        limit = settings.master.max_upload_bytes
        first, second = (
            make_wheel(filename, modules=(first_job.project,), extra={"build.txt": stamp})
            for stamp in (b"first", b"second")
        )
        outcome: list[BaseException | OutputFile] = []

        def upload_second() -> None:
            with factory() as session:
                job = session.get(BuildJob, second_job.id)
                assert job is not None
                try:
                    sha256 = hashlib.sha256(second).hexdigest()
                    outcome.append(
                        accept_wheel(
                            session, storage, job, filename, sha256, io.BytesIO(second), limit
                        )
                    )
                    session.commit()
                except BaseException as exc:  # what happened is the test's finding
                    outcome.append(exc)

        with factory() as session:
            job = session.get(BuildJob, first_job.id)
            assert job is not None
            sha256 = hashlib.sha256(first).hexdigest()
            accept_wheel(session, storage, job, filename, sha256, io.BytesIO(first), limit)
            # The second upload runs until it waits for the first one's transaction.
            racer = threading.Thread(target=upload_second)
            racer.start()
            wait_until(lambda: _waiting_for_a_lock(factory), 30, "the second upload to wait")
            session.commit()
        racer.join(30)
    [second_outcome] = outcome
    assert isinstance(second_outcome, AlreadyServed), repr(second_outcome)
    assert file_sha256(storage.wheel_path(first_job.project, filename))[0] == sha256


def _waiting_for_a_lock(factory: sessionmaker[Session]) -> bool:
    with factory() as session:
        waiting = session.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        )
    return bool(waiting)


def test_a_wheel_published_while_its_sibling_is_claimed_leaves_that_build_be(
    tmp_path: Path,
) -> None:
    """A stable-ABI wheel is published (for cp311) while a builder claims the cp312 job it
    also serves: the claim stands and the build goes on (its upload will find the wheel
    served), rather than the publish ending as `skipped` a job that is building and
    leaving its builder linked to it."""
    with _database(tmp_path) as (settings, factory):
        with transaction(factory) as session:
            built, sibling = _add_releases(session, settings, 1).values()
            first, second = (
                add_builder(session, "a", python_tags=TAGS),
                add_builder(session, "b", python_tags=TAGS),
            )
            job = session.get(BuildJob, built.id)
            assert job is not None
            jobs.claim(job, first)
            ids = first.id, second.id
        filename = built.wheel_name()
        body = make_wheel(filename, modules=(built.project,))
        failures: list[BaseException] = []

        def publish() -> None:
            try:
                with transaction(factory) as session:
                    job = session.get(BuildJob, built.id)
                    assert job is not None
                    sha256 = hashlib.sha256(body).hexdigest()
                    storage = Storage(settings.master.data_dir)
                    limit = settings.master.max_upload_bytes
                    accept_wheel(session, storage, job, filename, sha256, io.BytesIO(body), limit)
            except BaseException as exc:
                failures.append(exc)

        with factory() as session:
            # The claim of the sibling, as POST /api/v1/jobs/{id}/claim makes it.
            job = session.get(BuildJob, sibling.id, with_for_update=True)
            claimer = session.get(Builder, ids[1])
            assert job is not None and claimer is not None
            jobs.claim(job, claimer)
            session.flush()
            publisher = threading.Thread(target=publish)
            publisher.start()
            wait_until(lambda: _waiting_for_a_lock(factory), 30, "the publish to wait")
            session.commit()
        publisher.join(30)
        assert not failures, failures
        with factory() as session:
            job = session.get(BuildJob, sibling.id)
            claimer = session.get(Builder, ids[1])
            assert job is not None and claimer is not None
            assert (job.state, job.builder_id) == (JobState.BUILDING, claimer.id), job.summary
            assert claimer.current_job_id == job.id


def test_a_builder_registering_while_the_reconciler_takes_its_job_back(
    tmp_path: Path,
) -> None:
    """The reconciler has locked the job of a builder gone silent and is about to free
    the builder, when the builder registers again: both end, one after the other, and
    the job is handed back once (no deadlock, no 500)."""
    with _database(tmp_path) as (settings, factory):
        with transaction(factory) as session:
            [info, _] = _add_releases(session, settings, 1).values()
            secret = create_token(session, "a", TokenRole.BUILDER)
        app = create_app(settings, factory)
        registration = {"arch": "aarch64", "backend": "docker", "python_tags": list(TAGS)}
        with TestClient(app, headers={"Authorization": f"Bearer {secret}"}) as client:
            assert client.post("/api/v1/builders/register", json=registration).status_code == 200
            assert client.post(f"/api/v1/jobs/{info.id}/claim").status_code == 200
            # The reconciler (its own engine) stops once it holds the job's row lock.
            engine = make_engine(settings.database.url)
            locked, go = threading.Event(), threading.Event()

            @event.listens_for(engine, "after_cursor_execute")
            def pause(*args: Any) -> None:
                if "FOR UPDATE" in args[2] and not locked.is_set():
                    locked.set()
                    go.wait(30)

            failures: list[BaseException] = []

            def reconciler() -> None:
                try:
                    with transaction(make_sessionmaker(engine)) as session:
                        silent = timedelta(seconds=2 * settings.master.builder_timeout)
                        reconcile(session, settings, now=datetime.now(UTC) + silent)
                except BaseException as exc:
                    failures.append(exc)

            thread = threading.Thread(target=reconciler)
            thread.start()
            assert locked.wait(30)
            with ThreadPoolExecutor(1) as pool:
                registered = pool.submit(
                    client.post, "/api/v1/builders/register", json=registration
                )
                wait_until(lambda: _waiting_for_a_lock(factory), 30, "the registration to wait")
                go.set()
                answer = registered.result(60)
            thread.join(60)
            engine.dispose()
        assert answer.status_code == 200, answer.text
        assert not failures, failures
        with factory() as session:
            job = session.get(BuildJob, info.id)
            assert job is not None
            assert (job.state, job.attempts, job.builder_id) == (JobState.PENDING, 1, None)

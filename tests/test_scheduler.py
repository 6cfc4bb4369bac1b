from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from common.config import Settings, TargetSettings
from common.db import transaction
from common.models import BuildJob
from common.states import JobState
from master.builds.build_plan import PRIORITY_REBUILD, create_jobs, target_allowed
from master.builds.rebuild import RebuildError, request_rebuild
from tests.seed import add_release


def _two_pythons(settings: Settings) -> None:
    settings.targets["aarch64"] = TargetSettings(
        arch="aarch64", image="img", python_tags=["cp39", "cp311"], policy="manylinux2014_aarch64"
    )
    settings.targets["armv7l"].enabled = True  # Debian bullseye's CPython 3.9


def test_one_job_per_target(settings: Settings, factory: sessionmaker[Session]) -> None:
    _two_pythons(settings)
    with transaction(factory) as session:
        _, release, jobs = add_release(session, settings)
        assert sorted((j.arch, j.python_tag) for j in jobs) == [
            ("aarch64", "cp311"),
            ("aarch64", "cp39"),
            ("armv7l", "cp39"),
        ]
        assert all(j.state == JobState.PENDING for j in jobs)
        # Asking again creates nothing while those jobs are active.
        assert (
            create_jobs(session, release, release.source_files[0], settings.enabled_targets()) == []
        )


def test_requires_python_removes_targets(
    settings: Settings, factory: sessionmaker[Session]
) -> None:
    _two_pythons(settings)
    with transaction(factory) as session:
        _, _, jobs = add_release(session, settings, requires_python=">=3.10")
        assert sorted((j.target, j.python_tag) for j in jobs) == [("aarch64", "cp311")]
    assert target_allowed("<3", "cp311") is False
    assert target_allowed("not a specifier", "cp311") is True


def test_database_refuses_duplicate_active_job(
    settings: Settings, factory: sessionmaker[Session]
) -> None:
    with transaction(factory) as session:
        _, release, [job] = add_release(session, settings)
        release_id, source_id = release.id, job.source_file_id
    with pytest.raises(IntegrityError), transaction(factory) as session:
        session.add(
            BuildJob(
                release_id=release_id,
                source_file_id=source_id,
                target="aarch64",
                arch="aarch64",
                python_tag="cp311",
                policy="manylinux2014_aarch64",
                state=JobState.QUEUED,
            )
        )
    with transaction(factory) as session:
        # A finished job does not block a new one.
        session.get(BuildJob, job.id).state = JobState.FAILED  # type: ignore[union-attr]
        session.add(
            BuildJob(
                release_id=release_id,
                source_file_id=source_id,
                target="aarch64",
                arch="aarch64",
                python_tag="cp311",
                policy="manylinux2014_aarch64",
            )
        )


def test_rebuild_request(settings: Settings, factory: sessionmaker[Session]) -> None:
    with transaction(factory) as session:
        add_release(session, settings, version="1.0")
        _, _, [newer] = add_release(session, settings, version="1.1")
        newer.state = JobState.BUILT
    with transaction(factory) as session:
        [job] = request_rebuild(session, settings, "Demo").created
        assert job.priority == PRIORITY_REBUILD and job.release.version == "1.1"
        again = request_rebuild(session, settings, "demo", "1.1")
        assert again.created == [] and [j.id for j in again.existing] == [job.id]
        pending = request_rebuild(session, settings, "demo", "1.0")  # 1.0 still pending
        assert pending.created == [] and len(pending.existing) == 1
    for bad in [
        ("nope", None, None),
        ("demo", "9.9", None),
        ("demo", "x y", None),
        ("demo", None, "armv7l"),
        ("bad name!", None, None),
    ]:
        with pytest.raises(RebuildError), transaction(factory) as session:
            request_rebuild(session, settings, *bad)
    with factory() as session:
        assert session.scalar(select(BuildJob).where(BuildJob.priority == PRIORITY_REBUILD))

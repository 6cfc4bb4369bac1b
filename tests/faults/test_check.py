"""The fault suite's own checks can fail: `armwheels fsck`, as the suite runs it right after
a fault, judges files written a moment ago, and each finding is counted for its project's
scenario; and compare() counts a job that did not end as in the undisturbed run as lost
and a second wheel of one job as a duplicate."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from common.config import Settings
from common.db import transaction
from common.models import BuildJob, OutputFile
from common.states import FailureReason, JobState
from master.index import fsck
from master.index.static import StaticIndex
from tests.faults.check import (
    FaultResult,
    Outcome,
    compare,
    format_table,
    fsck_findings,
    outcomes,
    problems,
)
from tests.seed import publish_wheel


def _farm_with_a_wheel(
    settings: Settings, factory: sessionmaker[Session]
) -> tuple[Path, OutputFile]:
    data = settings.master.data_dir
    with transaction(factory) as session:
        wheel = publish_wheel(session, settings)
        session.flush()
        session.expunge(wheel)
    with factory() as session:
        StaticIndex(data).sync(session)
    return data, wheel


def test_fsck_judges_files_just_written_and_problems_name_their_project(
    settings: Settings, factory: sessionmaker[Session]
) -> None:
    data, wheel = _farm_with_a_wheel(settings, factory)
    assert fsck_findings(factory, data) == []
    served = data / "files" / "demo" / wheel.filename
    # A wheel no row names (the master died between writing it and its commit), written
    # a moment ago: fsck on its own takes it for a write under way, the suite does not.
    unknown = served.parent / "demo-1.1-cp311-cp311-manylinux2014_aarch64.whl"
    unknown.write_bytes(b"x")
    assert fsck.check(factory, data, static=True).findings == []
    # The served bytes differ from the row's hash; a page no longer what the master serves.
    served.write_bytes(served.read_bytes() + b"\0")
    page = data / "simple" / "demo" / "index.json"
    page.write_text(page.read_text().replace("demo", "dem0"))
    found = fsck_findings(factory, data)
    assert sorted(finding.kind for finding in found) == sorted(
        [fsck.Kind.UNKNOWN_FILE, fsck.Kind.WHEEL_HASH, fsck.Kind.STALE_PAGE]
    )
    lines = problems(found, ["demo"])
    assert len(lines) == 3 and problems(found) == lines and problems(found, ["other"]) == []
    assert f"unknown-file: files/demo/{unknown.name}: no wheel row names this file" in lines
    # A job's lost log is that job's scenario's.
    with transaction(factory) as session:
        job = session.get(BuildJob, wheel.job_id)
        assert job is not None
        job.log_path = str(data / "logs" / "gone.log")
    lost_log = [f for f in fsck_findings(factory, data) if f.kind == fsck.Kind.MISSING_LOG]
    assert problems(lost_log, ["other"], [wheel.job_id]) == problems(lost_log)
    assert problems(lost_log, ["other"], [wheel.job_id + 1]) == []


def test_compare_counts_lost_jobs_and_second_wheels(
    settings: Settings, factory: sessionmaker[Session]
) -> None:
    data, wheel = _farm_with_a_wheel(settings, factory)
    with transaction(factory) as session:
        job = session.get(BuildJob, wheel.job_id)
        assert job is not None
        job.state = JobState.BUILT
    with factory() as session:
        [expected] = outcomes(session, [wheel.job_id]).values()
    assert expected == Outcome("built", ("cp311-cp311-manylinux2014_aarch64.whl",))
    calm = compare(FaultResult("calm", 1), expected, factory, data, [wheel.job_id], ["demo"])
    assert calm.survived and (calm.jobs_lost, calm.duplicate_or_partial) == (0, 0)
    with transaction(factory) as session:
        job = session.get(BuildJob, wheel.job_id)
        assert job is not None
        job.state, job.failure_reason = JobState.FAILED, FailureReason.LOST
    lost = compare(FaultResult("lost", 1), expected, factory, data, [wheel.job_id], ["demo"])
    assert (lost.survived, lost.jobs_lost) == (False, 1)
    assert lost.problems == [f"job {wheel.job_id} ended failed (lost), not built"]
    with transaction(factory) as session:
        job = session.get(BuildJob, wheel.job_id)
        assert job is not None
        job.state, job.failure_reason = JobState.BUILT, None
        other = OutputFile(**{
            column: getattr(session.get(OutputFile, wheel.id), column)
            for column in ("job_id", "release_id", "sha256", "size", "python_tag", "abi_tag",
                           "platform_tag", "metadata_sha256")
        }, filename="demo-1.0-cp311-cp311-manylinux_2_17_aarch64.whl")  # fmt: skip
        session.add(other)
    twice = compare(FaultResult("twice", 1), expected, factory, data, [wheel.job_id], ["demo"])
    assert not twice.survived and twice.duplicate_or_partial >= 1
    assert "NO" in format_table([twice]) and "yes" in format_table([calm])

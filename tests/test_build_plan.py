"""What the farm builds for a release, and the reason it records when it builds nothing."""

from __future__ import annotations

from packaging.tags import Tag
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from common.config import Settings
from common.db import transaction
from common.models import BuildJob, Release, SkipRule, SourceFile
from common.states import JobState, SkipReason
from common.tags import covering_wheel, supported_tags
from master.builds.build_plan import plan_builds, pure_python_wheel
from master.pypi.releases import get_or_create_project


def test_supported_tags_follow_the_policy() -> None:
    tags = supported_tags("cp311", "manylinux2014_aarch64")
    assert Tag("cp311", "cp311", "manylinux_2_17_aarch64") in tags
    assert Tag("cp311", "cp311", "manylinux2014_aarch64") in tags
    assert Tag("cp39", "abi3", "manylinux_2_17_aarch64") in tags
    assert Tag("py3", "none", "manylinux_2_5_aarch64") in tags
    assert Tag("py3", "none", "any") in tags
    # Too new for a manylinux2014 system, or another architecture or interpreter.
    assert Tag("cp311", "cp311", "manylinux_2_28_aarch64") not in tags
    assert Tag("cp311", "cp311", "manylinux2014_x86_64") not in tags
    assert Tag("cp312", "cp312", "manylinux2014_aarch64") not in tags
    assert Tag("cp311", "cp311", "linux_aarch64") not in tags
    armv7 = supported_tags("cp312", "manylinux_2_31_armv7l")
    assert Tag("cp312", "cp312", "manylinux_2_31_armv7l") in armv7
    assert Tag("cp312", "cp312", "manylinux2014_armv7l") in armv7


def test_covering_and_pure_wheels() -> None:
    files = [
        "demo-1.0.tar.gz",
        "demo-1.0-cp311-cp311-manylinux_2_28_aarch64.whl",
        "demo-1.0-cp311-cp311-win_amd64.whl",
    ]
    assert covering_wheel(files, "cp311", "manylinux2014_aarch64") is None
    assert covering_wheel(files, "cp311", "manylinux_2_31_aarch64") == files[1]
    abi3 = ["demo-1.0-cp38-abi3-manylinux_2_17_aarch64.manylinux2014_aarch64.whl"]
    assert covering_wheel(abi3, "cp311", "manylinux2014_aarch64") == abi3[0]
    assert pure_python_wheel(files) is None
    assert pure_python_wheel(["demo-1.0-py2.py3-none-any.whl"]) == "demo-1.0-py2.py3-none-any.whl"
    assert pure_python_wheel(["not-a-wheel.whl"]) is None


def _release(
    session: Session, version: str, files: list[str], sdist: bool = True
) -> tuple[Release, SourceFile | None]:
    project = get_or_create_project(session, "demo")
    release = Release(project=project, version=version, upstream_files=files)
    session.add(release)
    source = None
    if sdist:
        source = SourceFile(
            release=release,
            filename=f"demo-{version}.tar.gz",
            url=f"http://127.0.0.1:1/demo-{version}.tar.gz",
            sha256="0" * 64,
        )
        session.add(source)
    session.flush()
    return release, source


def _enable_armv7(settings: Settings) -> None:
    settings.targets["armv7l"].enabled = True
    settings.targets["armv7l"].python_tags = ["cp311", "cp312"]


def test_plan_records_a_reason_for_everything_it_does_not_build(
    settings: Settings, factory: sessionmaker[Session]
) -> None:
    _enable_armv7(settings)
    with transaction(factory) as session:
        session.add(SkipRule(project="demo", version="4.0", reason="breaks", created_by="op"))
        built, built_src = _release(session, "1.0", ["demo-1.0.tar.gz"])
        jobs = plan_builds(session, built, built_src, settings)
        assert sorted((j.arch, j.python_tag) for j in jobs) == [
            ("aarch64", "cp311"),
            ("armv7l", "cp311"),
            ("armv7l", "cp312"),
        ]
        # Planning again adds nothing: every target is settled.
        assert plan_builds(session, built, built_src, settings) == []
        wheel_only, _ = _release(session, "2.0", ["demo-2.0-cp311-cp311-win32.whl"], sdist=False)
        assert plan_builds(session, wheel_only, None, settings) == []
        pure, pure_src = _release(session, "3.0", ["demo-3.0.tar.gz", "demo-3.0-py3-none-any.whl"])
        assert plan_builds(session, pure, pure_src, settings) == []
        listed, listed_src = _release(session, "4.0", ["demo-4.0.tar.gz"])
        assert plan_builds(session, listed, listed_src, settings) == []
        covered_files = [
            "demo-5.0.tar.gz",
            "demo-5.0-cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64.whl",
        ]
        covered, covered_src = _release(session, "5.0", covered_files)
        jobs = plan_builds(session, covered, covered_src, settings)
        assert sorted((j.arch, j.python_tag) for j in jobs) == [
            ("armv7l", "cp311"),
            ("armv7l", "cp312"),
        ]
        py312_only, py312_src = _release(session, "6.0", ["demo-6.0.tar.gz"])
        py312_only.requires_python = ">=3.12"
        jobs = plan_builds(session, py312_only, py312_src, settings)
        assert [(j.arch, j.python_tag) for j in jobs] == [("armv7l", "cp312")]
    with factory() as session:
        rows = session.execute(select(Release.version, Release.skip_reason)).all()
        reasons = {version: reason for version, reason in rows}
        assert reasons == {
            "1.0": None,
            "2.0": SkipReason.NO_SDIST,
            "3.0": SkipReason.PURE_PYTHON_UPSTREAM,
            "4.0": SkipReason.SKIP_LIST,
            "5.0": None,
            "6.0": None,
        }
        skipped = session.execute(
            select(BuildJob.arch, BuildJob.skip_reason, BuildJob.summary).where(
                BuildJob.state == JobState.SKIPPED
            )
        ).all()
        assert skipped == [
            (
                "aarch64",
                SkipReason.COVERED_UPSTREAM,
                f"PyPI serves {covered_files[1]}",
            )
        ]


def test_covered_targets_are_built_when_the_farm_wants_them(
    settings: Settings, factory: sessionmaker[Session]
) -> None:
    settings.upstream.build_covered = True
    files = ["demo-5.0.tar.gz", "demo-5.0-cp311-cp311-manylinux2014_aarch64.whl"]
    with transaction(factory) as session:
        release, source = _release(session, "5.0", files)
        jobs = plan_builds(session, release, source, settings)
        assert [(j.arch, j.state) for j in jobs] == [("aarch64", JobState.PENDING)]


def test_a_project_wide_skip_rule_settles_waiting_jobs(
    settings: Settings, factory: sessionmaker[Session]
) -> None:
    with transaction(factory) as session:
        release, source = _release(session, "1.0", ["demo-1.0.tar.gz"])
        (job,) = plan_builds(session, release, source, settings)
        job_id = job.id
        session.add(SkipRule(project="demo", version=None, reason="no", created_by="op"))
        session.flush()
        assert plan_builds(session, release, source, settings) == []
    with factory() as session:
        stored = session.get(BuildJob, job_id)
        assert stored is not None
        assert (stored.state, stored.skip_reason) == (JobState.SKIPPED, SkipReason.SKIP_LIST)


def test_a_wheel_pypi_publishes_after_the_sdist_ends_the_waiting_job(
    settings: Settings, factory: sessionmaker[Session]
) -> None:
    """The sdist came first, the aarch64 wheel later: planned again, the release's job
    not started yet ends as covered upstream instead of building what PyPI now serves."""
    wheel = "demo-7.0-cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64.whl"
    with transaction(factory) as session:
        release, source = _release(session, "7.0", ["demo-7.0.tar.gz"])
        (job,) = plan_builds(session, release, source, settings)
        job_id = job.id
        release.upstream_files = ["demo-7.0.tar.gz", wheel]
        session.flush()
        assert plan_builds(session, release, source, settings) == []
    with factory() as session:
        stored = session.get(BuildJob, job_id)
        assert stored is not None
        assert (stored.state, stored.skip_reason) == (
            JobState.SKIPPED,
            SkipReason.COVERED_UPSTREAM,
        )
        assert stored.summary == f"PyPI serves {wheel}"
        # Still one job for the target: the covered one, not a new one.
        assert session.scalar(select(func.count()).select_from(BuildJob)) == 1

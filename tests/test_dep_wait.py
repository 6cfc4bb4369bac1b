"""Jobs that wait for a build dependency the farm builds first (master/builds/dependencies.py),
through the builder API as builders report them, on SQLite and PostgreSQL. A real build
that waits for a dependency the farm builds is in tests/test_dep_wait_build.py."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from common.config import Settings, load_settings
from common.db import transaction
from common.models import BuildJob
from common.states import FailureReason, JobState
from master.builds import dependencies, jobs
from tests.api_farm import ApiFarm, api_farm
from tests.conftest import make_wheel
from tests.seed import add_release


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return load_settings(
        None, database={"url": database_url}, master={"data_dir": tmp_path / "data"}
    )


@dataclass
class Farm(ApiFarm):
    settings: Settings

    def release(self, project: str, version: str, jobs: bool = True) -> int | None:
        """A release of `project`; its aarch64 cp311 job's id (None: no job was left)."""
        with transaction(self.factory) as session:
            _, _, made = add_release(session, self.settings, project, version)
            if not jobs:
                for job in made:
                    session.delete(job)
                return None
            return made[0].id

    def claim(self, job_id: int) -> None:
        answer = self.client.post(f"/api/v1/jobs/{job_id}/claim", headers=self.auth)
        assert answer.status_code == 200, answer.text

    def report(self, job_id: int, **fields: str) -> dict[str, object]:
        data = {"outcome": "failed", "reason": "missing-dependency", "summary": "x", **fields}
        answer = self.client.post(
            f"/api/v1/jobs/{job_id}/result",
            headers=self.auth,
            data=data,
            files={"log": ("build.log", b"log\n", "text/plain")},
        )
        assert answer.status_code == 200, answer.text
        body: dict[str, object] = answer.json()
        return body

    def build(self, job_id: int, project: str, version: str) -> None:
        self.claim(job_id)
        name = f"{project}-{version}-cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64.whl"
        wheel = make_wheel(name, modules=(project,))
        data = {
            "outcome": "built",
            "summary": "ok",
            "wheel_sha256": hashlib.sha256(wheel).hexdigest(),
        }
        answer = self.client.post(
            f"/api/v1/jobs/{job_id}/result",
            headers=self.auth,
            data=data,
            files={
                "log": ("build.log", b"log\n", "text/plain"),
                "wheel": (name, wheel, "application/octet-stream"),
            },
        )
        assert answer.status_code == 200, answer.text

    def job(self, job_id: int) -> BuildJob:
        with self.factory() as session:
            job = session.get(BuildJob, job_id)
            assert job is not None
            session.expunge(job)
            return job

    def settle(self) -> dependencies.SettleOutcome:
        with transaction(self.factory) as session:
            return dependencies.settle(session, self.settings)


@pytest.fixture
def farm(settings: Settings, factory: sessionmaker[Session]) -> Iterator[Farm]:
    with api_farm(settings, factory, "dep-builder") as made:
        yield Farm(made.client, made.auth, made.factory, settings)


def test_a_job_waits_for_its_dependency_and_resumes_when_the_wheel_is_published(
    farm: Farm,
) -> None:
    user = farm.release("uses-base", "1.0")
    assert user is not None
    farm.release("base-lib", "0.9", jobs=False)
    farm.release("base-lib", "1.0", jobs=False)
    farm.release("base-lib", "2.0", jobs=False)
    farm.claim(user)
    answer = farm.report(user, waiting_for="base-lib<2,>=0.9")
    assert answer["state"] == "dep-wait"
    waiting = farm.job(user)
    assert waiting.waiting_for == "base-lib<2,>=0.9"
    assert waiting.failure_reason is FailureReason.MISSING_DEPENDENCY
    assert waiting.summary is not None and "the farm builds base-lib 1.0 (job " in waiting.summary

    # The newest release the requirement admits got a job for the same target and tag.
    with farm.factory() as session:
        [planned] = session.scalars(
            select(BuildJob).where(BuildJob.requested_by == f"dep-wait of job {user}")
        ).all()
        assert (planned.release.version, planned.target, planned.python_tag) == (
            "1.0",
            "aarch64",
            "cp311",
        )
        assert planned.state is JobState.PENDING and planned.priority == waiting.priority
        planned_id = planned.id

    page = farm.client.get("/").text
    assert 'id="dep-wait"' in page and "base-lib&lt;2,&gt;=0.9" in page
    assert "base-lib&lt;2,&gt;=0.9" in farm.client.get(f"/builds/{user}").text
    metrics = farm.client.get("/metrics").text
    assert 'armwheels_jobs_dep_wait{arch="aarch64",target="aarch64"} 1.0' in metrics

    # A reconcile round changes nothing while the dependency builds.
    assert farm.settle().waiting == 1
    farm.build(planned_id, "base_lib", "1.0")
    resumed = farm.job(user)
    assert resumed.state is JobState.PENDING and resumed.waiting_for is None
    assert resumed.summary is not None and "base_lib-1.0-cp311" in resumed.summary
    metrics = farm.client.get("/metrics").text
    assert 'armwheels_jobs_dep_wait{arch="aarch64",target="aarch64"} 0.0' in metrics


def test_the_dependency_failing_fails_the_waiting_job_naming_it(farm: Farm) -> None:
    user = farm.release("needs-broken", "1.0")
    broken = farm.release("broken-base", "3.1")
    assert user is not None and broken is not None
    farm.claim(user)
    assert farm.report(user, waiting_for="broken-base")["state"] == "dep-wait"
    assert f"(job {broken})" in (farm.job(user).summary or "")
    farm.claim(broken)
    farm.report(broken, reason="compile-error", summary="base.c:3: error: nope")
    failed = farm.job(user)
    assert failed.state is JobState.FAILED
    assert failed.failure_reason is FailureReason.MISSING_DEPENDENCY
    assert failed.summary == (
        f"build dependency broken-base 3.1 failed to build for aarch64 cp311"
        f" (job {broken}, compile-error: base.c:3: error: nope)"
    )


def test_a_project_the_farm_does_not_follow_waits_until_it_is_imported(farm: Farm) -> None:
    user = farm.release("needs-stranger", "1.0")
    assert user is not None
    farm.claim(user)
    assert farm.report(user, waiting_for="stranger>=1")["state"] == "dep-wait"
    summary = farm.job(user).summary or ""
    assert "the farm does not follow stranger" in summary
    assert "`armwheels import stranger` builds it, then this job" in summary
    farm.release("stranger", "1.5", jobs=False)  # an operator imported it
    assert farm.settle().waiting == 1
    assert "the farm builds stranger 1.5 (job " in (farm.job(user).summary or "")


@pytest.mark.parametrize(
    ("requirement", "summary"),
    [
        ("base-two>=5", "no release of base-two the farm knows matches base-two>=5 (known: 1.0)"),
        (
            "Self-Needing",
            "its build requires self-needing itself (Self-Needing), which has no wheel",
        ),
    ],
)
def test_a_requirement_that_cannot_be_had_fails_at_once(
    farm: Farm, requirement: str, summary: str
) -> None:
    user = farm.release("self-needing", "1.0")
    assert user is not None
    farm.release("base-two", "1.0", jobs=False)
    farm.claim(user)
    answer = farm.report(user, waiting_for=requirement)
    assert answer["state"] == "failed"
    assert farm.job(user).summary == summary


def test_a_cycle_of_waiting_jobs_fails_and_takes_the_other_with_it(farm: Farm) -> None:
    first = farm.release("cycle-a", "1.0")
    second = farm.release("cycle-b", "1.0")
    assert first is not None and second is not None
    farm.claim(first)
    assert farm.report(first, waiting_for="cycle-b")["state"] == "dep-wait"
    farm.claim(second)
    answer = farm.report(second, waiting_for="cycle-a")
    assert answer["state"] == "failed"
    assert farm.job(second).summary == "build dependency cycle: cycle-b -> cycle-a -> cycle-b"
    # cycle-a waited for cycle-b's job, which failed: it fails too, naming it.
    ended = farm.job(first)
    assert ended.state is JobState.FAILED
    assert f"cycle-b 1.0 failed to build for aarch64 cp311 (job {second}" in (ended.summary or "")


def test_a_wheel_published_meanwhile_sends_the_job_back_at_once(farm: Farm) -> None:
    user = farm.release("late-user", "1.0")
    base = farm.release("early-base", "1.0")
    assert user is not None and base is not None
    farm.build(base, "early_base", "1.0")
    farm.claim(user)
    answer = farm.report(user, waiting_for="early-base")
    assert answer["state"] == "pending"
    assert "early_base-1.0-cp311" in (farm.job(user).summary or "")


def test_a_waiting_job_can_be_cancelled_and_a_bad_requirement_is_refused(farm: Farm) -> None:
    user = farm.release("cancel-me", "1.0")
    assert user is not None
    farm.claim(user)
    refused = farm.client.post(
        f"/api/v1/jobs/{user}/result",
        headers=farm.auth,
        data={"outcome": "failed", "reason": "missing-dependency", "waiting_for": "x @ file:///"},
        files={"log": ("build.log", b"log\n", "text/plain")},
    )
    assert refused.status_code == 422
    assert farm.report(user, waiting_for="unknown-thing")["state"] == "dep-wait"
    with transaction(farm.factory) as session:
        job = session.get(BuildJob, user)
        assert job is not None
        jobs.cancel(job, "cli:op", "not needed")
    assert farm.job(user).state is JobState.SKIPPED

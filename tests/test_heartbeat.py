"""A heartbeat names the job its builder runs: any other job building there goes back to the
queue at once (after a grace period covering a claim that races the heartbeat), and the named
job, when it no longer builds there (cancelled, requeued, handed to another builder), is
answered under `stop` so that the builder kills its build."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from common.config import Settings
from common.db import transaction
from common.models import Builder, BuildJob
from common.states import JobState, TokenRole
from master.auth import create_token
from master.builds.reconciler import reconcile
from master.web.app import create_app
from master.web.builder_api import HAND_BACK_GRACE
from tests.seed import add_release


@dataclass
class Farm:
    client: TestClient
    factory: sessionmaker[Session]
    tokens: dict[str, str]
    jobs: dict[str, int]
    operator: str

    def auth(self, builder: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[builder]}"}

    def operate(self, action: str, project: str) -> None:
        """Cancel or requeue a job through the operator API."""
        answer = self.client.post(
            f"/api/v1/jobs/{self.jobs[project]}/{action}",
            headers={"Authorization": f"Bearer {self.operator}"},
            json={"reason": "test"},
        )
        assert answer.status_code == 200, answer.text

    def send_log(self, builder: str, project: str, offset: int, data: bytes) -> Any:
        return self.client.post(
            f"/api/v1/jobs/{self.jobs[project]}/log",
            params={"offset": offset},
            content=data,
            headers={**self.auth(builder), "Content-Type": "application/octet-stream"},
        )

    def claim(self, builder: str, project: str) -> None:
        answer = self.client.post(
            f"/api/v1/jobs/{self.jobs[project]}/claim", headers=self.auth(builder)
        )
        assert answer.status_code == 200, answer.text

    def beat(self, builder: str, body: dict[str, Any] | None) -> Any:
        answer = self.client.post(
            "/api/v1/builders/heartbeat", headers=self.auth(builder), json=body
        )
        assert answer.status_code == 200, answer.text
        return answer.json()

    def claimed_ago(self, project: str, age: timedelta) -> None:
        with transaction(self.factory) as session:
            job = session.get(BuildJob, self.jobs[project])
            assert job is not None
            job.started_at = datetime.now(UTC) - age

    def job(self, project: str) -> BuildJob:
        with self.factory() as session:
            job = session.get(BuildJob, self.jobs[project])
            assert job is not None
            return job

    def builder(self, name: str) -> Builder:
        with self.factory() as session:
            found = session.scalar(select(Builder).where(Builder.name == name))
            assert found is not None
            return found


OLD = HAND_BACK_GRACE + timedelta(seconds=30)


@pytest.fixture
def farm(settings: Settings, factory: sessionmaker[Session]) -> Iterator[Farm]:
    jobs: dict[str, int] = {}
    tokens: dict[str, str] = {}
    with transaction(factory) as session:
        for project in ("alpha", "beta", "gamma"):
            _, _, [job] = add_release(session, settings, project=project)
            jobs[project] = job.id
        for name in ("b1", "b2"):
            tokens[name] = create_token(session, name, TokenRole.BUILDER)
        operator = create_token(session, "op", TokenRole.OPERATOR)
    with TestClient(create_app(settings, factory)) as client:
        farm = Farm(client, factory, tokens, jobs, operator)
        for name in tokens:
            answer = client.post(
                "/api/v1/builders/register",
                headers=farm.auth(name),
                json={"arch": "aarch64", "backend": "docker", "python_tags": ["cp311"]},
            )
            assert answer.status_code == 200, answer.text
        yield farm


def test_a_job_the_builder_no_longer_runs_goes_back_at_once(
    farm: Farm, caplog: pytest.LogCaptureFixture
) -> None:
    farm.claim("b1", "alpha")
    farm.claim("b1", "beta")  # b1 lost track of alpha and runs beta
    farm.claim("b2", "gamma")
    for project in ("alpha", "beta", "gamma"):
        farm.claimed_ago(project, OLD)
    with caplog.at_level(logging.INFO, logger="master.builds.jobs"):
        answer = farm.beat("b1", {"job_id": farm.jobs["beta"], "free_disk": 10})
    assert answer == {"ok": True, "handed_back": [farm.jobs["alpha"]], "stop": [], "why": None}
    alpha = farm.job("alpha")
    assert (alpha.state, alpha.builder_id, alpha.started_at) == (JobState.PENDING, None, None)
    assert alpha.attempts == 0  # the builder forgot it: not the build's fault
    assert farm.job("beta").state == JobState.BUILDING
    assert farm.job("gamma").state == JobState.BUILDING  # another builder's job
    [record] = [r for r in caplog.records if "no longer runs" in getattr(r, "why", "")]
    assert (record.getMessage(), record.__dict__["from"], record.__dict__["to"]) == (
        "job handed back",
        "building",
        "pending",
    )
    assert getattr(record, "job_id", None) == farm.jobs["alpha"]
    assert getattr(record, "builder", None) == "b1"
    # It can be claimed again, and its attempt number did not move.
    claimed = farm.client.post(f"/api/v1/jobs/{farm.jobs['alpha']}/claim", headers=farm.auth("b2"))
    assert claimed.status_code == 200 and claimed.json()["attempt"] == 1


def test_an_idle_builder_hands_back_everything_it_holds(farm: Farm) -> None:
    farm.claim("b1", "alpha")
    farm.claimed_ago("alpha", OLD)
    assert farm.builder("b1").current_job_id == farm.jobs["alpha"]
    assert farm.beat("b1", {"job_id": None})["handed_back"] == [farm.jobs["alpha"]]
    assert farm.job("alpha").state == JobState.PENDING
    assert farm.builder("b1").current_job_id is None
    assert farm.beat("b1", {"job_id": None})["handed_back"] == []  # nothing twice


def test_a_recent_claim_is_safe_from_a_heartbeat_sent_before_it(farm: Farm) -> None:
    farm.claim("b1", "alpha")
    farm.claimed_ago("alpha", HAND_BACK_GRACE - timedelta(seconds=15))
    assert farm.beat("b1", {"job_id": None})["handed_back"] == []
    assert farm.job("alpha").state == JobState.BUILDING


def test_the_reported_job_and_an_empty_heartbeat_keep_the_job(farm: Farm) -> None:
    farm.claim("b1", "alpha")
    farm.claimed_ago("alpha", OLD)
    assert farm.beat("b1", {"job_id": farm.jobs["alpha"]})["handed_back"] == []
    # An older builder's heartbeat has no body: it says nothing about its jobs.
    assert farm.beat("b1", None)["handed_back"] == []
    assert farm.job("alpha").state == JobState.BUILDING


def test_the_live_log_of_a_job_handed_back_is_dropped(farm: Farm, settings: Settings) -> None:
    farm.claim("b1", "alpha")
    farm.claimed_ago("alpha", OLD)
    job_id = farm.jobs["alpha"]
    chunk = farm.client.post(
        f"/api/v1/jobs/{job_id}/log?offset=0", content=b"building\n", headers=farm.auth("b1")
    )
    assert chunk.status_code == 200, chunk.text
    assert farm.client.get(f"/logs/{job_id}").content == b"building\n"
    farm.beat("b1", {"job_id": None})
    assert not (settings.master.data_dir / "live" / str(job_id)).exists()
    assert farm.client.get(f"/logs/{job_id}").status_code == 404
    late = farm.client.post(
        f"/api/v1/jobs/{job_id}/log?offset=9", content=b"more\n", headers=farm.auth("b1")
    )
    assert late.status_code == 403


def test_a_cancelled_job_its_builder_still_runs_is_answered_stop(
    farm: Farm, caplog: pytest.LogCaptureFixture
) -> None:
    farm.claim("b1", "alpha")
    farm.claim("b2", "beta")
    farm.operate("cancel", "alpha")
    with caplog.at_level(logging.INFO, logger="master.web.builder_api"):
        answer = farm.beat("b1", {"job_id": farm.jobs["alpha"], "free_disk": 10})
        still = farm.beat("b2", {"job_id": farm.jobs["beta"]})
    assert answer == {
        "ok": True,
        "handed_back": [],
        "stop": [farm.jobs["alpha"]],
        "why": "skipped (cancelled)",
    }
    assert still["stop"] == [] and still["why"] is None  # still building there: keep going
    [record] = [r for r in caplog.records if "no longer its own" in r.getMessage()]
    assert getattr(record, "job_id", None) == farm.jobs["alpha"]
    assert getattr(record, "builder", None) == "b1"
    assert getattr(record, "why", None) == "skipped (cancelled)"
    # The answer changes nothing: the job stays cancelled, and the builder is told again
    # as long as it names the job.
    alpha = farm.job("alpha")
    assert (alpha.state, alpha.builder_id) == (JobState.SKIPPED, None)
    assert farm.beat("b1", {"job_id": farm.jobs["alpha"]})["stop"] == [farm.jobs["alpha"]]
    assert farm.beat("b1", {"job_id": None})["stop"] == []
    assert farm.beat("b1", None)["stop"] == []  # an older builder's empty heartbeat


def test_a_job_requeued_or_handed_to_another_builder_is_answered_stop(
    farm: Farm, settings: Settings
) -> None:
    farm.claim("b1", "alpha")
    # alpha: b1 went silent, the reconciler gave the job back and b2 took it.
    with transaction(farm.factory) as session:
        reconcile(session, settings, datetime.now(UTC) + timedelta(hours=1))
    assert farm.job("alpha").state == JobState.PENDING
    farm.claim("b2", "alpha")
    answer = farm.beat("b1", {"job_id": farm.jobs["alpha"]})
    assert (answer["stop"], answer["why"]) == ([farm.jobs["alpha"]], "building on another builder")
    assert farm.beat("b2", {"job_id": farm.jobs["alpha"]})["stop"] == []
    # beta: cancelled, then requeued by the operator: waiting again, no builder's.
    farm.claim("b1", "beta")
    farm.operate("cancel", "beta")
    farm.operate("requeue", "beta")
    assert farm.job("beta").state == JobState.PENDING
    answer = farm.beat("b1", {"job_id": farm.jobs["beta"]})
    assert (answer["stop"], answer["why"]) == ([farm.jobs["beta"]], "pending")
    # A job the master does not know at all.
    answer = farm.beat("b1", {"job_id": 999_999})
    assert (answer["stop"], answer["why"]) == ([999_999], "no such job")


def test_a_job_its_builder_just_reported_is_not_named(farm: Farm) -> None:
    """A heartbeat sent while its builder's result was being stored names a finished job:
    nothing to stop there."""
    farm.claim("b1", "alpha")
    answer = farm.client.post(
        f"/api/v1/jobs/{farm.jobs['alpha']}/result",
        headers=farm.auth("b1"),
        data={"outcome": "failed", "reason": "compile-error", "summary": "no"},
        files={"log": ("build.log", b"error\n")},
    )
    assert answer.status_code == 200, answer.text
    assert farm.job("alpha").state == JobState.FAILED
    assert farm.beat("b1", {"job_id": farm.jobs["alpha"]})["stop"] == []
    # Another builder naming it was not running it: that one is told to stop.
    assert farm.beat("b2", {"job_id": farm.jobs["alpha"]})["stop"] == [farm.jobs["alpha"]]


def test_the_live_log_of_a_cancelled_job_is_refused_saying_stop(farm: Farm) -> None:
    farm.claim("b1", "alpha")
    first = farm.send_log("b1", "alpha", 0, b"compiling\n")
    assert first.status_code == 200, first.text
    farm.operate("cancel", "alpha")
    late = farm.send_log("b1", "alpha", 10, b"more\n")
    assert late.status_code == 403
    assert late.json() == {
        "error": f"job {farm.jobs['alpha']} is not assigned to builder b1",
        "stop": True,
        "state": "skipped",
        "why": "skipped (cancelled)",
    }
    # Another builder's building job, and a job the master does not know: refused the same.
    farm.claim("b2", "beta")
    other = farm.send_log("b1", "beta", 0, b"x").json()
    assert (other["stop"], other["state"], other["why"]) == (
        True,
        "building",
        "building on another builder",
    )
    unknown = farm.client.post(
        "/api/v1/jobs/999999/log?offset=0", content=b"x", headers=farm.auth("b1")
    )
    assert unknown.status_code == 404
    assert unknown.json() == {
        "error": "no such job",
        "stop": True,
        "state": None,
        "why": "no such job",
    }
    # A refusal that is not about the job says nothing of stopping.
    too_big = farm.send_log("b2", "beta", 0, b"x" * (1024 * 1024 + 1))
    assert too_big.status_code == 413 and "stop" not in too_big.json()

"""A heartbeat names the job its builder runs: any other job building there goes back to the
queue at once (after a grace period covering a claim that races the heartbeat)."""

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
from master.app import HAND_BACK_GRACE, create_app
from master.auth import create_token
from tests.seed import add_release


@dataclass
class Farm:
    client: TestClient
    factory: sessionmaker[Session]
    tokens: dict[str, str]
    jobs: dict[str, int]

    def auth(self, builder: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[builder]}"}

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
    with TestClient(create_app(settings, factory)) as client:
        farm = Farm(client, factory, tokens, jobs)
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
    with caplog.at_level(logging.WARNING, logger="master.app"):
        answer = farm.beat("b1", {"job_id": farm.jobs["beta"], "free_disk": 10})
    assert answer == {"ok": True, "handed_back": [farm.jobs["alpha"]]}
    alpha = farm.job("alpha")
    assert (alpha.state, alpha.builder_id, alpha.started_at) == (JobState.PENDING, None, None)
    assert alpha.attempts == 0  # the builder forgot it: not the build's fault
    assert farm.job("beta").state == JobState.BUILDING
    assert farm.job("gamma").state == JobState.BUILDING  # another builder's job
    [record] = [r for r in caplog.records if "no longer runs" in r.getMessage()]
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

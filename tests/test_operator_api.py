"""Operator controls over HTTP: skip list, cancel and re-queue, removing a wheel from the
index, the audit log; only operator tokens act, and every rejection is JSON."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from common.config import Settings
from common.db import transaction
from common.models import BuildJob, OutputFile, Release
from common.states import FailureReason, JobState, SkipReason, TokenRole
from master.auth import create_token
from master.builds.live_logs import LiveLogs, claim_key, live_caps
from master.index.static import StaticIndex
from master.storage import Storage
from master.web.app import create_app
from tests.seed import add_release, publish_wheel

JSON_ACCEPT = {"Accept": "application/vnd.pypi.simple.v1+json"}


@dataclass
class Farm:
    client: TestClient
    factory: sessionmaker[Session]
    settings: Settings
    operator: dict[str, str]
    maintainer: dict[str, str]
    wheel: str
    job_id: int

    def job(self, job_id: int) -> BuildJob:
        with self.factory() as session:
            job = session.get(BuildJob, job_id)
            assert job is not None
            return job

    def audit(self) -> list[dict[str, Any]]:
        answer = self.client.get("/api/v1/audit", headers=self.operator)
        assert answer.status_code == 200, answer.text
        return list(answer.json()["events"])


@pytest.fixture
def farm(settings: Settings, factory: sessionmaker[Session]) -> Iterator[Farm]:
    with transaction(factory) as session:
        wheel = publish_wheel(session, settings, "demo").filename
        _, _, [waiting] = add_release(session, settings, project="slow", version="2.0")
        operator = create_token(session, "ops", TokenRole.OPERATOR)
        maintainer = create_token(session, "alice", TokenRole.MAINTAINER, ["slow"])
        job_id = waiting.id
    with TestClient(create_app(settings, factory)) as client:
        yield Farm(
            client,
            factory,
            settings,
            {"Authorization": f"Bearer {operator}"},
            {"Authorization": f"Bearer {maintainer}"},
            wheel,
            job_id,
        )


def test_cancel_and_requeue_a_job(farm: Farm) -> None:
    cancel = farm.client.post(
        f"/api/v1/jobs/{farm.job_id}/cancel", headers=farm.operator, json={"reason": "loops"}
    )
    assert cancel.status_code == 200, cancel.text
    assert cancel.json()["state"] == "skipped"
    job = farm.job(farm.job_id)
    assert job.skip_reason == SkipReason.CANCELLED and job.summary == "cancelled by ops: loops"
    again = farm.client.post(
        f"/api/v1/jobs/{farm.job_id}/cancel", headers=farm.operator, json={"reason": "x"}
    )
    assert again.status_code == 409 and "nothing to cancel" in again.json()["error"]

    requeue = farm.client.post(
        f"/api/v1/jobs/{farm.job_id}/requeue", headers=farm.operator, json={"reason": "fixed"}
    )
    assert requeue.status_code == 200 and requeue.json()["state"] == "pending"
    job = farm.job(farm.job_id)
    assert (job.attempts, job.skip_reason, job.builder_id) == (0, None, None)
    busy = farm.client.post(
        f"/api/v1/jobs/{farm.job_id}/requeue", headers=farm.operator, json={"reason": "x"}
    )
    assert busy.status_code == 409 and "only failed or skipped" in busy.json()["error"]
    actions = [(e["action"], e["subject"], e["detail"]["was"]) for e in farm.audit()]
    assert actions == [
        ("requeue", f"job {farm.job_id}", "skipped"),
        ("cancel", f"job {farm.job_id}", "pending"),
    ]


def test_a_cancelled_build_keeps_what_its_builder_streamed(farm: Farm) -> None:
    """The live log is all there is of a build cancelled while it ran: it becomes the
    job's final log, shown on its build page, and the live copy goes."""
    started = datetime(2026, 11, 25, 3, 0, tzinfo=UTC)
    with transaction(farm.factory) as session:
        job = session.get(BuildJob, farm.job_id)
        assert job is not None
        job.state, job.started_at, job.attempts = JobState.BUILDING, started, 1
    live = LiveLogs(
        Storage(farm.settings.master.data_dir), *live_caps(farm.settings.master.max_log_bytes)
    )
    streamed = b"building extension\nwaiting for a lock that never comes\n"
    live.append(farm.job_id, 0, streamed, lambda: claim_key(started))
    cancel = farm.client.post(
        f"/api/v1/jobs/{farm.job_id}/cancel", headers=farm.operator, json={"reason": "hangs"}
    )
    assert cancel.status_code == 200, cancel.text
    cancelled = farm.job(farm.job_id)
    assert (cancelled.state, cancelled.log_size) == (JobState.SKIPPED, len(streamed))
    assert cancelled.log_path is not None
    assert live.read(farm.job_id, claim_key(started)) is None
    final = farm.client.get(f"/api/v1/jobs/{farm.job_id}/log")
    assert final.status_code == 200 and final.content == streamed


def test_requeue_refuses_a_second_active_job_for_the_same_target(farm: Farm) -> None:
    with transaction(farm.factory) as session:
        job = session.get(BuildJob, farm.job_id)
        assert job is not None
        job.state, job.failure_reason = JobState.FAILED, FailureReason.COMPILE_ERROR
        twin = BuildJob(
            release_id=job.release_id,
            source_file_id=job.source_file_id,
            target=job.target,
            arch=job.arch,
            python_tag=job.python_tag,
            policy=job.policy,
        )
        session.add(twin)
    answer = farm.client.post(
        f"/api/v1/jobs/{farm.job_id}/requeue", headers=farm.operator, json={"reason": "again"}
    )
    assert answer.status_code == 409 and "already" not in answer.json()["error"]
    assert "waiting or running" in answer.json()["error"]
    assert farm.job(farm.job_id).state == JobState.FAILED
    assert farm.audit() == []


def test_skip_list_over_http(farm: Farm) -> None:
    added = farm.client.post(
        "/api/v1/skips",
        headers=farm.operator,
        json={"project": "Slow", "version": "2.0", "reason": "needs CUDA"},
    )
    assert added.status_code == 201, added.text
    assert added.json() == {"project": "slow", "version": "2.0", "jobs_skipped": 1}
    assert farm.job(farm.job_id).state == JobState.SKIPPED
    listed = farm.client.get("/api/v1/skips").json()["skips"]
    assert [(r["project"], r["version"], r["reason"], r["created_by"]) for r in listed] == [
        ("slow", "2.0", "needs CUDA", "ops")
    ]
    duplicate = farm.client.post(
        "/api/v1/skips",
        headers=farm.operator,
        json={"project": "slow", "version": "2.0", "reason": "again"},
    )
    assert duplicate.status_code == 409
    removed = farm.client.delete("/api/v1/skips/slow?version=2.0", headers=farm.operator)
    assert removed.status_code == 200
    with farm.factory() as session:
        release = session.scalars(select(Release).where(Release.version == "2.0")).one()
        assert release.skip_reason is None
    gone = farm.client.delete("/api/v1/skips/slow?version=2.0", headers=farm.operator)
    assert gone.status_code == 404 and "not on the skip list" in gone.json()["error"]
    assert [e["action"] for e in farm.audit()] == ["unskip", "skip"]


def test_removing_a_wheel_takes_it_out_of_the_index_and_the_static_copy(farm: Farm) -> None:
    static = StaticIndex(farm.settings.master.data_dir)
    with farm.factory() as session:
        static.sync(session)
    assert farm.client.get("/simple/demo/", headers=JSON_ACCEPT).status_code == 200
    removed = farm.client.delete(
        f"/api/v1/files/{farm.wheel}", headers=farm.operator, params={"reason": "miscompiled"}
    )
    assert removed.status_code == 200, removed.text
    assert farm.client.get("/simple/demo/", headers=JSON_ACCEPT).status_code == 404
    assert farm.client.get(f"/files/demo/{farm.wheel}").status_code == 404
    with farm.factory() as session:
        report = static.sync(session)
        output = session.scalars(select(OutputFile)).one()
        assert output.published is False  # the row stays, for the record
    assert report.root_rewritten and not (static.simple / "demo").exists()
    again = farm.client.delete(
        f"/api/v1/files/{farm.wheel}", headers=farm.operator, params={"reason": "x"}
    )
    assert again.status_code == 409
    [event] = farm.audit()
    assert (event["action"], event["subject"], event["detail"]) == (
        "remove-wheel",
        farm.wheel,
        {"reason": "miscompiled"},
    )


@pytest.mark.parametrize(
    ("method", "path", "payload", "status", "message"),
    [
        ("post", "/api/v1/jobs/{job}/cancel", {"reason": "x"}, 401, "not an operator token"),
        ("post", "/api/v1/jobs/999999/cancel", {"reason": "x"}, 404, "no job 999999"),
        ("post", "/api/v1/jobs/{job}/cancel", {}, 422, "reason"),
        ("post", "/api/v1/jobs/{job}/cancel", {"reason": ""}, 422, "reason"),
        ("post", "/api/v1/jobs/abc/cancel", {"reason": "x"}, 422, "job_id"),
        ("post", "/api/v1/jobs/999999/requeue", {"reason": "x"}, 404, "no job 999999"),
        ("post", "/api/v1/skips", {"project": "!!", "reason": "x"}, 400, "invalid project"),
        ("post", "/api/v1/skips", {"project": "demo", "reason": "x", "by": "me"}, 422, "by"),
        ("delete", "/api/v1/files/nope.whl?reason=x", None, 404, "no wheel nope.whl"),
        ("delete", "/api/v1/files/{wheel}", None, 422, "reason"),
        ("get", "/api/v1/audit?limit=0", None, 422, "limit"),
    ],
)
def test_rejections(
    farm: Farm, method: str, path: str, payload: Any, status: int, message: str
) -> None:
    headers = farm.maintainer if status == 401 else farm.operator
    url = path.format(job=farm.job_id, wheel=farm.wheel)
    kwargs: dict[str, Any] = {"headers": headers}
    if payload is not None:
        kwargs["json"] = payload
    answer = farm.client.request(method.upper(), url, **kwargs)
    assert answer.status_code == status, answer.text
    assert message in answer.json()["error"]
    assert farm.job(farm.job_id).state == JobState.PENDING


def test_without_a_token_nothing_happens(farm: Farm) -> None:
    answer = farm.client.delete(f"/api/v1/files/{farm.wheel}", params={"reason": "x"})
    assert answer.status_code == 401
    assert answer.json() == {"error": "missing Authorization header"}
    assert farm.client.get("/api/v1/audit").status_code == 401


def test_tokens_over_http(farm: Farm) -> None:
    created = farm.client.post(
        "/api/v1/tokens",
        headers=farm.operator,
        json={"name": "bob", "role": "maintainer", "projects": ["Demo", "slow"]},
    )
    assert created.status_code == 201, created.text
    secret = created.json()["secret"]
    assert secret.startswith("aw_") and created.json()["role"] == "maintainer"
    listed = farm.client.get("/api/v1/tokens", headers=farm.operator).json()["tokens"]
    bob = next(token for token in listed if token["name"] == "bob")
    assert bob["projects"] == ["demo", "slow"] and bob["revoked_at"] is None
    assert all("secret" not in token and "token_hash" not in token for token in listed)
    # The new token works, for its projects only.
    rebuild = farm.client.post(
        "/api/v1/projects/slow/rebuild", headers={"Authorization": f"Bearer {secret}"}
    )
    assert rebuild.status_code == 202
    revoked = farm.client.delete("/api/v1/tokens/bob", headers=farm.operator)
    assert revoked.status_code == 200
    refused = farm.client.post(
        "/api/v1/projects/slow/rebuild", headers={"Authorization": f"Bearer {secret}"}
    )
    assert refused.status_code == 401 and "revoked" in refused.json()["error"]
    actions = [(e["action"], e["subject"]) for e in farm.audit()]
    assert actions[:2] == [("token-revoke", "bob"), ("rebuild", "slow 2.0")]
    assert ("token-create", "bob") in actions


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"name": "ops", "role": "operator"}, 409, "a token named 'ops' exists"),
        ({"name": "m", "role": "maintainer"}, 400, "needs at least one project"),
        ({"name": "m", "role": "builder", "projects": ["demo"]}, 400, "maintainer tokens only"),
        ({"name": "m", "role": "maintainer", "projects": ["!!"]}, 400, "invalid project name"),
        ({"name": "a b", "role": "builder"}, 422, "name"),
        ({"name": "x", "role": "root"}, 422, "role"),
    ],
)
def test_token_rejections(farm: Farm, body: dict[str, Any], status: int, message: str) -> None:
    answer = farm.client.post("/api/v1/tokens", headers=farm.operator, json=body)
    assert answer.status_code == status, answer.text
    assert message in answer.json()["error"]
    assert farm.client.delete("/api/v1/tokens/ghost", headers=farm.operator).status_code == 404
    assert farm.client.get("/api/v1/tokens", headers=farm.maintainer).status_code == 401

"""POST /api/v1/projects/{name}/rebuild: project-scoped tokens, duplicates answered with
the waiting job, a rate limit per token, and an audit record of every request."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from common.config import Settings
from common.db import transaction
from common.models import AuditEvent, BuildJob
from common.states import JobState, TokenRole
from master.auth import create_token, revoke_token
from master.builds.build_plan import PRIORITY_REBUILD
from master.web.app import create_app
from tests.seed import add_release


@dataclass
class Farm:
    client: TestClient
    factory: sessionmaker[Session]
    tokens: dict[str, str]

    def rebuild(self, project: str, token: str | None, **body: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.tokens[token]}"} if token else {}
        return self.client.post(
            f"/api/v1/projects/{project}/rebuild", headers=headers, json=body or None
        )


@pytest.fixture
def farm(settings: Settings, factory: sessionmaker[Session]) -> Iterator[Farm]:
    settings.master.rebuild_limit = 3
    with transaction(factory) as session:
        for version in ("1.0", "1.1"):
            _, _, jobs = add_release(session, settings, project="demo", version=version)
            for job in jobs:
                job.state = JobState.BUILT
        add_release(session, settings, project="other")
        tokens = {
            "maintainer": create_token(session, "alice", TokenRole.MAINTAINER, ["demo"]),
            "operator": create_token(session, "ops", TokenRole.OPERATOR),
            "builder": create_token(session, "b1", TokenRole.BUILDER),
            "revoked": create_token(session, "gone", TokenRole.MAINTAINER, ["demo"]),
        }
        revoke_token(session, "gone")
    with TestClient(create_app(settings, factory)) as client:
        yield Farm(client, factory, tokens)


def _audit(farm: Farm) -> list[tuple[str, str, str, dict[str, Any]]]:
    with farm.factory() as session:
        events = session.scalars(select(AuditEvent).order_by(AuditEvent.id)).all()
        return [(e.actor, e.action, e.subject, e.detail) for e in events]


def test_maintainer_rebuilds_the_newest_release_and_a_duplicate_gets_the_same_job(
    farm: Farm,
) -> None:
    first = farm.rebuild("Demo", "maintainer")
    assert first.status_code == 202, first.text
    body = first.json()
    assert (body["project"], body["version"], body["created"], body["duplicate"]) == (
        "demo",
        "1.1",
        1,
        False,
    )
    [job] = body["jobs"]
    assert (job["arch"], job["python_tag"], job["state"]) == ("aarch64", "cp311", "pending")
    with farm.factory() as session:
        stored = session.get(BuildJob, job["id"])
        assert stored is not None
        assert stored.requested_by == "alice" and stored.priority == PRIORITY_REBUILD
    again = farm.rebuild("demo", "maintainer")
    assert again.status_code == 202
    assert again.json()["duplicate"] is True and again.json()["jobs"] == body["jobs"]
    older = farm.rebuild("demo", "maintainer", version="1.0", arch="aarch64")
    assert older.json()["version"] == "1.0" and older.json()["created"] == 1
    audit = _audit(farm)
    assert [(actor, action, subject) for actor, action, subject, _ in audit] == [
        ("alice", "rebuild", "demo 1.1"),
        ("alice", "rebuild", "demo 1.1"),
        ("alice", "rebuild", "demo 1.0"),
    ]
    assert audit[1][3]["duplicate"] is True and audit[1][3]["jobs"] == [job["id"]]


def test_an_operator_may_rebuild_any_project(farm: Farm) -> None:
    answer = farm.rebuild("other", "operator")
    assert answer.status_code == 202
    # `other` 1.0 was never built: its pending job is the answer.
    assert answer.json()["duplicate"] is True and len(answer.json()["jobs"]) == 1


@pytest.mark.parametrize(
    ("project", "token", "body", "status", "message"),
    [
        ("demo", None, {}, 401, "missing Authorization header"),
        ("demo", "builder", {}, 401, "token is not a maintainer or operator token"),
        ("demo", "revoked", {}, 401, "invalid or revoked token"),
        ("other", "maintainer", {}, 403, "token alice is not scoped to project other"),
        ("bad name!", "operator", {}, 400, "invalid project name"),
        ("nope", "operator", {}, 404, "unknown project: nope"),
        ("demo", "maintainer", {"version": "9.9"}, 400, "demo has no release 9.9"),
        ("demo", "maintainer", {"version": "not a version"}, 400, "invalid version"),
        ("demo", "maintainer", {"arch": "armv7l"}, 400, "arch armv7l has no enabled target"),
        ("demo", "maintainer", {"arch": "sparc"}, 422, "arch"),
        ("demo", "maintainer", {"priority": 0}, 422, "priority"),
    ],
)
def test_rejections_are_json_with_a_message(
    farm: Farm, project: str, token: str | None, body: dict[str, Any], status: int, message: str
) -> None:
    answer = farm.rebuild(project, token, **body)
    assert answer.status_code == status, answer.text
    assert message in answer.json()["error"]
    with farm.factory() as session:
        assert session.scalar(select(BuildJob).where(BuildJob.requested_by.is_not(None))) is None


def test_malformed_body_is_refused(farm: Farm) -> None:
    answer = farm.client.post(
        "/api/v1/projects/demo/rebuild",
        headers={
            "Authorization": f"Bearer {farm.tokens['maintainer']}",
            "Content-Type": "application/json",
        },
        content=b"{not json",
    )
    assert answer.status_code == 422 and "error" in answer.json()


def test_requests_past_the_rate_limit_are_refused_with_retry_after(farm: Farm) -> None:
    for _ in range(3):
        assert farm.rebuild("demo", "maintainer").status_code == 202
    refused = farm.rebuild("demo", "maintainer")
    assert refused.status_code == 429
    assert "3 rebuild requests per 3600 s for token alice" in refused.json()["error"]
    assert 1 <= int(refused.headers["retry-after"]) <= 3601
    # The limit is per token: the operator is not held back by alice's requests.
    assert farm.rebuild("demo", "operator").status_code == 202
    assert len(_audit(farm)) == 4  # the refused request made no job and no record


@pytest.mark.parametrize(
    ("project", "body", "status", "message"),
    [
        (
            "Foo",
            {"version": "1.2"},
            404,
            'unknown project: foo: import it first with "armwheels import foo==1.2"',
        ),
        ("foo", {}, 404, 'unknown project: foo: import it first with "armwheels import foo"'),
        (
            "demo",
            {"version": "9.9"},
            400,
            "demo has no release 9.9 in the farm:"
            ' import it first with "armwheels import demo==9.9"',
        ),
    ],
)
def test_a_release_the_farm_does_not_have_is_answered_with_how_to_import_it(
    farm: Farm, project: str, body: dict[str, Any], status: int, message: str
) -> None:
    answer = farm.rebuild(project, "operator", **body)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"] == message

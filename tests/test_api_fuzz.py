"""Schemathesis against the master's served /openapi.json, with each role's token: whatever
a caller sends within or around the schema, no answer is a server error, and every
refusal is JSON with an "error" key.

The master is real (uvicorn on loopback, PostgreSQL) and seeded so that routes find
something: projects with a published wheel, pending, failed and building jobs, a skip
rule, a registered builder with a streamed log. Generation is derandomised with a fixed
seed and a fixed number of examples per operation, so a CI run repeats the last one."""

from __future__ import annotations

import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case
from sqlalchemy.orm import sessionmaker

from common.config import load_settings
from common.db import make_engine, make_sessionmaker, transaction, upgrade
from common.states import FailureReason, JobState, TokenRole
from master import operations
from master.auth import create_token
from master.web.app import create_app
from tests.conftest import _postgres_database
from tests.seed import add_release, publish_wheel
from tests.servers import serve_app

pytestmark = pytest.mark.postgres

# Examples per operation and role in the fuzzing phase (the coverage phase adds its own
# boundary cases), and the time one example may take before it counts as a hang.
MAX_EXAMPLES = 12
DEADLINE = timedelta(seconds=10)
ROLES = ("none", "builder", "maintainer", "operator")
CONFIG = schemathesis.Config.from_dict(
    {
        "seed": 20261202,
        "generation": {
            "mode": "all",  # schema-valid and schema-violating input
            "max-examples": MAX_EXAMPLES,
            "deterministic": True,
            "database": "none",  # nothing written to .hypothesis
        },
        "phases": {"stateful": {"enabled": False}},
    }
)


@dataclass
class Master:
    url: str
    headers: dict[str, dict[str, str]]
    # Examples sent, by role and by operation, for the summary printed at the end.
    sent: Counter[tuple[str, str]] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)


def _master_settings(tmp_path: Path) -> dict[str, Any]:
    # The fuzzer's wrong tokens would soon have every request from loopback answered 429,
    # and the other roles' requests fuzzed nothing (the limit has tests of its own).
    return {"data_dir": tmp_path / "data", "auth_failure_limit": 10**9}


@contextmanager
def seeded_master(tmp_path: Path) -> Iterator[Master]:
    with ExitStack() as stack:
        url = stack.enter_context(contextmanager(_postgres_database)())
        settings = load_settings(None, database={"url": url}, master=_master_settings(tmp_path))
        engine = make_engine(url)
        stack.callback(engine.dispose)
        upgrade(engine)
        factory = make_sessionmaker(engine)
        with transaction(factory) as session:
            wheel = publish_wheel(session, settings, "demo", "1.0")
            wheel.job.state = JobState.BUILT
            add_release(session, settings, project="demo", version="1.1")
            _, _, [claimed] = add_release(session, settings, project="slow", version="2.0")
            _, _, [failed] = add_release(session, settings, project="broken", version="0.1")
            failed.state, failed.failure_reason = JobState.FAILED, FailureReason.COMPILE_ERROR
            secrets = {
                "operator": create_token(session, "fuzz-operator", TokenRole.OPERATOR),
                "maintainer": create_token(
                    session, "fuzz-maintainer", TokenRole.MAINTAINER, ["demo"]
                ),
                "builder": create_token(session, "fuzz-builder", TokenRole.BUILDER),
            }
            operations.add_skip(session, "held", None, "seeded", "fuzz-operator", "operator")
        headers = {role: {"Authorization": f"Bearer {secret}"} for role, secret in secrets.items()}
        headers["none"] = {}
        base = stack.enter_context(serve_app(create_app(settings, factory)))
        # The builder registers, claims a job and streams some log, as a real one does.
        with httpx.Client(base_url=base, headers=headers["builder"], timeout=30) as builder:
            register = {"arch": "aarch64", "backend": "docker", "python_tags": ["cp311"]}
            assert builder.post("/api/v1/builders/register", json=register).status_code == 200
            assert builder.post(f"/api/v1/jobs/{claimed.id}/claim").status_code == 200
            chunk = builder.post(f"/api/v1/jobs/{claimed.id}/log?offset=0", content=b"gcc -O2\n")
            assert chunk.status_code == 200, chunk.text
        yield Master(base, headers)


@pytest.fixture(scope="module")
def master(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Master]:
    with seeded_master(tmp_path_factory.mktemp("fuzz")) as served:
        yield served
        _report(served)


def _report(served: Master) -> None:
    """The figures of the run, on the terminal (pytest -s) or in the captured output."""
    operations_seen = {operation for _, operation in served.sent}
    lines = [
        f"schemathesis: {len(operations_seen)} operations,"
        f" {sum(served.sent.values())} examples, statuses {dict(sorted(served.statuses.items()))}"
    ]
    for role in ROLES:
        count = sum(n for (who, _), n in served.sent.items() if who == role)
        lines.append(f"  {role}: {count} examples")
    print("\n".join(lines), file=sys.stderr)


@pytest.fixture(scope="module", params=ROLES)
def role(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _served_schema() -> dict[str, Any]:
    """The document the master serves at /openapi.json, made at import so that pytest
    collects one test per operation (a test below checks the served one is the same;
    schemathesis' loading from a fixture does not run under this pytest)."""
    with tempfile.TemporaryDirectory() as scratch:
        settings = load_settings(
            None,
            database={"url": f"sqlite:///{scratch}/unused.db"},
            master={"data_dir": Path(scratch)},
        )
        return create_app(settings, sessionmaker()).openapi()


SERVED = _served_schema()
schema = schemathesis.openapi.from_dict(SERVED, config=CONFIG)


def _browser_page(operation: dict[str, Any]) -> bool:
    """A dashboard page: its refusals are HTML pages for the person at the browser."""
    return "text/html" in operation["responses"].get("200", {}).get("content", {})


PAGES = {
    f"{method.upper()} {path}"
    for path, methods in SERVED["paths"].items()
    for method, operation in methods.items()
    if _browser_page(operation)
}


def test_the_fuzzed_schema_is_the_served_one(master: Master) -> None:
    assert httpx.get(f"{master.url}/openapi.json", timeout=30).json() == SERVED


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=DEADLINE,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_server_errors_and_json_refusals(case: Case[Any], master: Master, role: str) -> None:
    label = case.operation.label
    if role != "none":
        # The role's token, in place of whatever Authorization header was generated.
        case.headers.update(master.headers[role])
    response = case.call(base_url=master.url, timeout=60)
    master.sent[(role, label)] += 1
    master.statuses[response.status_code] += 1
    what = f"{case.as_curl_command()} -> {response.status_code} {response.text[:300]}"
    assert response.status_code < 500, what
    if response.status_code >= 400:
        content_type = response.headers.get("content-type", [""])[0]
        if label in PAGES and content_type.startswith("text/html"):
            return
        assert content_type.startswith("application/json"), what
        body = response.json()
        assert isinstance(body, dict) and isinstance(body.get("error"), str), what

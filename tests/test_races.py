"""Identical requests sent at the same moment to a real master serving from two HTTP worker
processes, on SQLite and PostgreSQL: each action is done once (one success, the others a
JSON 409/404 or the duplicate answer), never twice and never with a 500."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from common.config import Settings, load_settings
from common.db import make_engine, make_sessionmaker, transaction, upgrade
from common.models import AuditEvent, BuildJob, OutputFile, SkipRule, Token
from common.states import ACTIVE_STATES, FailureReason, JobState, TokenRole
from master.auth import create_token
from tests.conftest import _postgres_database
from tests.seed import add_release, publish_wheel
from tests.servers import free_port, stop_process, wait_until

ROOT = Path(__file__).resolve().parent.parent
WORKERS = 2
CALLERS = 8
SERVE = (
    "import sys\n"
    "from pathlib import Path\n"
    "from common.config import load_settings\n"
    "from common.logs import setup_logging\n"
    "from master.web.http_server import serve_http\n"
    "setup_logging()\n"
    "serve_http(load_settings(Path(sys.argv[1])), int(sys.argv[2]))\n"
)


@contextmanager
def http_master(settings: Settings, tmp_path: Path, workers: int = WORKERS) -> Iterator[str]:
    """The master's HTTP server as `armwheels master` runs it (`workers` processes on one
    port), without its feed loop; yields its base URL."""
    port = free_port()
    config = tmp_path / "race-master.toml"
    config.write_text(
        f'[database]\nurl = "{settings.database.url}"\n'
        f'[master]\nport = {port}\ndata_dir = "{settings.master.data_dir}"\n'
        # Each token may ask for CALLERS rebuilds: every caller of a race passes the limit
        # unless its token asked before (test_the_rebuild_limit_holds_under_a_race).
        f"rebuild_limit = {CALLERS}\n"
    )
    log = tmp_path / "race-master.log"
    with log.open("ab") as sink:
        process = subprocess.Popen(
            [sys.executable, "-c", SERVE, str(config), str(workers)],
            cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        # Fresh connections are spread over the workers' sockets: when all of a burst are
        # answered, every worker serves.
        wait_until(lambda: _all_answer(url), 60, f"{workers} http workers", step=0.2)
        yield url
    finally:
        stop_process(process)
        errors = [
            _last_error(line) for line in log.read_text().splitlines() if "level=error" in line
        ]
        assert not errors, "\n".join(errors)


def _last_error(line: str) -> str:
    """The exception a log line's traceback ends with (or the message if none)."""
    found = re.findall(r"\\n(\w[\w.]*(?:Error|Exception)[^\\]*)", line)
    return found[-1][:300] if found else line[:300]


def _all_answer(url: str) -> bool:
    def one(_: int) -> bool:
        try:
            return httpx.get(f"{url}/api/v1/status", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    with ThreadPoolExecutor(CALLERS) as pool:
        return all(pool.map(one, range(CALLERS)))


@dataclass
class Answer:
    status: int
    body: Any


def at_once(url: str, send: Callable[[httpx.Client], httpx.Response]) -> list[Answer]:
    """`send` from CALLERS threads, each on its own connection already open, released
    together; the answers sorted by status."""
    barrier = threading.Barrier(CALLERS)

    def call(_: int) -> Answer:
        with httpx.Client(base_url=url, timeout=60) as client:
            client.get("/api/v1/status")  # opens the connection before the race
            barrier.wait()
            answer = send(client)
            if answer.headers.get("content-type", "").startswith("application/json"):
                return Answer(answer.status_code, answer.json())
            return Answer(answer.status_code, answer.text)  # refused by the tests

    with ThreadPoolExecutor(CALLERS) as pool:
        return sorted(pool.map(call, range(CALLERS)), key=lambda answer: answer.status)


def _statuses(answers: list[Answer]) -> list[int]:
    return [answer.status for answer in answers]


def _refusals(answers: list[Answer], status: int) -> list[str]:
    """The error messages of the answers with `status`, each a JSON {"error": ...}."""
    return [
        str(answer.body["error"])
        for answer in answers
        if answer.status == status and isinstance(answer.body, dict) and "error" in answer.body
    ]


def _audited(factory: sessionmaker[Session], action: str, subject: str) -> int:
    with factory() as session:
        return int(
            session.scalar(
                select(func.count()).where(
                    AuditEvent.action == action, AuditEvent.subject == subject
                )
            )
            or 0
        )


@dataclass
class Farm:
    url: str
    factory: sessionmaker[Session]
    operator: dict[str, str]
    maintainer: dict[str, str]
    hasty: dict[str, str]  # a maintainer of its own for the rate-limit race
    wheel: str
    waiting_job: int
    failed_job: int


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def farm(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Farm]:
    """One master per database for the module (its start is most of the cost); each test
    races on rows of its own."""
    tmp_path = tmp_path_factory.mktemp(request.param)
    with ExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite:///{tmp_path / 'armwheels.db'}"
        else:
            url = stack.enter_context(contextmanager(_postgres_database)())
        settings = load_settings(
            None, database={"url": url}, master={"data_dir": tmp_path / "data"}
        )
        engine = make_engine(url)
        stack.callback(engine.dispose)
        upgrade(engine)
        factory = make_sessionmaker(engine)
        with transaction(factory) as session:
            wheel = publish_wheel(session, settings, "demo", "1.0")
            wheel.job.state = JobState.BUILT
            # The newest release, which a rebuild request names: its build failed (1.0's
            # target is served already, and a rebuild of it is refused).
            _, _, [retry] = add_release(session, settings, project="demo", version="1.1")
            retry.state, retry.failure_reason = JobState.FAILED, FailureReason.COMPILE_ERROR
            _, _, [waiting] = add_release(session, settings, project="slow", version="2.0")
            _, _, [failed] = add_release(session, settings, project="broken", version="0.1")
            failed.state, failed.failure_reason = JobState.FAILED, FailureReason.COMPILE_ERROR
            operator = create_token(session, "ops", TokenRole.OPERATOR)
            maintainer = create_token(session, "alice", TokenRole.MAINTAINER, ["demo"])
            hasty = create_token(session, "bob", TokenRole.MAINTAINER, ["demo"])
            create_token(session, "doomed", TokenRole.BUILDER)
            ids = (wheel.filename, waiting.id, failed.id)
        base = stack.enter_context(http_master(settings, tmp_path))
        yield Farm(
            base,
            factory,
            {"Authorization": f"Bearer {operator}"},
            {"Authorization": f"Bearer {maintainer}"},
            {"Authorization": f"Bearer {hasty}"},
            *ids,
        )


def test_one_token_name_is_created_once(farm: Farm) -> None:
    answers = at_once(
        farm.url,
        lambda client: client.post(
            "/api/v1/tokens", headers=farm.operator, json={"name": "twin", "role": "operator"}
        ),
    )
    assert _statuses(answers) == [201] + [409] * (CALLERS - 1), answers
    assert all("exists" in error for error in _refusals(answers, 409))
    secret = answers[0].body["secret"]
    with farm.factory() as session:
        assert session.scalar(select(func.count()).where(Token.name == "twin")) == 1
    assert _audited(farm.factory, "token-create", "twin") == 1
    # The one secret handed out is the one that works.
    listed = httpx.get(
        f"{farm.url}/api/v1/tokens", headers={"Authorization": f"Bearer {secret}"}, timeout=30
    )
    assert listed.status_code == 200


def test_one_release_is_rebuilt_once(farm: Farm) -> None:
    answers = at_once(
        farm.url,
        lambda client: client.post("/api/v1/projects/demo/rebuild", headers=farm.maintainer),
    )
    assert _statuses(answers) == [202] * CALLERS, answers
    created = [answer.body for answer in answers if answer.body["created"]]
    assert len(created) == 1, answers
    [first] = created
    for answer in answers:
        # Every caller is told about the same jobs; all but one as duplicates.
        assert answer.body["jobs"] == first["jobs"]
    assert sum(answer.body["duplicate"] for answer in answers) == CALLERS - 1
    with farm.factory() as session:
        active = session.execute(
            select(BuildJob.arch, BuildJob.python_tag, func.count())
            .where(BuildJob.state.in_(ACTIVE_STATES))
            .where(BuildJob.id.in_([job["id"] for job in first["jobs"]]))
            .group_by(BuildJob.arch, BuildJob.python_tag)
        ).all()
        assert active and all(count == 1 for _, _, count in active)
        requested = session.scalar(select(func.count()).where(BuildJob.requested_by == "alice"))
        assert requested == len(first["jobs"])
    assert _audited(farm.factory, "rebuild", "demo 1.1") == CALLERS


def test_the_rebuild_limit_holds_under_a_race(farm: Farm) -> None:
    """A token that has used half its rebuilds sends a burst: only the other half pass."""
    earlier = CALLERS // 2
    for _ in range(earlier):
        answer = httpx.post(
            f"{farm.url}/api/v1/projects/demo/rebuild", headers=farm.hasty, timeout=30
        )
        assert answer.status_code == 202, answer.text
    answers = at_once(
        farm.url,
        lambda client: client.post("/api/v1/projects/demo/rebuild", headers=farm.hasty),
    )
    assert _statuses(answers) == [202] * (CALLERS - earlier) + [429] * earlier, answers
    assert all("rate limit" in error for error in _refusals(answers, 429))
    with farm.factory() as session:
        asked = session.scalar(
            select(func.count()).where(AuditEvent.actor == "bob", AuditEvent.action == "rebuild")
        )
    assert asked == CALLERS


def test_operator_actions_are_done_once(farm: Farm) -> None:
    """Each operator action, sent eight times at once: one success, seven refusals that
    say why, one audit record."""
    reason = {"reason": "race"}
    cases: list[tuple[str, Callable[[httpx.Client], httpx.Response], int, int, str, str]] = [
        (
            "cancel",
            lambda c: c.post(
                f"/api/v1/jobs/{farm.waiting_job}/cancel", headers=farm.operator, json=reason
            ),
            200,
            409,
            "cancel",
            f"job {farm.waiting_job}",
        ),
        (
            "requeue",
            lambda c: c.post(
                f"/api/v1/jobs/{farm.failed_job}/requeue", headers=farm.operator, json=reason
            ),
            200,
            409,
            "requeue",
            f"job {farm.failed_job}",
        ),
        (
            "remove wheel",
            lambda c: c.delete(f"/api/v1/files/{farm.wheel}", headers=farm.operator, params=reason),
            200,
            409,
            "remove-wheel",
            farm.wheel,
        ),
        (
            "revoke",
            lambda c: c.delete("/api/v1/tokens/doomed", headers=farm.operator),
            200,
            404,
            "token-revoke",
            "doomed",
        ),
        (
            "skip",
            lambda c: c.post(
                "/api/v1/skips", headers=farm.operator, json={"project": "slow", **reason}
            ),
            201,
            409,
            "skip",
            "slow (all releases)",
        ),
        (
            "skip one release",
            lambda c: c.post(
                "/api/v1/skips",
                headers=farm.operator,
                json={"project": "demo", "version": "1.0", **reason},
            ),
            201,
            409,
            "skip",
            "demo 1.0",
        ),
        (
            "unskip",
            lambda c: c.delete("/api/v1/skips/slow", headers=farm.operator),
            200,
            404,
            "unskip",
            "slow (all releases)",
        ),
    ]
    wrong = []
    for what, send, done, refused, action, subject in cases:
        answers = at_once(farm.url, send)
        statuses = _statuses(answers)
        audited = _audited(farm.factory, action, subject)
        if (
            statuses != [done] + [refused] * (CALLERS - 1)
            or len(_refusals(answers, refused)) != CALLERS - 1
            or audited != 1
        ):
            wrong.append(f"{what}: answers {statuses}, {audited} audit records")
    assert not wrong, "\n".join(wrong)
    with farm.factory() as session:
        assert session.scalar(select(func.count()).select_from(SkipRule)) == 1
        wheel = session.scalar(select(OutputFile).where(OutputFile.filename == farm.wheel))
        assert wheel is not None and not wheel.published
        requeued = session.get(BuildJob, farm.failed_job)
        assert requeued is not None and requeued.state == JobState.PENDING

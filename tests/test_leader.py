"""Of several masters on one PostgreSQL database only one polls and reconciles, on real servers.

Each PollLeader gets its own engine, as each master process has its own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from common.config import Settings, load_settings
from common.db import make_engine, make_sessionmaker, transaction, upgrade
from common.messages import make_celery
from common.models import BuildJob
from common.states import JobState
from master.leader import POLL_LOCK_KEY, PollLeader
from master.service import FeedLoop, UpstreamClients
from tests.conftest import _postgres_database
from tests.seed import add_builder, add_release

TAKEOVER_DEADLINE = 30.0


@pytest.fixture
def postgres_url() -> Iterator[str]:
    yield from _postgres_database()


@pytest.fixture
def engines(postgres_url: str) -> Iterator[list[Engine]]:
    """Two masters' engines on one database."""
    made = [make_engine(postgres_url), make_engine(postgres_url)]
    try:
        yield made
    finally:
        for engine in made:
            engine.dispose()


@pytest.fixture
def admin(postgres_url: str) -> Iterator[Engine]:
    engine = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    try:
        yield engine
    finally:
        engine.dispose()


def holder(admin: Engine) -> int | None:
    """The backend pid holding the poll lock, as PostgreSQL reports it."""
    with admin.connect() as connection:
        pid = connection.scalar(
            text(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                " AND classid = :high AND objid = :low AND objsubid = 1"
            ),
            {"high": POLL_LOCK_KEY >> 32, "low": POLL_LOCK_KEY & 0xFFFFFFFF},
        )
    return None if pid is None else int(pid)


def backend_pid(leader: PollLeader) -> int:
    connection = leader._connection
    assert connection is not None
    return int(connection.scalar(text("SELECT pg_backend_pid()")))


def wait_for_leader(leader: PollLeader) -> None:
    """Ask once per round until it leads (a terminated session ends asynchronously)."""
    deadline = time.monotonic() + TAKEOVER_DEADLINE
    while not leader.is_leader():
        if time.monotonic() > deadline:
            pytest.fail(f"no takeover within {TAKEOVER_DEADLINE:.0f} s")
        time.sleep(0.05)


@pytest.mark.postgres
def test_one_of_two_leads(engines: list[Engine], admin: Engine) -> None:
    with PollLeader(engines[0]) as first, PollLeader(engines[1]) as second:
        assert first.is_leader() is True
        assert second.is_leader() is False
        # Stable from round to round.
        for _ in range(3):
            assert first.is_leader() is True
            assert second.is_leader() is False
        assert first.leading and not second.leading
        assert holder(admin) == backend_pid(first)


@pytest.mark.postgres
def test_release_hands_over(engines: list[Engine], admin: Engine) -> None:
    with PollLeader(engines[0]) as first, PollLeader(engines[1]) as second:
        assert first.is_leader() and not second.is_leader()
        first.release()
        assert not first.leading
        assert second.is_leader() is True
        assert first.is_leader() is False
        assert holder(admin) == backend_pid(second)
        # Stopping the master (close) hands over too.
        second.close()
        assert first.is_leader() is True
        assert holder(admin) == backend_pid(first)


@pytest.mark.postgres
def test_dead_connection_loses_leadership(
    engines: list[Engine], admin: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="master.leader")
    with PollLeader(engines[0]) as first, PollLeader(engines[1]) as second:
        assert first.is_leader() and not second.is_leader()
        # The leader's session ends under it (a server restart, a network cut, an operator).
        with admin.connect() as connection:
            assert connection.scalar(
                text("SELECT pg_terminate_backend(:pid)"), {"pid": backend_pid(first)}
            )
        wait_for_leader(second)
        assert holder(admin) == backend_pid(second)
        # The old leader notices at its next round and does not lead...
        assert first.is_leader() is False
        assert first.is_leader() is False
        # ...until the new one stops: then it takes over again, on a fresh connection.
        second.release()
        assert first.is_leader() is True
        assert holder(admin) == backend_pid(first)
    messages = [r.getMessage() for r in caplog.records if r.name == "master.leader"]
    assert messages.count("poll leadership acquired") == 3
    assert "poll leadership lost" in messages
    assert "poll leadership released" in messages


def test_sqlite_always_leads(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'armwheels.db'}")
    try:
        with PollLeader(engine) as first, PollLeader(engine) as second:
            assert first.is_leader() and second.is_leader()
            first.release()
            assert first.is_leader()
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_only_the_leading_master_reconciles(postgres_url: str, tmp_path: Path) -> None:
    """Both masters dispatch every round; only the leader hands back a lost job."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    settings: Settings = load_settings(
        None,
        database={"url": postgres_url},
        # Nothing to poll: the rounds do reconcile and dispatch only.
        upstream={"index_url": "http://127.0.0.1:9/simple/", "projects": []},
        master={"data_dir": data_dir},
    )
    engine_a, engine_b = make_engine(postgres_url), make_engine(postgres_url)
    upgrade(engine_a)
    factory_a, factory_b = make_sessionmaker(engine_a), make_sessionmaker(engine_b)
    celery = make_celery(settings)
    client = UpstreamClients.for_settings(settings)
    leader_a, leader_b = PollLeader(engine_a), PollLeader(engine_b)
    master_a = FeedLoop(settings, factory_a, celery, leader_a)
    master_b = FeedLoop(settings, factory_b, celery, leader_b)
    try:
        assert leader_a.is_leader()
        with transaction(factory_a) as session:
            _, _, [lost] = add_release(session, settings, project="lost")
            _, _, [fresh] = add_release(session, settings, project="fresh")
            add_builder(session, "online-cp311")
            # Building on no builder at all: the reconciler hands it back.
            lost.state = JobState.BUILDING

        master_b.run_round(client)
        assert not leader_b.leading
        assert job_state(factory_b, lost.id) == JobState.BUILDING
        assert job_state(factory_b, fresh.id) == JobState.QUEUED  # the follower dispatched

        master_a.run_round(client)
        assert leader_a.leading
        assert job_state(factory_a, lost.id) == JobState.QUEUED  # handed back, sent again

        # The leader stops: the other master leads from its next round on.
        leader_a.release()
        master_b.run_round(client)
        assert leader_b.leading
    finally:
        leader_a.close()
        leader_b.close()
        client.close()
        celery.close()
        engine_a.dispose()
        engine_b.dispose()


def job_state(factory: sessionmaker[Session], job_id: int) -> JobState:
    with factory() as session:
        job = session.get(BuildJob, job_id)
        assert job is not None
        return job.state

"""A maintainer's rebuild overtakes a backlog of backfill jobs, on real brokers and databases.

Two mechanisms, both exercised here with real delivery order: the database keeps all but
master.queue_depth jobs per arch pending, in priority order, so a rebuild never waits
behind the whole backlog on any broker; and on Redis each message carries a priority that
kombu serves first even among messages already queued. Redis db 14 only, flushed before
and after; the embedded broker is kombu's SQLAlchemy transport on SQLite.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from common.config import Settings, load_settings
from common.db import transaction
from common.messages import REDIS_PRIORITY_STEPS, broker_priority, make_celery, queue_name
from common.models import BuildJob
from common.states import JobState
from master.builds.build_plan import PRIORITY_BACKFILL, PRIORITY_NEW, PRIORITY_REBUILD
from master.builds.rebuild import request_rebuild
from master.builds.scheduler import dispatch_pending, served_targets
from tests.seed import add_builder, add_release
from tests.servers import redis_database, stop_process

ROOT = Path(__file__).resolve().parent.parent
REDIS_DB = 14
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"
BACKLOG = 1000
DEPTH = 50
DELIVERY_DEADLINE = 60.0
STOP_TIMEOUT = 20.0
AARCH64 = queue_name("aarch64", "cp311")


@pytest.fixture
def redis_db() -> Iterator[redis.Redis]:
    with redis_database(REDIS_DB) as client:
        yield client


@pytest.fixture(params=[pytest.param("redis", marks=pytest.mark.redis), "embedded"])
def broker(request: pytest.FixtureRequest, settings: Settings) -> Iterator[Celery]:
    """The master's Celery app on Redis, or on the embedded broker (the settings' default)."""
    if request.param == "redis":
        request.getfixturevalue("redis_db")
        settings.broker.url = REDIS_URL
    else:
        assert settings.broker.url.startswith("sqla+sqlite:///")
        settings.master.data_dir.mkdir(parents=True, exist_ok=True)
    app = make_celery(settings)
    try:
        yield app
    finally:
        app.close()


@pytest.fixture
def redis_app(settings: Settings, redis_db: redis.Redis) -> Iterator[Celery]:
    settings.broker.url = REDIS_URL
    app = make_celery(settings)
    try:
        yield app
    finally:
        app.close()


def add_backlog(
    session: Session, settings: Settings, count: int, priority: int = PRIORITY_BACKFILL
) -> list[int]:
    """count releases of one project, each with one aarch64 job; their ids, oldest first."""
    job_ids: list[int] = []
    for number in range(count):
        _, _, jobs = add_release(session, settings, "backlog", f"1.0.{number}", priority=priority)
        job_ids.extend(job.id for job in jobs)
    return job_ids


def ask_rebuild(factory: sessionmaker[Session], settings: Settings) -> int:
    """A maintainer asks for a rebuild of a release that was built before."""
    with transaction(factory) as session:
        _, _, [built] = add_release(session, settings, project="urgent")
        built.state = JobState.BUILT
    with transaction(factory) as session:
        [job] = request_rebuild(session, settings, "urgent", requested_by="maintainer").created
        assert job.priority == PRIORITY_REBUILD
        return job.id


def states(factory: sessionmaker[Session]) -> dict[JobState, int]:
    with factory() as session:
        rows = session.execute(select(BuildJob.state, func.count()).group_by(BuildJob.state)).all()
    return {state: count for state, count in rows}


def state_of(factory: sessionmaker[Session], job_id: int) -> JobState:
    with factory() as session:
        job = session.get(BuildJob, job_id)
        assert job is not None
        return job.state


def claim(factory: sessionmaker[Session], job_id: int) -> None:
    """What the master does when a builder claims a job it took from the queue."""
    with transaction(factory) as session:
        job = session.get(BuildJob, job_id)
        assert job is not None
        assert job.state in (JobState.PENDING, JobState.QUEUED)
        job.state = JobState.BUILDING


def take(app: Celery, queue: str = AARCH64) -> int | None:
    """The next message a consumer of the queue gets from the broker: its job id."""
    with app.connection_for_read() as connection:
        bound: Any = app.amqp.queues[queue](connection.default_channel)
        message = bound.get(no_ack=True, accept=["json"])
    if message is None:
        return None
    args, _kwargs, _embed = message.decode()
    return int(args[0])


def redis_lists(client: redis.Redis) -> dict[str, int]:
    """The Redis lists behind the aarch64 queue and their lengths."""
    keys = [key if isinstance(key, str) else key.decode() for key in client.keys(AARCH64 + "*")]
    return {key: int(client.llen(key)) for key in keys}


def waiting(app: Celery, queue: str = AARCH64) -> int:
    """Messages in the queue, every priority included, as the broker counts them."""
    with app.connection_for_write() as connection:
        channel: Any = connection.default_channel
        return int(channel.queue_declare(queue=queue).message_count)


def test_priority_wiring(tmp_path: Path, redis_db: redis.Redis) -> None:
    assert (
        broker_priority(PRIORITY_REBUILD),
        broker_priority(PRIORITY_NEW),
        broker_priority(PRIORITY_BACKFILL),
    ) == (0, 4, 8)
    assert broker_priority(-3) == 9
    assert broker_priority(12) == 0

    embedded = make_celery(load_settings(None, master={"data_dir": tmp_path}))
    app = make_celery(load_settings(None, broker={"url": REDIS_URL}, master={"data_dir": tmp_path}))
    try:
        # kombu's SQLAlchemy transport hands unknown options to create_engine(): none go there.
        assert "priority_steps" not in embedded.conf.broker_transport_options
        # The Redis channel took the options: one list per priority, polled 0 first.
        with app.connection_for_write() as connection:
            channel: Any = connection.default_channel
            assert channel.priority_steps == REDIS_PRIORITY_STEPS == list(range(10))
            assert channel.sep == ":"
            assert channel.queue_order_strategy == "priority"
    finally:
        app.close()
        embedded.close()


@pytest.mark.redis
def test_each_priority_has_its_own_redis_list(
    settings: Settings, factory: sessionmaker[Session], redis_app: Celery, redis_db: redis.Redis
) -> None:
    with transaction(factory) as session:
        [backfill] = add_backlog(session, settings, 1)
        _, _, [fresh] = add_release(session, settings, project="fresh")
        new = fresh.id
    rebuild = ask_rebuild(factory, settings)
    assert dispatch_pending(factory, redis_app, queue_depth=DEPTH) == 3
    assert redis_lists(redis_db) == {
        AARCH64: 1,
        f"{AARCH64}:4": 1,
        f"{AARCH64}:8": 1,
    }
    assert [take(redis_app) for _ in range(4)] == [rebuild, new, backfill, None]


@pytest.mark.redis
def test_rebuild_overtakes_backlog_already_in_redis(
    settings: Settings,
    factory: sessionmaker[Session],
    redis_app: Celery,
    redis_db: redis.Redis,
    tmp_path: Path,
) -> None:
    with transaction(factory) as session:
        backlog = add_backlog(session, settings, BACKLOG)
    # A depth large enough for the whole backlog: every backfill message is in Redis first.
    assert dispatch_pending(factory, redis_app, queue_depth=2 * BACKLOG) == BACKLOG
    assert states(factory) == {JobState.QUEUED: BACKLOG}
    rebuild = ask_rebuild(factory, settings)
    assert dispatch_pending(factory, redis_app, queue_depth=2 * BACKLOG) == 1
    assert redis_lists(redis_db) == {AARCH64: 1, f"{AARCH64}:8": BACKLOG}

    # A real builder-side Celery worker, started only now, takes the rebuild first, then the
    # backlog in the order it was sent.
    with run_worker(settings.broker.url, settings.master.data_dir, tmp_path) as received:
        first = received.wait_for_count(3)
    assert first[:3] == [rebuild, backlog[0], backlog[1]]


def test_rebuild_asked_before_a_round_goes_first(
    settings: Settings, factory: sessionmaker[Session], broker: Celery
) -> None:
    with transaction(factory) as session:
        add_backlog(session, settings, BACKLOG)
    rebuild = ask_rebuild(factory, settings)
    assert dispatch_pending(factory, broker, queue_depth=DEPTH) == DEPTH
    assert state_of(factory, rebuild) == JobState.QUEUED
    # On every broker: the database order put it first in line.
    assert take(broker) == rebuild


def test_queue_depth_bounds_what_is_ahead_of_a_rebuild(
    settings: Settings, factory: sessionmaker[Session], broker: Celery
) -> None:
    settings.master.queue_depth = DEPTH
    with transaction(factory) as session:
        backlog = add_backlog(session, settings, BACKLOG)

    def dispatch_round() -> int:
        # As the master's feed loop calls it.
        return dispatch_pending(factory, broker, queue_depth=settings.master.queue_depth)

    assert dispatch_round() == DEPTH
    assert states(factory) == {JobState.QUEUED: DEPTH, JobState.PENDING: BACKLOG - DEPTH}
    assert waiting(broker) == DEPTH
    # The oldest backfill jobs went; the queue is full, so later rounds send nothing.
    with factory() as session:
        queued = session.scalars(
            select(BuildJob.id).where(BuildJob.state == JobState.QUEUED).order_by(BuildJob.id)
        ).all()
    assert list(queued) == backlog[:DEPTH]
    assert dispatch_round() == 0

    rebuild = ask_rebuild(factory, settings)
    assert dispatch_round() == 0
    assert state_of(factory, rebuild) == JobState.PENDING

    # A builder takes a message and claims its job: one place frees up, and the rebuild gets
    # it ahead of the 950 backfill jobs still pending.
    first = take(broker)
    assert first == backlog[0]
    claim(factory, first)
    assert dispatch_round() == 1
    assert state_of(factory, rebuild) == JobState.QUEUED
    assert states(factory) == {
        JobState.BUILDING: 1,
        JobState.QUEUED: DEPTH,
        JobState.PENDING: BACKLOG - DEPTH,
        JobState.BUILT: 1,
    }

    if str(broker.conf.broker_url).startswith("redis://"):
        # Redis serves priority 0 first: the rebuild overtakes the queued backfill too.
        assert take(broker) == rebuild
        assert take(broker) == backlog[1]
    else:
        # The embedded broker is FIFO: the rebuild waits behind the depth, not the backlog.
        rest = [take(broker) for _ in range(DEPTH + 1)]
        assert rest == [*backlog[1:DEPTH], rebuild, None]


def test_dispatch_on_embedded_broker(settings: Settings, factory: sessionmaker[Session]) -> None:
    """The zero-service setup: no priorities in the broker, database order only."""
    settings.master.data_dir.mkdir(parents=True, exist_ok=True)
    app = make_celery(settings)
    try:
        with transaction(factory) as session:
            backfill = add_backlog(session, settings, 3)
            _, _, [fresh] = add_release(session, settings, project="fresh")
            new = fresh.id
        rebuild = ask_rebuild(factory, settings)
        assert dispatch_pending(factory, app, queue_depth=DEPTH, batch_size=2) == 5
        assert states(factory) == {JobState.QUEUED: 5, JobState.BUILT: 1}
        assert dispatch_pending(factory, app, queue_depth=DEPTH) == 0
        assert [take(app) for _ in range(6)] == [rebuild, new, *backfill, None]
    finally:
        app.close()


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_locked_batch_is_skipped(
    settings: Settings, factory: sessionmaker[Session], redis_app: Celery, redis_db: redis.Redis
) -> None:
    """Two masters never send the same job: rows another dispatcher holds are skipped."""
    # PostgreSQL only: SQLite has no row locks, and serves one master.
    with transaction(factory) as session:
        backlog = add_backlog(session, settings, 30)
    # Another master's dispatch transaction, between its SELECT ... FOR UPDATE and commit.
    with factory() as other, other.begin():
        held = other.scalars(
            select(BuildJob.id)
            .where(BuildJob.state == JobState.PENDING)
            .order_by(BuildJob.priority.desc(), BuildJob.id)
            .limit(10)
            .with_for_update(skip_locked=True)
        ).all()
        assert list(held) == backlog[:10]
        assert dispatch_pending(factory, redis_app, batch_size=7) == 20
    assert sorted(filter(None, (take(redis_app) for _ in range(21)))) == backlog[10:]
    assert dispatch_pending(factory, redis_app) == 10
    assert states(factory) == {JobState.QUEUED: 30}


class Received:
    """Job ids a worker subprocess (tests/broker_worker.py) has received, in order."""

    def __init__(self, process: subprocess.Popen[bytes], path: Path, log: Path) -> None:
        self.process, self.path, self.log = process, path, log

    def ids(self) -> list[int]:
        if not self.path.exists():
            return []
        return [int(line) for line in self.path.read_text().split()]

    def wait_for_count(self, count: int) -> list[int]:
        deadline = time.monotonic() + DELIVERY_DEADLINE
        while time.monotonic() < deadline:
            received = self.ids()
            if len(received) >= count:
                return received
            if self.process.poll() is not None:
                pytest.fail(f"worker exited with {self.process.returncode}\n{self.tail()}")
            time.sleep(0.05)
        pytest.fail(f"{count} messages not delivered (got {self.ids()})\n{self.tail()}")

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-60:])


@contextmanager
def run_worker(broker_url: str, data_dir: Path, tmp_path: Path) -> Iterator[Received]:
    """A real Celery worker consuming build.aarch64, stopped on exit whatever happened."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARMWHEELS_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    received, log = tmp_path / "received.txt", tmp_path / "worker.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.broker_worker",
                broker_url,
                str(data_dir),
                str(received),
            ],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        yield Received(process, received, log)
    finally:
        stop_process(process, STOP_TIMEOUT)


def test_jobs_go_only_to_the_interpreters_builders_have(
    settings: Settings, factory: sessionmaker[Session], redis_app: Celery, redis_db: redis.Redis
) -> None:
    """Each (arch, python tag) has its own queue; a tag no online builder has waits pending."""
    settings.targets["aarch64"].python_tags = ["cp311", "cp312"]
    app = make_celery(settings)
    try:
        with transaction(factory) as session:
            _, _, jobs = add_release(session, settings, project="two-pythons")
            assert sorted(j.python_tag for j in jobs) == ["cp311", "cp312"]
            add_builder(session, "has-311", python_tags=("cp311",))
            add_builder(
                session,
                "silent-312",
                python_tags=("cp312",),
                last_seen=datetime.now(UTC) - timedelta(hours=1),
            )
        with factory() as session:
            served = served_targets(session, settings.master.builder_timeout)
        assert served == {("aarch64", "cp311")}
        assert dispatch_pending(factory, app, targets=served) == 1
        with factory() as session:
            states = dict(session.execute(select(BuildJob.python_tag, BuildJob.state)).all())
        assert states == {"cp311": JobState.QUEUED, "cp312": JobState.PENDING}
        assert redis_db.llen(queue_name("aarch64", "cp311") + f":{broker_priority(5)}") == 1
        assert redis_db.keys(queue_name("aarch64", "cp312") + "*") == []
    finally:
        app.close()

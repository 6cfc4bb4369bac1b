"""The Celery wiring master and builders share, on real brokers and real worker processes.

Both brokers the farm supports are exercised: the embedded one (kombu's SQLAlchemy transport on
a SQLite file in the data directory) and Redis (db 13 only, flushed before and after).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from common.config import Settings, load_settings
from common.db import transaction
from common.messages import (
    BUILD_TASK,
    broker_priority,
    configured_queues,
    declare_queues,
    make_celery,
    queue_name,
)
from common.models import BuildJob
from common.states import JobState
from master.builds.build_plan import PRIORITY_NEW
from master.builds.scheduler import dispatch_pending
from tests.seed import add_release
from tests.servers import redis_database

ROOT = Path(__file__).resolve().parent.parent
REDIS_DB = 13
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"
DELIVERY_DEADLINE = 60.0
STOP_TIMEOUT = 20.0


@pytest.fixture
def redis_db() -> Iterator[redis.Redis]:
    with redis_database(REDIS_DB) as client:
        yield client


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def broker_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    if request.param == "sqlite":
        # No broker URL configured: the embedded broker in the data directory.
        settings = load_settings(None, master={"data_dir": data_dir})
        assert settings.broker.url == f"sqla+sqlite:///{data_dir / 'broker.db'}"
        return settings
    request.getfixturevalue("redis_db")
    return load_settings(None, broker={"url": REDIS_URL}, master={"data_dir": data_dir})


@pytest.fixture
def sender(broker_settings: Settings) -> Iterator[Celery]:
    """The master's side of the wiring."""
    app = make_celery(broker_settings)
    try:
        yield app
    finally:
        app.close()


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    received: Path
    log: Path

    def job_ids(self) -> list[int]:
        if not self.received.exists():
            return []
        return [int(line) for line in self.received.read_text().split()]

    def wait_for(self, job_id: int) -> list[int]:
        """Poll until job_id has been received; return every job id received so far."""
        deadline = time.monotonic() + DELIVERY_DEADLINE
        while time.monotonic() < deadline:
            received = self.job_ids()
            if job_id in received:
                return received
            if self.process.poll() is not None:
                pytest.fail(
                    f"worker exited with {self.process.returncode} before job {job_id} arrived"
                    f"\n{self.log_tail()}"
                )
            time.sleep(0.1)
        pytest.fail(
            f"job {job_id} not delivered within {DELIVERY_DEADLINE:.0f} s "
            f"(received {self.job_ids()})\n{self.log_tail()}"
        )

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-60:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT)


@pytest.fixture
def worker(broker_settings: Settings, tmp_path: Path) -> Iterator[Worker]:
    """A real Celery worker in its own process, consuming build.aarch64 only."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("ARMWHEELS_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    received = tmp_path / "received.txt"
    log = tmp_path / "worker.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.broker_worker",
                broker_settings.broker.url,
                str(broker_settings.master.data_dir),
                str(received),
            ],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    running = Worker(process, received, log)
    try:
        yield running
    finally:
        running.stop()


def _waiting(app: Celery, queue: str) -> int:
    """Messages in a queue that no consumer has taken yet, as the broker reports them."""
    with app.connection_for_write() as connection:
        channel: Any = connection.default_channel  # a kombu virtual channel
        return int(channel.queue_declare(queue=queue).message_count)


def test_hour_long_build_configuration(broker_settings: Settings, sender: Celery) -> None:
    conf = sender.conf
    # One message at a time, acknowledged only when the build is over, and handed back
    # to the queue if the worker process dies mid-build.
    assert conf.task_acks_late is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_reject_on_worker_lost is True
    assert conf.task_create_missing_queues is False
    assert sorted(queue.name for queue in conf.task_queues) == [
        "build.aarch64-bullseye.cp39",
        "build.aarch64-trixie.cp313",
        "build.aarch64.cp311",
        "build.armv7l-bookworm.cp311",
        "build.armv7l-trixie.cp313",
        "build.armv7l.cp39",
    ]
    # The transport must accept the app's broker_transport_options: kombu's SQLAlchemy
    # transport hands every option it does not know to sqlalchemy.create_engine().
    with sender.connection_for_write() as connection:
        channel: Any = connection.default_channel
        channel.queue_declare(queue=queue_name("aarch64", "cp311"))
        if broker_settings.broker.url.startswith("redis://"):
            # Redis redelivers an unacknowledged message after the visibility timeout, so it
            # must outlast the longest build, hard time limit included, or a build still
            # running would be handed to a second builder.
            visibility = channel.visibility_timeout
            assert visibility == conf.broker_transport_options["visibility_timeout"]
            assert visibility > broker_settings.builder.build_timeout
            assert visibility > conf.task_time_limit


def test_build_messages_reach_only_their_arch(sender: Celery, worker: Worker) -> None:
    aarch64, armv7l = queue_name("aarch64", "cp311"), queue_name("armv7l", "cp39")
    # The first delivery proves the worker is up and consuming before the armv7l message goes.
    sender.send_task(BUILD_TASK, args=[101], queue=aarch64)
    assert worker.wait_for(101) == [101]
    sender.send_task(BUILD_TASK, args=[202], queue=armv7l)
    sender.send_task(BUILD_TASK, args=[303], queue=aarch64)
    sender.send_task(BUILD_TASK, args=[304], queue=aarch64)
    # Messages sent after the armv7l one arrive, in order; the armv7l one never does and is
    # still waiting in its own queue for an armv7l builder.
    received = worker.wait_for(304)
    assert 202 not in received
    assert received == [101, 303, 304]
    assert _waiting(sender, armv7l) == 1
    assert _waiting(sender, aarch64) == 0


@pytest.mark.redis
def test_dispatch_pending_sends_each_job_once(
    settings: Settings, factory: sessionmaker[Session], redis_db: redis.Redis
) -> None:
    settings.broker.url = REDIS_URL
    with transaction(factory) as session:
        _, _, [job] = add_release(session, settings)
        job_id = job.id
    app = make_celery(settings)
    try:
        assert dispatch_pending(factory, app) == 1
        with factory() as session:
            queued = session.get(BuildJob, job_id)
            assert queued is not None
            assert queued.state == JobState.QUEUED
            assert queued.queued_at is not None

        # kombu keeps each Redis queue as one list per priority, "<queue>:<priority>" (the
        # bare name for 0, the most urgent); a new job's database priority 5 is Redis's 4.
        aarch64 = queue_name("aarch64", "cp311") + f":{broker_priority(PRIORITY_NEW)}"
        assert redis_db.llen(aarch64) == 1
        assert redis_db.keys(queue_name("armv7l", "cp39") + "*") == []
        raw = redis_db.lindex(aarch64, 0)
        assert isinstance(raw, bytes)
        message = json.loads(raw)
        assert message["headers"]["task"] == BUILD_TASK
        assert message["properties"]["delivery_info"]["routing_key"] == queue_name(
            "aarch64", "cp311"
        )
        assert message["properties"]["body_encoding"] == "base64"
        args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
        assert (args, kwargs) == ([job_id], {})

        # Nothing is pending any more, so a second pass sends nothing.
        assert dispatch_pending(factory, app) == 0
        assert redis_db.llen(aarch64) == 1
    finally:
        app.close()


def test_queues_declared_by_master_and_builder_at_once(broker_settings: Settings) -> None:
    """kombu's SQLAlchemy transport creates a queue with a racy get-or-create: a master
    and a builder starting together must both come through."""
    names = configured_queues(broker_settings)
    apps = [make_celery(broker_settings) for _ in range(4)]
    errors: list[BaseException] = []

    def declare(app: Celery) -> None:
        try:
            declare_queues(app, names)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=declare, args=(app,)) for app in apps]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for app in apps:
        app.close()
    assert errors == []

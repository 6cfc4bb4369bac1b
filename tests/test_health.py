"""GET /api/v1/health against real databases and brokers: reachable ones, closed ports
and a server that accepts connections but never answers."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from common.config import Settings, load_settings
from common.db import make_engine, make_sessionmaker
from common.version import VERSION
from master.web.app import create_app
from master.web.health import CHECK_TIMEOUT
from tests.servers import free_port

REDIS_URL = "redis://127.0.0.1:6379/0"
SECRET = "s3cret-Passw0rd"


def answer(settings: Settings, factory: sessionmaker[Session]) -> tuple[int, dict[str, Any]]:
    with TestClient(create_app(settings, factory)) as client:
        response = client.get("/api/v1/health")
    assert SECRET not in response.text
    return response.status_code, response.json()


def with_broker(settings: Settings, broker: str) -> Settings:
    return load_settings(
        None,
        database={"url": settings.database.url},
        broker={"url": broker},
        master={"data_dir": settings.master.data_dir},
    )


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port whose connections are accepted (by the kernel's backlog) and then
    never answered: a server that hangs."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield int(listener.getsockname()[1])


@pytest.mark.redis
def test_healthy_with_redis(settings: Settings, factory: sessionmaker[Session]) -> None:
    status, body = answer(with_broker(settings, REDIS_URL), factory)
    assert status == 200
    assert body == {"status": "ok", "database": "ok", "broker": "ok", "version": VERSION}


def test_healthy_with_the_embedded_broker(
    settings: Settings, factory: sessionmaker[Session]
) -> None:
    assert settings.broker.url.startswith("sqla+sqlite:///")
    status, body = answer(settings, factory)
    assert (status, body["status"], body["broker"]) == (200, "ok", "ok")


@pytest.mark.redis
def test_broker_on_a_closed_port(settings: Settings, factory: sessionmaker[Session]) -> None:
    broker = f"redis://:{SECRET}@127.0.0.1:{free_port()}/0"
    status, body = answer(with_broker(settings, broker), factory)
    assert status == 503
    assert body["status"] == "down"
    assert (body["database"], body["broker"]) == ("ok", "down")
    assert set(body["errors"]) == {"broker"}
    assert body["version"] == VERSION


@pytest.mark.postgres
@pytest.mark.redis
def test_database_on_a_closed_port(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://armwheels:{SECRET}@127.0.0.1:{free_port()}/armwheels"
    settings = load_settings(
        None,
        database={"url": url},
        broker={"url": REDIS_URL},
        master={"data_dir": tmp_path / "data"},
    )
    engine = make_engine(url)
    try:
        status, body = answer(settings, make_sessionmaker(engine))
    finally:
        engine.dispose()
    assert status == 503
    assert (body["status"], body["database"], body["broker"]) == ("down", "down", "ok")
    assert set(body["errors"]) == {"database"}


@pytest.mark.postgres
def test_both_hanging_answer_in_time(tmp_path: Path, silent_port: int) -> None:
    """A database and a broker that accept connections and never answer: the answer
    still comes within the checks' timeout (both run at once), naming both."""
    url = f"postgresql+psycopg://armwheels:{SECRET}@127.0.0.1:{silent_port}/armwheels"
    broker = f"redis://:{SECRET}@127.0.0.1:{silent_port}/0"
    settings = load_settings(
        None, database={"url": url}, broker={"url": broker}, master={"data_dir": tmp_path / "data"}
    )
    engine = make_engine(url)
    started = time.monotonic()
    try:
        status, body = answer(settings, make_sessionmaker(engine))
    finally:
        engine.dispose()
    took = time.monotonic() - started
    assert status == 503
    assert (body["database"], body["broker"]) == ("down", "down")
    assert set(body["errors"]) == {"database", "broker"}
    assert took < 2 * CHECK_TIMEOUT + 2, f"the health answer took {took:.1f} s"


def test_public_and_not_cached(settings: Settings, factory: sessionmaker[Session]) -> None:
    """No token is needed (a container's health check has none), and no proxy may keep
    an answer that is only true when given."""
    with TestClient(create_app(settings, factory)) as client:
        response = client.get("/api/v1/health")
        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-store"
        assert client.post("/api/v1/health").status_code == 405

"""Shared fixtures: real SQLite and PostgreSQL databases migrated with Alembic."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from common.config import Settings, load_settings
from common.db import make_engine, make_sessionmaker, upgrade
from tests.sdists import abi3_sdist, pypi_sdist
from tests.servers import pypiserver
from tests.wheels import make_wheel as make_wheel  # upload tests import it from here

POSTGRES_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def _postgres_database() -> Iterator[str]:
    name = f"armwheels_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_ADMIN, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # pragma: no cover - depends on the machine
        admin.dispose()
        pytest.fail(f"PostgreSQL is not reachable on 127.0.0.1:5432: {exc}")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'armwheels.db'}"
    else:
        yield from _postgres_database()


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return load_settings(
        None,
        database={"url": database_url},
        master={"data_dir": tmp_path / "data"},
        builder={"work_dir": tmp_path / "work"},
    )


@pytest.fixture
def factory(settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(settings.database.url)
    upgrade(engine)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture
def msgpack_upstream(tmp_path: Path) -> Iterator[str]:
    """A real pypiserver holding msgpack 1.1.0's real sdist (downloaded once, cached)."""
    packages = tmp_path / "upstream"
    packages.mkdir()
    shutil.copy(pypi_sdist("msgpack", "1.1.0"), packages)
    with pypiserver(packages) as index_url:
        yield index_url


@pytest.fixture
def abidemo_upstream(tmp_path: Path) -> Iterator[str]:
    """A real pypiserver holding abidemo's sdist (a small stable-ABI extension, built in
    seconds where msgpack takes a minute under QEMU; tests/sdists.py)."""
    packages = tmp_path / "upstream"
    abi3_sdist(tmp_path / "abidemo-src", packages)
    with pypiserver(packages) as index_url:
        yield index_url

"""Shared fixtures: real SQLite and PostgreSQL databases migrated with Alembic."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from common.config import Settings, load_settings
from common.db import make_engine, make_sessionmaker, upgrade
from tests.sdists import abi3_sdist, add_build_requirements, pypi_sdist
from tests.servers import pypiserver
from tests.wheels import make_wheel as make_wheel  # upload tests import it from here

POSTGRES_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def _postgres_database(template: str | None = None) -> Generator[str]:
    """A database of its own for a test, empty or a copy of `template` (PostgreSQL copies
    a database whole, faster than migrating a new one), dropped afterwards."""
    name = f"armwheels_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_ADMIN, isolation_level="AUTOCOMMIT")
    copy = f' TEMPLATE "{template}"' if template else ""
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"{copy}'))
    except Exception as exc:  # pragma: no cover - depends on the machine
        admin.dispose()
        pytest.fail(f"PostgreSQL is not reachable on 127.0.0.1:5432: {exc}")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


class MigratedTemplates:
    """One database per kind migrated to head with Alembic, once per test session (so
    always by this checkout's migrations): a test that uses `factory` starts from a copy
    of it instead of migrating a database of its own."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._sqlite: Path | None = None
        self._postgres: Generator[str] | None = None
        self._postgres_name: str | None = None

    def sqlite(self) -> Path:
        if self._sqlite is None:
            path = self.folder / "template.db"
            engine = make_engine(f"sqlite:///{path}")
            upgrade(engine)
            engine.dispose()
            self._sqlite = path
        return self._sqlite

    def postgres(self) -> str:
        if self._postgres_name is None:
            database = self._postgres = _postgres_database()
            url = next(database)
            engine = make_engine(url)
            upgrade(engine)
            engine.dispose()  # a template must have no connections to be copied
            self._postgres_name = url.rsplit("/", 1)[1]
        return self._postgres_name

    def close(self) -> None:
        if self._postgres is not None:
            self._postgres.close()


@pytest.fixture(scope="session")
def migrated_templates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MigratedTemplates]:
    templates = MigratedTemplates(tmp_path_factory.mktemp("templates"))
    yield templates
    templates.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, migrated_templates: MigratedTemplates
) -> Iterator[str]:
    """The test's own database: empty, or already at head where the test asks for
    `factory` (which would migrate it first thing)."""
    migrated = "factory" in request.fixturenames
    if request.param == "sqlite":
        path = tmp_path / "armwheels.db"
        if migrated:
            shutil.copyfile(migrated_templates.sqlite(), path)
        yield f"sqlite:///{path}"
    else:
        yield from _postgres_database(migrated_templates.postgres() if migrated else None)


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
    # At head already where the database is database_url's; a test's own settings
    # fixture may point elsewhere.
    upgrade(engine)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture
def msgpack_upstream(tmp_path: Path) -> Iterator[str]:
    """A real pypiserver holding msgpack 1.1.0's real sdist (downloaded once, cached)."""
    packages = tmp_path / "upstream"
    add_build_requirements(packages)
    shutil.copy(pypi_sdist("msgpack", "1.1.0"), packages)
    with pypiserver(packages) as index_url:
        yield index_url


@pytest.fixture
def abidemo_upstream(tmp_path: Path) -> Iterator[str]:
    """A real pypiserver holding abidemo's sdist (a small stable-ABI extension, built in
    seconds where msgpack takes a minute under QEMU; tests/sdists.py)."""
    packages = tmp_path / "upstream"
    add_build_requirements(packages)
    abi3_sdist(tmp_path / "abidemo-src", packages)
    with pypiserver(packages) as index_url:
        yield index_url

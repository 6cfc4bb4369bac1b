"""Engines, sessions and schema migrations, the same for SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import ColumnElement, Engine, create_engine, event, inspect, update
from sqlalchemy.engine import make_url
from sqlalchemy.orm import InstrumentedAttribute, Session, sessionmaker

from common.index_journal import track_index_changes

MIGRATIONS = Path(__file__).parent / "migrations"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the web server read while the poller writes; foreign keys are off by default.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_engine(url: str, echo: bool = False) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database:
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, echo=echo, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        url = str(parsed.set(drivername="postgresql+psycopg"))
    return create_engine(url, echo=echo, pool_pre_ping=True, pool_size=10, max_overflow=20)


@contextmanager
def open_engine(url: str, echo: bool = False) -> Iterator[Engine]:
    """An engine for one command's work, its connections closed on the way out whatever
    happens (a short-lived process would otherwise leave them to the garbage collector)."""
    engine = make_engine(url, echo)
    try:
        yield engine
    finally:
        engine.dispose()


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    factory = sessionmaker(engine, expire_on_commit=False)
    track_index_changes(factory)
    return factory


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: committed on success, rolled back on any error."""
    with factory() as session, session.begin():
        yield session


def _alembic_config(engine: Engine) -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    command.upgrade(_alembic_config(engine), revision)


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision(engine: Engine) -> str | None:
    return ScriptDirectory.from_config(_alembic_config(engine)).get_current_head()


def is_up_to_date(engine: Engine) -> bool:
    return current_revision(engine) == head_revision(engine)


def lock_rows(
    session: Session, column: InstrumentedAttribute[Any], *where: ColumnElement[bool]
) -> None:
    """Lock the rows `where` selects of `column`'s table until the transaction ends, so
    that a concurrent transaction doing the same waits and then reads what this one left.

    A no-op UPDATE (`column = column`) does it on both databases: it row-locks on
    PostgreSQL, and on SQLite, where FOR UPDATE means nothing, it takes the one write
    lock before anything is read (call it before any other write in the transaction).
    The session's copies of that table's rows are expired, to be read again."""
    session.execute(
        update(column.class_)
        .where(*where)
        .values({column: column})
        .execution_options(synchronize_session=False)
    )
    table = column.property.parent.local_table
    for stored in list(session.identity_map.values()):
        if inspect(stored).mapper.local_table is table:
            session.expire(stored)

"""Which master does the upstream work: one at a time, chosen by PostgreSQL.

Several masters may share one PostgreSQL database, for HTTP capacity or to survive the loss
of one. All of them serve HTTP and dispatch (dispatch locks its batches with SKIP LOCKED),
but polling upstream, following the change feed and reconciling are done by one: two
masters doing them at once would fetch everything twice and race on the same rows.

The leader holds a session-level advisory lock on a connection of its own, kept open while
it leads. PostgreSQL drops the lock when that session ends, so a master that stops, crashes
or loses its connection hands over without any lease to expire; the others try the lock
every round and one of them takes over at its next round. Keepalives on that connection let
both ends notice a peer that vanished without closing the connection. The lock needs a
direct (or session-pooled) connection: a transaction-pooling proxy would share it.

On SQLite leadership is always granted: SQLite is the embedded, one-machine setup (one
master, `armwheels up`), it has no locks that outlive a transaction, and its single writer
lock already serialises what two processes on one file could do.
"""

from __future__ import annotations

import logging
import threading
from contextlib import suppress
from types import TracebackType

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

log = logging.getLogger(__name__)

# Advisory lock keys are per database; this one spells "armwpoll".
POLL_LOCK_KEY = 0x61726D77706F6C6C

# libpq keepalives (client side) and the server's (via options): about a minute to notice a
# peer that disappeared without closing the TCP connection.
_KEEPALIVES: dict[str, object] = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "options": "-c tcp_keepalives_idle=30 -c tcp_keepalives_interval=10 -c tcp_keepalives_count=3",
}


class PollLeader:
    """Asked once per round: may this master poll and reconcile now?"""

    def __init__(self, engine: Engine, key: int = POLL_LOCK_KEY) -> None:
        self.key = key
        self.url = engine.url.render_as_string(hide_password=True)
        self._always = engine.dialect.name != "postgresql"
        self._engine: Engine | None = None
        if not self._always:
            # Its own engine without a pool: closing the connection really ends the session,
            # which is what releases the lock (a pooled connection would keep it held).
            self._engine = create_engine(
                engine.url,
                poolclass=NullPool,
                isolation_level="AUTOCOMMIT",
                connect_args=_KEEPALIVES,
            )
        self._connection: Connection | None = None
        self._leading = False
        self._mutex = threading.Lock()

    @property
    def leading(self) -> bool:
        """The answer of the last is_leader() call, without asking the database."""
        return self._leading

    def is_leader(self) -> bool:
        """Lead if possible; a lost connection loses leadership until a later round."""
        with self._mutex:
            if self._always:
                if not self._leading:
                    self._leading = True
                    log.info("poll leadership granted (SQLite: one master)", extra=self._where())
                return True
            if self._leading:
                if self._still_connected():
                    return True
                self._drop("connection to the database lost")
                return False
            return self._try_acquire()

    def release(self) -> None:
        """Give leadership up so that another master takes over at its next round."""
        with self._mutex:
            if self._always:
                self._leading = False
                return
            if self._connection is None:
                return
            was_leading = self._leading
            try:
                if was_leading:
                    self._connection.execute(
                        text("SELECT pg_advisory_unlock(:key)"), {"key": self.key}
                    )
            except SQLAlchemyError:
                pass  # closing the session below releases the lock anyway
            finally:
                self._close()
            if was_leading:
                log.info("poll leadership released", extra=self._where())

    def close(self) -> None:
        self.release()
        if self._engine is not None:
            self._engine.dispose()

    def __enter__(self) -> PollLeader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _try_acquire(self) -> bool:
        assert self._engine is not None
        try:
            if self._connection is None:
                # Kept open between rounds while following too: one connection, no churn.
                self._connection = self._engine.connect()
            got = self._connection.scalar(
                text("SELECT pg_try_advisory_lock(:key)"), {"key": self.key}
            )
        except SQLAlchemyError as exc:
            log.warning(
                "poll leadership unavailable: %s", exc.__class__.__name__, extra=self._where()
            )
            self._close()
            return False
        if got:
            self._leading = True
            log.info("poll leadership acquired", extra=self._where())
        return bool(got)

    def _still_connected(self) -> bool:
        assert self._connection is not None
        try:
            self._connection.execute(text("SELECT 1"))
        except SQLAlchemyError:
            return False
        return True

    def _drop(self, why: str) -> None:
        self._close()
        log.warning("poll leadership lost", extra={**self._where(), "why": why})

    def _close(self) -> None:
        self._leading = False
        connection, self._connection = self._connection, None
        if connection is not None:
            # A failure means the connection is already gone, and the lock with it.
            with suppress(SQLAlchemyError):
                connection.close()

    def _where(self) -> dict[str, object]:
        return {"lock_key": self.key, "database": self.url}

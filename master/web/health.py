"""GET /api/v1/health: whether this master can reach its database and its broker, for
load balancers, container health checks and people.

Each check opens a connection of its own with a short timeout (never the pool's, whose
connections may be busy or stale) and is abandoned when it takes longer than
CHECK_TIMEOUT, so the answer never hangs. The answer names what is down and why in a
word (the error's kind, never a URL, a password or a server's message); the full error
is logged.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from kombu import Connection
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import NullPool

from common.version import VERSION
from master.web.context import MasterContext

log = logging.getLogger(__name__)

# Seconds each check may take; both run at once, so an answer takes at most about this.
CHECK_TIMEOUT = 3
# libpq counts its connect timeout in whole seconds, 2 at least.
_PG_CONNECT_TIMEOUT = max(2, CHECK_TIMEOUT)

Status = Literal["ok", "down"]


def health_engine(url: URL) -> Engine:
    """An engine that opens one short-lived connection per check, giving up quickly."""
    backend = url.get_backend_name()
    connect_args: dict[str, Any] = {}
    if backend == "postgresql":
        connect_args["connect_timeout"] = _PG_CONNECT_TIMEOUT
    elif backend == "sqlite":
        connect_args["timeout"] = CHECK_TIMEOUT
    return create_engine(url, poolclass=NullPool, connect_args=connect_args)


def check_database(engine: Engine) -> None:
    """Raises unless the database answers a query."""
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))


def check_broker(url: str) -> None:
    """Raises unless the broker takes a connection (Redis answers a PING as kombu opens
    its channel; a SQLAlchemy broker's database is connected to)."""
    options = {"socket_timeout": CHECK_TIMEOUT, "socket_connect_timeout": CHECK_TIMEOUT}
    with Connection(url, connect_timeout=CHECK_TIMEOUT, transport_options=options) as connection:
        connection.ensure_connection(max_retries=1, timeout=CHECK_TIMEOUT)
        connection.default_channel  # noqa: B018 - opening the channel is the check


async def run_check(name: str, check: Callable[[], None]) -> tuple[Status, str | None]:
    """("ok", None), or ("down", the error's kind) when the check raised or overran."""
    try:
        await asyncio.wait_for(asyncio.to_thread(check), CHECK_TIMEOUT + 0.5)
    except TimeoutError:
        log.warning("health check timed out", extra={"check": name, "timeout": CHECK_TIMEOUT})
        return "down", "timeout"
    except Exception as exc:  # any failure of the check means the part is down
        log.warning("health check failed", extra={"check": name, "error": repr(exc)[:500]})
        return "down", type(exc).__name__
    return "ok", None


def database_url(ctx: MasterContext) -> URL:
    """The URL of the engine the master's sessions use (its driver chosen as
    common/db.py chose it), else the configured one."""
    bind = ctx.factory.kw.get("bind")
    return bind.url if isinstance(bind, Engine) else make_url(ctx.settings.database.url)


def router(ctx: MasterContext) -> APIRouter:
    app = APIRouter()
    url = database_url(ctx)
    broker_url = ctx.settings.broker.url
    # Made by the first check, which reports its errors (a missing driver, say).
    engine = functools.cache(lambda: health_engine(url))

    def reach_database() -> None:
        check_database(engine())

    @app.get(
        "/api/v1/health",
        responses={503: {"description": "the database or the broker is unreachable"}},
    )
    async def health() -> JSONResponse:
        """200 when the database and the broker are reachable, else 503 naming the
        parts that are down; public, like the index."""
        (database, db_error), (broker, broker_error) = await asyncio.gather(
            run_check("database", reach_database),
            run_check("broker", lambda: check_broker(broker_url)),
        )
        errors = {
            name: error
            for name, error in (("database", db_error), ("broker", broker_error))
            if error
        }
        body: dict[str, Any] = {
            "status": "ok" if not errors else "down",
            "database": database,
            "broker": broker,
            "version": VERSION,
        }
        if errors:
            body["errors"] = errors
        return JSONResponse(
            body, status_code=200 if not errors else 503, headers={"Cache-Control": "no-store"}
        )

    return app

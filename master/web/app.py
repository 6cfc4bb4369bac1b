"""The master's HTTP application, put together from its routers: the builder API
(builder_api.py), jobs, logs and rebuilds (jobs_api.py), the Simple index and files
(index_api.py), metrics (metrics.py), the device doctor (doctor_page.py), the health
check (health.py), the operator API and the dashboard."""

from __future__ import annotations

import logging

from fastapi import (
    FastAPI,
    Request,
)
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.staticfiles import StaticFiles

from common.config import Settings
from common.version import VERSION
from master.web import builder_api, doctor_page, health, index_api, jobs_api, metrics
from master.web.auth_throttle import AuthThrottle
from master.web.context import MasterContext
from master.web.dashboard import STATIC_DIR
from master.web.dashboard import router as dashboard_router
from master.web.disk_full import disk_full_answer, is_disk_full
from master.web.operator_api import router as operator_router
from master.web.page_cache import PageCache
from master.web.request_guard import RequestGuard

log = logging.getLogger(__name__)


def create_app(settings: Settings, factory: sessionmaker[Session]) -> FastAPI:
    """The master's HTTP application: each concern is a router of its own module, all
    sharing one MasterContext; errors are answered as JSON (`{"error": ...}`)."""
    app = FastAPI(title="armwheels master", version=VERSION)
    ctx = MasterContext.create(settings, factory)
    limits = settings.master
    app.state.factory = factory
    app.state.settings = settings  # the dashboard's pages read it
    app.state.page_cache = PageCache()
    app.include_router(operator_router)
    app.include_router(dashboard_router)
    app.include_router(builder_api.router(ctx))
    app.include_router(jobs_api.router(ctx))
    app.include_router(index_api.router(ctx))
    app.include_router(metrics.router(ctx))
    app.include_router(doctor_page.router(ctx))
    app.include_router(health.router(ctx))
    app.add_middleware(
        RequestGuard, throttle=AuthThrottle(limits.auth_failure_limit, limits.auth_failure_window)
    )
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"error": str(exc.detail)},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse({"error": f"{where}: {first.get('msg')}"}, status_code=422)

    async def disk_full(request: Request, exc: Exception) -> JSONResponse:
        """503 for a write refused by a full disk (or database); any other error is the
        server's own (500)."""
        if not is_disk_full(exc):
            raise exc
        log.error(
            "request refused: the disk is full",
            extra={"route": request.url.path, "error": str(exc)[:200]},
        )
        return disk_full_answer(limits.disk_full_retry_after)

    app.add_exception_handler(OSError, disk_full)
    app.add_exception_handler(DBAPIError, disk_full)

    return app

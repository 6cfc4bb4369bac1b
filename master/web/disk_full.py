"""A full disk under the master: the write is refused with 503 and Retry-After.

Whatever hit the full disk (a result's log or wheel, a live-log chunk, a form being
spooled, the database) leaves nothing of the request behind: files are written under
temporary names removed on failure, and the transaction is rolled back. So the sender
can send the same request again later, and the builder's client does.
"""

from __future__ import annotations

import errno

from sqlalchemy.exc import DBAPIError
from starlette.responses import JSONResponse

_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_SQLITE_FULL = 13  # SQLITE_FULL: "database or disk is full"
_POSTGRES_DISK_FULL = "53100"  # SQLSTATE disk_full


def is_disk_full(exc: BaseException) -> bool:
    """A write refused for want of space or quota, on a file or in the database."""
    if isinstance(exc, OSError):
        return exc.errno in _FULL_ERRNOS
    if isinstance(exc, DBAPIError):
        cause = exc.orig
        return (
            getattr(cause, "sqlite_errorcode", None) == _SQLITE_FULL
            or getattr(cause, "sqlstate", None) == _POSTGRES_DISK_FULL
        )
    return False


def disk_full_answer(retry_after: int) -> JSONResponse:
    return JSONResponse(
        {"error": "the master's disk is full: nothing was stored, send it again later"},
        status_code=503,
        headers={"Retry-After": str(retry_after)},
    )

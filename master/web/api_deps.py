"""What the HTTP handlers of every router need: a database session per request, strictly
parsed job ids, the caller's token checked for its role, and each route's body limit.

The role a route needs and the body it accepts are declared here, as dependencies of the
route, and nowhere else: the request guard (master/web/request_guard.py) reads them from the
routes to refuse a request before its body is read."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, Header, HTTPException, Path, Request
from pydantic import BeforeValidator
from sqlalchemy.orm import Session, sessionmaker

from common.models import Token
from common.protocol import MAX_JOB_ID as MAX_JOB_ID  # for the routers' own job ids
from common.protocol import MAX_SLOTS, SLOT_HEADER
from common.states import TokenRole
from master.auth import AuthError, authenticate, token_from_header


def _session(request: Request) -> Iterator[Session]:
    factory: sessionmaker[Session] = request.app.state.factory
    with factory() as db:
        yield db


DB = Annotated[Session, Depends(_session)]
# Digits only: no sign, no leading zero or space, no decimal point or underscore (int()
# and pydantic's lax mode take "+1", " 1", "1_0"; pydantic takes "1.0").
_JOB_ID = re.compile(r"[1-9][0-9]{0,9}")


def _strict_job_id(value: Any) -> Any:
    if isinstance(value, str) and not _JOB_ID.fullmatch(value):
        raise ValueError("a job id is a positive whole number written in digits only")
    return value


JobId = Annotated[int, Path(ge=1, le=MAX_JOB_ID), BeforeValidator(_strict_job_id)]
_SLOT = re.compile(r"0|[1-9][0-9]?")


def _builder_slot(slot: Annotated[str | None, Header(alias=SLOT_HEADER)] = None) -> int:
    """The build slot a builder's request speaks for (common/protocol.py); 0 without the
    header, as every builder before slots sent."""
    if slot is None:
        return 0
    if not _SLOT.fullmatch(slot) or int(slot) >= MAX_SLOTS:
        raise HTTPException(
            400, f"{SLOT_HEADER}: a slot is a whole number from 0 to {MAX_SLOTS - 1}"
        )
    return int(slot)


BuilderSlot = Annotated[int, Depends(_builder_slot)]
AuthHeader = Annotated[str | None, Header(alias="Authorization")]


def token_with_role(db: Session, authorization: str | None, *roles: TokenRole) -> Token:
    """The caller's token if it has one of `roles`; 401 with the reason otherwise."""
    try:
        return authenticate(db, token_from_header(authorization), roles)
    except AuthError as exc:
        raise HTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from exc


class TokenOf:
    """A dependency giving the caller's token when it has one of `roles` (else 401).
    A route that depends on it needs a token: the request guard finds it there."""

    def __init__(self, *roles: TokenRole) -> None:
        self.roles = roles

    def __call__(self, db: DB, authorization: AuthHeader = None) -> Token:
        return token_with_role(db, authorization, *self.roles)


OperatorToken = Annotated[Token, Depends(TokenOf(TokenRole.OPERATOR))]
BuilderToken = Annotated[Token, Depends(TokenOf(TokenRole.BUILDER))]
MaintainerToken = Annotated[Token, Depends(TokenOf(TokenRole.MAINTAINER, TokenRole.OPERATOR))]

# The body of a route that declares no other limit: JSON of a few fields. The largest
# valid one, a token scoped to 1,000 project names of up to 200 characters, fits.
MAX_JSON_BYTES = 256 * 1024


class BodyLimit:
    """A dependency declaring the most bytes a route's request body may have, when more
    than MAX_JSON_BYTES. The request guard enforces it as the body arrives (413)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    async def __call__(self) -> None:
        return None


class RawBody:
    """A dependency giving the raw body (a live-log chunk) and declaring its limit, which
    the request guard enforces as the body arrives (413)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    async def __call__(self, request: Request) -> bytes:
        return await request.body()

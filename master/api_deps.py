"""What the HTTP handlers of every router need: a database session per request and the
caller's token, checked for its role."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Path, Request
from sqlalchemy.orm import Session, sessionmaker

from common.models import Token
from common.states import TokenRole
from master.auth import AuthError, authenticate, token_from_header


def _session(request: Request) -> Iterator[Session]:
    factory: sessionmaker[Session] = request.app.state.factory
    with factory() as db:
        yield db


DB = Annotated[Session, Depends(_session)]
# Job ids are 32-bit integers in the database: larger ones are refused as input.
MAX_JOB_ID = 2**31 - 1
JobId = Annotated[int, Path(ge=1, le=MAX_JOB_ID)]
AuthHeader = Annotated[str | None, Header(alias="Authorization")]


def token_with_role(db: Session, authorization: str | None, *roles: TokenRole) -> Token:
    """The caller's token if it has one of `roles`; 401 with the reason otherwise."""
    try:
        return authenticate(db, token_from_header(authorization), roles)
    except AuthError as exc:
        raise HTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from exc


def _operator(db: DB, authorization: AuthHeader = None) -> Token:
    return token_with_role(db, authorization, TokenRole.OPERATOR)


OperatorToken = Annotated[Token, Depends(_operator)]

"""Limits before work: a request is refused on its headers whenever it can be.

FastAPI reads and parses a body (spooling a multipart form to disk) before a route's
dependencies run, so a token checked there is checked too late, and a size checked
there is checked after the bytes arrived. This ASGI middleware runs first: it finds the
route a request is for, and from the route's own dependencies (master/web/api_deps.py) the
roles it needs and the body it accepts. Then, before a byte of the body is read:

- a client with too many recent failed authentications is answered 429 (Retry-After);
- a route needing a token without a valid one of its roles is answered 401, the
  failure logged with the client's address, the route and the reason (not the token);
- a Content-Length above the route's limit is answered 413.

A body sent without a length (chunked) is counted as it is read, and cut off with 413
once past the limit. The route checks the token again for itself (so a token revoked
meanwhile is still refused there); these answers carry `Connection: close`, so that
the rest of an unread body is not received at all.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import anyio.to_thread
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, APIRouter
from sqlalchemy.orm import Session, sessionmaker
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.states import TokenRole
from master.auth import AuthError, authenticate, token_from_header
from master.web.api_deps import MAX_JSON_BYTES, BodyLimit, RawBody, TokenOf
from master.web.auth_throttle import AuthThrottle

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RouteRules:
    """What a route asks of a request: one of `roles` (none: public), at most `limit`
    bytes of body."""

    name: str
    roles: tuple[TokenRole, ...]
    limit: int


UNROUTED = RouteRules("", (), MAX_JSON_BYTES)


class BodyTooLarge(HTTPException):
    """More body bytes than the route accepts (raised while the body is read)."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            413, f"the request body is at most {limit} bytes", headers={"Connection": "close"}
        )


def api_routes(routes: Iterable[BaseRoute]) -> Iterator[APIRoute]:
    """Every API route in the order the app matches them, those of included routers too
    (recent FastAPI keeps an included router whole: its routes keep their full paths)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        included = getattr(route, "original_router", None)
        if isinstance(included, APIRouter):
            yield from api_routes(included.routes)


def rules_of(route: APIRoute) -> RouteRules:
    """The roles and body limit a route declares through its dependencies."""
    roles: tuple[TokenRole, ...] = ()
    limit = MAX_JSON_BYTES
    pending: list[Dependant] = [route.dependant]
    while pending:
        dependant = pending.pop()
        call = dependant.call
        if isinstance(call, TokenOf):
            roles = call.roles
        elif isinstance(call, BodyLimit | RawBody):
            limit = call.limit
        pending.extend(dependant.dependencies)
    methods = ",".join(sorted(route.methods or ()))
    return RouteRules(f"{methods} {route.path}", roles, limit)


def _has_body(headers: Headers) -> bool:
    return headers.get("content-length", "0") != "0" or "transfer-encoding" in headers


class RequestGuard:
    def __init__(self, app: ASGIApp, throttle: AuthThrottle) -> None:
        self.app = app
        self.throttle = throttle
        self._routes: list[tuple[APIRoute, RouteRules]] | None = None

    def _route_rules(self, scope: Scope) -> RouteRules:
        if self._routes is None:  # the app's routes are all there by its first request
            self._routes = [
                (route, rules_of(route)) for route in api_routes(scope["app"].router.routes)
            ]
        for route, rules in self._routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return rules
        return UNROUTED

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rules = self._route_rules(scope)
        headers = Headers(scope=scope)
        if rules.roles:
            refusal = await self._authenticate(scope, headers, rules)
            if refusal is not None:
                await self._refuse(scope, receive, send, headers, refusal)
                return
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > rules.limit:
            too_large = BodyTooLarge(rules.limit)
            await self._refuse(
                scope,
                receive,
                send,
                headers,
                JSONResponse({"error": too_large.detail}, status_code=413),
            )
            return
        await self._guarded(scope, receive, send, rules.limit)

    async def _authenticate(
        self, scope: Scope, headers: Headers, rules: RouteRules
    ) -> JSONResponse | None:
        """None when the caller may go on; else the 429 or 401 to answer."""
        client = scope["client"][0] if scope.get("client") else "unknown"
        wait = self.throttle.blocked_for(client)
        if wait:
            return JSONResponse(
                {"error": f"too many failed authentications: try again in {wait} s"},
                status_code=429,
                headers={"Retry-After": str(wait)},
            )
        factory: sessionmaker[Session] = scope["app"].state.factory
        try:
            secret = token_from_header(headers.get("authorization"))
            await anyio.to_thread.run_sync(_check_token, factory, secret, rules.roles)
        except AuthError as exc:
            reason = str(exc)
        else:
            return None
        log.warning(
            "authentication failed",
            extra={"client": client, "route": rules.name, "reason": reason},
        )
        if self.throttle.failed(client):
            log.warning(
                "client refused for failed authentications",
                extra={
                    "client": client,
                    "failures": self.throttle.limit,
                    "window": self.throttle.window,
                },
            )
        return JSONResponse(
            {"error": reason}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
        )

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, headers: Headers, answer: JSONResponse
    ) -> None:
        """Answer without reading the body; the connection closes after an unread one."""
        if _has_body(headers):
            answer.headers["Connection"] = "close"
        await answer(scope, receive, send)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        """Pass the request on, counting its body as the app reads it."""
        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge as exc:
            # Raised where no exception handler answered it (routes answer it as JSON).
            if started:
                raise
            answer = JSONResponse(
                {"error": exc.detail}, status_code=413, headers=dict(exc.headers or {})
            )
            await answer(scope, receive, send)


def _check_token(factory: sessionmaker[Session], secret: str, roles: tuple[TokenRole, ...]) -> None:
    with factory() as db:
        authenticate(db, secret, roles)

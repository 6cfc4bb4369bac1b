"""Bearer-token authentication for the API: tokens are looked up by their hash."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.models import Builder, Token
from common.states import TokenRole
from common.tokens import hash_secret, looks_like_secret, new_secret


class AuthError(Exception):
    """Missing, malformed, unknown or revoked token, or the wrong role."""


def token_from_header(value: str | None) -> str:
    if not value:
        raise AuthError("missing Authorization header")
    scheme, _, secret = value.partition(" ")
    if scheme.lower() != "bearer" or not looks_like_secret(secret.strip()):
        raise AuthError("malformed Authorization header")
    return secret.strip()


def authenticate(session: Session, secret: str, role: TokenRole | tuple[TokenRole, ...]) -> Token:
    token = session.scalar(select(Token).where(Token.token_hash == hash_secret(secret)))
    if token is None or token.revoked_at is not None:
        raise AuthError("invalid or revoked token")
    roles = role if isinstance(role, tuple) else (role,)
    if token.role not in roles:
        wanted = " or ".join(r.value for r in roles)
        article = "an" if wanted[0] in "aeiou" else "a"
        raise AuthError(f"token is not {article} {wanted} token")
    return token


class NotPermitted(Exception):
    """A valid token that does not cover what it asked for."""


def check_project_scope(token: Token, project: str) -> None:
    """Operators act on any project; a maintainer token only on the projects it names."""
    if token.role == TokenRole.OPERATOR:
        return
    if project not in (token.projects or []):
        raise NotPermitted(f"token {token.name} is not scoped to project {project}")


def builder_for(session: Session, token: Token, slot: int = 0) -> Builder | None:
    """The builder row of `token`'s build slot `slot` (None: it has not registered)."""
    return session.scalar(select(Builder).where(Builder.token_id == token.id, Builder.slot == slot))


def create_token(
    session: Session, name: str, role: TokenRole, projects: list[str] | None = None
) -> str:
    """Create a token and return its secret, which is not stored anywhere."""
    secret = new_secret()
    session.add(Token(name=name, role=role, token_hash=hash_secret(secret), projects=projects))
    session.flush()
    return secret


def rotate_token(session: Session, name: str, role: TokenRole) -> str:
    """A fresh secret for a named token, created if absent (used by `armwheels up`)."""
    token = session.scalar(select(Token).where(Token.name == name))
    if token is None:
        return create_token(session, name, role)
    secret = new_secret()
    token.token_hash = hash_secret(secret)
    token.role = role
    token.revoked_at = None
    return secret


def revoke_token(session: Session, name: str) -> bool:
    token = session.scalar(select(Token).where(Token.name == name))
    if token is None or token.revoked_at is not None:
        return False
    token.revoked_at = datetime.now(UTC)
    return True

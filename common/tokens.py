"""API tokens: random secrets shown once; the database keeps only their sha256."""

from __future__ import annotations

import hashlib
import secrets

PREFIX = "aw_"


def new_secret() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


def looks_like_secret(secret: str) -> bool:
    return secret.startswith(PREFIX) and 16 <= len(secret) <= 200 and secret.isascii()

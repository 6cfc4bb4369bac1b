"""Backoff between attempts on a transient upstream error, shared by every upstream client.

Jittered exponential waits (tenacity), but never shorter than the server asked for with
Retry-After (or, for PyPI's XML-RPC rate limiter, "Limit may reset in N seconds").
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from tenacity import RetryCallState, wait_exponential_jitter
from tenacity.wait import wait_base

MAX_RETRY_AFTER = 300.0


class RetryAfterError(Exception):
    """A transient failure that may say how long to wait before the next attempt."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date (RFC 9110)."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class wait_retry_after(wait_base):
    """The fallback wait, or the server's Retry-After when that is longer (capped)."""

    def __init__(self, fallback: wait_base | None = None) -> None:
        self.fallback = fallback if fallback is not None else wait_exponential_jitter(1, 120)

    def __call__(self, retry_state: RetryCallState) -> float:
        delay = float(self.fallback(retry_state))
        outcome = retry_state.outcome
        if outcome is not None and outcome.failed:
            exc = outcome.exception()
            if isinstance(exc, RetryAfterError) and exc.retry_after is not None:
                delay = max(delay, min(exc.retry_after, MAX_RETRY_AFTER))
        return delay

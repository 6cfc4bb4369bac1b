"""Talking to upstream politely, shared by every upstream client: one User-Agent, and
backoff between attempts on a transient error.

Jittered exponential waits (tenacity), but never shorter than the server asked for with
Retry-After (or, for PyPI's XML-RPC rate limiter, "Limit may reset in N seconds").
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TypeVar

import httpx
from tenacity import (
    RetryCallState,
    retry,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)
from tenacity.wait import wait_base

log = logging.getLogger(__name__)

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


USER_AGENT = "armwheels (+https://github.com/armwheels)"
T = TypeVar("T")


def upstream_http(
    timeout: float, follow_redirects: bool = True, headers: dict[str, str] | None = None
) -> httpx.Client:
    """The HTTP client every upstream client uses: our User-Agent, a timeout."""
    return httpx.Client(
        timeout=timeout,
        follow_redirects=follow_redirects,
        headers={"User-Agent": USER_AGENT, **(headers or {})},
    )


def raise_if_transient(response: httpx.Response, what: str, error: type[RetryAfterError]) -> None:
    """429 and 5xx are worth another attempt, after the Retry-After the server gave."""
    if response.status_code == 429 or response.status_code >= 500:
        raise error(
            f"{what}: HTTP {response.status_code}",
            parse_retry_after(response.headers.get("Retry-After")),
        )


def with_retries(
    call: Callable[..., T], wait: wait_base, attempts: int, what: str
) -> Callable[..., T]:
    """`call`, retried on RetryAfterError with `wait` between attempts; each retry logged."""

    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        log.warning(
            "upstream call failed, retrying",
            extra={"call": what, "attempt": state.attempt_number, "error": str(error)},
        )

    return retry(
        retry=retry_if_exception_type(RetryAfterError),
        wait=wait,
        stop=stop_after_attempt(attempts),
        reraise=True,
        before_sleep=before_sleep,
    )(call)

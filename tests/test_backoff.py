"""Backoff honours the server's Retry-After, within a cap, and falls back to jitter."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from tenacity import RetryCallState, Retrying, wait_fixed

from master.pypi.backoff import (
    MAX_RETRY_AFTER,
    RetryAfterError,
    parse_retry_after,
    wait_retry_after,
)


def _state_after(exc: BaseException) -> RetryCallState:
    state = RetryCallState(Retrying(), fn=None, args=(), kwargs={})
    state.set_exception((type(exc), exc, exc.__traceback__))
    return state


@pytest.mark.parametrize(
    ("header", "seconds"),
    [(None, None), ("", None), ("120", 120.0), (" 7 ", 7.0), ("soon", None), ("-3", None)],
)
def test_parse_retry_after_seconds(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header) == seconds


def test_parse_retry_after_http_date() -> None:
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=90), usegmt=True)
    parsed = parse_retry_after(later)
    assert parsed is not None and 80 <= parsed <= 90
    past = format_datetime(datetime.now(UTC) - timedelta(hours=1), usegmt=True)
    assert parse_retry_after(past) == 0.0


def test_wait_takes_the_longer_of_backoff_and_retry_after() -> None:
    wait = wait_retry_after(wait_fixed(5))
    assert wait(_state_after(RetryAfterError("429", 30.0))) == 30.0
    assert wait(_state_after(RetryAfterError("429", 2.0))) == 5.0
    assert wait(_state_after(RetryAfterError("429", None))) == 5.0
    assert wait(_state_after(RetryAfterError("429", 10**6))) == MAX_RETRY_AFTER
    assert wait(_state_after(ValueError("other"))) == 5.0

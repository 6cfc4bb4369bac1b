"""A client of PyPI's XML-RPC changelog, the feed PyPI's mirrors follow.

Only two methods are used: `changelog_last_serial()` and `changelog_since_serial(n)`.
The second answers at most 50,000 entries per call, so a large gap takes several calls;
the caller pages by asking again from the last serial it applied.
Transport errors, HTTP 429/5xx and PyPI's rate-limit and unavailable faults are transient:
they are retried with jittered backoff and never move the cursor.
`probe_last_serial` is the one call that is not retried: a start-up check, bounded in time.
"""

from __future__ import annotations

import logging
import re
import threading
import xmlrpc.client
from dataclasses import dataclass, field
from typing import Any
from xml.parsers.expat import ExpatError

import httpx
from tenacity.wait import wait_base

from master.pypi.backoff import (
    RetryAfterError,
    raise_if_transient,
    upstream_http,
    wait_retry_after,
    with_retries,
)
from master.pypi.journal import JournalEvent, parse_entry

log = logging.getLogger(__name__)

# pyramid_rpc's codes, as PyPI answers them.
FAULT_APPLICATION = -32500
FAULT_UNAVAILABLE = -32403
_RESET_IN = re.compile(r"reset in (\d+) seconds")
# How long the start-up check of the changelog may take in all.
PROBE_SECONDS = 5.0


class ChangelogError(Exception):
    """The changelog answered, but with a fault or data we cannot use."""


class TransientChangelogError(RetryAfterError):
    """Worth retrying later: timeouts, 429/5xx, rate limiting, service unavailable."""


@dataclass
class ChangelogPage:
    """What one `changelog_since_serial` call returned, validated."""

    since: int
    events: list[JournalEvent] = field(default_factory=list)
    # The highest serial seen, malformed entries included: the cursor may pass them.
    last_serial: int | None = None
    entries: int = 0
    malformed: int = 0


class ChangelogClient:
    def __init__(
        self,
        url: str,
        timeout: float = 60.0,
        attempts: int = 6,
        wait: wait_base | None = None,
    ) -> None:
        self.url = url
        self.attempts = attempts
        self.wait = wait_retry_after(wait)
        self.http = upstream_http(
            timeout, follow_redirects=False, headers={"Content-Type": "text/xml"}
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> ChangelogClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def last_serial(self) -> int:
        value = self._call("changelog_last_serial")
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ChangelogError(f"changelog_last_serial answered {value!r}")
        return value

    def since(self, serial: int) -> ChangelogPage:
        """The entries after `serial`, in serial order (one page of at most 50,000)."""
        result = self._call("changelog_since_serial", serial)
        if not isinstance(result, list):
            raise ChangelogError(f"changelog_since_serial answered {type(result).__name__}")
        page = ChangelogPage(since=serial, entries=len(result))
        previous = serial
        for entry in result:
            parsed = parse_entry(entry)
            if parsed is None:
                page.malformed += 1
                continue
            entry_serial = parsed if isinstance(parsed, int) else parsed.serial
            if entry_serial <= previous:
                # Out of order or repeated: applying it could undo a later change.
                raise ChangelogError(f"serial {entry_serial} after {previous}: not in order")
            previous = entry_serial
            page.last_serial = entry_serial
            if isinstance(parsed, int):
                page.malformed += 1
            else:
                page.events.append(parsed)
        return page

    def _call(self, method: str, *params: Any) -> Any:
        return with_retries(self._call_once, self.wait, self.attempts, method)(method, *params)

    def _call_once(self, method: str, *params: Any) -> Any:
        body = xmlrpc.client.dumps(params, methodname=method, allow_none=True)
        try:
            response = self.http.post(self.url, content=body.encode("utf-8"))
        except httpx.TransportError as exc:
            raise TransientChangelogError(f"{method}: {exc!r}") from exc
        raise_if_transient(response, method, TransientChangelogError)
        if response.status_code != 200:
            raise ChangelogError(f"{method}: HTTP {response.status_code}")
        try:
            (value,), _name = xmlrpc.client.loads(response.content, use_builtin_types=True)
        except xmlrpc.client.Fault as fault:
            text = str(fault.faultString)
            if fault.faultCode == FAULT_UNAVAILABLE or (
                fault.faultCode == FAULT_APPLICATION and "TooManyRequests" in text
            ):
                match = _RESET_IN.search(text)
                raise TransientChangelogError(
                    f"{method}: fault {fault.faultCode}: {text}",
                    float(match.group(1)) if match else None,
                ) from fault
            raise ChangelogError(f"{method}: fault {fault.faultCode}: {text}") from fault
        except (ValueError, ExpatError, xmlrpc.client.ResponseError) as exc:
            raise ChangelogError(f"{method}: not an XML-RPC response: {exc}") from exc
        return value


def probe_last_serial(url: str, timeout: float = PROBE_SECONDS) -> int:
    """PyPI's current serial from one `changelog_last_serial` call, made as the feed makes
    it (the same HTTP client: the environment's proxy and CA bundle) but without retries
    and within `timeout` seconds in all, a name lookup that hangs included. Raises
    ChangelogError or TransientChangelogError saying why there was no usable answer."""
    outcome: list[int | ChangelogError | TransientChangelogError] = []

    def call() -> None:
        try:
            with ChangelogClient(url, timeout, attempts=1) as client:
                outcome.append(client.last_serial())
        except (ChangelogError, TransientChangelogError) as exc:
            outcome.append(exc)
        except Exception as exc:  # a proxy URL httpx refuses, an invalid URL: no answer
            outcome.append(ChangelogError(f"changelog_last_serial: {exc!r}"))

    # A daemon thread: one stuck in getaddrinfo (no timeout applies there) is left behind.
    thread = threading.Thread(target=call, name="changelog-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        raise TransientChangelogError(f"changelog_last_serial: no answer within {timeout:g} s")
    result = outcome[0]
    if isinstance(result, Exception):
        raise result
    return result

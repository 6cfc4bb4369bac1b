"""The builder's HTTP client of the master, authenticated with the builder token."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from tenacity import (
    RetryCallState,
    retry,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from common.job_spec import JobSpec

log = logging.getLogger(__name__)


class ClaimRefused(Exception):
    """The master no longer wants this job built (already taken, cancelled, unknown)."""


class ClaimNotUnderstood(ClaimRefused):
    """The master claimed the job for us but its answer is no job spec this builder reads
    (a master of another version): the job is handed back rather than built blind."""


class ReportRejected(Exception):
    """The master refused a result (4xx); retrying the same result will not help."""


class LogOffsetMismatch(Exception):
    """The master has a different amount of the live log: resend from `expected`."""

    def __init__(self, expected: int) -> None:
        super().__init__(f"the master expects the live log from byte {expected}")
        self.expected = expected


class LogRefused(Exception):
    """The master takes no more of this job's live log. `taken_back` says why when the
    reason is that the job is no longer this builder's (cancelled, requeued, elsewhere):
    its build is to be killed and not reported."""

    def __init__(self, message: str, taken_back: str | None = None) -> None:
        super().__init__(message)
        self.taken_back = taken_back


@dataclass(frozen=True)
class HeartbeatAnswer:
    """What the master answers a heartbeat: jobs it took back from this builder because
    the heartbeat did not name them, and the named job if it is no longer ours (`stop`,
    with `why`). What a master leaves out (one that predates `stop`) reads as empty."""

    handed_back: list[int]
    stop: list[int]
    why: str | None = None

    @classmethod
    def from_json(cls, data: Any) -> HeartbeatAnswer:
        if not isinstance(data, dict):
            return cls([], [])
        why = data.get("why")
        return cls(
            [int(job) for job in data.get("handed_back") or []],
            [int(job) for job in data.get("stop") or []],
            str(why) if why is not None else None,
        )


# A live-log chunk is best effort: it must not hold up the build for a minute.
LOG_TIMEOUT = 10.0


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, httpx.TransportError):
        return True
    return isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code >= 500


# The longest wait a master's Retry-After may ask for between two attempts.
MAX_RETRY_AFTER = 300.0
_backoff = wait_exponential_jitter(initial=1, max=30)


def _retry_after(exc: BaseException | None) -> float | None:
    """The seconds a 503 or 429 answer asks the client to wait, if it says."""
    if not isinstance(exc, httpx.HTTPStatusError) or exc.response.status_code not in (429, 503):
        return None
    value = exc.response.headers.get("retry-after", "").strip()
    return min(float(value), MAX_RETRY_AFTER) if value.isdigit() else None


def _wait(state: RetryCallState) -> float:
    """What the master's Retry-After says, else an exponential backoff."""
    hinted = _retry_after(state.outcome.exception() if state.outcome else None)
    return hinted if hinted is not None else _backoff(state)


_retrying = retry(
    retry=retry_if_exception(_transient),
    wait=_wait,
    stop=stop_after_attempt(8),
    reraise=True,
)


def _unavailable(exc: BaseException) -> bool:
    """503: the master stored nothing (its disk is full) and asks for the same again. Or
    no answer came (the master restarted, the connection dropped): whether it stored the
    result is unknown, and sending it again is safe, since the master takes one result
    per claim and refuses the second (409) once the first is stored."""
    if isinstance(exc, httpx.TransportError):
        return True
    return isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code == 503


def _log_resend(state: RetryCallState) -> None:
    job_id = state.kwargs.get("job_id", state.args[1] if len(state.args) > 1 else None)
    log.warning(
        "master did not store the result: sending it again",
        extra={"job_id": job_id, "attempt": state.attempt_number},
    )


# A result is sent again when the master says it kept none of it or did not answer; after
# these attempts the job is left to the master, which hands it back when no heartbeat
# names it.
REPORT_ATTEMPTS = 10
_retrying_report = retry(
    retry=retry_if_exception(_unavailable),
    wait=_wait,
    stop=stop_after_attempt(REPORT_ATTEMPTS),
    reraise=True,
    before_sleep=_log_resend,
)


def _error(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error", response.text))
    except ValueError:
        return response.text[:200]


def _taken_back(response: httpx.Response) -> str | None:
    """Why the master refused because the job is no longer ours (None: another refusal)."""
    try:
        body = response.json()
    except ValueError:
        return None
    if not isinstance(body, dict) or body.get("stop") is not True:
        return None
    return str(body.get("why") or body.get("state") or body.get("error") or "taken back")


def _expected_offset(response: httpx.Response) -> int | None:
    try:
        expected = response.json().get("expected")
    except (ValueError, AttributeError):
        return None
    return expected if isinstance(expected, int) and expected >= 0 else None


class MasterClient:
    def __init__(self, master_url: str, token: str, timeout: float = 60.0) -> None:
        self.http = httpx.Client(
            base_url=master_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
        )

    def close(self) -> None:
        self.http.close()

    @_retrying
    def register(
        self,
        arch: str,
        backend: str,
        python_tags: list[str],
        version: str,
        free_disk: int | None = None,
    ) -> Any:
        response = self.http.post(
            "/api/v1/builders/register",
            json={
                "arch": arch,
                "backend": backend,
                "python_tags": python_tags,
                "version": version,
                "free_disk": free_disk,
            },
        )
        response.raise_for_status()
        return response.json()

    def heartbeat(self, job_id: int | None = None, free_disk: int | None = None) -> HeartbeatAnswer:
        """Say the builder lives and which job it runs; the answer may take that job back."""
        body = {"job_id": job_id, "free_disk": free_disk}
        response = self.http.post("/api/v1/builders/heartbeat", json=body)
        response.raise_for_status()
        try:
            return HeartbeatAnswer.from_json(response.json())
        except (TypeError, ValueError):  # not the answer a master gives: nothing to act on
            log.warning("heartbeat answer not understood: %s", response.text[:200])
            return HeartbeatAnswer([], [])

    @_retrying
    def claim(self, job_id: int) -> JobSpec:
        response = self.http.post(f"/api/v1/jobs/{job_id}/claim")
        if response.status_code in (404, 409):
            raise ClaimRefused(_error(response))
        response.raise_for_status()
        try:
            return JobSpec.from_json(response.json())
        except ValueError as exc:  # not JSON, or pydantic's ValidationError
            raise ClaimNotUnderstood(f"claim answer is not a job spec: {exc}") from exc

    @_retrying
    def release(self, job_id: int) -> None:
        """Hand a job back to the master (the builder is stopping)."""
        response = self.http.post(f"/api/v1/jobs/{job_id}/release")
        if response.status_code != 200:
            raise ReportRejected(f"release of job {job_id}: HTTP {response.status_code}")

    def append_log(self, job_id: int, offset: int, data: bytes) -> int:
        """Send a chunk of the live build log, `offset` being its place in the log; returns
        the master's acknowledged total. Not retried here: the streamer retries next tick."""
        response = self.http.post(
            f"/api/v1/jobs/{job_id}/log",
            params={"offset": offset},
            content=data,
            headers={"Content-Type": "application/octet-stream"},
            timeout=LOG_TIMEOUT,
        )
        if response.status_code == 409:
            expected = _expected_offset(response)
            if expected is not None:
                raise LogOffsetMismatch(expected)
        if 400 <= response.status_code < 500:
            raise LogRefused(_error(response), _taken_back(response))
        response.raise_for_status()
        return int(response.json()["total"])

    @_retrying_report
    def report(
        self,
        job_id: int,
        outcome: str,
        log_path: Path,
        reason: str | None,
        summary: str,
        build_seconds: float,
        wheel: Path | None = None,
        wheel_sha256: str | None = None,
        transient: bool = False,
    ) -> Any:
        data: dict[str, str] = {
            "outcome": outcome,
            "summary": summary,
            "build_seconds": f"{build_seconds:.3f}",
        }
        if transient:
            data["transient"] = "true"
        if reason:
            data["reason"] = reason
        if wheel_sha256:
            data["wheel_sha256"] = wheel_sha256
        with log_path.open("rb") as log_handle:
            files: dict[str, tuple[str, Any, str]] = {
                "log": ("build.log", log_handle, "text/plain")
            }
            if wheel is not None:
                wheel_handle = wheel.open("rb")
                files["wheel"] = (wheel.name, wheel_handle, "application/octet-stream")
            try:
                response = self.http.post(f"/api/v1/jobs/{job_id}/result", data=data, files=files)
            finally:
                if wheel is not None:
                    wheel_handle.close()
        if 400 <= response.status_code < 500:
            raise ReportRejected(_error(response))
        response.raise_for_status()
        return response.json()

"""The builder's HTTP client of the master, authenticated with the builder token. The
bodies it sends and reads are those of common/protocol.py."""

from __future__ import annotations

import logging
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

from common.protocol import (
    LOG_PART,
    SLOT_HEADER,
    WHEEL_PART,
    ErrorBody,
    Heartbeat,
    HeartbeatAnswer,
    JobSpec,
    LogAccepted,
    LogGap,
    LogRefusal,
    Registered,
    Registration,
    ResultAnswer,
    ResultForm,
)
from common.states import Arch

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
    """What a refusal says: its `error`, else its text (a proxy's page, say)."""
    try:
        return ErrorBody.from_bytes(response.content).error
    except ValueError:
        return response.text[:200]


class MasterClient:
    """One build slot's client: every request names the slot (SLOT_HEADER), so that the
    master keeps each slot's registration, heartbeats and jobs apart."""

    def __init__(self, master_url: str, token: str, timeout: float = 60.0, slot: int = 0) -> None:
        self.slot = slot
        self.http = httpx.Client(
            base_url=master_url,
            headers={"Authorization": f"Bearer {token}", SLOT_HEADER: str(slot)},
            timeout=timeout,
        )

    def close(self) -> None:
        self.http.close()

    @_retrying
    def register(
        self,
        arch: Arch,
        target: str,
        backend: str,
        python_tags: list[str],
        version: str,
        free_disk: int | None = None,
    ) -> Registered:
        """Say what this builder builds; ProtocolError when the answer is not understood."""
        body = Registration(
            arch=arch,
            target=target,
            backend=backend,
            python_tags=python_tags,
            version=version,
            free_disk=free_disk,
        )
        response = self.http.post("/api/v1/builders/register", json=body.model_dump(mode="json"))
        response.raise_for_status()
        return Registered.from_bytes(response.content)

    def heartbeat(self, job_id: int | None = None, free_disk: int | None = None) -> HeartbeatAnswer:
        """Say the builder lives and which job it runs; the answer may take that job back.
        ProtocolError when the answer is not understood (nothing to act on)."""
        body = Heartbeat(job_id=job_id, free_disk=free_disk)
        response = self.http.post("/api/v1/builders/heartbeat", json=body.model_dump(mode="json"))
        response.raise_for_status()
        return HeartbeatAnswer.from_bytes(response.content)

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
            try:
                gap: LogGap | None = LogGap.from_bytes(response.content)
            except ValueError:
                gap = None  # another refusal
            if gap is not None:
                raise LogOffsetMismatch(gap.expected)
        if 400 <= response.status_code < 500:
            try:
                refusal = LogRefusal.from_bytes(response.content)
            except ValueError:  # not the master's (a proxy's page): not a taken-back job
                raise LogRefused(response.text[:200]) from None
            raise LogRefused(refusal.error, refusal.taken_back())
        response.raise_for_status()
        return LogAccepted.from_bytes(response.content).total

    @_retrying_report
    def report(
        self, job_id: int, form: ResultForm, log_path: Path, wheel: Path | None = None
    ) -> ResultAnswer:
        """Send a result: the form, the build log and the wheel (when built). The answer
        says what the master made of it; ProtocolError when it is not understood."""
        with log_path.open("rb") as log_handle:
            files: dict[str, tuple[str, Any, str]] = {
                LOG_PART: ("build.log", log_handle, "text/plain")
            }
            if wheel is not None:
                wheel_handle = wheel.open("rb")
                files[WHEEL_PART] = (wheel.name, wheel_handle, "application/octet-stream")
            try:
                response = self.http.post(
                    f"/api/v1/jobs/{job_id}/result", data=form.fields(), files=files
                )
            finally:
                if wheel is not None:
                    wheel_handle.close()
        if 400 <= response.status_code < 500:
            raise ReportRejected(_error(response))
        response.raise_for_status()
        return ResultAnswer.from_bytes(response.content)

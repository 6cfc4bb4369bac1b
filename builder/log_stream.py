"""Streams a running build's log to the master, so it can be read before the build ends.

Best effort by design: the build writes its log to a local file as before and the final
log still goes up with the result. This thread only reads what was appended since the
master's acknowledged offset every couple of seconds and sends it in bounded chunks; a
failure is logged and tried again on the next tick, and nothing here raises into the
build or waits on it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from builder.client import LOG_TIMEOUT, LogOffsetMismatch, LogRefused, MasterClient

log = logging.getLogger(__name__)

INTERVAL_SECONDS = 2.0
CHUNK_BYTES = 256 * 1024
# When the build ends, what is left is sent for at most this long: the report waits on it.
FLUSH_SECONDS = 10.0
# Offset corrections in a row before a tick gives up (the master keeps disagreeing).
MAX_CORRECTIONS = 3


# Told the job's id and why, when the master refuses the log because the job is no
# longer this builder's (JobRunner.abandon).
TakenBack = Callable[[int, str], object]


class LogStreamer(threading.Thread):
    """Sends the bytes appended to `path` to the master as job `job_id`'s live log. A
    refusal saying the job is no longer this builder's is passed to `on_taken_back`: the
    build learns it within a tick of its next output, not at the next heartbeat."""

    def __init__(
        self,
        client: MasterClient,
        job_id: int,
        path: Path,
        interval: float = INTERVAL_SECONDS,
        chunk_bytes: int = CHUNK_BYTES,
        flush_seconds: float = FLUSH_SECONDS,
        on_taken_back: TakenBack | None = None,
    ) -> None:
        super().__init__(name=f"log-stream-{job_id}", daemon=True)
        self.client = client
        self.job_id = job_id
        self.path = path
        self.interval = interval
        self.chunk_bytes = chunk_bytes
        self.flush_seconds = flush_seconds
        self.on_taken_back = on_taken_back
        # What the master has acknowledged: the next chunk starts here.
        self.acked = 0
        self.refused = False
        self._finish = threading.Event()
        self._flush = True
        self._failing = False

    def run(self) -> None:
        try:
            while not self._finish.wait(self.interval):
                self._send(deadline=None)
            if self._flush:
                self._send(deadline=time.monotonic() + self.flush_seconds)
        except Exception:
            # A bug here must not take the build down with it; the final log still goes.
            log.exception("live log streaming stopped", extra={"job_id": self.job_id})

    def stop(self, flush: bool = True) -> None:
        """The build ended: send what is left (unless `flush` is False: the job is being
        handed back) and wait for it, bounded, so the report follows the live log."""
        self._flush = flush
        self._finish.set()
        if self.is_alive():
            self.join(self.flush_seconds + LOG_TIMEOUT + 1.0)
        if self.is_alive():
            log.warning("live log not flushed in time", extra={"job_id": self.job_id})

    def _send(self, deadline: float | None) -> None:
        """Send everything past the acknowledged offset; a tick (no deadline) yields to the
        final flush as soon as the build ends."""
        if self.refused:
            return
        corrections = 0
        try:
            with self.path.open("rb") as handle:
                while corrections < MAX_CORRECTIONS:
                    if deadline is None and self._finish.is_set():
                        return
                    if deadline is not None and time.monotonic() > deadline:
                        log.warning(
                            "live log flush out of time",
                            extra={"job_id": self.job_id, "offset": self.acked},
                        )
                        return
                    handle.seek(self.acked)
                    data = handle.read(self.chunk_bytes)
                    if not data:
                        break
                    try:
                        self.acked = self.client.append_log(self.job_id, self.acked, data)
                        corrections = 0
                    except LogOffsetMismatch as exc:
                        log.info(
                            "live log resent from the master's offset",
                            extra={"job_id": self.job_id, "offset": exc.expected},
                        )
                        self.acked = exc.expected
                        corrections += 1
        except LogRefused as exc:
            self.refused = True
            log.info("live log refused: %s", exc, extra={"job_id": self.job_id})
            if exc.taken_back is not None and self.on_taken_back is not None:
                self.on_taken_back(self.job_id, exc.taken_back)
            return
        except (httpx.HTTPError, OSError, ValueError, KeyError) as exc:
            if not self._failing:
                log.warning("live log not sent: %r", exc, extra={"job_id": self.job_id})
            self._failing = True
            return
        if self._failing:
            log.info(
                "live log streaming resumed", extra={"job_id": self.job_id, "offset": self.acked}
            )
            self._failing = False

"""Live build logs: what a builder streams while its job is `building`.

A maintainer wants to see why a build is slow or stuck before it ends, so the builder
sends its log in chunks (`POST /api/v1/jobs/{id}/log`) and the master keeps them here
until the result arrives with the final log, which replaces them.

Layout: `<data_dir>/live/<job id>/<claim>/` where `<claim>` names one claim of the job
(its `started_at`), so a later attempt never appends to an earlier one's bytes. In it,
`head` holds the first HEAD bytes and `tail-<offset>` the bytes from `<offset>` on; when
the tail file grows past twice TAIL bytes its last TAIL bytes are copied to a new file
(renamed into place) and the old one removed. So a log of any length takes at most
HEAD + 2 x TAIL bytes of disk and no more than one chunk of memory, and the offsets the
builder sends stay meaningful after the middle is dropped. Every change holds an
exclusive `flock` on `<data_dir>/live/.lock`, which also covers several masters sharing
the data directory.
"""

from __future__ import annotations

import fcntl
import io
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from common.config import Settings
from common.log_cap import omitted_marker
from common.models import BuildJob
from master.storage import Storage

# Kept of a live log: its first and its last MiB (each at most half of max_log_bytes).
LIVE_HEAD_BYTES = 1024 * 1024
LIVE_TAIL_BYTES = 1024 * 1024
COPY_BYTES = 256 * 1024

_TAIL = re.compile(r"^tail-(\d+)$")


class OffsetGap(Exception):
    """A chunk starts past what the master has: the builder must resend from `expected`."""

    def __init__(self, expected: int) -> None:
        super().__init__(f"chunk starts past the {expected} bytes received")
        self.expected = expected


def live_caps(max_log_bytes: int) -> tuple[int, int]:
    """Head and tail kept of a live log: a MiB each, less when the final cap is smaller."""
    head = min(LIVE_HEAD_BYTES, max_log_bytes // 2)
    return head, min(LIVE_TAIL_BYTES, max_log_bytes - head)


def claim_key(started_at: datetime | None) -> str:
    """Names one claim of a job: each claim stamps `started_at` anew."""
    if started_at is None:
        return "unstarted"
    return started_at.astimezone(UTC).strftime("%Y%m%dT%H%M%S%fZ")


@dataclass(frozen=True)
class LiveView:
    """Stored bytes of a live log from some offset, with the marker for any dropped part."""

    total: int  # bytes the builder has sent (its log's size as far as the master knows)
    data: bytes


@dataclass(frozen=True)
class _State:
    head: int  # bytes in `head`
    tail: Path | None  # the tail file, if the log is longer than the head
    tail_start: int  # offset of the tail file's first byte
    tail_size: int

    @property
    def total(self) -> int:
        return self.tail_start + self.tail_size if self.tail is not None else self.head


class LiveLogs:
    def __init__(self, storage: Storage, head: int, tail: int) -> None:
        self.storage = storage
        self.root = storage.root / "live"
        self.tmp = storage.tmp
        self.head_bytes = head
        self.tail_bytes = tail
        self.root.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive access to every live log (threads and processes alike)."""
        with (self.root / ".lock").open("ab") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def _dir(self, job_id: int, claim: str) -> Path:
        return self.root / str(job_id) / claim

    def append(self, job_id: int, offset: int, data: bytes, claim: Callable[[], str]) -> int:
        """Add the chunk at `offset`: a chunk the master already has is acknowledged again,
        one past the end raises OffsetGap. Returns the new total.

        `claim` runs under the lock: it checks the sender still holds the job (raising if
        not) and names its claim, so no chunk lands after the final log replaced the
        live one."""
        with self.lock():
            return self._append(job_id, claim(), offset, data)

    def _append(self, job_id: int, claim: str, offset: int, data: bytes) -> int:
        folder = self._dir(job_id, claim)
        if not folder.is_dir():
            self._discard_others(job_id, claim)
            folder.mkdir(parents=True)
        state = self._state(folder)
        if offset > state.total:
            raise OffsetGap(state.total)
        fresh = memoryview(data)[state.total - offset :]
        if not fresh:
            return state.total
        total = state.total
        if state.tail is None and state.head < self.head_bytes:
            part = fresh[: self.head_bytes - state.head]
            with (folder / "head").open("ab") as out:
                out.write(part)
            fresh, total = fresh[len(part) :], total + len(part)
            if not fresh:
                return total
        tail = state.tail or folder / f"tail-{total}"
        with tail.open("ab") as out:
            out.write(fresh)
        total += len(fresh)
        tail_start = state.tail_start if state.tail is not None else total - len(fresh)
        if total - tail_start > 2 * self.tail_bytes:
            self._compact(folder, tail, tail_start, total)
        return total

    def _compact(self, folder: Path, tail: Path, start: int, end: int) -> None:
        """Keep only the last TAIL bytes of the tail file: copied, renamed, old one removed."""
        keep_from = end - self.tail_bytes
        handle, name = tempfile.mkstemp(dir=self.tmp, suffix=".live.part")
        try:
            with tail.open("rb") as source, os.fdopen(handle, "wb") as out:
                source.seek(keep_from - start)
                shutil.copyfileobj(source, out, COPY_BYTES)
            Path(name).replace(folder / f"tail-{keep_from}")
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise
        tail.unlink()

    def _state(self, folder: Path) -> _State:
        head_path = folder / "head"
        head = head_path.stat().st_size if head_path.exists() else 0
        tails: list[tuple[int, int, Path]] = []
        for path in folder.iterdir():
            found = _TAIL.match(path.name)
            if found:
                start = int(found.group(1))
                tails.append((start + path.stat().st_size, start, path))
        if not tails:
            return _State(head, None, head, 0)
        # Two tail files only after a crash inside _compact: the longer, newer one wins.
        tails.sort()
        end, start, path = tails[-1]
        for _, _, stale in tails[:-1]:
            stale.unlink(missing_ok=True)
        return _State(head, path, start, end - start)

    def read(self, job_id: int, claim: str, offset: int = 0) -> LiveView | None:
        """The stored bytes from `offset` on (None if nothing was received for this claim):
        head, a marker line for a dropped middle, then the last TAIL bytes. At most
        HEAD + TAIL bytes, so it is read whole; an offset past the end gives no data."""
        folder = self._dir(job_id, claim)
        with self.lock():
            if not folder.is_dir():
                return None
            state = self._state(folder)
            kept_from = max(state.tail_start, state.total - self.tail_bytes)
            pieces: list[bytes] = []
            position = offset
            if position < state.head:
                with (folder / "head").open("rb") as handle:
                    handle.seek(position)
                    pieces.append(handle.read(state.head - position))
                position = state.head
            if state.tail is not None and position < state.total:
                if position < kept_from:
                    pieces.append(omitted_marker(kept_from - position))
                    position = kept_from
                with state.tail.open("rb") as handle:
                    handle.seek(position - state.tail_start)
                    pieces.append(handle.read(state.total - position))
        return LiveView(state.total, b"".join(pieces))

    def discard(self, job_id: int, claim: str | None = None) -> None:
        """Remove one claim's live log (or all of the job's): the final log replaced it,
        or the job went back to the queue."""
        with self.lock():
            job_dir = self.root / str(job_id)
            shutil.rmtree(job_dir / claim if claim else job_dir, ignore_errors=True)
            # Fails when another claim's log is still there, or the folder is gone.
            with suppress(OSError):
                job_dir.rmdir()

    def _discard_others(self, job_id: int, claim: str) -> None:
        """A new claim's first chunk: earlier claims of the job left by a crash go."""
        job_dir = self.root / str(job_id)
        if job_dir.is_dir():
            for other in job_dir.iterdir():
                if other.name != claim:
                    shutil.rmtree(other, ignore_errors=True)


def keep_as_final_log(job: BuildJob, live: LiveLogs, max_log_bytes: int) -> None:
    """A job that ended without its builder's report (lost, cancelled) keeps what the
    builder streamed as its final log; the live copy is dropped."""
    view = live.read(job.id, claim_key(job.started_at))
    if view is not None:
        path, size = live.storage.store_log(
            job.release.project.name, job.id, job.attempts, io.BytesIO(view.data), max_log_bytes
        )
        job.log_path, job.log_size = str(path), size
    live.discard(job.id)


def final_log_keeper(settings: Settings) -> Callable[[BuildJob], None]:
    """keep_as_final_log for a master's data directory, for code outside the master's
    loop and app (operator actions from the API or the CLI)."""
    live = LiveLogs(Storage(settings.master.data_dir), *live_caps(settings.master.max_log_bytes))
    return lambda job: keep_as_final_log(job, live, settings.master.max_log_bytes)

"""The rule for capping a build log, shared by the builder (as the build writes it) and
the master (as it stores it): past the cap only the first and the last halves are kept,
with one marker line standing for the middle. The start says what was built, the end
why it failed."""

from __future__ import annotations

from collections import deque
from typing import Protocol


class Sink(Protocol):
    def write(self, data: bytes, /) -> int: ...


def omitted_marker(count: int) -> bytes:
    """The line standing for the middle of a log left out to respect the size cap."""
    return b"\n[armwheels: %d bytes of the log left out here]\n" % count


def head_tail(limit: int) -> tuple[int, int]:
    """How a cap of `limit` bytes is shared between the start and the end of a log."""
    head = limit // 2
    return head, limit - head


class CappedWriter:
    """Writes the first `head` bytes it is given through to `out` at once, holds the last
    `tail` bytes after them in memory, and on finish() writes the marker and that tail:
    a writer of any length costs `head` bytes of disk and `tail` bytes of memory."""

    def __init__(self, out: Sink, head: int, tail: int) -> None:
        self.out = out
        self.head, self.tail = head, tail
        self.written = 0  # bytes passed through (the head)
        self.left_out = 0
        self._window: deque[bytes] = deque()
        self._held = 0

    def write(self, data: bytes) -> int:
        size = len(data)
        room = self.head - self.written
        if room > 0:
            self.out.write(data[:room])
            self.written += min(room, len(data))
            data = data[room:]
        if data:
            self._window.append(data)
            self._held += len(data)
            while self._window and self._held - len(self._window[0]) >= self.tail:
                dropped = self._window.popleft()
                self._held -= len(dropped)
                self.left_out += len(dropped)
        return size

    @property
    def capped(self) -> bool:
        return self.left_out > 0 or self._held > self.tail

    def finish(self) -> int:
        """Write what is held (after the marker, when something was left out); returns the
        bytes kept in all."""
        if self._held > self.tail:
            cut = self._held - self.tail
            self._window[0] = self._window[0][cut:]
            self.left_out += cut
            self._held = self.tail
        if self.left_out:
            self.out.write(omitted_marker(self.left_out))
        for chunk in self._window:
            self.out.write(chunk)
        kept = self.written + self._held
        self._window.clear()
        self._held = 0
        return kept

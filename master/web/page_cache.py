"""Rendered dashboard pages (and the figures behind them) shared between requests for a moment.

Twenty open overviews ask for the same page every couple of seconds, and a popular
project's page is asked for many times a second: within `ttl` seconds they all get the
copy rendered first. Only one request renders an expired page; the others are served the
copy of a moment ago meanwhile (or, for a page never rendered, wait for the one being
rendered), so an expiry never turns into twenty renders at once. Entries are bounded in
bytes and the least recently used go first.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_ENTRIES = 10_000
# What a kept value that is not bytes (the figures a page is rendered from) counts as.
OTHER_VALUE_BYTES = 16 * 1024

T = TypeVar("T")
# A request waiting for another's first render gives up and renders itself after this.
FIRST_RENDER_WAIT = 10.0


@dataclass
class _Entry:
    value: Any
    size: int
    rendered_at: float

    @classmethod
    def of(cls, value: object) -> _Entry:
        size = len(value) if isinstance(value, bytes | str) else OTHER_VALUE_BYTES
        return cls(value, size, time.monotonic())


@dataclass
class _Slot:
    entry: _Entry | None = None
    rendering: threading.Event | None = None


class PageCache:
    """Values by key, each rendered at most once per `ttl` whatever the concurrency."""

    def __init__(
        self, max_bytes: int = DEFAULT_MAX_BYTES, max_entries: int = DEFAULT_MAX_ENTRIES
    ) -> None:
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self._slots: OrderedDict[Hashable, _Slot] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.renders = 0  # for tests and benchmarks: how often render() ran

    def get(self, key: Hashable, ttl: float, render: Callable[[], T]) -> T:
        """The page under `key`, rendered with `render` if none is fresh (`ttl` <= 0:
        always rendered, never kept)."""
        if ttl <= 0:
            return self._render(render)
        with self._lock:
            slot = self._slots.get(key)
            if slot is None:
                slot = self._slots[key] = _Slot()
                self._evict()
            self._slots.move_to_end(key)
            entry = slot.entry
            if entry is not None and time.monotonic() - entry.rendered_at < ttl:
                return cast(T, entry.value)
            if slot.rendering is not None:
                if entry is not None:
                    return cast(T, entry.value)  # being rendered again: the copy of a moment ago
                underway = slot.rendering
            else:
                underway = None
                slot.rendering = threading.Event()
        if underway is not None:
            # The first render of this page is under way: wait for it rather than repeat it.
            underway.wait(FIRST_RENDER_WAIT)
            with self._lock:
                found = self._slots.get(key)
                if found is not None and found.entry is not None:
                    return cast(T, found.entry.value)
            return self._render(render)
        try:
            body = self._render(render)
        except BaseException:
            with self._lock:
                self._finish(key, slot, None)
            raise
        with self._lock:
            self._finish(key, slot, _Entry.of(body))
        return body

    def peek(self, key: Hashable, ttl: float) -> Any | None:
        """What get() would answer without rendering or waiting: the fresh value, or the
        copy of a moment ago while it is being rendered again; None otherwise. Lets an
        async handler answer from the event loop and go to a thread only to render."""
        if ttl <= 0:
            return None
        with self._lock:
            slot = self._slots.get(key)
            if slot is None or slot.entry is None:
                return None
            fresh = time.monotonic() - slot.entry.rendered_at < ttl
            if not fresh and slot.rendering is None:
                return None
            self._slots.move_to_end(key)
            return slot.entry.value

    def clear(self) -> None:
        with self._lock:
            self._slots.clear()
            self._bytes = 0

    def __len__(self) -> int:
        with self._lock:
            return sum(1 for slot in self._slots.values() if slot.entry is not None)

    def _render(self, render: Callable[[], T]) -> T:
        body = render()
        with self._lock:
            self.renders += 1
        return body

    def _finish(self, key: Hashable, slot: _Slot, entry: _Entry | None) -> None:
        """Store a render's result (under the lock) and wake whoever waited for it."""
        event, slot.rendering = slot.rendering, None
        if entry is not None and self._slots.get(key) is slot:
            if slot.entry is not None:
                self._bytes -= slot.entry.size
            slot.entry = entry
            self._bytes += entry.size
            self._evict()
        if event is not None:
            event.set()

    def _evict(self) -> None:
        while len(self._slots) > 1 and (
            self._bytes > self.max_bytes or len(self._slots) > self.max_entries
        ):
            _key, oldest = self._slots.popitem(last=False)
            if oldest.entry is not None:
                self._bytes -= oldest.entry.size
            if oldest.rendering is not None:
                oldest.rendering.set()

"""The dashboard's page cache: one render per page per moment, whatever the concurrency."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from master.web.page_cache import PageCache


class Renderer:
    """Renders b'<name> #<n>' and counts; `gate`, when set, holds every render until it opens."""

    def __init__(self, name: str = "page") -> None:
        self.name = name
        self.count = 0
        self.gate: threading.Event | None = None
        self.started = threading.Event()
        self.lock = threading.Lock()

    def __call__(self) -> bytes:
        with self.lock:
            self.count += 1
            number = self.count
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        return f"{self.name} #{number}".encode()


def test_a_fresh_page_is_served_from_the_cache_and_an_expired_one_rendered_again() -> None:
    cache, render = PageCache(), Renderer()
    assert cache.get("p", 0.2, render) == b"page #1"
    assert cache.get("p", 0.2, render) == b"page #1"
    assert render.count == 1
    time.sleep(0.25)
    assert cache.get("p", 0.2, render) == b"page #2"
    assert cache.renders == 2


def test_no_ttl_renders_every_time_and_keeps_nothing() -> None:
    cache, render = PageCache(), Renderer()
    assert cache.get("p", 0, render) == b"page #1"
    assert cache.get("p", 0, render) == b"page #2"
    assert len(cache) == 0


def test_keys_are_kept_apart() -> None:
    cache = PageCache()
    assert cache.get(("project", "a"), 60, Renderer("a")) == b"a #1"
    assert cache.get(("project", "b"), 60, Renderer("b")) == b"b #1"
    assert cache.get(("project", "a"), 60, Renderer("other")) == b"a #1"


def test_while_an_expired_page_renders_everyone_else_gets_the_copy_of_a_moment_ago() -> None:
    cache, render = PageCache(), Renderer()
    cache.get("p", 0.05, render)
    time.sleep(0.1)
    render.gate, render.started = threading.Event(), threading.Event()
    with ThreadPoolExecutor(20) as pool:
        first = pool.submit(cache.get, "p", 0.05, render)
        assert render.started.wait(5)
        # The render is held: 19 more requests neither wait for it nor render it too.
        others = [pool.submit(cache.get, "p", 0.05, render) for _ in range(19)]
        assert [other.result(timeout=5) for other in others] == [b"page #1"] * 19
        render.gate.set()
        assert first.result(timeout=5) == b"page #2"
    assert render.count == 2


def test_requests_for_a_page_never_rendered_wait_for_the_one_render() -> None:
    cache, render = PageCache(), Renderer()
    render.gate = threading.Event()
    with ThreadPoolExecutor(20) as pool:
        answers = [pool.submit(cache.get, "p", 60, render) for _ in range(20)]
        assert render.started.wait(5)
        time.sleep(0.1)  # let the other 19 arrive and wait
        render.gate.set()
        assert {answer.result(timeout=5) for answer in answers} == {b"page #1"}
    assert render.count == 1


def test_a_failed_render_is_not_kept_and_the_next_request_renders() -> None:
    cache = PageCache()

    def broken() -> bytes:
        raise LookupError("no such project")

    with pytest.raises(LookupError):
        cache.get("p", 60, broken)
    assert len(cache) == 0
    assert cache.get("p", 60, Renderer()) == b"page #1"


def test_the_least_recently_used_pages_go_first_past_the_byte_bound() -> None:
    cache = PageCache(max_bytes=3 * 1000)
    for name in "abc":
        cache.get(name, 60, lambda name=name: name.encode() * 1000)  # type: ignore[misc]
    cache.get("a", 60, Renderer("a-again"))  # a is used again: b is now the oldest
    cache.get("d", 60, lambda: b"d" * 1000)
    assert len(cache) == 3
    assert cache.get("b", 60, Renderer("b")) == b"b #1"  # b was dropped
    assert cache.get("a", 60, Renderer("a")) == b"a" * 1000


def test_the_number_of_pages_is_bounded_too() -> None:
    cache = PageCache(max_entries=5)
    for number in range(50):
        cache.get(number, 60, lambda: b"x")
    assert len(cache) == 5


def test_peek_answers_what_get_would_without_rendering_or_waiting() -> None:
    cache, render = PageCache(), Renderer()
    assert cache.peek("p", 60) is None  # never rendered
    cache.get("p", 0.05, render)
    assert cache.peek("p", 0.05) == b"page #1"  # fresh
    assert cache.peek("p", 0) is None  # no ttl: nothing is kept
    time.sleep(0.1)
    assert cache.peek("p", 0.05) is None  # expired, and nobody renders it: the caller must
    render.gate, render.started = threading.Event(), threading.Event()
    with ThreadPoolExecutor(1) as pool:
        again = pool.submit(cache.get, "p", 0.05, render)
        assert render.started.wait(5)
        assert cache.peek("p", 0.05) == b"page #1"  # being rendered: the copy of a moment ago
        render.gate.set()
        assert again.result(timeout=5) == b"page #2"
    assert cache.peek("p", 0.05) == b"page #2"
    assert render.count == 2

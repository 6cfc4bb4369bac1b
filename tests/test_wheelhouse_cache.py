"""The wheelhouse asks the index once per set of requirements per FRESH_SECONDS: the same
set again (the next job of a batch) is answered from its own wheels, as pip reuses an
index page that young; a new set, or a stale one, goes to the index as before. Real pip
against a PEP 503 index served on loopback, which counts what it is asked."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement

from builder import wheelhouse as wheelhouse_module
from builder.wheelhouse import Wheelhouse, platform_tags
from tests.wheels import make_wheel

WHEEL = "cachedep-1.0-py3-none-any.whl"
PLATFORMS = platform_tags("aarch64", 17)


class CountingHandler(SimpleHTTPRequestHandler):
    pages: list[str]

    def do_GET(self) -> None:
        self.pages.append(self.path)
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def counting_index(folder: Path) -> Iterator[tuple[str, list[str]]]:
    """A PEP 503 index of one wheel on loopback, and the paths it was asked for."""
    (folder / WHEEL).write_bytes(make_wheel(WHEEL, modules=("cachedep",)))
    page = folder / "simple" / "cachedep"
    page.mkdir(parents=True)
    (page / "index.html").write_text(f'<a href="../../{WHEEL}">{WHEEL}</a>\n')
    pages: list[str] = []
    handler = type("Handler", (CountingHandler,), {"pages": pages})
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/simple/", pages
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def _prefetch(cache: Wheelhouse, requirement: str, log: Path) -> bool:
    with log.open("ab") as sink:
        return cache.prefetch(
            [Requirement(requirement)], "cp311", PLATFORMS, None, cache.pip_environment(), sink
        )


def test_a_set_fetched_moments_ago_is_answered_without_the_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "pip.log"
    (tmp_path / "upstream").mkdir()
    with counting_index(tmp_path / "upstream") as (index, pages):
        cache = Wheelhouse(tmp_path / "wheelhouse", 1024**3, index_url=index)
        assert _prefetch(cache, "cachedep", log), log.read_text()
        assert "/simple/cachedep/" in pages
        assert [p.name for p in cache.wheels()] == [WHEEL]
        assert not list(cache.root.glob(".incoming-*"))  # the download folder went
        asked = len(pages)
        # The same set again: from the cache alone.
        assert _prefetch(cache, "cachedep", log)
        assert len(pages) == asked
        # Another set, though the cache could serve it: the index is asked.
        assert _prefetch(cache, "cachedep>=1.0", log)
        assert len(pages) > asked
        asked = len(pages)
        # The first set once older than FRESH_SECONDS: the index is asked again.
        monkeypatch.setattr(wheelhouse_module, "FRESH_SECONDS", 0.0)
        assert _prefetch(cache, "cachedep", log)
        assert len(pages) > asked
    assert [p.name for p in cache.wheels()] == [WHEEL]

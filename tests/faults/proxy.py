"""A TCP proxy on loopback between a builder and the master, that the fault suite tells
to pass bytes, stall them, or drop every connection, and that can hold an upload (a
request to a job's /result) part way through its body.

Runs an asyncio loop in a thread of the test process.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import struct
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field

from tests.servers import wait_until

PASS, STALL, DROP = "pass", "stall", "drop"
UPLOAD = re.compile(rb"POST /api/v1/jobs/(\d+)/result HTTP/1\.1\r\n")
READ = 64 * 1024


@dataclass(eq=False)
class _Link:
    """One proxied connection."""

    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    upload: int | None = None  # bytes sent of a POST of a job's result, once one started
    held: bool = False  # an upload held part way through its body
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class Proxy:
    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.mode = PASS
        # Hold each result upload (of job hold_job only, if set) after this many bytes of
        # its request (None: do not).
        self.hold_uploads_after: int | None = None
        self.hold_job: int | None = None
        self.held = threading.Event()  # an upload is held
        self.port = 0
        self._links: set[_Link] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._flowing = asyncio.Event()

    # --- control, from the test's thread -------------------------------------------------

    def start(self) -> None:
        self._thread.start()
        self._call(self._listen())
        wait_until(lambda: self.port != 0, 10, "the proxy", 0.01)

    def stop(self) -> None:
        self._call(self._close_all(listen_too=True))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def set_mode(self, mode: str) -> None:
        """PASS: bytes flow; STALL: no byte moves either way (connections stay open);
        DROP: every connection is reset, now and as soon as it opens."""
        self._call(self._set_mode(mode))

    def hold_uploads(self, after: int | None, job: int | None = None) -> None:
        self.held.clear()
        self.hold_job = job
        self.hold_uploads_after = after

    def release_uploads(self) -> None:
        """Let held uploads go on."""
        self.hold_uploads_after = None
        self._call(self._wake())

    def reset_held(self) -> None:
        """Reset the connections of held uploads (their sender is gone)."""
        self._call(self._reset(lambda link: link.held))

    def _call(self, coroutine: object) -> None:
        future: Future[None] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)  # type: ignore[arg-type]
        future.result(10)

    # --- the loop ---------------------------------------------------------------------

    async def _listen(self) -> None:
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _set_mode(self, mode: str) -> None:
        self.mode = mode
        if mode == STALL:
            self._flowing.clear()
        else:
            self._flowing.set()
        if mode == DROP:
            await self._reset(lambda _link: True)

    async def _wake(self) -> None:
        for link in self._links:
            link.held = False

    async def _reset(self, which: object) -> None:
        for link in list(self._links):
            if which(link):  # type: ignore[operator]
                _abort(link.client)
                _abort(link.server)

    async def _close_all(self, listen_too: bool) -> None:
        if listen_too and self._server is not None:
            self._server.close()
        await self._reset(lambda _link: True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == DROP:
            _abort(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _abort(writer)
            return
        link = _Link(writer, up_writer)
        self._links.add(link)
        try:
            await asyncio.gather(
                self._pump(link, reader, up_writer, upstream=True),
                self._pump(link, up_reader, writer, upstream=False),
            )
        finally:
            self._links.discard(link)
            _abort(writer)
            _abort(up_writer)

    async def _pump(
        self,
        link: _Link,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream: bool,
    ) -> None:
        try:
            while data := await reader.read(READ):
                if upstream:
                    data = await self._maybe_hold(link, data, writer)
                else:
                    link.upload = None  # an answer: the request it answers is over
                while not self._flowing.is_set():
                    await asyncio.sleep(0.05)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            _abort(writer)

    async def _maybe_hold(self, link: _Link, data: bytes, writer: asyncio.StreamWriter) -> bytes:
        """Send an upload's bytes up to the hold point, then wait until released. A request
        on a kept-alive connection starts anywhere in the stream: at its request line."""
        if link.upload is None:
            start = UPLOAD.search(data)
            if start is None or self.hold_job not in (None, int(start.group(1))):
                return data
            link.upload = -start.start()  # bytes of the upload sent so far
        after = self.hold_uploads_after
        if after is None or link.upload + len(data) <= after:
            link.upload += len(data)
            return data
        cut = max(0, after - link.upload)
        writer.write(data[:cut])
        await writer.drain()
        link.upload += len(data)
        link.held = True
        self.held.set()
        while self.hold_uploads_after is not None and link.held:
            await asyncio.sleep(0.05)
        return data[cut:]


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with a reset (SO_LINGER 0), as a dropped connection is seen."""
    sock = writer.get_extra_info("socket")
    with contextlib.suppress(OSError):
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(Exception):
        writer.transport.abort()

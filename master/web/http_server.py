"""The master's HTTP server: one process, or several serving one port (SO_REUSEPORT).

Rendering pages and checking uploads is Python work, and a Python process runs one
request's Python code at a time, so one process caps the master's pages at one core.
With several workers the parent opens one listening socket per worker on the port and
keeps a spawned process serving each, with its own database pool and app: what they share
lives in the database (rate limits, tokens, jobs) or under `flock` in the data directory
(live logs, the static index), as it already must for several masters. The parent runs
the master's loop and restarts a worker that dies; a worker whose parent dies stops too.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from multiprocessing.context import SpawnProcess
from types import FrameType

import uvicorn

from common.config import Settings
from common.db import make_engine, make_sessionmaker
from common.logs import setup_logging

log = logging.getLogger(__name__)

MAX_AUTO_WORKERS = 8
# A worker that dies is started again, but not more often than this (a crash loop).
RESTART_DELAY = 1.0
# Workers stopping (SIGTERM) finish the requests under way for at most this long.
STOP_TIMEOUT = 30.0
_PR_SET_PDEATHSIG = 1


def http_workers(settings: Settings) -> int:
    """`master.http_workers`, or when 0 one per core (at most 8) on PostgreSQL; SQLite is
    one file with one writer at a time, where more processes would only wait on it."""
    configured = settings.master.http_workers
    if configured:
        return configured
    if settings.database.url.startswith("sqlite"):
        return 1
    return max(1, min(MAX_AUTO_WORKERS, os.cpu_count() or 1))


def serve_http(settings: Settings, workers: int) -> None:
    """Serve the master's API, index and dashboard until SIGINT or SIGTERM."""
    if workers <= 1:
        _serve(settings, sockets=None)
        return
    listeners = listen_sockets(settings.master.host, settings.master.port, workers)
    try:
        WorkerPool(settings, listeners).run()
    finally:
        for listener in listeners:
            listener.close()


# uvicorn's default: connections the kernel queues for a worker busy with others.
BACKLOG = 2048


def listen_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """One listening socket per worker on the same port (SO_REUSEPORT), so the kernel
    spreads new connections evenly between workers. Workers accepting from one shared
    socket did not: whichever woke first took a whole burst, and 20 keep-alive clients
    could all end up on one worker while the other idled. The parent keeps the sockets,
    so a restarted worker serves the connections queued for the one it replaces.
    A port already in use is refused first, without SO_REUSEPORT: a second master must
    not quietly share the first one's port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise SystemExit(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            listener = socket.socket(family)
            sockets.append(listener)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            listener.bind((host, port))
            listener.listen(BACKLOG)
            listener.set_inheritable(True)
    except OSError as exc:
        for listener in sockets:
            listener.close()
        raise SystemExit(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    log.info("listening", extra={"host": host, "port": port, "sockets": count})
    return sockets


def _serve(
    settings: Settings, sockets: list[socket.socket] | None, parent: int | None = None
) -> None:
    from master.web.app import create_app

    engine = make_engine(settings.database.url, settings.database.echo)
    try:
        app = create_app(settings, make_sessionmaker(engine))
        _freeze_startup_objects()
        config = uvicorn.Config(
            app,
            host=settings.master.host,
            port=settings.master.port,
            log_config=None,
            access_log=False,
        )
        server = uvicorn.Server(config)
        if parent is not None:
            _watch_parent(server, parent)
        server.run(sockets=sockets)
    finally:
        engine.dispose()


def _freeze_startup_objects() -> None:
    """Move everything made while starting (modules, the app, SQLAlchemy's mappers: ~140k
    objects) out of the cyclic garbage collector's sight. They live as long as the
    process, yet a full collection walked them all, stopping every request in the
    process for ~90 ms a few times a minute under load: the dashboard's p99."""
    gc.collect()
    gc.freeze()


def _die_with_parent(parent: int) -> None:
    """A worker outlives no master: the kernel sends it SIGTERM when the parent dies
    (Linux); a parent already gone by now is caught here."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass
    if os.getppid() != parent:
        raise SystemExit(f"master {parent} gone before http worker {os.getpid()} started")


def _watch_parent(server: uvicorn.Server, parent: int) -> None:
    """Where the kernel sends no signal, a watch on the parent's pid stops the server."""

    def watch() -> None:
        while not server.should_exit:
            if os.getppid() != parent:
                log.warning("master gone: http worker stopping", extra={"pid": os.getpid()})
                server.should_exit = True
                return
            time.sleep(1.0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _worker_main(
    settings: Settings, listener: socket.socket, level: int, slot: int, parent: int
) -> None:
    """A spawned worker's entry point: a fresh interpreter with its own engine and app."""
    _die_with_parent(parent)
    setup_logging(level)
    log.info("http worker serving", extra={"worker": slot, "pid": os.getpid()})
    _serve(settings, sockets=[listener], parent=parent)


class WorkerPool:
    """Keeps one worker process serving each listening socket until SIGINT or SIGTERM."""

    def __init__(self, settings: Settings, listeners: list[socket.socket]) -> None:
        self.settings = settings
        self.listeners = listeners
        self.count = len(listeners)
        self.context = multiprocessing.get_context("spawn")
        self.workers: dict[int, SpawnProcess] = {}
        self.started_at: dict[int, float] = {}
        self.stopping = threading.Event()

    def run(self) -> None:
        previous = {
            signum: signal.signal(signum, self._on_signal)
            for signum in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            for slot in range(self.count):
                self._start(slot)
            while not self.stopping.wait(0.5):
                self._restart_dead()
        finally:
            self._stop_all()
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("master stopping", extra={"signal": signal.Signals(signum).name})
        self.stopping.set()

    def _start(self, slot: int) -> None:
        process = self.context.Process(
            target=_worker_main,
            args=(
                self.settings,
                self.listeners[slot],
                logging.getLogger().level,
                slot,
                os.getpid(),
            ),
            name=f"armwheels-http-{slot}",
        )
        process.start()
        self.workers[slot] = process
        self.started_at[slot] = time.monotonic()
        log.info("http worker started", extra={"worker": slot, "pid": process.pid})

    def _restart_dead(self) -> None:
        for slot, process in list(self.workers.items()):
            if process.is_alive():
                continue
            if time.monotonic() - self.started_at[slot] < RESTART_DELAY:
                continue
            log.error(
                "http worker exited: starting another",
                extra={"worker": slot, "pid": process.pid, "exitcode": process.exitcode},
            )
            process.close()
            self._start(slot)

    def _stop_all(self) -> None:
        for process in self.workers.values():
            if process.is_alive():
                process.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT
        for slot, process in self.workers.items():
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.error("http worker did not stop: killed", extra={"worker": slot})
                process.kill()
                process.join()

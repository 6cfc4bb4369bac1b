"""Runs the master: poller, reconciler and dispatcher in a thread, the HTTP server in front
(in this process, or in worker processes: master/web/http_server.py)."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from common.config import Settings
from common.db import is_up_to_date, make_engine, make_sessionmaker, transaction
from common.messages import configured_queues, declare_queues, make_celery
from master.builds import dependencies
from master.builds.live_logs import LiveLogs, live_caps
from master.builds.reconciler import reconcile
from master.builds.scheduler import dispatch_pending, served_targets
from master.index.pushes import push_due
from master.index.static import StaticIndex
from master.leader import PollLeader
from master.pypi.changelog import ChangelogClient, ChangelogError, TransientChangelogError
from master.pypi.feed import follow_changelog, read_cursor
from master.pypi.json_api import JsonApiClient
from master.pypi.poller import poll_watched
from master.pypi.refresh import refresh_marked
from master.pypi.upstream import SimpleClient
from master.pypi.watch import watching
from master.storage import Storage
from master.web.http_server import http_workers, serve_http

log = logging.getLogger(__name__)


class SchemaOutdated(RuntimeError):
    """The database needs `armwheels db upgrade` before the master can start."""


@dataclass
class UpstreamClients:
    """One client per upstream interface; each keeps its connections between rounds."""

    simple: SimpleClient
    changelog: ChangelogClient
    json_api: JsonApiClient

    @classmethod
    def for_settings(cls, settings: Settings) -> UpstreamClients:
        upstream = settings.upstream
        return cls(
            SimpleClient(upstream.index_url, upstream.timeout),
            ChangelogClient(upstream.xmlrpc_url, upstream.timeout),
            JsonApiClient(upstream.json_url, upstream.timeout),
        )

    def close(self) -> None:
        self.simple.close()
        self.changelog.close()
        self.json_api.close()


class FeedLoop(threading.Thread):
    """Each round: the leader follows upstream (every poll_interval), refreshes releases the
    changelog named and reconciles; every master dispatches.

    Of several masters on one PostgreSQL database only the leader does the upstream and
    reconcile work (see master.leader); dispatch runs everywhere, since its batches are
    locked with SKIP LOCKED, so it keeps going while leadership moves.
    """

    def __init__(
        self,
        settings: Settings,
        factory: sessionmaker[Session],
        celery: Celery,
        leader: PollLeader,
    ) -> None:
        super().__init__(name="feed-loop", daemon=True)
        self.settings = settings
        self.factory = factory
        self.celery = celery
        self.leader = leader
        self.stopping = threading.Event()
        self.next_poll = 0.0
        self.storage = Storage(settings.master.data_dir)
        self.live = LiveLogs(self.storage, *live_caps(settings.master.max_log_bytes))
        self.static = (
            StaticIndex(settings.master.data_dir, settings.distribution_indexes())
            if settings.index.static
            else None
        )

    def run(self) -> None:
        client = UpstreamClients.for_settings(self.settings)
        try:
            while not self.stopping.is_set():
                self.run_round(client)
                self.stopping.wait(self.settings.master.dispatch_interval)
        finally:
            # Hand over now rather than when the process exits.
            self.leader.release()
            client.close()

    def run_round(self, client: UpstreamClients) -> None:
        try:
            leading = self.leader.is_leader()
        except Exception:
            log.exception("leadership check failed")
            leading = False
        if leading:
            self._lead(client)
        else:
            # Poll as soon as this master leads: the previous leader's schedule is unknown.
            self.next_poll = 0.0
        try:
            with self.factory() as session:
                served = served_targets(session, self.settings.master.builder_timeout)
            sent = dispatch_pending(
                self.factory,
                self.celery,
                queue_depth=self.settings.master.queue_depth,
                targets=served,
            )
            if sent:
                log.info("dispatched jobs", extra={"count": sent})
        except Exception:
            log.exception("dispatch failed")
        try:
            pushed = push_due(self.factory, self.settings, self.storage)
            if pushed.pushed or pushed.failed:
                log.info(
                    "push round",
                    extra={"pushed": pushed.pushed, "failed": pushed.failed},
                )
        except Exception:
            log.exception("push round failed")
        remove_stale_parts(self.storage)
        if self.static is not None:
            # Yanks and removals from the feed reach the static tree here.
            try:
                with self.factory() as session:
                    self.static.sync(session)
            except Exception:
                log.exception("static index update failed")

    def _lead(self, client: UpstreamClients) -> None:
        """The work only one master does at a time."""
        upstream = self.settings.upstream
        if time.monotonic() >= self.next_poll:
            try:
                if upstream.feed == "changelog":
                    follow_changelog(self.factory, client.changelog, self.settings)
                else:
                    poll_watched(self.factory, client.simple, self.settings)
            except (TransientChangelogError, ChangelogError) as exc:
                # The cursor did not move: the next round starts where this one failed.
                log.warning("changelog round failed: %s", exc)
            except Exception:
                log.exception("poll round failed")
            self.next_poll = time.monotonic() + upstream.poll_interval
        try:
            refresh_marked(self.factory, client.json_api, self.settings)
        except Exception:
            log.exception("refresh failed")
        try:
            with transaction(self.factory) as session:
                reconcile(session, self.settings, live=self.live)
        except Exception:
            log.exception("reconcile failed")
        try:
            with transaction(self.factory) as session:
                dependencies.settle(session, self.settings)
        except Exception:
            log.exception("dep-wait round failed")


def remove_stale_parts(storage: Storage) -> None:
    """Temporary files of uploads a crash interrupted take no disk for ever."""
    try:
        removed = storage.remove_stale_parts()
    except OSError:
        log.exception("temporary files not removed")
        return
    if removed:
        log.info(
            "temporary files of interrupted writes removed",
            extra={"count": len(removed), "folder": str(storage.tmp)},
        )


def run_master(settings: Settings) -> None:
    engine = make_engine(settings.database.url, settings.database.echo)
    if not is_up_to_date(engine):
        raise SchemaOutdated("database schema is not current: run `armwheels db upgrade`")
    remove_stale_parts(Storage(settings.master.data_dir))
    factory = make_sessionmaker(engine)
    with factory() as session:
        cursor = read_cursor(session)
    log.info(
        f"master watching {watching(settings.upstream, cursor)}",
        extra={"feed": settings.upstream.feed},
    )
    celery = make_celery(settings)
    declare_queues(celery, configured_queues(settings))
    leader = PollLeader(engine)
    loop = FeedLoop(settings, factory, celery, leader)
    loop.start()
    workers = http_workers(settings)
    log.info(
        "master listening",
        extra={"url": settings.master.public_url, "http_workers": workers},
    )
    try:
        serve_http(settings, workers)
    finally:
        loop.stopping.set()
        loop.join(timeout=30)
        leader.close()
        engine.dispose()

"""Runs the master: the feed poller and dispatcher in a thread, the HTTP server in front."""

from __future__ import annotations

import logging
import threading
import time

import uvicorn
from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from common.config import Settings
from common.db import is_up_to_date, make_engine, make_sessionmaker, transaction
from common.messages import make_celery
from master.app import create_app
from master.poller import poll_watched
from master.reconciler import reconcile
from master.scheduler import dispatch_pending
from master.upstream import SimpleClient

log = logging.getLogger(__name__)


class SchemaOutdated(RuntimeError):
    """The database needs `armwheels db upgrade` before the master can start."""


class FeedLoop(threading.Thread):
    """Polls upstream every poll_interval and dispatches pending jobs more often."""

    def __init__(self, settings: Settings, factory: sessionmaker[Session], celery: Celery) -> None:
        super().__init__(name="feed-loop", daemon=True)
        self.settings = settings
        self.factory = factory
        self.celery = celery
        self.stopping = threading.Event()

    def run(self) -> None:
        client = SimpleClient(self.settings.upstream.index_url, self.settings.upstream.timeout)
        next_poll = 0.0
        try:
            while not self.stopping.is_set():
                if time.monotonic() >= next_poll:
                    try:
                        poll_watched(self.factory, client, self.settings)
                    except Exception:
                        log.exception("poll round failed")
                    next_poll = time.monotonic() + self.settings.upstream.poll_interval
                try:
                    with transaction(self.factory) as session:
                        reconcile(session, self.settings)
                except Exception:
                    log.exception("reconcile failed")
                try:
                    sent = dispatch_pending(self.factory, self.celery)
                    if sent:
                        log.info("dispatched jobs", extra={"count": sent})
                except Exception:
                    log.exception("dispatch failed")
                self.stopping.wait(self.settings.master.dispatch_interval)
        finally:
            client.close()


def run_master(settings: Settings) -> None:
    engine = make_engine(settings.database.url, settings.database.echo)
    if not is_up_to_date(engine):
        raise SchemaOutdated("database schema is not current: run `armwheels db upgrade`")
    factory = make_sessionmaker(engine)
    celery = make_celery(settings)
    loop = FeedLoop(settings, factory, celery)
    loop.start()
    app = create_app(settings, factory)
    log.info("master listening", extra={"url": settings.master.public_url})
    try:
        uvicorn.run(
            app,
            host=settings.master.host,
            port=settings.master.port,
            log_config=None,
            access_log=False,
        )
    finally:
        loop.stopping.set()
        loop.join(timeout=30)
        engine.dispose()

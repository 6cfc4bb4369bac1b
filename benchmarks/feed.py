"""Changelog ingestion and job dispatch rates, on PostgreSQL and Redis.

A local server (tests.pypi_replay) replays a generated PyPI journal with PyPI's XML-RPC
protocol and JSON API. Printed figures:
  events/s (end to end)  changelog_since_serial pages fetched, parsed and applied
  events/s (apply only)  the same events applied from memory: the database part alone
  releases/s (refresh)   JSON API lookups that turn the named releases into jobs
  jobs/s (dispatch)      pending jobs sent to Redis and marked queued
Goals (issue 3): 5,000 events/s and 2,000 jobs/s on this 2-core machine.

Usage: .venv/bin/python -m benchmarks.feed [EVENTS]   (default 100000)
Needs PostgreSQL on 127.0.0.1:5432 (user postgres) and Redis on 127.0.0.1:6379 (db 12 is
flushed).
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager

import redis
from rich.console import Console
from rich.table import Table
from sqlalchemy import func, select
from tenacity import wait_none

from common.config import Settings, load_settings
from common.db import make_engine, make_sessionmaker, transaction, upgrade
from common.messages import make_celery
from common.models import BuildJob
from common.states import JobState
from master.builds.scheduler import dispatch_pending
from master.pypi.changelog import ChangelogClient
from master.pypi.feed import BATCH_EVENTS, apply_events, follow_changelog
from master.pypi.journal import JournalEvent
from master.pypi.json_api import JsonApiClient
from master.pypi.refresh import refresh_marked
from tests.conftest import _postgres_database
from tests.pypi_replay import replay_server

REDIS_DB = 12
GOAL_EVENTS = 5000.0
GOAL_JOBS = 2000.0


# A fresh PostgreSQL database, dropped afterwards: the tests' own helper.
scratch_database = contextmanager(_postgres_database)


def bench_settings(url: str, base: str, start: int) -> Settings:
    return load_settings(
        None,
        database={"url": url},
        broker={"url": f"redis://127.0.0.1:6379/{REDIS_DB}"},
        upstream={
            "feed": "changelog",
            "projects": "all",
            "xmlrpc_url": base + "/pypi",
            "json_url": base + "/pypi/",
            "changelog_start": start,
        },
        # Two targets, so each release makes two jobs.
        targets={
            "aarch64": {"image": "x", "policy": "manylinux2014_aarch64"},
            "armv7l": {"image": "y", "policy": "manylinux2014_armv7l"},
        },
    )


def main(events: int) -> None:
    console = Console()
    rows: list[tuple[str, str, str]] = []
    console.print(f"generating and serving a journal of {events:,} events ...")
    with replay_server(events=events, seed=11) as server, scratch_database() as url:
        start = server.journal[0].serial - 1
        settings = bench_settings(url, server.url, start)
        engine = make_engine(url)
        upgrade(engine)
        factory = make_sessionmaker(engine)
        client = ChangelogClient(server.xmlrpc_url, timeout=120, wait=wait_none())

        started = time.perf_counter()
        outcome = follow_changelog(factory, client, settings)
        feed_seconds = time.perf_counter() - started
        assert outcome.events == events, outcome
        rate = events / feed_seconds
        rows.append(("events/s, end to end", f"{rate:,.0f}", f"{rate / GOAL_EVENTS:.2f}x goal"))

        # The same events again from memory, into a second, empty database.
        pages = []
        serial = start
        while (page := client.since(serial)).last_serial is not None:
            pages.append(page.events)
            serial = page.last_serial
        client.close()
        with scratch_database() as url2:
            engine2 = make_engine(url2)
            upgrade(engine2)
            factory2 = make_sessionmaker(engine2)
            batches: list[list[JournalEvent]] = [
                page[i : i + BATCH_EVENTS]
                for page in pages
                for i in range(0, len(page), BATCH_EVENTS)
            ]
            started = time.perf_counter()
            for batch in batches:
                with transaction(factory2) as session:
                    apply_events(session, batch, settings)
            apply_seconds = time.perf_counter() - started
            engine2.dispose()
        rate = events / apply_seconds
        rows.append(("events/s, apply only", f"{rate:,.0f}", f"{rate / GOAL_EVENTS:.2f}x goal"))

        json_api = JsonApiClient(settings.upstream.json_url, 60, wait=wait_none())
        started = time.perf_counter()
        releases = 0
        while (refreshed := refresh_marked(factory, json_api, settings, limit=500)).projects:
            releases += refreshed.releases
        refresh_seconds = time.perf_counter() - started
        json_api.close()
        rows.append(("releases/s, JSON API refresh", f"{releases / refresh_seconds:,.0f}", ""))

        with factory() as session:
            pending = session.scalar(select(func.count()).where(BuildJob.state == JobState.PENDING))
        assert pending, "the journal produced no jobs"
        broker = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
        broker.flushdb()
        celery = make_celery(settings)
        started = time.perf_counter()
        sent = 0
        while batch_sent := dispatch_pending(factory, celery, queue_depth=10**9):
            sent += batch_sent
        dispatch_seconds = time.perf_counter() - started
        broker.flushdb()
        broker.close()
        engine.dispose()
        rate = sent / dispatch_seconds
        rows.append(("jobs/s, dispatch to Redis", f"{rate:,.0f}", f"{rate / GOAL_JOBS:.2f}x goal"))

    table = Table(title=f"Changelog feed, {events:,} events, PostgreSQL + Redis")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("ratio", justify="right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    console.print(
        f"feed {feed_seconds:.1f} s, apply {apply_seconds:.1f} s, "
        f"refresh {refresh_seconds:.1f} s ({releases:,} releases), "
        f"dispatch {dispatch_seconds:.1f} s ({sent:,} jobs)"
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)

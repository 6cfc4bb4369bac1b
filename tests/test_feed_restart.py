"""A master killed with SIGKILL in the middle of the changelog neither skips nor repeats a change.

Two runs of the real `armwheels master` process follow the same 100,000-event replay of
PyPI's journal into PostgreSQL (Redis broker): one uninterrupted, one killed with SIGKILL
half-way through the feed and started again. Their databases must be equal.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from common.db import make_engine, make_sessionmaker
from common.models import BuildJob, FeedActionCount, Project, Release, SourceFile
from common.states import JobState
from master.pypi.feed import CHANGELOG_FEED, read_cursor
from tests.conftest import _postgres_database
from tests.pypi_replay import ReplayServer, replay_server
from tests.servers import free_port, stop_process, wait_until

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(sys.executable).with_name("armwheels")
CLI = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "armwheels"]
EVENTS = 100_000
REDIS_DB = 10
# Releases of every tenth project are built: the feed applies all 100k events, and the
# JSON API refresh stays small enough for CI.
WATCH_EVERY = 10


def _config(tmp_path: Path, server: ReplayServer, watched: list[str]) -> Path:
    config = tmp_path / "farm.toml"
    names = ", ".join(f'"{name}"' for name in watched)
    config.write_text(
        f"""
[upstream]
feed = "changelog"
projects = [{names}]
xmlrpc_url = "{server.xmlrpc_url}"
json_url = "{server.url}/pypi/"
changelog_start = {server.journal[0].serial - 1}
poll_interval = 1
refresh_batch = 100

[master]
port = {free_port()}
data_dir = "{tmp_path / "data"}"
dispatch_interval = 0.2
"""
    )
    return config


def _snapshot(session: Session) -> dict[str, Any]:
    """The database without ids and clock times, which differ between any two runs."""
    waiting = {JobState.PENDING: "waiting", JobState.QUEUED: "waiting"}
    return {
        "cursor": read_cursor(session, CHANGELOG_FEED),
        "counts": sorted(session.execute(select(FeedActionCount.kind, FeedActionCount.count))),
        "projects": sorted(
            (p.name, p.display_name, p.removed_at is not None, p.upstream_serial)
            for p in session.scalars(select(Project))
        ),
        "releases": sorted(
            (
                name,
                r.version,
                r.yanked,
                r.yanked_reason or "",
                r.removed_at is not None,
                r.refresh_needed,
                str(r.skip_reason),
                r.requires_python or "",
                tuple(r.upstream_files),
            )
            for name, r in session.execute(select(Project.name, Release).join(Project))
        ),
        "sources": sorted(
            (s.filename, s.sha256, s.size or 0, s.url) for s in session.scalars(select(SourceFile))
        ),
        "jobs": sorted(
            (
                name,
                version,
                job.arch,
                job.python_tag,
                waiting.get(job.state, job.state.value),
                str(job.skip_reason),
                job.priority,
            )
            for name, version, job in session.execute(
                select(Project.name, Release.version, BuildJob)
                .join(Release, BuildJob.release_id == Release.id)
                .join(Project)
            )
        ),
    }


def _caught_up(url: str, last_serial: int) -> bool:
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as session:
            if read_cursor(session, CHANGELOG_FEED) != last_serial:
                return False
            marked = session.scalar(
                select(func.count()).where(
                    Release.refresh_needed.is_(True), Release.removed_at.is_(None)
                )
            )
            return marked == 0
    finally:
        engine.dispose()


def _cursor(url: str) -> int:
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as session:
            return read_cursor(session, CHANGELOG_FEED) or 0
    finally:
        engine.dispose()


def _run(
    tmp_path: Path, config: Path, url: str, last_serial: int, kill_at: int | None
) -> dict[str, Any]:
    env = dict(
        os.environ,
        ARMWHEELS_DATABASE__URL=url,
        ARMWHEELS_BROKER__URL=f"redis://127.0.0.1:6379/{REDIS_DB}",
    )
    subprocess.run([*CLI, "db", "upgrade", "--config", str(config)], env=env, check=True)
    log_path = tmp_path / f"master-{'killed' if kill_at else 'whole'}.log"
    with log_path.open("ab") as log:

        def start() -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                [*CLI, "master", "--config", str(config)],
                env=env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

        master = start()
        try:
            if kill_at is not None:
                wait_until(lambda: _cursor(url) >= kill_at, 300, "the feed half-way", step=0.05)
                master.send_signal(signal.SIGKILL)
                master.wait()
                assert _cursor(url) < last_serial, "the kill came too late to test anything"
                master = start()
            wait_until(lambda: _caught_up(url, last_serial), 600, "the feed to catch up")
        finally:
            stop_process(master)
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as session:
            return _snapshot(session)
    finally:
        engine.dispose()


@pytest.mark.slow
@pytest.mark.postgres
def test_kill_9_in_the_middle_of_the_feed_changes_nothing(tmp_path: Path) -> None:
    broker = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
    broker.flushdb()
    with replay_server(events=EVENTS, seed=5, page_limit=5000) as server:
        state = server.expected_state()
        watched = sorted(state.projects)[::WATCH_EVERY]
        config = _config(tmp_path, server, watched)
        last = server.journal[-1].serial
        middle = server.journal[len(server.journal) // 2].serial
        try:
            for url in _postgres_database():
                whole = _run(tmp_path, config, url, last, kill_at=None)
            broker.flushdb()
            for url in _postgres_database():
                killed = _run(tmp_path, config, url, last, kill_at=middle)
        finally:
            broker.flushdb()
            broker.close()
    assert whole["cursor"] == last
    assert sum(count for _, count in whole["counts"]) == EVENTS
    assert len(whole["jobs"]) > 100 and len(whole["releases"]) > 500
    for key in whole:
        assert killed[key] == whole[key], key

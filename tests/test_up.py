"""`armwheels up` on its embedded default: what it watches, and that its master does it.

`start_farm` is what `armwheels up` runs first (settings, database, the upstream choice
and the first log lines); the master is then started as `up` starts it, with the same
command and environment. No builder is started: the jobs the master plans prove what it
follows. PyPI's changelog is tests.pypi_replay (PyPI's XML-RPC protocol, on loopback);
the default watch list is read from a real pypiserver.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from packaging.utils import canonicalize_name
from packaging.version import Version
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from armwheels.up import FarmStart, start_farm
from common.config import CONFIG_ENV, Settings
from common.db import make_engine, make_sessionmaker
from common.logs import LogfmtFormatter
from common.models import BuildJob, Project, Release
from common.states import JobState
from common.tags import covering_wheel
from master.builds.build_plan import pure_python_wheel, target_allowed
from master.pypi.feed import read_cursor
from master.pypi.watch import DEFAULT_WATCH_LIST
from master.web.app import create_app
from tests.pypi_replay import ReplayServer, ReplayState, action_kind, replay_server
from tests.servers import ROOT, free_port, stop_process, wait_until
from tests.test_dashboard import Page

WAITING = (JobState.PENDING, JobState.QUEUED)
# Journal actions after which the farm records a release (and asks the JSON API for it).
RECORDING = frozenset({"new release", "add source file", "add binary wheel", "add pure wheel"})


@pytest.fixture
def embedded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The environment of `armwheels up` without --config: only where it keeps its data
    and its port are set (and, per test, where upstream is)."""
    for name in ("FEED", "PROJECTS", "CHANGELOG_START", "INDEX_URL", "XMLRPC_URL", "JSON_URL"):
        monkeypatch.delenv(f"ARMWHEELS_UPSTREAM__{name}", raising=False)
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    # httpx honours proxy variables: loopback requests must never be sent to a proxy.
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    monkeypatch.setenv("ARMWHEELS_MASTER__DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("ARMWHEELS_MASTER__PORT", str(free_port()))
    monkeypatch.setenv("ARMWHEELS_BUILDER__WORK_DIR", str(tmp_path / "work"))
    return tmp_path


def first_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    formatter = LogfmtFormatter()
    return [formatter.format(r) for r in caplog.records if r.name == "armwheels.up"]


@contextmanager
def sessions(settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(settings.database.url)
    try:
        yield make_sessionmaker(engine)
    finally:
        engine.dispose()


def getting_started(settings: Settings) -> Page:
    """The dashboard's overview on the farm's database, as its master serves it."""
    settings.master.overview_cache = 0
    with sessions(settings) as factory, TestClient(create_app(settings, factory)) as client:
        response = client.get("/")
        assert response.status_code == 200
        return Page(response.text)


@contextmanager
def farm_master(start: FarmStart, log: Path) -> Iterator[str]:
    """`up`'s master: the command and environment `armwheels up` starts it with (its
    loop turning faster); yields its URL."""
    env = dict(start.env, ARMWHEELS_MASTER__DISPATCH_INTERVAL="0.3")
    with log.open("ab") as sink:
        process = subprocess.Popen(
            start.command("master"), env=env, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT
        )
    url = start.settings.master.public_url
    try:
        wait_until(lambda: _answers(url, process, log), 60, "the master")
        yield url
    finally:
        stop_process(process)


def _answers(url: str, process: subprocess.Popen[bytes], log: Path) -> bool:
    assert process.poll() is None, log.read_text()
    try:
        return httpx.get(f"{url}/api/v1/status", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def planned(factory: sessionmaker[Session]) -> set[tuple[str, str, str, str]]:
    """(project, version, target, python tag) of every job waiting to be built."""
    with factory() as session:
        rows = session.execute(
            select(Project.name, Release.version, BuildJob.target, BuildJob.python_tag)
            .join(Release, BuildJob.release_id == Release.id)
            .join(Project)
            .where(BuildJob.state.in_(WAITING))
        ).all()
    return {(name, version, target, tag) for name, version, target, tag in rows}


def test_unreachable_changelog_watches_the_default_list(
    embedded: Path,
    msgpack_upstream: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert "msgpack" in DEFAULT_WATCH_LIST  # the local index serves this one of the list
    closed = f"http://127.0.0.1:{free_port()}/pypi"
    monkeypatch.setenv("ARMWHEELS_UPSTREAM__XMLRPC_URL", closed)
    monkeypatch.setenv("ARMWHEELS_UPSTREAM__INDEX_URL", msgpack_upstream)
    caplog.set_level(logging.INFO, logger="armwheels.up")
    start = start_farm(None)
    upstream = start.settings.upstream
    assert (upstream.feed, upstream.projects) == ("simple", list(DEFAULT_WATCH_LIST))
    lines = first_lines(caplog)
    # One line says what was tried, the error, and what the farm does instead.
    assert len(lines) == 4, lines
    warning = lines[0]
    assert "level=warning" in warning and "\n" not in warning
    assert f'tried="changelog_last_serial at {closed} (at most 5 s)"' in warning
    assert "Connection refused" in warning
    assert f'instead="{len(DEFAULT_WATCH_LIST)} projects at {msgpack_upstream}"' in warning
    watching, where, add = lines[1:]
    assert f"through the Simple API at {msgpack_upstream}: " + ", ".join(DEFAULT_WATCH_LIST) in (
        watching
    )
    url = start.settings.master.public_url
    assert f"dashboard at {url}/, index at {url}/simple/" in where
    assert "armwheels import NAME" in add and "upstream.projects" in add
    # The dashboard of a farm without a job says the same.
    page = getting_started(start.settings)
    assert ", ".join(DEFAULT_WATCH_LIST) in page.by_id("watching").text
    assert "armwheels import NAME" in page.by_id("add-project").text

    # Its master polls the list on the local index: msgpack's newest release, with only
    # an sdist there, is planned for the default target; the others are not served there.
    with (
        sessions(start.settings) as factory,
        farm_master(start, embedded / "master.log") as master_url,
    ):
        wait_until(lambda: bool(planned(factory)), 60, "msgpack's job")
        assert planned(factory) == {("msgpack", "1.1.0", "aarch64", "cp311")}
        log = (embedded / "master.log").read_text()
        assert f"master watching {len(DEFAULT_WATCH_LIST)} projects through the Simple API" in log
        overview = httpx.get(f"{master_url}/", timeout=10)
        assert 'id="getting-started"' not in overview.text


def expected_jobs(
    replay: ReplayServer, start: int, settings: Settings
) -> tuple[set[tuple[str, str, str, str]], dict[str, int]]:
    """What the farm should plan for the releases the journal touched after serial
    `start`, from what upstream serves at the end; and how many of those releases each
    rule turned away."""
    touched = {
        (canonicalize_name(entry.name), str(Version(entry.version)))
        for entry in replay.journal
        if entry.serial > start and entry.version and action_kind(entry.action) in RECORDING
    }
    state: ReplayState = replay.expected_state()
    wanted: set[tuple[str, str, str, str]] = set()
    turned_away = {"pure-python": 0, "covered": 0}
    for project in state.projects.values():
        for version, release in project.releases.items():
            if (project.normalized, str(Version(version))) not in touched:
                continue
            files = list(release.files)
            has_sdist = any(f.packagetype == "sdist" for f in release.files.values())
            if release.yanked or not has_sdist:
                continue
            if pure_python_wheel(files):
                turned_away["pure-python"] += 1
                continue
            for name, target in settings.planned_targets().items():
                for tag in target.python_tags:
                    if not target_allowed(release.requires_python, tag):
                        continue
                    if covering_wheel(files, tag, target.policy):
                        turned_away["covered"] += 1
                        continue
                    wanted.add((project.normalized, str(Version(version)), name, tag))
    return wanted, turned_away


def caught_up(factory: sessionmaker[Session], serial: int) -> bool:
    with factory() as session:
        waiting = session.scalar(
            select(Release.id)
            .where(Release.refresh_needed.is_(True), Release.removed_at.is_(None))
            .limit(1)
        )
        return read_cursor(session) == serial and waiting is None


def test_reachable_changelog_is_followed_for_what_arm_users_lack(
    embedded: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with replay_server(events=1500, seed=11) as replay:
        # PyPI as the farm starts: half the journal published.
        head = replay.journal[len(replay.journal) // 2].serial
        replay.set_head(head)
        monkeypatch.setenv("ARMWHEELS_UPSTREAM__XMLRPC_URL", replay.xmlrpc_url)
        monkeypatch.setenv("ARMWHEELS_UPSTREAM__JSON_URL", f"{replay.url}/pypi/")
        monkeypatch.setenv("ARMWHEELS_UPSTREAM__INDEX_URL", f"{replay.url}/simple/")
        caplog.set_level(logging.INFO, logger="armwheels.up")
        start = start_farm(None)
        upstream = start.settings.upstream
        assert (upstream.feed, upstream.projects, upstream.changelog_start) == (
            "changelog",
            "all",
            head,
        )
        lines = first_lines(caplog)
        assert len(lines) == 3 and "level=warning" not in "".join(lines), lines
        assert (
            f"watching every project on PyPI through its changelog, from serial {head}"
            in (lines[0])
        )
        assert "new releases of every project are followed already" in lines[2]
        assert "armwheels import NAME" in lines[2]
        page = getting_started(start.settings)
        assert f"from serial {head}" in page.by_id("watching").text
        assert "armwheels import NAME" in page.by_id("add-project").text

        # The rest of the journal is published while the farm runs.
        last = replay.journal[-1].serial
        replay.set_head(last)
        with (
            sessions(start.settings) as factory,
            farm_master(start, embedded / "master.log"),
        ):
            wait_until(lambda: caught_up(factory, last), 180, "the master to catch up")
            wanted, turned_away = expected_jobs(replay, head, start.settings)
            # The journal has releases of each kind, so each rule is put to the test.
            assert wanted and turned_away["pure-python"] and turned_away["covered"]
            assert planned(factory) == wanted
            with factory() as session:
                # Nothing published before the farm's start was recorded.
                recorded = session.execute(select(Project.name, Release.version).join(Project))
                touched = {
                    (canonicalize_name(e.name), str(Version(e.version)))
                    for e in replay.journal
                    if e.serial > head and e.version
                }
                assert {tuple(row) for row in recorded} <= touched

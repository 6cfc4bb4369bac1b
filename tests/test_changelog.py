"""The changelog client and feed against a local server speaking PyPI's XML-RPC protocol.

PyPI's XML-RPC cannot be reached from these machines: tests.pypi_replay replays a
generated journal with PyPI's method names, tuple shapes, page limit and faults, and
serves the matching JSON API.
"""

from __future__ import annotations

import socket
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from packaging.version import Version
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from tenacity import wait_none

from common.config import Settings
from common.models import BuildJob, FeedActionCount, Project, Release
from common.states import JobState
from common.tags import covering_wheel
from master.builds.build_plan import pure_python_wheel, target_allowed
from master.pypi.changelog import (
    ChangelogClient,
    ChangelogError,
    TransientChangelogError,
    probe_last_serial,
)
from master.pypi.feed import CHANGELOG_FEED, follow_changelog, read_cursor
from master.pypi.json_api import JsonApiClient
from master.pypi.refresh import refresh_marked
from master.web.status import collect
from tests.pypi_replay import ReplayServer, ReplayState, replay_server
from tests.servers import free_port, serve_app

EVENTS = 3000


@pytest.fixture(scope="module")
def replay() -> Iterator[ReplayServer]:
    with replay_server(events=EVENTS, seed=7, page_limit=700) as server:
        yield server


def client_for(server: ReplayServer, attempts: int = 4) -> ChangelogClient:
    return ChangelogClient(server.xmlrpc_url, timeout=30, attempts=attempts, wait=wait_none())


def follow_settings(settings: Settings, server: ReplayServer) -> Settings:
    settings.upstream.feed = "changelog"
    settings.upstream.projects = "all"
    settings.upstream.xmlrpc_url = server.xmlrpc_url
    settings.upstream.json_url = server.url + "/pypi/"
    settings.upstream.changelog_start = server.journal[0].serial - 1
    return settings


def test_client_pages_through_the_whole_journal(replay: ReplayServer) -> None:
    replay.set_faults(page_limit=700)
    with client_for(replay) as client:
        assert client.last_serial() == replay.journal[-1].serial
        serial = replay.journal[0].serial - 1
        seen: list[int] = []
        pages = 0
        while True:
            page = client.since(serial)
            if page.last_serial is None:
                break
            pages += 1
            assert page.entries <= 700
            seen += [e.serial for e in page.events]
            serial = page.last_serial
    assert pages == -(-EVENTS // 700)
    assert seen == [entry.serial for entry in replay.journal]


def test_rate_limits_and_outages_are_retried(replay: ReplayServer) -> None:
    replay.set_faults(rate_limit_next=2, rate_limit_reset=0, http_503_next=1)
    with client_for(replay) as client:
        assert client.last_serial() == replay.journal[-1].serial
    replay.set_faults(rate_limit_next=3, rate_limit_reset=0)
    with client_for(replay, attempts=2) as client, pytest.raises(TransientChangelogError):
        client.last_serial()
    replay.set_faults(rate_limit_next=0, http_503_next=0)


def test_faults_that_are_not_transient_are_errors(replay: ReplayServer) -> None:
    with client_for(replay) as client:
        with pytest.raises(ChangelogError, match="-32601"):
            client._call("changelog_everything")
        with pytest.raises(ChangelogError, match="-32602"):
            client._call("changelog_since_serial", "not a number")


def test_the_startup_probe_answers_or_says_why_within_its_timeout(replay: ReplayServer) -> None:
    """One `changelog_last_serial` call, no retry: the serial, or the reason there is none
    (a closed port, a proxy refusing the POST, a server that never answers)."""
    replay.set_faults(rate_limit_next=0, http_503_next=0)
    assert probe_last_serial(replay.xmlrpc_url, 5) == replay.journal[-1].serial
    replay.set_faults(http_503_next=1)
    with pytest.raises(TransientChangelogError, match="HTTP 503"):
        probe_last_serial(replay.xmlrpc_url, 5)
    assert replay.status()["http_503_next"] == 0  # asked once, not retried
    with pytest.raises(TransientChangelogError, match="Connection refused"):
        probe_last_serial(f"http://127.0.0.1:{free_port()}/pypi", 5)

    async def refuse(request: Request) -> Response:
        return PlainTextResponse("Method Not Allowed", 405)

    refusing = Starlette(routes=[Route("/pypi", refuse, methods=["POST"])])
    with serve_app(refusing) as url, pytest.raises(ChangelogError, match="HTTP 405"):
        probe_last_serial(f"{url}/pypi", 5)
    with socket.socket() as silent:  # accepts connections (the backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        began = time.monotonic()
        with pytest.raises(TransientChangelogError):
            probe_last_serial(f"http://127.0.0.1:{silent.getsockname()[1]}/pypi", 1)
        assert time.monotonic() - began < 2


def test_an_outage_never_moves_the_cursor(
    settings: Settings, factory: sessionmaker[Session], replay: ReplayServer
) -> None:
    follow_settings(settings, replay)
    replay.set_faults(page_limit=700, http_503_next=5)
    with client_for(replay, attempts=2) as client, pytest.raises(TransientChangelogError):
        follow_changelog(factory, client, settings)
    replay.set_faults(http_503_next=0)
    with factory() as session:
        assert read_cursor(session, CHANGELOG_FEED) == replay.journal[0].serial - 1
        assert session.scalars(select(Release)).first() is None


def expected_builds(state: ReplayState, settings: Settings) -> set[tuple[str, str, str]]:
    """(project, version, arch) the farm should build, computed from the replayed state."""
    wanted = set()
    targets = settings.enabled_targets()
    for project in state.projects.values():
        for release in project.releases.values():
            files = list(release.files)
            has_sdist = any(f.packagetype == "sdist" for f in release.files.values())
            if release.yanked or not has_sdist or pure_python_wheel(files):
                continue
            for arch, target in targets.items():
                for tag in target.python_tags:
                    if not target_allowed(release.requires_python, tag):
                        continue
                    if covering_wheel(files, tag, target.policy):
                        continue
                    wanted.add((project.normalized, str(Version(release.version)), arch))
    return wanted


def test_following_the_changelog_reproduces_upstream(
    settings: Settings, factory: sessionmaker[Session], replay: ReplayServer
) -> None:
    follow_settings(settings, replay)
    replay.set_faults(page_limit=700)
    json_api = JsonApiClient(settings.upstream.json_url, 30, attempts=2, wait=wait_none())
    with client_for(replay) as client:
        outcome = follow_changelog(factory, client, settings)
        assert outcome.events == EVENTS and outcome.serial == replay.journal[-1].serial
        # Caught up: another round reads one empty page and changes nothing.
        again = follow_changelog(factory, client, settings)
        assert (again.events, again.pages) == (0, 1)
    while refresh_marked(factory, json_api, settings, limit=500).projects:
        pass
    json_api.close()
    state = replay.expected_state()
    with factory() as session:
        assert read_cursor(session, CHANGELOG_FEED) == replay.journal[-1].serial
        counts = {row.kind: row.count for row in session.scalars(select(FeedActionCount))}
        assert sum(counts.values()) == EVENTS
        for kind in ("new-release", "add-sdist", "remove-release", "yank-release"):
            assert counts[kind] > 0
        assert counts["ignored:role-change"] > 0
        releases = session.execute(select(Project.name, Release).join(Project)).all()
        live = {
            (name, release.version): release
            for name, release in releases
            if release.removed_at is None
        }
        expected_live = {
            (project.normalized, str(Version(release.version))): release
            for project in state.projects.values()
            for release in project.releases.values()
        }
        assert set(live) == set(expected_live)
        for key, release in live.items():
            upstream = expected_live[key]
            assert not release.refresh_needed
            assert release.upstream_files == sorted(upstream.files), key
            assert release.yanked == upstream.yanked, key
            if upstream.yanked:
                assert release.yanked_reason == upstream.yanked_reason, key
        jobs = session.execute(
            select(Project.name, Release.version, BuildJob.arch, BuildJob.state)
            .join(Release, BuildJob.release_id == Release.id)
            .join(Project)
        ).all()
        building = {
            (name, version, arch)
            for name, version, arch, job_state in jobs
            if job_state == JobState.PENDING
        }
        assert building == expected_builds(state, settings)
        assert Counter(job_state for *_, job_state in jobs)[JobState.PENDING] == len(building)
        status = collect(session, settings.master.builder_timeout)
    feed = status["feeds"]["cursors"][CHANGELOG_FEED]
    assert feed["serial"] == replay.journal[-1].serial
    assert sum(feed["actions"].values()) == EVENTS
    assert status["feeds"]["releases_waiting_for_details"] == 0

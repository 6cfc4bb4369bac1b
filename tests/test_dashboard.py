"""The dashboard's pages against a seeded farm, on SQLite and PostgreSQL: the DOM contract
(ids and attributes dashboard.js and the browser test rely on), the figures shown, the
404s and redirects, and that untrusted text is escaped."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from common.config import Settings
from common.db import transaction
from common.models import BuildJob, Release
from common.states import FailureReason, JobState, TokenRole
from common.tags import who_installs
from master import audit
from master.auth import create_token
from master.storage import Storage
from master.web.app import create_app
from master.web.dashboard import human_age
from tests.seed import add_builder, add_release, publish_wheel

SCRIPT = "<script>alert('owned')</script>"
LOG = f"compiling\n{SCRIPT}\nerror: libfoo.so\n".encode()


class Node:
    """An element of the parsed page: its tag, attributes, children and text."""

    def __init__(self, tag: str, attrs: dict[str, str], parent: Node | None) -> None:
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[Node] = []
        self.parts: list[str] = []

    @property
    def text(self) -> str:
        return "".join(self.parts).strip()

    def find_all(self, tag: str | None = None, **attrs: str) -> list[Node]:
        found = []
        for child in self.children:
            if (tag is None or child.tag == tag) and all(
                (child.attrs.get(key.rstrip("_")) or "").split().count(value) > 0
                if key == "class_"
                else child.attrs.get(key) == value
                for key, value in attrs.items()
            ):
                found.append(child)
            found.extend(child.find_all(tag, **attrs))
        return found

    def find(self, tag: str | None = None, **attrs: str) -> Node:
        found = self.find_all(tag, **attrs)
        assert found, f"no <{tag} {attrs}>"
        return found[0]


VOID = {"meta", "link", "input", "br", "img", "hr"}


class Page(HTMLParser):
    def __init__(self, html: str) -> None:
        super().__init__()
        self.root = Node("#root", {}, None)
        self.current = self.root
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs}, self.current)
        self.current.children.append(node)
        if tag not in VOID:
            self.current = node

    def handle_endtag(self, tag: str) -> None:
        node: Node | None = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.current = node.parent

    def handle_data(self, data: str) -> None:
        node: Node | None = self.current
        while node is not None:  # text counts for every enclosing element
            node.parts.append(data)
            node = node.parent

    def by_id(self, ident: str) -> Node:
        found = [node for node in self.root.find_all() if node.attrs.get("id") == ident]
        assert len(found) == 1, f"{len(found)} elements with id {ident!r}"
        return found[0]


@dataclass
class Farm:
    client: TestClient
    settings: Settings
    ids: dict[str, int]
    token: str

    def page(self, path: str, status: int = 200) -> Page:
        response = self.client.get(path)
        assert response.status_code == status, response.text
        assert response.headers["content-type"].startswith("text/html")
        return Page(response.text)


def _job(session: Session, release: Release, arch: str, state: JobState, **fields: object) -> int:
    source = release.source_files[0]
    job = BuildJob(
        release=release,
        source_file=source,
        target=arch,
        arch=arch,
        python_tag="cp311",
        policy=f"manylinux2014_{arch}",
        state=state,
        **fields,
    )
    session.add(job)
    session.flush()
    return job.id


@pytest.fixture
def farm(settings: Settings, factory: sessionmaker[Session]) -> Iterator[Farm]:
    # Each assertion reads the database as the test left it (the cache has its own test).
    settings.master.overview_cache = settings.master.project_cache = 0
    now = datetime.now(UTC)
    ids: dict[str, int] = {}
    with transaction(factory) as session:
        # demo 1.0: aarch64 built an hour ago and published; armv7l (a disabled target)
        # waiting for 3 minutes, the oldest waiting job.
        wheel = publish_wheel(session, settings, "demo", "1.0")
        built = wheel.job
        built.state, built.build_seconds = JobState.BUILT, 42.0
        built.finished_at = now - timedelta(hours=1)
        ids["built"] = built.id
        release_1 = built.release
        ids["waiting_old"] = _job(
            session,
            release_1,
            "armv7l",
            JobState.PENDING,
            created_at=now - timedelta(minutes=3, seconds=20),
        )
        # demo 2.0: an old failed attempt (5 days ago), then the latest failure (2 h ago);
        # armv7l waiting.
        _, release_2, [old] = add_release(session, settings, "demo", "2.0")
        old.state, old.failure_reason = JobState.FAILED, FailureReason.COMPILE_ERROR
        old.finished_at, old.summary = now - timedelta(days=5), "old failure"
        ids["failed_old"] = old.id
        ids["failed"] = _job(
            session,
            release_2,
            "aarch64",
            JobState.FAILED,
            failure_reason=FailureReason.MISSING_SYSTEM_LIBRARY,
            summary=f"libfoo.so not found {SCRIPT}\nsecond line",
            finished_at=now - timedelta(hours=2),
            attempts=2,
        )
        ids["waiting_2"] = _job(session, release_2, "armv7l", JobState.QUEUED)
        failed = session.get(BuildJob, ids["failed"])
        assert failed is not None
        path, size = Storage(settings.master.data_dir).store_log(
            "demo", failed.id, 2, io.BytesIO(LOG), settings.master.max_log_bytes
        )
        failed.log_path, failed.log_size = str(path), size
        # demo 0.9: aarch64 building for 5 minutes on b-busy; armv7l built 3 days ago.
        _, release_09, [running] = add_release(session, settings, "demo", "0.9")
        busy = add_builder(session, "b-busy", "aarch64")
        running.state, running.builder_id = JobState.BUILDING, busy.id
        running.started_at = now - timedelta(minutes=5)
        busy.current_job_id = running.id
        ids["building"] = running.id
        ids["built_old"] = _job(
            session, release_09, "armv7l", JobState.BUILT, finished_at=now - timedelta(days=3)
        )
        add_builder(session, "b-idle", "aarch64")
        add_builder(session, "b-gone", "armv7l", last_seen=now - timedelta(hours=1))
        # Projects for the search: a prefix match and a match inside the name.
        _, _, [other] = add_release(session, settings, "other-demo", "1.0")
        other.state, other.finished_at = JobState.BUILT, now - timedelta(minutes=30)
        ids["other_built"] = other.id
        add_release(session, settings, "demo-extra", "0.1")
        add_release(session, settings, "unrelated", "1.0")
        audit.record(session, "ops", "operator", "skip", f"evil {SCRIPT}", reason="x")
        token = create_token(session, "alice", TokenRole.MAINTAINER, ["demo"])
    farm = Farm(TestClient(create_app(settings, factory)), settings, ids, token)
    with farm.client:
        yield farm


def test_overview_queues_and_waiting(farm: Farm) -> None:
    page = farm.page("/")
    live = page.by_id("live")
    assert live.tag == "main" and live.attrs["data-fragment"] == "/fragments/overview"
    queues = page.by_id("queues")
    rows = {tr.attrs["data-arch"]: tr for tr in queues.find_all("tr") if "data-arch" in tr.attrs}
    # aarch64 is the enabled target; armv7l is disabled but has waiting jobs.
    assert set(rows) == {"aarch64", "armv7l"}
    # aarch64: demo-extra 0.1, unrelated 1.0 pending; 0.9 building.
    assert rows["aarch64"].find("td", class_="depth").text == "2"
    assert rows["aarch64"].find("td", class_="running").text == "1"
    assert rows["armv7l"].find("td", class_="depth").text == "2"
    assert rows["armv7l"].find("td", class_="running").text == "0"
    assert rows["armv7l"].find("td", class_="oldest").text == "3 min"
    links = page.by_id("waiting").find_all("a", class_="build-link")
    assert len(links) == 4
    hrefs = [a.attrs["href"] for a in links]
    assert f"/builds/{farm.ids['waiting_old']}" in hrefs
    assert f"/builds/{farm.ids['waiting_2']}" in hrefs
    old = next(a for a in links if a.attrs["href"] == f"/builds/{farm.ids['waiting_old']}")
    assert old.text == "demo 1.0 armv7l cp311"
    running = page.by_id("running-builds")
    assert running.find("a").attrs["href"] == f"/builds/{farm.ids['building']}"
    assert "b-busy" in running.text and "5 min" in running.text
    summary = page.by_id("builders-summary")
    assert summary.find("td", class_="online").text == "1"
    assert summary.find("td", class_="busy").text == "1"
    assert summary.find("td", class_="offline").text == "1"
    targets = [a.attrs.get("href", "") for a in page.root.find_all("a")]
    assert "/builders" in targets and "/audit" in targets
    search = page.by_id("search")
    assert search.attrs["action"] == "/projects" and search.attrs["method"] == "get"
    assert page.by_id("search-q").attrs["name"] == "q"
    assert page.root.find("title").text == "armwheels — overview"


def test_overview_throughput(farm: Farm) -> None:
    page = farm.page("/")
    section = page.by_id("throughput")
    ranges = {fig.attrs["data-range"]: fig for fig in section.find_all("figure")}
    day = ranges["24h"]
    assert day.find("span", class_="built").text == "2"
    assert day.find("span", class_="failed").text == "1"
    assert day.find("span", class_="rate").text == "66.7%"
    assert day.find("span", class_="per-hour").text == "0.1"
    week = ranges["7d"]
    assert week.find("span", class_="built").text == "3"
    assert week.find("span", class_="failed").text == "2"
    assert week.find("span", class_="rate").text == "60.0%"
    # Bars: one per hour and one per day, stacked built under failed, summing up.
    hours = day.find("svg").find_all("g", class_="bucket")
    days = week.find("svg").find_all("g", class_="bucket")
    assert len(hours) == 24 and len(days) == 7
    assert sum(int(g.attrs["data-built"]) for g in hours) == 2
    assert sum(int(g.attrs["data-failed"]) for g in hours) == 1
    assert sum(int(g.attrs["data-failed"]) for g in days) == 2
    assert all(len(g.find_all("rect")) == 2 for g in hours)


def test_overview_latest_and_failures(farm: Farm) -> None:
    page = farm.page("/")
    latest = page.by_id("latest")
    builds = [a.attrs["href"] for a in latest.find_all("a", class_="build-link")]
    # Newest finished first: other-demo (30 min), demo 1.0 (1 h), demo 2.0 (2 h), ...
    assert builds[:3] == [
        f"/builds/{farm.ids['other_built']}",
        f"/builds/{farm.ids['built']}",
        f"/builds/{farm.ids['failed']}",
    ]
    assert "/projects/other-demo" in [a.attrs["href"] for a in latest.find_all("a")]
    failures = page.by_id("failures")
    rows = [tr for tr in failures.find_all("tr") if tr.find_all("td")]
    assert [tr.find("a").attrs["href"] for tr in rows] == [
        f"/builds/{farm.ids['failed']}",
        f"/builds/{farm.ids['failed_old']}",
    ]
    assert rows[0].find("td", class_="reason").text == "missing-system-library"
    # The one-line summary, its markup escaped.
    assert rows[0].find("td", class_="summary").text == f"libfoo.so not found {SCRIPT}"
    response = farm.client.get("/")
    assert SCRIPT not in response.text
    assert "&lt;script&gt;" in response.text


def test_fragment_is_the_inner_html(farm: Farm) -> None:
    response = farm.client.get("/fragments/overview")
    assert response.status_code == 200
    body = response.text
    assert "<html" not in body and "<main" not in body and "<nav" not in body
    page = Page(body)
    for ident in ("queues", "waiting", "running-builds", "builders-summary", "throughput"):
        page.by_id(ident)
    page.by_id("latest")
    page.by_id("failures")
    # The same content the page's <main id="live"> holds.
    full = Page(farm.client.get("/").text)
    assert page.by_id("queues").text == full.by_id("queues").text


def test_a_farm_without_jobs_says_what_it_watches_and_how_to_add_a_project(
    settings: Settings, factory: sessionmaker[Session]
) -> None:
    settings.master.overview_cache = 0
    settings.upstream.projects = ["numpy", "pyyaml"]
    with TestClient(create_app(settings, factory)) as client:
        for path in ("/", "/fragments/overview"):
            page = Page(client.get(path).text)
            section = page.by_id("getting-started")
            watching = section.find("span", id="watching").text
            assert watching == (
                "2 projects through the Simple API at https://pypi.org/simple/: numpy, pyyaml"
            )
            add = section.find("span", id="add-project").text
            assert "armwheels import NAME" in add and "upstream.projects" in add
        settings.upstream.feed, settings.upstream.projects = "changelog", "all"
        settings.upstream.changelog_start = 1234
        page = Page(client.get("/").text)
    assert page.by_id("watching").text == (
        "every project on PyPI through its changelog, from serial 1234"
    )
    assert "followed already" in page.by_id("add-project").text


def test_a_farm_with_jobs_has_no_getting_started(farm: Farm) -> None:
    page = farm.page("/")
    assert not [n for n in page.root.find_all() if n.attrs.get("id") == "getting-started"]


def test_static_files_served(farm: Farm) -> None:
    js = farm.client.get("/static/dashboard.js")
    assert js.status_code == 200
    assert "javascript" in js.headers["content-type"]
    for needle in ("innerHTML", "data-fragment", "X-Log-Total", "rebuild-result", "Bearer"):
        assert needle in js.text
    assert "localStorage" not in js.text and "http://" not in js.text
    css = farm.client.get("/static/dashboard.css")
    assert css.status_code == 200 and "text/css" in css.headers["content-type"]
    page = farm.page("/")
    scripts = [s.attrs.get("src") for s in page.root.find_all("script")]
    assert scripts == ["/static/dashboard.js"]


def test_project_page(farm: Farm) -> None:
    page = farm.page("/projects/demo")
    assert page.root.find("title").text == "armwheels — demo"
    matrix = page.by_id("matrix")
    rows = [tr for tr in matrix.find_all("tr") if "data-version" in tr.attrs]
    # Newest first by version, not by creation or text order.
    assert [tr.attrs["data-version"] for tr in rows] == ["2.0", "1.0", "0.9"]
    header = [th.text for th in matrix.find("thead").find_all("th")]
    assert header == ["version", "aarch64 cp311"]
    cells = {tr.attrs["data-version"]: tr.find("td") for tr in rows}
    # 2.0: the latest job for the target (the newer failure), not the old one.
    link = cells["2.0"].find("a")
    assert link.attrs["href"] == f"/builds/{farm.ids['failed']}"
    assert link.attrs["class"] == "state state-failed" and link.text == "failed"
    assert cells["1.0"].find("a").attrs["class"] == "state state-built"
    assert cells["0.9"].find("a").text == "building"
    wheels = page.by_id("wheels")
    [wheel_link, index_link] = wheels.find_all("a")
    filename = wheel_link.text
    assert index_link.attrs["href"] == "/simple/demo/" and index_link.text == "/simple/"
    assert filename.startswith("demo-1.0-cp311-cp311-")
    assert wheel_link.attrs["href"] == f"/files/demo/{filename}"
    job = farm.client.get(f"/api/v1/jobs/{farm.ids['built']}").json()
    assert wheels.find("code", class_="sha256").text == job["files"][0]["sha256"]
    # Which devices take it, in words (common/tags.who_installs).
    assert wheels.find("td", class_="devices").text == who_installs(filename)
    assert "glibc 2.17+" in who_installs(filename) and "CPython 3.11" in who_installs(filename)
    public = farm.settings.master.public_url
    assert page.by_id("pip-command").text == (
        f"pip install --extra-index-url {public}/simple/ demo"
    )
    form = page.by_id("rebuild-form")
    assert form.attrs["data-action"] == "/api/v1/projects/demo/rebuild"
    token = page.by_id("token")
    assert token.attrs["type"] == "password" and "name" not in token.attrs
    options = [o.attrs["value"] for o in page.by_id("rebuild-target").find_all("option")]
    assert options == ["", "aarch64"]
    page.by_id("rebuild-version")
    assert page.by_id("rebuild").attrs["type"] == "submit"
    page.by_id("rebuild-result")
    # The wheel link works.
    assert farm.client.get(wheel_link.attrs["href"]).status_code == 200


def test_project_redirects_and_404s(farm: Farm) -> None:
    response = farm.client.get("/projects/Other_Demo", follow_redirects=False)
    assert response.status_code == 301
    assert response.headers["location"] == "/projects/other-demo"
    page = farm.page("/projects/no-such-project", status=404)
    assert "no-such-project" in page.root.find("main").text
    farm.page("/projects/-bad-", status=404)
    farm.page("/builds/999999", status=404)
    farm.page("/builds/not-a-number", status=404)
    farm.page("/builds/99999999999999999999", status=404)
    farm.page("/builds/9999999999", status=404)


def test_search(farm: Farm) -> None:
    page = farm.page("/projects?q=Demo")
    names = [a.text for a in page.by_id("results").find_all("a")]
    # The exact match first, then prefix matches, then the rest; never non-matches.
    assert names == ["demo", "demo-extra", "other-demo"]
    assert page.by_id("results").find("a").attrs["href"] == "/projects/demo"
    # Separators are normalised as in project names.
    page = farm.page("/projects?q=other_DEMO")
    assert [a.text for a in page.by_id("results").find_all("a")] == ["other-demo"]
    # LIKE wildcards are plain text.
    assert farm.page("/projects?q=%25").by_id("results").find_all("a") == []
    farm.page("/projects?q=", status=400)
    farm.page("/projects?q=" + "a" * 201, status=400)


def test_build_page_failed(farm: Farm) -> None:
    page = farm.page(f"/builds/{farm.ids['failed']}")
    assert page.by_id("state").text == "failed"
    failure = page.by_id("failure")
    assert "missing-system-library" in failure.text
    assert SCRIPT in failure.text  # shown as text...
    assert SCRIPT not in farm.client.get(f"/builds/{farm.ids['failed']}").text  # ...escaped
    assert page.by_id("attempts").text == "2"
    history = page.by_id("history")
    assert [a.attrs["href"] for a in history.find_all("a")] == [f"/builds/{farm.ids['failed_old']}"]
    log = page.by_id("log")
    assert log.attrs["data-log"] == f"/api/v1/jobs/{farm.ids['failed']}/log"
    assert log.attrs["data-live"] == "false"
    # The final log, as /api/v1/jobs/ID/log serves it, rendered as text.
    api = farm.client.get(log.attrs["data-log"])
    assert api.content == LOG and log.text == LOG.decode().strip()
    assert "demo 2.0 aarch64 cp311" in page.root.find("title").text


def test_build_page_building_and_built(farm: Farm) -> None:
    page = farm.page(f"/builds/{farm.ids['building']}")
    assert page.by_id("state").text == "building"
    assert page.by_id("log").attrs["data-live"] == "true"
    assert page.by_id("builder").text == "b-busy"
    assert page.by_id("elapsed").text == "building for 5 min"
    assert page.root.find_all(id="failure") == []
    page = farm.page(f"/builds/{farm.ids['built']}")
    assert page.by_id("state").text == "built"
    assert page.root.find_all(id="elapsed") == []
    files = page.by_id("files")
    assert files.find("a").text.startswith("demo-1.0-cp311-cp311-")
    assert len(files.find("code", class_="sha256").text) == 64


def test_builders_page(farm: Farm) -> None:
    page = farm.page("/builders")
    rows = {tr.attrs["data-builder"]: tr for tr in page.by_id("builders").find_all("tr")[1:]}
    assert set(rows) == {"b-busy", "b-idle", "b-gone"}
    states = {name: tr.find("td", class_="builder-state").text for name, tr in rows.items()}
    assert states == {"b-busy": "busy", "b-idle": "online", "b-gone": "offline"}
    link = rows["b-busy"].find("a", class_="build-link")
    assert link.attrs["href"] == f"/builds/{farm.ids['building']}"
    assert "docker" in rows["b-idle"].text and "cp311" in rows["b-idle"].text


def test_audit_page_escapes(farm: Farm) -> None:
    response = farm.client.get("/audit")
    assert response.status_code == 200
    assert SCRIPT not in response.text
    assert "evil &lt;script&gt;" in response.text
    page = Page(response.text)
    table = page.by_id("audit")
    assert table.find("td", class_="subject").text == f"evil {SCRIPT}"
    assert "skip" in table.text and "operator" in table.text


def test_human_age() -> None:
    assert human_age(None) == "—"
    assert human_age(5) == "5 s"
    assert human_age(200) == "3 min"
    assert human_age(3 * 3600 + 5) == "3 h"
    assert human_age(2 * 86400) == "2 d"


def test_rebuild_form_posts_to_the_api(farm: Farm) -> None:
    """What dashboard.js does with the form: POST its data-action with the token."""
    action = farm.page("/projects/demo").by_id("rebuild-form").attrs["data-action"]
    refused = farm.client.post(action, headers={"Authorization": "Bearer nope"}, json={})
    assert refused.status_code == 401 and "error" in refused.json()
    answer = farm.client.post(
        action,
        headers={"Authorization": f"Bearer {farm.token}"},
        json={"version": "2.0", "arch": "aarch64"},  # its aarch64 build failed
    )
    assert answer.status_code == 202, answer.text
    [job] = answer.json()["jobs"]
    # The new job is waiting, on the overview and the project's matrix.
    waiting = farm.page("/").by_id("waiting")
    assert f"/builds/{job['id']}" in [a.attrs["href"] for a in waiting.find_all("a")]
    matrix = farm.page("/projects/demo").by_id("matrix")
    row = next(tr for tr in matrix.find_all("tr") if tr.attrs.get("data-version") == "2.0")
    assert row.find("a").attrs == {"class": "state state-pending", "href": f"/builds/{job['id']}"}
    assert farm.page(f"/builds/{job['id']}").by_id("state").text == "pending"
    # 1.0's aarch64 wheel is served: a rebuild would only be refused at upload; it is
    # refused now, saying which wheel serves the target.
    served = farm.client.post(
        action,
        headers={"Authorization": f"Bearer {farm.token}"},
        json={"version": "1.0", "arch": "aarch64"},
    )
    assert served.status_code == 409 and "armwheels serves demo-1.0-" in served.json()["error"]


def test_overview_figures_are_shared_for_a_moment(
    farm: Farm, factory: sessionmaker[Session]
) -> None:
    """With master.overview_cache set, requests within it get the same figures without
    querying again; after it, a newly queued job shows."""
    farm.settings.master.overview_cache = 0.5
    before = farm.page("/").by_id("waiting").text
    with transaction(factory) as session:
        add_release(session, farm.settings, project="latecomer", version="1.0")
    assert "latecomer" not in farm.page("/fragments/overview").by_id("waiting").text
    time.sleep(0.6)
    assert "latecomer" in farm.page("/fragments/overview").by_id("waiting").text
    assert "latecomer" not in before


def test_a_project_page_is_shared_for_a_moment(farm: Farm, factory: sessionmaker[Session]) -> None:
    """With master.project_cache set, a project's page is rendered once for everyone
    asking within it; after it, a new release shows. An unknown project is not kept."""
    # A long moment first (a loaded machine may take a second for six pages), then a
    # short one: freshness is judged with the setting of the request.
    farm.settings.master.project_cache = 60
    cache = farm.client.app.state.page_cache  # type: ignore[attr-defined]
    renders = cache.renders
    before = farm.page("/projects/demo").by_id("matrix").text
    for _ in range(5):
        assert farm.page("/projects/demo").by_id("matrix").text == before
    assert cache.renders == renders + 1
    with transaction(factory) as session:
        add_release(session, farm.settings, project="demo", version="7.0")
    assert "7.0" not in farm.page("/projects/demo").by_id("matrix").text
    farm.settings.master.project_cache = 0.2
    time.sleep(0.3)
    assert "7.0" in farm.page("/projects/demo").by_id("matrix").text
    farm.page("/projects/no-such-thing", 404)
    with transaction(factory) as session:
        add_release(session, farm.settings, project="no-such-thing", version="1.0")
    assert "1.0" in farm.page("/projects/no-such-thing").by_id("matrix").text

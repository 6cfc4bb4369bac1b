"""The master's Simple API poller against a real pypiserver and a scripted loopback upstream.

The sdists are real: tiny setuptools projects built here, offline, with the setuptools
backend called directly (no build isolation, so no network).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import tarfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.parser import Parser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from tenacity import wait_none

from common.config import Settings, TargetSettings
from common.db import transaction
from common.models import BuildJob, Project, Release, SourceFile
from common.states import JobState, SkipReason
from master.pypi.poller import apply_page, poll_project, poll_watched
from master.pypi.upstream import (
    JSON_TYPE,
    ProjectPage,
    SimpleClient,
    TransientUpstreamError,
    UpstreamError,
    parse_html_page,
    parse_json_page,
)
from tests.sdists import make_sdist
from tests.servers import pypiserver
from tests.wheels import make_wheel

PROJECT = "demo-pkg"
# (version, Requires-Python) of the sdists built once per test session.
VERSIONS = {"0.9": "<3", "1.0": None, "1.1": None, "2.0": None, "3.0": None}


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    # httpx honours proxy variables: loopback requests must never be sent to a proxy.
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")


# --- real sdists ---------------------------------------------------------------------------


def build_sdist(workdir: Path, dest: Path, version: str, requires_python: str | None) -> Path:
    module = PROJECT.replace("-", "_")
    files = {f"{module}/__init__.py": f'__version__ = "{version}"\n'}
    return make_sdist(workdir, dest, PROJECT, version, files, requires_python)


@pytest.fixture(scope="session")
def sdists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    workdir = tmp_path_factory.mktemp("sdist-sources")
    dest = tmp_path_factory.mktemp("sdists")
    return {v: build_sdist(workdir, dest, v, rp) for v, rp in VERSIONS.items()}


def pkg_info(sdist: Path) -> dict[str, str]:
    with tarfile.open(sdist) as archive:
        [member] = [
            m
            for m in archive.getmembers()
            if m.name.count("/") == 1 and m.name.endswith("/PKG-INFO")
        ]
        handle = archive.extractfile(member)
        assert handle is not None
        return dict(Parser().parsestr(handle.read().decode()).items())


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- a real pypiserver -------------------------------------------------------------------


@dataclass
class Index:
    url: str
    packages: Path

    def publish(self, sdist: Path) -> None:
        shutil.copy2(sdist, self.packages / sdist.name)


@pytest.fixture
def pypi(tmp_path: Path) -> Iterator[Index]:
    packages = tmp_path / "packages"
    packages.mkdir()
    with pypiserver(packages) as url:
        yield Index(url, packages)


# --- a scripted upstream -----------------------------------------------------------------


@dataclass
class Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    # Answer 304 when the request's If-None-Match is this.
    etag: str | None = None


def json_reply(files: list[object], serial: int | None = None, etag: str | None = None) -> Reply:
    body: dict[str, object] = {"meta": {"api-version": "1.1"}, "name": "x", "files": files}
    if serial is not None:
        body["meta"] = {"api-version": "1.1", "_last-serial": serial}
    headers = {"Content-Type": JSON_TYPE}
    if etag:
        headers["ETag"] = etag
    return Reply(200, json.dumps(body).encode(), headers, etag)


def sdist_entry(project: str, version: str, **extra: object) -> dict[str, object]:
    filename = f"{project}-{version}.tar.gz"
    entry: dict[str, object] = {
        "filename": filename,
        "url": f"../../files/{filename}",
        "hashes": {"sha256": hashlib.sha256(filename.encode()).hexdigest()},
    }
    entry.update(extra)
    return entry


class Upstream:
    """Answers /simple/<project>/ from a script: each request takes the next reply, the last
    reply repeats; paths without a script answer 404."""

    def __init__(self) -> None:
        self.scripts: dict[str, list[Reply]] = {}
        self.requests: list[tuple[str, str | None]] = []
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                upstream.requests.append((self.path, self.headers.get("If-None-Match")))
                script = upstream.scripts.get(self.path, [Reply(404, b"not found")])
                reply = script.pop(0) if len(script) > 1 else script[0]
                if reply.etag and self.headers.get("If-None-Match") == reply.etag:
                    self.send_response(304)
                    self.send_header("ETag", reply.etag)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/simple/"

    def script(self, project: str, *replies: Reply) -> None:
        self.scripts[f"/simple/{project}/"] = list(replies)

    def hits(self, project: str) -> int:
        return sum(1 for path, _ in self.requests if path == f"/simple/{project}/")


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    thread = threading.Thread(target=server.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()
        thread.join()


# --- helpers -----------------------------------------------------------------------------


@contextmanager
def client_for(url: str, attempts: int = 3) -> Iterator[SimpleClient]:
    client = SimpleClient(url, timeout=10, attempts=attempts, wait=wait_none())
    try:
        yield client
    finally:
        client.close()


def watch(settings: Settings, url: str, *projects: str) -> None:
    settings.upstream.index_url = url
    settings.upstream.projects = sorted(projects)


def row_counts(factory: sessionmaker[Session]) -> dict[str, int]:
    with factory() as session:
        return {
            model.__tablename__: session.scalar(select(func.count()).select_from(model)) or 0
            for model in (Project, Release, SourceFile, BuildJob)
        }


def jobs_by_version(factory: sessionmaker[Session]) -> list[tuple[str, str, str, JobState]]:
    with factory() as session:
        rows = session.execute(
            select(Release.version, BuildJob.arch, BuildJob.python_tag, BuildJob.state).join(
                BuildJob, BuildJob.release_id == Release.id
            )
        )
        return sorted((v, a, t, s) for v, a, t, s in rows)


# --- against pypiserver ------------------------------------------------------------------


def publish_and_watch(
    settings: Settings, pypi: Index, sdists: dict[str, Path], *versions: str
) -> None:
    for version in versions:
        pypi.publish(sdists[version])
    watch(settings, pypi.url, PROJECT)


def test_first_poll_records_releases_and_builds_only_the_newest(
    settings: Settings, factory: sessionmaker[Session], pypi: Index, sdists: dict[str, Path]
) -> None:
    publish_and_watch(settings, pypi, sdists, "1.0", "1.1", "2.0")
    with client_for(pypi.url) as client:
        [outcome] = poll_watched(factory, client, settings)
    assert (outcome.project, outcome.new_releases, outcome.new_sdists, outcome.new_jobs) == (
        PROJECT,
        3,
        3,
        1,
    )
    with factory() as session:
        project = session.scalar(select(Project).where(Project.name == PROJECT))
        assert project is not None and project.polled_at is not None
        sources = {s.release.version: s for s in session.scalars(select(SourceFile))}
        assert sorted(sources) == ["1.0", "1.1", "2.0"]
        for version, source in sources.items():
            sdist = sdists[version]
            assert source.filename == sdist.name
            assert source.release.upstream_files == [sdist.name]
            assert source.sha256 == sha256_of(sdist)
            # The recorded URL is where the builder will fetch exactly these bytes.
            assert hashlib.sha256(httpx.get(source.url).content).hexdigest() == source.sha256
    assert jobs_by_version(factory) == [("2.0", "aarch64", "cp311", JobState.PENDING)]


def test_backfill_builds_every_release(
    settings: Settings, factory: sessionmaker[Session], pypi: Index, sdists: dict[str, Path]
) -> None:
    publish_and_watch(settings, pypi, sdists, "1.0", "1.1", "2.0")
    settings.upstream.backfill = True
    with client_for(pypi.url) as client:
        outcome = poll_project(factory, client, PROJECT, settings)
    assert outcome.new_jobs == 3
    assert jobs_by_version(factory) == [
        (v, "aarch64", "cp311", JobState.PENDING) for v in ("1.0", "1.1", "2.0")
    ]


def test_polling_twice_creates_nothing_twice(
    settings: Settings, factory: sessionmaker[Session], pypi: Index, sdists: dict[str, Path]
) -> None:
    for version in ("1.0", "2.0"):
        pypi.publish(sdists[version])
    watch(settings, pypi.url, PROJECT)
    settings.upstream.backfill = True
    with client_for(pypi.url) as client:
        poll_project(factory, client, PROJECT, settings)
        before = row_counts(factory)
        again = poll_project(factory, client, PROJECT, settings)
    assert before == {"projects": 1, "releases": 2, "source_files": 2, "build_jobs": 2}
    assert row_counts(factory) == before
    assert (again.new_releases, again.new_sdists, again.new_jobs) == (0, 0, 0)


def test_new_version_is_picked_up_on_the_next_poll(
    settings: Settings, factory: sessionmaker[Session], pypi: Index, sdists: dict[str, Path]
) -> None:
    for version in ("1.0", "2.0"):
        pypi.publish(sdists[version])
    watch(settings, pypi.url, PROJECT)
    with client_for(pypi.url) as client:
        poll_watched(factory, client, settings)
        before = row_counts(factory)
        pypi.publish(sdists["3.0"])
        [outcome] = poll_watched(factory, client, settings)
    assert (outcome.new_releases, outcome.new_sdists, outcome.new_jobs) == (1, 1, 1)
    after = row_counts(factory)
    assert {k: after[k] - before[k] for k in after} == {
        "projects": 0,
        "releases": 1,
        "source_files": 1,
        "build_jobs": 1,
    }
    assert jobs_by_version(factory) == [
        ("2.0", "aarch64", "cp311", JobState.PENDING),
        ("3.0", "aarch64", "cp311", JobState.PENDING),
    ]


def test_missing_project_is_recorded_and_first_sight_comes_later(
    settings: Settings, factory: sessionmaker[Session], pypi: Index, sdists: dict[str, Path]
) -> None:
    watch(settings, pypi.url, PROJECT, "not-published")
    with client_for(pypi.url) as client:
        outcomes = poll_watched(factory, client, settings)
        assert [(o.project, o.unchanged) for o in outcomes] == [
            (PROJECT, True),
            ("not-published", True),
        ]
        with factory() as session:
            projects = session.scalars(select(Project)).all()
            assert sorted(p.name for p in projects) == [PROJECT, "not-published"]
            assert all(p.polled_at is not None for p in projects)
        assert row_counts(factory)["releases"] == 0
        # Published after the 404s: still its first sight, so only the newest is built.
        for version in ("1.0", "1.1", "2.0"):
            pypi.publish(sdists[version])
        outcomes = poll_watched(factory, client, settings)
    assert [(o.project, o.new_releases, o.new_jobs) for o in outcomes] == [
        (PROJECT, 3, 1),
        ("not-published", 0, 0),
    ]
    assert jobs_by_version(factory) == [("2.0", "aarch64", "cp311", JobState.PENDING)]


def test_a_wheel_uploaded_after_the_sdist_settles_the_plan(
    settings: Settings, factory: sessionmaker[Session], pypi: Index, sdists: dict[str, Path]
) -> None:
    """A pure-Python wheel published after the sdist ends the waiting job; a wheel added
    to a release first sight left unplanned does not plan it."""
    publish_and_watch(settings, pypi, sdists, "1.1", "2.0")
    module = PROJECT.replace("-", "_")
    with client_for(pypi.url) as client:
        poll_watched(factory, client, settings)
        assert jobs_by_version(factory) == [("2.0", "aarch64", "cp311", JobState.PENDING)]
        for version in ("1.1", "2.0"):
            wheel = f"{module}-{version}-py3-none-any.whl"
            (pypi.packages / wheel).write_bytes(make_wheel(wheel, modules=(module,)))
        [outcome] = poll_watched(factory, client, settings)
    assert outcome.new_jobs == 0
    assert jobs_by_version(factory) == [("2.0", "aarch64", "cp311", JobState.SKIPPED)]
    with factory() as session:
        reasons = dict(session.execute(select(Release.version, Release.skip_reason)).all())
        job = session.scalars(select(BuildJob)).one()
    assert reasons == {"1.1": None, "2.0": SkipReason.PURE_PYTHON_UPSTREAM}
    assert job.skip_reason == SkipReason.PURE_PYTHON_UPSTREAM


def test_requires_python_excludes_targets(
    settings: Settings, factory: sessionmaker[Session], pypi: Index, sdists: dict[str, Path]
) -> None:
    # pypiserver 2.x does not put data-requires-python on its links, so the page is the
    # real pypiserver listing with each file's Requires-Python taken from its own PKG-INFO,
    # as PyPI would publish it.
    for version in ("0.9", "1.0"):
        pypi.publish(sdists[version])
    settings.upstream.backfill = True
    settings.targets["aarch64"] = TargetSettings(
        arch="aarch64", image="img", python_tags=["cp27", "cp311"], policy="manylinux2014_aarch64"
    )
    with client_for(pypi.url) as client:
        page = client.project_page(PROJECT)
    assert all(f.requires_python is None for f in page.files)
    page.files = [
        dataclasses.replace(f, requires_python=pkg_info(sdists[f.version]).get("Requires-Python"))
        for f in page.files
    ]
    assert {f.version: f.requires_python for f in page.files} == {"0.9": "<3", "1.0": None}
    with transaction(factory) as session:
        outcome = apply_page(session, page, settings)
    assert outcome.new_jobs == 3
    assert [(v, t) for v, _, t, _ in jobs_by_version(factory)] == [
        ("0.9", "cp27"),
        ("1.0", "cp27"),
        ("1.0", "cp311"),
    ]
    with factory() as session:
        release = session.scalar(select(Release).where(Release.version == "0.9"))
        assert release is not None and release.requires_python == "<3"


# --- pages built by hand -----------------------------------------------------------------


def test_requires_python_from_html_and_json_pages(
    settings: Settings, factory: sessionmaker[Session]
) -> None:
    settings.upstream.backfill = True
    digest = "a" * 64
    html = (
        f'<a href="/f/html-1.0.tar.gz#sha256={digest}" data-requires-python="&lt;3">'
        "html-1.0.tar.gz</a>"
        f'<a href="/f/html-2.0.tar.gz#sha256={"b" * 64}" data-requires-python="&gt;=3.8">'
        "html-2.0.tar.gz</a>"
    )
    html_files = parse_html_page("html", "http://127.0.0.1:1/simple/html/", html)
    assert [f.requires_python for f in html_files] == ["<3", ">=3.8"]
    json_files = parse_json_page(
        "json",
        "http://127.0.0.1:1/simple/json/",
        {
            "files": [
                sdist_entry("json", "1.0", **{"requires-python": "<3"}),
                sdist_entry("json", "2.0", **{"requires-python": ">=3.8"}),
            ]
        },
    )
    with transaction(factory) as session:
        for name, files in (("html", html_files), ("json", json_files)):
            outcome = apply_page(session, ProjectPage(name, None, None, files), settings)
            assert (outcome.new_releases, outcome.new_sdists, outcome.new_jobs) == (2, 2, 1)
    assert [(v, t) for v, _, t, _ in jobs_by_version(factory)] == [
        ("2.0", "cp311"),
        ("2.0", "cp311"),
    ]


HTML_ZOO = f"""<!DOCTYPE html><html><body>
<a href="/f/demo-1.0.tar.gz#sha256={"A" * 64}">demo-1.0.tar.gz</a>
<a href="/f/demo-1.0-py3-none-any.whl#sha256={"b" * 64}" data-yanked
  >demo-1.0-py3-none-any.whl</a>
<a href="/f/demo-1.1.tar.gz">demo-1.1.tar.gz</a>
<a href="/f/demo-1.2.tar.gz#md5=0123">demo-1.2.tar.gz</a>
<a href="/f/demo-1.3.tar.gz#sha256=nothex">demo-1.3.tar.gz</a>
<a href="/f/demo-notaversion.tar.gz#sha256={"c" * 64}">demo-notaversion.tar.gz</a>
<a href="/f/demo.tar.gz#sha256={"c" * 64}">demo.tar.gz</a>
<a href="/f/demo-1.0.exe#sha256={"c" * 64}">demo-1.0.exe</a>
<a href="/f/demo-x-py3-none-any.whl">demo-x-py3-none-any.whl</a>
<a href="/f/other-1.0.tar.gz#sha256={"c" * 64}">other-1.0.tar.gz</a>
<a href="http://[::1/demo-1.4.tar.gz">demo-1.4.tar.gz</a>
<a>demo-1.5.tar.gz</a>
<a href="">demo-1.6.tar.gz</a>
<a href="/f/demo-1.7.tar.gz#sha256={"d" * 64}" data-yanked="broken build"></a>
<p>no anchors here</p><a href="/f/unclosed
</body></html>"""


def test_html_page_skips_malformed_entries() -> None:
    files = parse_html_page("demo", "http://127.0.0.1:1/simple/demo/", HTML_ZOO)
    assert [(f.filename, f.version, f.is_sdist, f.sha256, f.yanked) for f in files] == [
        ("demo-1.0.tar.gz", "1.0", True, "a" * 64, False),
        ("demo-1.0-py3-none-any.whl", "1.0", False, "b" * 64, True),
        ("demo-1.1.tar.gz", "1.1", True, None, False),
        ("demo-1.2.tar.gz", "1.2", True, None, False),
        ("demo-1.3.tar.gz", "1.3", True, None, False),
        ("demo-1.7.tar.gz", "1.7", True, "d" * 64, "broken build"),
    ]
    assert files[0].url == "http://127.0.0.1:1/f/demo-1.0.tar.gz"
    # A link without text is named by its URL's last segment.
    assert files[-1].url == "http://127.0.0.1:1/f/demo-1.7.tar.gz"


JSON_ZOO: list[object] = [
    "demo-0.1.tar.gz",
    None,
    7,
    ["demo-0.2.tar.gz"],
    {"url": "/f/demo-0.3.tar.gz", "hashes": {"sha256": "f" * 64}},
    {"filename": "demo-0.4.tar.gz", "hashes": {"sha256": "f" * 64}},
    {"filename": "demo-0.5.tar.gz", "url": None, "hashes": {"sha256": "f" * 64}},
    {"filename": "demo-0.6.tar.gz", "url": 6, "hashes": {"sha256": "f" * 64}},
    {"filename": 5, "url": "/f/5", "hashes": {"sha256": "f" * 64}},
    {"filename": "demo-0.7.tar.gz", "url": "/f/demo-0.7.tar.gz", "hashes": ["sha256"]},
    {"filename": "demo-0.8.tar.gz", "url": "http://[::1/demo-0.8.tar.gz", "hashes": {}},
    sdist_entry("demo", "notaversion"),
    sdist_entry("other", "1.0"),
    {"filename": "demo-1.0.rpm", "url": "/f/demo-1.0.rpm", "hashes": {}},
    sdist_entry(
        "demo",
        "1.0",
        size=123,
        yanked="bad",
        **{"upload-time": "2024-01-02T03:04:05Z", "requires-python": ">=3.8"},
    ),
    {"filename": "demo-1.1.tar.gz", "url": "/f/demo-1.1.tar.gz"},
    {"filename": "demo-1.2.tar.gz", "url": "/f/demo-1.2.tar.gz", "hashes": {"md5": "00"}},
    sdist_entry("demo", "1.3", size=-1, yanked=["no"], **{"upload-time": "yesterday"}),
    sdist_entry("demo", "1.4", **{"requires-python": 3, "hashes": {"sha256": "Z" * 64}}),
]


def test_json_page_skips_malformed_entries() -> None:
    files = parse_json_page(
        "demo", "http://127.0.0.1:1/simple/demo/", {"meta": {}, "files": JSON_ZOO}
    )
    assert [f.filename for f in files] == [
        "demo-1.0.tar.gz",
        "demo-1.1.tar.gz",
        "demo-1.2.tar.gz",
        "demo-1.3.tar.gz",
        "demo-1.4.tar.gz",
    ]
    good, no_hashes, md5_only, odd, bad_hash = files
    assert good.url == "http://127.0.0.1:1/files/demo-1.0.tar.gz"
    assert (good.size, good.yanked, good.requires_python) == (123, "bad", ">=3.8")
    assert good.upload_time is not None and good.upload_time.year == 2024
    assert no_hashes.sha256 is None and md5_only.sha256 is None and bad_hash.sha256 is None
    assert (odd.size, odd.yanked, odd.upload_time) == (None, False, None)
    assert bad_hash.requires_python is None


@pytest.mark.parametrize("body", [None, [], "files", {"files": None}, {"files": {}}, {"meta": 1}])
def test_json_page_without_a_files_list_is_an_upstream_error(body: object) -> None:
    with pytest.raises(UpstreamError):
        parse_json_page("demo", "http://127.0.0.1:1/simple/demo/", body)


def test_malformed_entries_record_nothing(
    settings: Settings, factory: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    page_url = "http://127.0.0.1:1/simple/demo/"
    files = parse_html_page("demo", page_url, HTML_ZOO) + parse_json_page(
        "demo", page_url, {"files": JSON_ZOO}
    )
    settings.upstream.backfill = True
    with caplog.at_level(logging.WARNING), transaction(factory) as session:
        outcome = apply_page(session, ProjectPage("demo", None, None, files), settings)
    # 1.1, 1.2 and 1.4 have only sdists without a usable sha256: releases, no sources.
    assert (outcome.new_releases, outcome.new_sdists) == (6, 3)
    with factory() as session:
        sources = session.scalars(select(SourceFile)).all()
        assert sorted(s.filename for s in sources) == [
            "demo-1.0.tar.gz",
            "demo-1.3.tar.gz",
            "demo-1.7.tar.gz",
        ]
        yanked = session.scalar(select(Release).where(Release.version == "1.7"))
        assert yanked is not None and yanked.yanked and yanked.yanked_reason == "broken build"
        one = session.scalar(select(Release).where(Release.version == "1.0"))
        assert one is not None and not one.yanked
        assert one.upstream_files == ["demo-1.0-py3-none-any.whl", "demo-1.0.tar.gz"]
    # The yanked release gets no job; 1.0 is not wholly yanked (the HTML sdist is not) but
    # PyPI serves a py3-none-any wheel for it, which the farm never shadows.
    assert [v for v, _, _, _ in jobs_by_version(factory)] == ["1.3"]
    with factory() as session:
        rows = session.execute(select(Release.version, Release.skip_reason)).all()
        reasons = {version: reason for version, reason in rows}
    assert reasons["1.0"] == SkipReason.PURE_PYTHON_UPSTREAM
    assert reasons["1.7"] == SkipReason.YANKED_UPSTREAM
    assert any(r.getMessage() == "sdist without sha256 ignored" for r in caplog.records)


# --- a flaky or missing upstream ---------------------------------------------------------


def test_transient_errors_are_retried_and_missing_projects_recorded(
    settings: Settings, factory: sessionmaker[Session], upstream: Upstream
) -> None:
    upstream.script(
        "flaky",
        Reply(500, b"boom"),
        Reply(429, b"slow down"),
        json_reply([sdist_entry("flaky", "1.0")], serial=42, etag='"v1"'),
    )
    watch(settings, upstream.url, "flaky", "gone")
    with client_for(upstream.url, attempts=3) as client:
        outcomes = poll_watched(factory, client, settings)
        assert [(o.project, o.unchanged, o.new_jobs) for o in outcomes] == [
            ("flaky", False, 1),
            ("gone", True, 0),
        ]
        assert upstream.hits("flaky") == 3
        with factory() as session:
            projects = {p.name: p for p in session.scalars(select(Project))}
            assert (projects["flaky"].upstream_serial, projects["flaky"].upstream_etag) == (
                42,
                '"v1"',
            )
            assert projects["gone"].polled_at is not None
            gone = select(Release).where(Release.project_id == projects["gone"].id)
            assert session.scalars(gone).all() == []
        before = row_counts(factory)
        # The stored ETag is sent back; the 304 changes nothing.
        outcomes = poll_watched(factory, client, settings)
    assert [(o.project, o.unchanged) for o in outcomes] == [("flaky", True), ("gone", True)]
    assert upstream.requests[-2] == ("/simple/flaky/", '"v1"')
    assert row_counts(factory) == before


def test_exhausted_retries_skip_the_project(
    settings: Settings, factory: sessionmaker[Session], upstream: Upstream
) -> None:
    upstream.script("down", Reply(503, b"unavailable"))
    upstream.script("fine", json_reply([sdist_entry("fine", "1.0")]))
    watch(settings, upstream.url, "down", "fine")
    with client_for(upstream.url, attempts=2) as client:
        with pytest.raises(TransientUpstreamError):
            client.project_page("down")
        assert upstream.hits("down") == 2
        outcomes = poll_watched(factory, client, settings)
    assert [o.project for o in outcomes] == ["fine"]
    assert upstream.hits("down") == 4
    with factory() as session:
        assert session.scalars(select(Project.name)).all() == ["fine"]


def test_odd_headers_and_html_fallback(upstream: Upstream) -> None:
    upstream.script(
        "odd",
        Reply(
            200,
            f'<a href="/f/odd-1.0.tar.gz#sha256={"a" * 64}">odd-1.0.tar.gz</a>'.encode(),
            # U+00B2 is a digit to str.isdigit() but not to int().
            {"Content-Type": "text/html", "X-PyPI-Last-Serial": "\u00b2"},
        ),
    )
    upstream.script("teapot", Reply(418, b"I'm a teapot"))
    upstream.script("garbled", Reply(200, b"{not json", {"Content-Type": JSON_TYPE}))
    with client_for(upstream.url, attempts=1) as client:
        page = client.project_page("odd")
        assert page.serial is None
        assert [f.filename for f in page.files] == ["odd-1.0.tar.gz"]
        with pytest.raises(UpstreamError, match="HTTP 418"):
            client.project_page("teapot")
        with pytest.raises(UpstreamError, match="invalid JSON"):
            client.project_page("garbled")


def test_releases_and_projects_removed_upstream_leave_the_index(
    settings: Settings, factory: sessionmaker[Session], upstream: Upstream
) -> None:
    settings.upstream.backfill = True
    both: list[object] = [sdist_entry("demo", "1.0"), sdist_entry("demo", "2.0")]
    upstream.script(
        "demo",
        json_reply(both, etag='"a"'),
        json_reply([sdist_entry("demo", "1.0")], etag='"b"'),  # 2.0 removed
        Reply(404, b"gone"),  # the whole project removed
        json_reply(both, etag='"c"'),  # and back again
    )
    watch(settings, upstream.url, "demo")

    def removed() -> dict[str, bool]:
        with factory() as session:
            rows = session.execute(select(Release.version, Release.removed_at)).all()
        return {version: when is not None for version, when in rows}

    with client_for(upstream.url) as client:
        poll_watched(factory, client, settings)
        assert removed() == {"1.0": False, "2.0": False}
        (outcome,) = poll_watched(factory, client, settings)
        assert outcome.removed_releases == 1
        assert removed() == {"1.0": False, "2.0": True}
        (outcome,) = poll_watched(factory, client, settings)
        assert outcome.removed_releases == 1
        assert removed() == {"1.0": True, "2.0": True}
        with factory() as session:
            project = session.scalar(select(Project).where(Project.name == "demo"))
            assert project is not None and project.removed_at is not None
        poll_watched(factory, client, settings)
        assert removed() == {"1.0": False, "2.0": False}
    # History stays: the removed release's jobs ended as skipped, and it came back with
    # new jobs, not with a second copy of anything.
    states = [(v, s) for v, _, _, s in jobs_by_version(factory)]
    assert states.count(("2.0", JobState.SKIPPED)) == 1
    assert ("2.0", JobState.PENDING) in states

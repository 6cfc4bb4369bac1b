"""`armwheels import` against a mirror as bandersnatch writes one: its JSON API and Simple
API give file URLs relative to the document (`../../packages/...`). What the import
records is what the watch list records for the same project, every sdist URL is absolute,
and a builder claiming the job downloads the sdist from the mirror.

Real parts: the mirror under uvicorn on loopback serving real sdists (setuptools), the
`armwheels` console script on a SQLite farm, the master's builder API for the claim, and
the builder's fetch_sdist.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from builder.sdist import fetch_sdist
from common.config import Settings, load_settings
from common.db import make_engine, make_sessionmaker, transaction
from common.job_spec import JobSpec
from common.models import BuildJob, Release, SourceFile
from common.states import JobState, TokenRole
from master.auth import create_token
from master.builds.rebuild import RebuildError, request_rebuild
from master.pypi.importer import ImportRequest, import_project, parse_import_request
from master.pypi.json_api import JsonApiClient, parse_project_document
from master.pypi.poller import poll_project
from master.pypi.releases import pick_sdist
from master.pypi.upstream import (
    JSON_TYPE,
    FileKind,
    KnownVersions,
    SimpleClient,
    UpstreamFile,
    classify_filename,
    parse_html_page,
    parse_json_page,
    resolve_file_url,
)
from master.web.app import create_app
from tests.conftest import MigratedTemplates
from tests.sdists import make_sdist
from tests.servers import serve_app
from tests.test_cli import Farm, assert_usage_error
from tests.test_cli import farm as farm  # the console-script farm fixture

PROJECT = "demo"


@dataclass
class MirrorFile:
    filename: str
    data: bytes
    release: str  # the JSON API's key, as the uploader's metadata spelled the version
    requires_python: str | None = None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def path(self) -> str:
        """Where bandersnatch keeps it: packages/<2 hex>/<2 hex>/<60 hex>/<filename>."""
        digest = self.sha256
        return f"packages/{digest[:2]}/{digest[2:4]}/{digest[4:]}/{self.filename}"


@dataclass
class Mirror:
    """One project's pages and files, every link relative to its page; `requests` counts
    the paths asked for."""

    files: list[MirrorFile]
    requests: Counter[str] = field(default_factory=Counter)
    # Simple API pages in HTML only, as pypiserver and older mirrors serve them.
    html_only: bool = False

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/pypi/{name}/json", self.json_api),
                Route("/simple/{name}/", self.simple),
                Route("/packages/{path:path}", self.package),
            ]
        )

    async def json_api(self, request: Request) -> Response:
        self.requests[request.url.path] += 1
        if request.path_params["name"] != PROJECT:
            return JSONResponse({"message": "Not Found"}, status_code=404)
        releases: dict[str, list[dict[str, Any]]] = {}
        for file in self.files:
            releases.setdefault(file.release, []).append(
                {
                    "filename": file.filename,
                    "url": f"../../{file.path}",
                    "digests": {"sha256": file.sha256},
                    "size": len(file.data),
                    "requires_python": file.requires_python,
                    "yanked": False,
                    "yanked_reason": None,
                    "upload_time_iso_8601": "2024-01-02T03:04:05.000000Z",
                }
            )
        return JSONResponse(
            {"info": {"name": PROJECT}, "last_serial": 7, "releases": releases, "urls": []}
        )

    async def simple(self, request: Request) -> Response:
        self.requests[request.url.path] += 1
        if request.path_params["name"] != PROJECT:
            return HTMLResponse("Not Found", status_code=404)
        if JSON_TYPE in request.headers.get("Accept", "") and not self.html_only:
            body = {
                "meta": {"api-version": "1.1", "_last-serial": 7},
                "name": PROJECT,
                "versions": sorted({f.release for f in self.files}),
                "files": [
                    {
                        "filename": f.filename,
                        "url": f"../../{f.path}",
                        "hashes": {"sha256": f.sha256},
                        "requires-python": f.requires_python,
                        "size": len(f.data),
                        "upload-time": "2024-01-02T03:04:05.000000Z",
                    }
                    for f in self.files
                ],
            }
            return Response(json.dumps(body), media_type=JSON_TYPE)
        links = "\n".join(
            f'<a href="../../{f.path}#sha256={f.sha256}"'
            + (f' data-requires-python="{f.requires_python}"' if f.requires_python else "")
            + f">{f.filename}</a><br>"
            for f in self.files
        )
        return HTMLResponse(f"<!DOCTYPE html><html><body>\n{links}\n</body></html>")

    async def package(self, request: Request) -> Response:
        path = f"packages/{request.path_params['path']}"
        self.requests[path] += 1
        for file in self.files:
            if file.path == path:
                return Response(file.data, media_type="application/octet-stream")
        return Response("Not Found", status_code=404)


@pytest.fixture(scope="module")
def sdists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Real sdists of demo 1.0, 1.0.2 and 2.0, built once."""
    work = tmp_path_factory.mktemp("sdists")
    made = {}
    for version in ("1.0", "1.0.2", "1.1.post1", "2.0"):
        path = make_sdist(work / "src", work / "dist", PROJECT, version, {"demo/__init__.py": ""})
        made[version] = path.read_bytes()
    return made


def mirror_files(sdists: dict[str, bytes]) -> list[MirrorFile]:
    """A project with an old history: installers beside the sdist, a re-uploaded sdist with
    a build suffix after its version (the release's only sdist; an x86_64 wheel names
    the release on an HTML page too), a distutils-era version spelled with a dash, and the
    newest release in today's names."""
    return [
        MirrorFile("demo-1.0.tar.gz", sdists["1.0"], "1.0"),
        MirrorFile("demo-1.0.win32.exe", b"MZ an installer", "1.0"),
        MirrorFile("demo-1.0.win-amd64.msi", b"an msi", "1.0"),
        MirrorFile("demo-1.0-py2.7.egg", b"PK an egg", "1.0"),
        MirrorFile("demo-1.0.linux-x86_64.tar.gz", b"a bdist_dumb", "1.0"),
        MirrorFile("demo-1.0.2-2.tar.gz", sdists["1.0.2"], "1.0.2"),
        MirrorFile("demo-1.0.2-cp39-cp39-manylinux_2_17_x86_64.whl", b"PK a wheel", "1.0.2"),
        MirrorFile("demo-1.1-1.tar.gz", sdists["1.1.post1"], "1.1-1", ">=3.8"),
        MirrorFile("demo-2.0.tar.gz", sdists["2.0"], "2.0", ">=3.9"),
    ]


@pytest.fixture
def mirror(sdists: dict[str, bytes]) -> Iterator[tuple[Mirror, str]]:
    served = Mirror(mirror_files(sdists))
    with serve_app(served.app()) as url:
        yield served, url


# --- what a file of a release is -----------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "known", "kind", "version"),
    [
        ("demo-1.0.tar.gz", [], FileKind.SDIST, "1.0"),
        ("Demo_Thing-1.0.zip", [], FileKind.OTHER_PROJECT, None),
        ("demo-1.0-py3-none-any.whl", [], FileKind.WHEEL, "1.0"),
        # PEP 440 holds 1.0.0 and 1.0 equal: the file is release 1.0's where there is one.
        ("demo-1.0.0.tar.gz", ["1.0"], FileKind.SDIST, "1.0"),
        ("demo-1.0.0-py3-none-any.whl", ["1.0"], FileKind.WHEEL, "1.0"),
        ("demo-1.0.0.tar.gz", [], FileKind.SDIST, "1.0.0"),
        ("other-1.0-py3-none-any.whl", [], FileKind.OTHER_PROJECT, None),
        ("other-1.0.tar.gz", [], FileKind.OTHER_PROJECT, None),
        ("demo-1.0.win32.exe", [], FileKind.INSTALLER, None),
        ("demo-1.0.win-amd64-py3.8.msi", [], FileKind.INSTALLER, None),
        ("demo-1.0.macosx-10.9.dmg", [], FileKind.INSTALLER, None),
        ("demo-1.0-1.noarch.rpm", [], FileKind.INSTALLER, None),
        ("demo-1.0-1.src.rpm", [], FileKind.INSTALLER, None),
        ("demo_1.0-1_all.deb", [], FileKind.INSTALLER, None),
        ("demo-1.0-py2.7.egg", [], FileKind.INSTALLER, None),
        ("demo-1.0.linux-x86_64.tar.gz", ["1.0"], FileKind.BUILT, None),
        ("demo-1.0.win32.zip", ["1.0"], FileKind.BUILT, None),
        # A build suffix after a release's version: that release's sdist.
        ("demo-1.0.2-2.tar.gz", ["1.0.2"], FileKind.SDIST, "1.0.2"),
        ("DEMO-1.0.2-2.tar.gz", ["1.0", "1.0.2"], FileKind.SDIST, "1.0.2"),
        # ... unless the whole is a release of its own (distutils kept "1.1-1" as is).
        ("demo-1.1-1.tar.gz", ["1.1", "1.1-1"], FileKind.SDIST, "1.1.post1"),
        # Nothing known: all that follows the name, if it is a version.
        ("demo-1.1-1.tar.gz", [], FileKind.SDIST, "1.1.post1"),
        ("demo-1.0.tar.bz2", [], FileKind.SDIST, "1.0"),
        ("demo-1.0.tgz", [], FileKind.SDIST, "1.0"),
        ("demo-extra-1.0.tar.gz", ["1.0"], FileKind.OTHER_PROJECT, None),
        ("demo-notaversion.tar.gz", [], FileKind.UNRECOGNISED, None),
        ("demo.tar.gz", [], FileKind.UNRECOGNISED, None),
        ("demo-1.0.txt", [], FileKind.UNRECOGNISED, None),
        ("demo-1-0-x-py3-none-any.whl", [], FileKind.UNRECOGNISED, None),
    ],
)
def test_files_are_classified_as_what_they_are(
    filename: str, known: list[str], kind: FileKind, version: str | None
) -> None:
    found = classify_filename(PROJECT, filename, KnownVersions(known))
    assert (found.kind, found.version) == (kind, version)


def test_installers_and_legacy_names_are_logged_as_what_they_are(
    sdists: dict[str, bytes], caplog: pytest.LogCaptureFixture
) -> None:
    files = mirror_files(sdists)
    base = "http://127.0.0.1:1"
    body = {
        "releases": {
            f.release: [
                {"filename": g.filename, "url": f"../../{g.path}", "digests": {"sha256": g.sha256}}
                for g in files
                if g.release == f.release
            ]
            for f in files
        }
    }
    with caplog.at_level(logging.DEBUG, logger="master.pypi"):
        details = parse_project_document(PROJECT, f"{base}/pypi/demo/json", body)
    recorded = {
        version: sorted(f.filename for f in found) for version, found in details.releases.items()
    }
    assert recorded == {
        "1.0": ["demo-1.0.tar.gz"],
        "1.0.2": ["demo-1.0.2-2.tar.gz", "demo-1.0.2-cp39-cp39-manylinux_2_17_x86_64.whl"],
        "1.1.post1": ["demo-1.1-1.tar.gz"],
        "2.0": ["demo-2.0.tar.gz"],
    }
    legacy = details.releases["1.0.2"][0]
    assert legacy.is_sdist and legacy.url == f"{base}/{files[5].path}"
    # Nothing here is malformed or another project's: no warning at all.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    ignored = {(r.getMessage(), getattr(r, "file", None)) for r in caplog.records}
    assert ("installer file ignored", "demo-1.0.win32.exe") in ignored
    assert ("installer file ignored", "demo-1.0.win-amd64.msi") in ignored
    assert ("installer file ignored", "demo-1.0-py2.7.egg") in ignored
    assert ("built distribution ignored", "demo-1.0.linux-x86_64.tar.gz") in ignored
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="master.pypi"):
        parse_project_document(
            PROJECT,
            f"{base}/pypi/demo/json",
            {
                "releases": {
                    "1.0": [
                        {"filename": "other-1.0.tar.gz", "url": "x", "digests": {}},
                        {"filename": "demo-1.0.tar.gz", "url": "ftp://h/x", "digests": {}},
                        {"filename": "demo-1.0.tar.gz", "url": 3, "digests": {}},
                    ]
                }
            },
        )
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [
        "file of another project skipped",
        "file entry without a usable URL skipped",
        "malformed file entry skipped",
    ]


def _sdist(filename: str, url: str = "http://127.0.0.1:1/f") -> UpstreamFile:
    return UpstreamFile(filename, f"{url}/{filename}", "a" * 64, None, False, 1, None, "1.0", True)


@pytest.mark.parametrize(
    ("filenames", "built"),
    [
        # The release's real sdist, whatever the names sort as.
        (["demo-1.0-2.tar.gz", "demo-1.0.tar.gz"], "demo-1.0.tar.gz"),
        (["demo-1.0-2.tar.gz", "demo-1.0.zip"], "demo-1.0.zip"),
        (["demo-1.0.tar.bz2", "demo-1.0.zip", "demo-1.0.tar.gz"], "demo-1.0.tar.gz"),
        (["demo-1.0.tar.bz2", "demo-1.0.tgz"], "demo-1.0.tgz"),
        # A legacy-named file is built when it is the only sdist.
        (["demo-1.0-2.tar.gz"], "demo-1.0-2.tar.gz"),
    ],
)
def test_the_real_sdist_is_built_before_a_legacy_named_one(
    filenames: list[str], built: str
) -> None:
    picked = pick_sdist(PROJECT, [_sdist(name) for name in filenames])
    assert picked is not None and picked.filename == built
    # Never one a builder cannot download.
    assert pick_sdist(PROJECT, [_sdist(built, url="../../packages")]) is None


@pytest.mark.parametrize(
    ("href", "expected"),
    [
        ("../../packages/ab/demo-1.0.tar.gz", "http://m:8/packages/ab/demo-1.0.tar.gz"),
        ("/packages/demo-1.0.tar.gz#sha256=00", "http://m:8/packages/demo-1.0.tar.gz"),
        ("demo-1.0.tar.gz", "http://m:8/simple/demo/demo-1.0.tar.gz"),
        ("//files.example/demo-1.0.tar.gz", "http://files.example/demo-1.0.tar.gz"),
        ("https://files.example/demo-1.0.tar.gz", "https://files.example/demo-1.0.tar.gz"),
        ("ftp://files.example/demo-1.0.tar.gz", None),
        ("file:///srv/demo-1.0.tar.gz", None),
        ("javascript:alert(1)", None),
        ("http://[::1/demo-1.0.tar.gz", None),
        ("https:///demo-1.0.tar.gz", None),
    ],
)
def test_file_urls_are_resolved_against_their_document(href: str, expected: str | None) -> None:
    resolved = resolve_file_url("http://m:8/simple/demo/", href)
    assert (resolved[0] if resolved else None) == expected


def test_both_simple_formats_resolve_relative_links() -> None:
    page = "http://127.0.0.1:1/simple/demo/"
    digest = "a" * 64
    html = f'<a href="../../packages/demo-1.0.tar.gz#sha256={digest}">demo-1.0.tar.gz</a>'
    entry = {"filename": "demo-1.0.tar.gz", "url": "../../packages/demo-1.0.tar.gz"}
    for files in (
        parse_html_page(PROJECT, page, html),
        parse_json_page(PROJECT, page, {"files": [{**entry, "hashes": {"sha256": digest}}]}),
    ):
        [found] = files
        assert (found.url, found.sha256) == ("http://127.0.0.1:1/packages/demo-1.0.tar.gz", digest)


# --- NAME==VERSION -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("demo", ImportRequest("demo")),
        ("Demo.Thing", ImportRequest("demo-thing")),
        ("demo==1.2", ImportRequest("demo", "1.2")),
        ("Demo_Thing==1.0RC1", ImportRequest("demo-thing", "1.0rc1")),
        ("demo == 2.0", ImportRequest("demo", "2.0")),
    ],
)
def test_import_requests_are_read_with_packaging(text: str, expected: ImportRequest) -> None:
    assert parse_import_request(text) == expected


def test_bad_import_requests_are_one_line_usage_errors(farm: Farm) -> None:
    farm.upgraded()
    cases = {
        "demo==1..2": "invalid release 'demo==1..2': invalid version: '1..2'",
        "demo==": "invalid release 'demo==': invalid version: ''",
        "demo===1.0": "invalid version: '=1.0'",
        "demo>=1.0": "invalid release 'demo>=1.0': give NAME or NAME==VERSION",
        "demo=1.0": "give NAME or NAME==VERSION",
        "bad name==1.0": "invalid project name: 'bad name'",
    }
    for text, message in cases.items():
        assert_usage_error(farm.run("import", "ok", text), message)
    assert_usage_error(
        farm.run("import", "demo==1.0", "--all-releases"),
        "demo==1.0 names one release; --all-releases imports every one",
    )


# --- the import path, end to end -----------------------------------------------------------


def _claim_specs(settings: Settings) -> list[JobSpec]:
    """Every pending job claimed through the master's builder API, as a builder would."""
    engine = make_engine(settings.database.url)
    try:
        factory = make_sessionmaker(engine)
        with transaction(factory) as session:
            secret = create_token(session, "b1", TokenRole.BUILDER)
            pending = list(
                session.scalars(
                    select(BuildJob.id)
                    .where(BuildJob.state == JobState.PENDING)
                    .order_by(BuildJob.id)
                )
            )
        auth = {"Authorization": f"Bearer {secret}"}
        specs = []
        with TestClient(create_app(settings, factory)) as client:
            registered = client.post(
                "/api/v1/builders/register",
                headers=auth,
                json={"arch": "aarch64", "backend": "docker", "python_tags": ["cp311"]},
            )
            assert registered.status_code == 200, registered.text
            for job_id in pending:
                answer = client.post(f"/api/v1/jobs/{job_id}/claim", headers=auth)
                assert answer.status_code == 200, answer.text
                specs.append(JobSpec.from_json(answer.json()))
        return specs
    finally:
        engine.dispose()


def test_import_of_one_release_from_a_mirror_with_relative_links(
    farm: Farm, mirror: tuple[Mirror, str], tmp_path: Path
) -> None:
    served, url = mirror
    farm.upgraded()
    env = {"ARMWHEELS_UPSTREAM__JSON_URL": f"{url}/pypi/"}
    result = farm.run("import", "demo==1.0", **env)
    assert result.returncode == 0, result.stderr
    # The release the operator named is the one recorded, not the newest.
    assert "imported 1 of 1 projects: 1 releases, 1 backfill jobs" in result.stdout
    legacy = farm.run("import", "Demo==1.0.2", **env)
    assert legacy.returncode == 0, legacy.stderr
    missing = farm.run("import", "demo==9.9", "demo==1.0", **env)
    assert missing.returncode == 1
    # Beside the log: one line for the operator, naming what is not upstream.
    refusals = [line for line in missing.stderr.splitlines() if not line.startswith("ts=")]
    assert refusals == ["not imported: demo==9.9: demo has no release 9.9 upstream (newest: 2.0)"]
    settings = load_settings(None, master={"data_dir": farm.data})
    engine = make_engine(settings.database.url)
    try:
        with make_sessionmaker(engine)() as session:
            rows = session.execute(
                select(Release.version, SourceFile.filename, SourceFile.url, SourceFile.sha256)
                .join(SourceFile, SourceFile.release_id == Release.id)
                .order_by(Release.version)
            ).all()
    finally:
        engine.dispose()
    by_name = {f.filename: f for f in served.files}
    assert [tuple(row) for row in rows] == [
        (
            "1.0",
            "demo-1.0.tar.gz",
            f"{url}/{by_name['demo-1.0.tar.gz'].path}",
            by_name["demo-1.0.tar.gz"].sha256,
        ),
        (
            "1.0.2",
            "demo-1.0.2-2.tar.gz",
            f"{url}/{by_name['demo-1.0.2-2.tar.gz'].path}",
            by_name["demo-1.0.2-2.tar.gz"].sha256,
        ),
    ]
    # A builder claiming the jobs is sent to the mirror, and downloads what was recorded.
    specs = _claim_specs(settings)
    assert sorted(spec.sdist_filename for spec in specs) == [
        "demo-1.0.2-2.tar.gz",
        "demo-1.0.tar.gz",
    ]
    for spec in specs:
        assert spec.sdist_url.startswith(f"{url}/packages/")
        fetched = fetch_sdist(spec, tmp_path / "sdist")
        assert fetched.read_bytes() == by_name[spec.sdist_filename].data
    assert served.requests[by_name["demo-1.0.tar.gz"].path] == 1


def test_import_without_a_version_takes_the_newest(farm: Farm, mirror: tuple[Mirror, str]) -> None:
    _, url = mirror
    farm.upgraded()
    result = farm.run("import", "demo", ARMWHEELS_UPSTREAM__JSON_URL=f"{url}/pypi/")
    assert result.returncode == 0, result.stderr
    assert "1 releases, 1 backfill jobs" in result.stdout
    settings = load_settings(None, master={"data_dir": farm.data})
    engine = make_engine(settings.database.url)
    try:
        with make_sessionmaker(engine)() as session:
            assert list(session.scalars(select(Release.version))) == ["2.0"]
    finally:
        engine.dispose()


def _records(factory: sessionmaker[Session], sizes: bool) -> dict[str, Any]:
    """What the farm recorded of the project: releases, their upstream files, sdists."""
    with factory() as session:
        releases = session.scalars(select(Release).order_by(Release.version)).all()
        return {
            r.version: (
                r.upstream_files,
                r.requires_python,
                r.yanked,
                sorted(
                    (s.filename, s.url, s.sha256, s.size if sizes else None) for s in r.source_files
                ),
            )
            for r in releases
        }


@contextmanager
def _other_farm(
    migrated_templates: MigratedTemplates, path: Path
) -> Iterator[sessionmaker[Session]]:
    """A second farm's database, for the watch-list path to record the project in."""
    shutil.copyfile(migrated_templates.sqlite(), path)
    engine = make_engine(f"sqlite:///{path}")
    try:
        yield make_sessionmaker(engine)
    finally:
        engine.dispose()


def test_import_and_watch_list_record_the_same_releases_and_files(
    settings: Settings,
    factory: sessionmaker[Session],
    mirror: tuple[Mirror, str],
    migrated_templates: MigratedTemplates,
    tmp_path: Path,
) -> None:
    served, url = mirror
    settings.upstream.backfill = True
    json_api = JsonApiClient(f"{url}/pypi/", 10)
    try:
        import_project(factory, json_api, settings, "demo", all_releases=True)
    finally:
        json_api.close()
    imported = _records(factory, sizes=True)
    assert sorted(imported) == ["1.0", "1.0.2", "1.1.post1", "2.0"]
    for _files, _requires, _yanked, sources in imported.values():
        [(_name, source_url, _sha, _size)] = sources
        assert source_url.startswith(f"{url}/packages/")
    assert imported["1.1.post1"][1] == ">=3.8"
    simple = SimpleClient(f"{url}/simple/", 10)
    try:
        for number, html in enumerate((False, True)):
            served.html_only = html
            with _other_farm(migrated_templates, tmp_path / f"polled-{number}.db") as other:
                page = simple.project_page(PROJECT)
                assert all(f.url.startswith(f"{url}/packages/") for f in page.files)
                assert {f.filename for f in page.files} >= {"demo-1.0.2-2.tar.gz"}
                assert all(f.size is None for f in page.files) == html  # HTML has no sizes
                poll_project(other, simple, PROJECT, settings)
                # HTML gives no sizes; everything else is the same.
                assert _records(other, sizes=not html) == _records(factory, sizes=not html)
    finally:
        simple.close()


def test_a_stored_relative_url_is_never_built_and_an_import_repairs_it(
    settings: Settings, factory: sessionmaker[Session], mirror: tuple[Mirror, str]
) -> None:
    _, url = mirror
    client = JsonApiClient(f"{url}/pypi/", 10)
    try:
        import_project(factory, client, settings, ImportRequest("demo", "1.0"))
        with transaction(factory) as session:
            # What an earlier release of the farm stored from such a mirror.
            source = session.scalars(select(SourceFile)).one()
            good = source.url
            source.url = good.removeprefix(url).replace("/packages", "../../packages", 1)
            for job in session.scalars(select(BuildJob)):
                job.state = JobState.BUILT
        with transaction(factory) as session, pytest.raises(RebuildError) as refused:
            request_rebuild(session, settings, "demo", "1.0")
        assert "is no http(s) URL: import it again with" in str(refused.value)
        assert '"armwheels import demo==1.0"' in str(refused.value)
        import_project(factory, client, settings, ImportRequest("demo", "1.0"))
        with factory() as session:
            assert session.scalars(select(SourceFile.url)).one() == good
        with transaction(factory) as session:
            outcome = request_rebuild(session, settings, "demo", "1.0")
            assert len(outcome.created) == 1
    finally:
        client.close()


def test_rebuild_of_an_unknown_project_says_how_to_import_it(farm: Farm) -> None:
    farm.upgraded()
    assert_usage_error(
        farm.run("rebuild", "Foo", "1.2"),
        'unknown project: foo: import it first with "armwheels import foo==1.2"',
    )
    assert_usage_error(
        farm.run("rebuild", "foo"),
        'unknown project: foo: import it first with "armwheels import foo"',
    )

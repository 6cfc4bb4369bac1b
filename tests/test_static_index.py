"""The index's serial, its static copy, and what caches see: a publish rewrites only its
project's pages, the static tree equals a full regeneration and the master's answers,
and pages carry ETag, Cache-Control and `_last-serial`."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from common.config import Settings
from common.db import transaction
from common.models import IndexChange, OutputFile, Release
from master.index.static import StaticIndex
from master.web.app import create_app
from tests.seed import add_release, publish_wheel

JSON_ACCEPT = {"Accept": "application/vnd.pypi.simple.v1+json"}
HTML_ACCEPT = {"Accept": "text/html"}


def _changes(factory: sessionmaker[Session]) -> list[tuple[int, str, str | None]]:
    with factory() as session:
        rows = session.execute(
            select(IndexChange.id, IndexChange.action, IndexChange.filename).order_by(
                IndexChange.id
            )
        ).all()
    return [(row[0], row[1], row[2]) for row in rows]


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != ".lock"
    }


@pytest.fixture
def static(settings: Settings) -> StaticIndex:
    return StaticIndex(settings.master.data_dir)


def test_every_change_to_what_is_served_gets_a_serial(
    settings: Settings, factory: sessionmaker[Session]
) -> None:
    with transaction(factory) as session:
        wheel = publish_wheel(session, settings, "alpha")
    with transaction(factory) as session:
        add_release(session, settings, project="nowheel")  # nothing served: no change
    with transaction(factory) as session:
        release = session.scalars(select(Release).where(Release.id == wheel.release_id)).one()
        release.yanked, release.yanked_reason = True, "broken"
        other = session.scalars(select(Release).where(Release.id != wheel.release_id)).one()
        other.yanked = True  # serves nothing: not an index change
    with transaction(factory) as session:
        release = session.scalars(select(Release).where(Release.id == wheel.release_id)).one()
        release.yanked = True  # the same value again is no change
    with factory() as session:
        release = session.scalars(select(Release).where(Release.id == wheel.release_id)).one()
        release.removed_at = datetime.now(UTC)
        session.flush()
        session.rollback()  # a change rolled back leaves no serial
    with transaction(factory) as session:
        output = session.get(OutputFile, wheel.id)
        assert output is not None
        output.published = False
    changes = _changes(factory)
    assert [(action, filename) for _, action, filename in changes] == [
        ("publish", wheel.filename),
        ("yank", None),
        ("withdraw", wheel.filename),
    ]
    assert [serial for serial, _, _ in changes] == sorted({serial for serial, _, _ in changes})


def test_a_publish_rewrites_only_its_project(
    settings: Settings, factory: sessionmaker[Session], static: StaticIndex
) -> None:
    with transaction(factory) as session:
        for name in ("alpha", "beta", "gamma"):
            publish_wheel(session, settings, name)
    with factory() as session:
        first = static.sync(session)
    assert first.root_rewritten and first.projects == 3
    before = {p: p.stat().st_mtime_ns for p in static.simple.rglob("index.*")}

    with transaction(factory) as session:
        publish_wheel(session, settings, "beta", "2.0")
    with factory() as session:
        report = static.sync(session)
    # Two pages of one project and the serial: the project list is not touched.
    assert (report.projects, report.files_written, report.root_rewritten) == (1, 3, False)
    changed = {p for p, mtime in before.items() if p.stat().st_mtime_ns != mtime}
    assert changed == {static.simple / "beta" / "index.html", static.simple / "beta" / "index.json"}
    beta = json.loads((static.simple / "beta" / "index.json").read_text())
    assert beta["versions"] == ["1.0", "2.0"]
    assert beta["meta"]["_last-serial"] == report.serial == static.shown_serial()

    with factory() as session:
        assert static.sync(session).files_written == 0  # nothing new: nothing written

    # A new project joins the list; a project losing its last wheel leaves it.
    with transaction(factory) as session:
        publish_wheel(session, settings, "delta")
        gone = session.scalars(
            select(OutputFile).where(OutputFile.filename.startswith("gamma-"))
        ).one()
        gone.published = False
    with factory() as session:
        report = static.sync(session)
    assert report.root_rewritten and report.projects == 2
    assert not (static.simple / "gamma").exists()
    listed = json.loads((static.simple / "index.json").read_text())["projects"]
    assert [entry["name"] for entry in listed] == ["alpha", "beta", "delta"]


def test_incremental_tree_equals_a_full_regeneration(
    settings: Settings, factory: sessionmaker[Session], static: StaticIndex, tmp_path: Path
) -> None:
    with transaction(factory) as session:
        publish_wheel(session, settings, "alpha")
    with factory() as session:
        static.sync(session)
    with transaction(factory) as session:
        publish_wheel(session, settings, "alpha", "1.1")
        publish_wheel(session, settings, "beta")
        release = session.scalars(select(Release).where(Release.version == "1.1")).one()
        release.yanked, release.yanked_reason = True, "bad build"
    with factory() as session:
        static.sync(session)
        fresh = StaticIndex(tmp_path / "fresh")
        fresh.regenerate(session)
    incremental = {k: v for k, v in _tree(static.root).items() if k.startswith("simple/")}
    assert incremental == _tree(fresh.root)
    alpha = json.loads((fresh.simple / "alpha" / "index.json").read_text())
    assert [f["yanked"] for f in alpha["files"]] == [False, "bad build"]


@pytest.fixture
def client(settings: Settings, factory: sessionmaker[Session]) -> Iterator[TestClient]:
    with TestClient(create_app(settings, factory)) as client:
        yield client


def test_master_serves_the_static_pages_bytes_with_cache_headers(
    settings: Settings,
    factory: sessionmaker[Session],
    static: StaticIndex,
    client: TestClient,
) -> None:
    with transaction(factory) as session:
        wheel = publish_wheel(session, settings, "alpha")
        publish_wheel(session, settings, "beta")
    with factory() as session:
        report = static.sync(session)
    for accept, page in ((JSON_ACCEPT, "index.json"), (HTML_ACCEPT, "index.html")):
        for path in ("alpha/", ""):
            answer = client.get(f"/simple/{path}", headers=accept)
            assert answer.status_code == 200
            assert answer.content == (static.simple / path / page).read_bytes()
            assert answer.headers["vary"] == "Accept"
            assert answer.headers["cache-control"] == "max-age=600, public"
            assert int(answer.headers["x-pypi-last-serial"]) <= report.serial
            etag = answer.headers["etag"]
            again = client.get(f"/simple/{path}", headers={**accept, "If-None-Match": etag})
            assert again.status_code == 304 and again.content == b""
            assert again.headers["etag"] == etag
            assert client.head(f"/simple/{path}", headers=accept).status_code == 200
    json_tag = client.get("/simple/alpha/", headers=JSON_ACCEPT).headers["etag"]
    assert json_tag != client.get("/simple/alpha/", headers=HTML_ACCEPT).headers["etag"]
    stale = client.get("/simple/alpha/", headers={**JSON_ACCEPT, "If-None-Match": '"stale"'})
    assert stale.status_code == 200

    fetched = client.get(f"/files/alpha/{wheel.filename}")
    assert hashlib.sha256(fetched.content).hexdigest() == wheel.sha256
    assert fetched.headers["etag"] == f'"{wheel.sha256}"'
    assert "immutable" in fetched.headers["cache-control"]
    cached = client.get(
        f"/files/alpha/{wheel.filename}", headers={"If-None-Match": f'W/"{wheel.sha256}"'}
    )
    assert cached.status_code == 304
    assert client.head(f"/files/alpha/{wheel.filename}").status_code == 200
    metadata = client.get(f"/files/alpha/{wheel.filename}.metadata")
    assert metadata.headers["etag"] == f'"{wheel.metadata_sha256}"'


def test_the_master_keeps_the_static_tree_current_on_publish(
    settings: Settings, factory: sessionmaker[Session], static: StaticIndex, client: TestClient
) -> None:
    """The project list asked of the master comes from the tree, brought up to date first."""
    assert client.get("/simple/", headers=JSON_ACCEPT).json()["projects"] == []
    with transaction(factory) as session:
        publish_wheel(session, settings, "alpha")
    listed = client.get("/simple/", headers=JSON_ACCEPT).json()["projects"]
    assert listed == [{"name": "alpha"}]
    assert (static.simple / "alpha" / "index.json").exists()


def test_project_list_order_is_the_same_however_it_was_built(
    settings: Settings, factory: sessionmaker[Session], static: StaticIndex, tmp_path: Path
) -> None:
    """Names a database collation may order differently from code points (digits, dashes):
    the list written by updates equals the one a full regeneration writes."""
    with transaction(factory) as session:
        for name in ("p-10", "p1", "p-2"):
            publish_wheel(session, settings, name)
    with factory() as session:
        static.sync(session)
    with transaction(factory) as session:
        for name in ("p-1", "p10", "p-9"):
            publish_wheel(session, settings, name)
    with factory() as session:
        assert static.sync(session).root_rewritten
        fresh = StaticIndex(tmp_path / "fresh")
        fresh.regenerate(session)
    listed = json.loads((static.simple / "index.json").read_text())["projects"]
    assert [entry["name"] for entry in listed] == sorted(["p-10", "p1", "p-2", "p-1", "p10", "p-9"])
    assert (static.simple / "index.json").read_bytes() == (fresh.simple / "index.json").read_bytes()
    assert (static.simple / "index.html").read_bytes() == (fresh.simple / "index.html").read_bytes()

"""`armwheels fsck`: a small farm (wheels published through the upload path, a static
tree written by the master's writer) is checked clean; each inconsistency injected into
it is found, `--repair` mends what it may without touching a wheel a row refers to, and
the command's exit codes say what is left."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from armwheels.cli import main
from common.config import Settings, load_settings
from common.db import make_engine, transaction, upgrade
from common.models import AuditEvent, BuildJob, OutputFile
from master.index.fsck import SETTLE_SECONDS, Kind, check, mend, run_fsck
from master.index.static import StaticIndex
from master.storage import Storage
from tests.seed import publish_wheel
from tests.test_cli import Farm, assert_usage_error
from tests.test_cli import farm as farm  # the CLI tests' fixture

LATER = time.time() + 2 * SETTLE_SECONDS  # files written by a test are settled by then
OLD = time.time() - 2 * SETTLE_SECONDS
# For what does not depend on the database: SQLite only.
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@dataclass
class Seeded:
    data: Path
    storage: Storage
    static: StaticIndex
    wheels: dict[str, OutputFile]  # by project


def _seed(settings: Settings, factory: sessionmaker[Session]) -> Seeded:
    """Five projects with a served wheel each, one more withdrawn, two final logs, and the
    static tree brought up to date as the master does."""
    storage = Storage(settings.master.data_dir)
    wheels = {}
    with transaction(factory) as session:
        for name in ("alpha", "beta", "gamma", "delta", "omega"):
            wheels[name] = publish_wheel(session, settings, name)
        withdrawn = publish_wheel(session, settings, "alpha", "0.9")
        withdrawn.published = False
        for output in (wheels["alpha"], wheels["beta"]):
            job = output.job
            project = output.release.project.name
            path, size = storage.store_log(project, job.id, 1, io.BytesIO(b"built\n"), 1024)
            job.log_path, job.log_size = str(path), size
    static = StaticIndex(settings.master.data_dir)
    with factory() as session:
        static.sync(session)
    return Seeded(settings.master.data_dir, storage, static, wheels)


def _kinds(findings: set[tuple[Kind, str, bool]]) -> set[tuple[str, str, bool]]:
    return {(kind.value, path, repairable) for kind, path, repairable in findings}


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted((root / "simple").rglob("*"))
        if path.is_file() and path.name != ".lock"
    }


def _files(root: Path) -> dict[str, tuple[int, bytes]]:
    return {
        str(path): (path.stat().st_mtime_ns, path.read_bytes())
        for path in root.rglob("*")
        if path.is_file()
    }


def _old(path: Path, data: bytes) -> Path:
    """A file as a crash long ago would have left it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (OLD, OLD))
    return path


def test_a_clean_farm_has_no_findings(settings: Settings, factory: sessionmaker[Session]) -> None:
    seeded = _seed(settings, factory)
    report = check(factory, seeded.data, static=True, now=LATER)
    assert report.findings == []
    assert (report.wheels, report.files) == (6, 12)  # each wheel and its .metadata
    # Five projects' two pages, the project list's two.
    assert report.pages == 12
    assert report.hashed_bytes == sum(
        path.stat().st_size for path in seeded.storage.files.rglob("*.whl")
    )
    # A repair of a clean farm changes nothing.
    before = _files(seeded.data)
    again = run_fsck(factory, seeded.data, static=True, repair=True, now=LATER)
    assert again.findings == [] and again.quarantine is None
    assert _files(seeded.data) == before
    # Without a static copy its pages are not compared, whatever lies in simple/.
    (seeded.static.simple / "alpha" / "index.html").write_text("edited")
    plain = check(factory, seeded.data, static=False, now=LATER)
    assert (plain.findings, plain.pages) == ([], 0)


def test_each_inconsistency_is_found_and_what_may_be_is_mended(
    settings: Settings, factory: sessionmaker[Session], tmp_path: Path
) -> None:
    seeded = _seed(settings, factory)
    storage, simple, wheels = seeded.storage, seeded.static.simple, seeded.wheels

    def wheel(name: str) -> Path:
        return storage.wheel_path(name, wheels[name].filename)

    def metadata(name: str) -> Path:
        return storage.metadata_path(name, wheels[name].filename)

    def rel(path: Path) -> str:
        return str(path.relative_to(seeded.data))

    # Rows without files, files not matching their rows.
    wheel("alpha").unlink()
    with wheel("beta").open("ab") as handle:
        handle.write(b"bit rot")
    damaged_beta = wheel("beta").read_bytes()
    metadata("beta").unlink()  # of a damaged wheel: cannot be rewritten from it
    gamma_metadata = metadata("gamma").read_bytes()
    metadata("gamma").unlink()
    metadata("delta").write_bytes(b"Metadata-Version: 2.1\nName: other\n")
    # Files no row names: a wheel a crash left before its row committed, a stray note.
    orphan = _old(storage.files / "zeta" / "zeta-1.0-py3-none-any.whl", b"orphan wheel")
    note = _old(storage.files / "beta" / "notes.txt", b"operator notes")
    # Temporary files of interrupted writes.
    part = _old(storage.tmp / "tmpabc.part", b"half a wheel")
    page_part = _old(simple / "beta" / ".tmpxyz.part", b"half a page")
    # Static pages: deleted, edited, of a project no longer served, and a project
    # published since the tree was last brought up to date (pages, list and serial).
    (simple / "beta" / "index.json").unlink()
    (simple / "gamma" / "index.html").write_text("<html>edited</html>")
    (simple / "ghost").mkdir()
    (simple / "ghost" / "index.html").write_text("old")
    with transaction(factory) as session:
        publish_wheel(session, settings, "epsilon")
        # A job whose final log is gone.
        job = session.get(BuildJob, wheels["delta"].job_id)
        assert job is not None
        job.log_path = str(storage.logs / "delta" / f"{job.id}-1.log.gz")

    report = check(factory, seeded.data, static=True, now=LATER)
    found = {(f.kind, f.path, f.repairable) for f in report.findings}
    epsilon = [f"simple/epsilon/{page}" for page in ("index.html", "index.json")]
    assert _kinds(found) == {
        ("missing-wheel", rel(wheel("alpha")), False),
        ("wheel-hash-mismatch", rel(wheel("beta")), False),
        ("missing-metadata", rel(metadata("beta")), False),
        ("missing-metadata", rel(metadata("gamma")), True),
        ("metadata-hash-mismatch", rel(metadata("delta")), True),
        ("missing-log", f"logs/delta/{job.id}-1.log.gz", False),
        ("unknown-file", rel(orphan), True),
        ("unknown-file", rel(note), True),
        ("leftover-temp", rel(part), True),
        ("leftover-temp", rel(page_part), True),
        ("stale-page", "simple/beta/index.json", True),
        ("stale-page", "simple/gamma/index.html", True),
        ("stale-page", "simple/ghost", True),
        *(("stale-page", page, True) for page in epsilon),
        ("stale-page", "simple/index.html", True),
        ("stale-page", "simple/index.json", True),
        ("stale-page", "simple/.serial", True),
    }
    by_path = {f.path: f for f in report.findings}
    assert by_path[rel(wheel("alpha"))].row == wheels["alpha"].id
    assert by_path[rel(wheel("alpha"))].table == "output_files"
    assert wheels["beta"].sha256 in by_path[rel(wheel("beta"))].detail
    assert by_path["simple/beta/index.json"].detail == "missing"
    assert all(not f.repaired for f in report.findings)

    mend(factory, seeded.data, report, now=LATER)
    left = {(f.kind, f.path, f.repairable) for f in report.left}
    assert _kinds(left) == {
        ("missing-wheel", rel(wheel("alpha")), False),
        ("wheel-hash-mismatch", rel(wheel("beta")), False),
        ("missing-metadata", rel(metadata("beta")), False),
        ("missing-log", f"logs/delta/{job.id}-1.log.gz", False),
    }
    # A wheel a row refers to is never altered, even when its bytes are wrong.
    assert wheel("beta").read_bytes() == damaged_beta
    assert not metadata("beta").exists()
    # Metadata rewritten from its wheel, as the upload wrote it; the bad copy is kept.
    assert metadata("gamma").read_bytes() == gamma_metadata
    assert hashlib.sha256(metadata("delta").read_bytes()).hexdigest() == (
        wheels["delta"].metadata_sha256
    )
    assert report.quarantine is not None
    quarantine = seeded.data / report.quarantine
    assert quarantine.parent == seeded.data / "quarantine"
    assert (quarantine / rel(metadata("delta"))).read_bytes().startswith(b"Metadata-Version")
    # Unknown files are moved, never deleted; temporary files are gone.
    assert not orphan.exists() and not note.exists()
    assert (quarantine / rel(orphan)).read_bytes() == b"orphan wheel"
    assert (quarantine / rel(note)).read_bytes() == b"operator notes"
    assert not part.exists() and not page_part.exists()
    # The tree is what a full regeneration from the database writes.
    fresh = StaticIndex(tmp_path / "fresh")
    with factory() as session:
        fresh.regenerate(session)
    assert _tree(seeded.data) == _tree(fresh.root)

    # Checked again: only what fsck must not mend is left.
    again = check(factory, seeded.data, static=True, now=LATER)
    assert {(f.kind, f.path, f.repairable) for f in again.findings} == left


@SQLITE_ONLY
def test_files_being_written_are_not_judged(
    settings: Settings, factory: sessionmaker[Session]
) -> None:
    """A wheel renamed into files/ whose row is about to commit, a write under way in
    tmp/: neither is reported nor touched by a repair run beside a working master."""
    seeded = _seed(settings, factory)
    fresh_wheel = seeded.storage.files / "zeta" / "zeta-1.0-py3-none-any.whl"
    fresh_wheel.parent.mkdir()
    fresh_wheel.write_bytes(b"being published")
    spooling = seeded.storage.tmp / "tmpnew.part"
    spooling.write_bytes(b"being spooled")
    report = run_fsck(factory, seeded.data, static=True, repair=True)
    assert (report.findings, report.in_flight) == ([], 2)
    assert fresh_wheel.exists() and spooling.exists()


@SQLITE_ONLY
def test_a_tree_ahead_of_the_database_is_regenerated(
    settings: Settings, factory: sessionmaker[Session]
) -> None:
    """A database restored from an older backup than the data directory: the tree shows
    a serial the database never reached, which no replay of changes brings back."""
    seeded = _seed(settings, factory)
    shown = seeded.static.shown_serial()
    assert shown is not None
    (seeded.static.simple / ".serial").write_text(f"{shown + 5}\n")
    report = run_fsck(factory, seeded.data, static=True, repair=True, now=LATER)
    assert [(f.kind, f.path, f.repaired) for f in report.findings] == [
        (Kind.STALE_PAGE, "simple/.serial", True)
    ]
    assert seeded.static.shown_serial() == shown
    assert check(factory, seeded.data, static=True, now=LATER).findings == []


@SQLITE_ONLY
def test_an_unknown_file_never_overwrites_an_earlier_quarantine(
    settings: Settings, factory: sessionmaker[Session]
) -> None:
    seeded = _seed(settings, factory)
    stray = seeded.storage.files / "beta" / "notes.txt"
    places = []
    for text in (b"first", b"second"):
        _old(stray, text)
        report = run_fsck(factory, seeded.data, static=True, repair=True, now=LATER)
        assert [f.repaired for f in report.findings] == [True]
        assert report.quarantine is not None
        places.append(seeded.data / report.quarantine / "files" / "beta" / "notes.txt")
    assert places[0] != places[1]
    assert [place.read_bytes() for place in places] == [b"first", b"second"]
    # No quarantine to move to: the file stays where it is, reported as not repaired.
    shutil.rmtree(seeded.data / "quarantine")
    (seeded.data / "quarantine").write_text("in the way")
    _old(stray, b"third")
    report = run_fsck(factory, seeded.data, static=True, repair=True, now=LATER)
    [finding] = report.left
    assert finding.kind == Kind.UNKNOWN_FILE and "repair failed" in finding.detail
    assert stray.read_bytes() == b"third"


@pytest.fixture
def cli(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Iterator[Callable[..., tuple[int, str, str]]]:
    """The console script's entry point, in this process (a process per call costs
    seconds), on the test's database and data directory: exit code, stdout, stderr."""
    for name in list(os.environ):
        if name.upper().startswith("ARMWHEELS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("ARMWHEELS_DATABASE__URL", settings.database.url)
    monkeypatch.setenv("ARMWHEELS_MASTER__DATA_DIR", str(settings.master.data_dir))
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse's refusals
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    yield run
    root.handlers[:] = handlers
    root.setLevel(level)


def test_fsck_command_exit_codes_and_output(
    settings: Settings,
    factory: sessionmaker[Session],
    cli: Callable[..., tuple[int, str, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """0 clean, 1 with problems (after --repair, only for what is left), 2 with one line
    for bad input."""
    seeded = _seed(settings, factory)
    code, out, err = cli("fsck")
    assert code == 0, out + err
    assert "no problems" in out and "6 wheels" in out
    assert "fsck checked" in err and "wheels=6" in err and "problems=0" in err

    wheel = seeded.storage.wheel_path("beta", seeded.wheels["beta"].filename)
    good = wheel.read_bytes()
    wheel.write_bytes(good + b"rot")
    _old(seeded.storage.files / "beta" / "stray.bin", b"stray")
    code, out, _ = cli("fsck", "--json")
    assert code == 1
    body = json.loads(out)
    assert (body["clean"], body["problems"], body["left"]) == (False, 2, 2)
    kinds = {f["kind"]: f for f in body["findings"]}
    assert set(kinds) == {"wheel-hash-mismatch", "unknown-file"}
    assert kinds["wheel-hash-mismatch"]["row"] == seeded.wheels["beta"].id
    assert "armwheels wheel remove" in kinds["wheel-hash-mismatch"]["advice"]

    code, out, err = cli("fsck", "--repair")
    assert code == 1  # the damaged wheel is left to the operator
    assert "wheel-hash-mismatch" in out and "1 repaired, 1 left" in out and "quarantine" in out
    assert "fsck repaired" in err and "quarantined=1" in err
    assert wheel.read_bytes() == good + b"rot"

    with factory() as session:
        [event] = session.scalars(select(AuditEvent)).all()
    assert (event.action, event.role, event.subject) == (
        "fsck-repair",
        "operator",
        str(seeded.data),
    )
    assert event.actor.startswith("cli:")
    assert event.detail["repaired"] == {"files/beta/stray.bin": "unknown-file"}
    assert event.detail["left"] == 1

    wheel.write_bytes(good)  # restored from a backup
    code, out, _ = cli("fsck", "--repair", "--json")
    assert code == 0, out
    assert json.loads(out)["clean"] is True

    code, _, err = cli("fsck", "--fix")
    assert code == 2 and "unrecognized arguments: --fix" in err
    missing = settings.master.data_dir.parent / "nowhere"
    monkeypatch.setenv("ARMWHEELS_MASTER__DATA_DIR", str(missing))
    code, out, err = cli("fsck")
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        f"armwheels: error: no data directory at {missing} (master.data_dir)"
    ]
    assert not missing.exists()


def test_fsck_console_script(farm: Farm) -> None:
    """The installed command, as an operator or cron runs it: its exit status is fsck's."""
    assert_usage_error(farm.run("fsck"), "run `armwheels db upgrade`")
    settings = load_settings(None, master={"data_dir": farm.data})
    engine = make_engine(settings.database.url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    _old(farm.data / "files" / "demo" / "demo-1.0-py3-none-any.whl", b"no row")
    result = farm.run("fsck", "--json")
    assert result.returncode == 1, result.stderr
    [finding] = json.loads(result.stdout)["findings"]
    assert finding["kind"] == "unknown-file"

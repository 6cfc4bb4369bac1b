"""`armwheels fsck`: whether the database, the files on disk, the static index and the
hashes agree, and what `--repair` can mend without losing anything.

The database is what the master serves from: a wheel's row holds the sha256 the master
computed itself when it accepted the upload, and the index pages serve that hash. So
the disk is checked against the rows, never the other way round:

- every wheel row has its wheel and `.metadata` file, and their bytes hash to the row's
  sha256 and metadata sha256 (streamed, never a whole file in memory);
- every file under `files/` belongs to a row: a file without one is what a crash between
  writing a wheel and committing its row leaves;
- every page of the static copy equals what the master serves now (rendered by the
  static index's own writer), and the copy shows the database's serial;
- no temporary file of an interrupted write is left (`tmp/*.part`, the static writer's
  `simple/**/.*.part`);
- every final build log a job's row names exists.

A file younger than `SETTLE_SECONDS` is not judged: it may be a write under way (a
wheel is renamed into `files/` a moment before its row commits), so fsck can run
beside a working master.

Repairs keep every byte: unknown files are moved to `quarantine/<time>/` under the
data directory, never deleted; leftover temporary files (partial copies of something
written elsewhere in full, or abandoned) are removed; static pages are rewritten by the
static index's writer; a `.metadata` file is rewritten only from its own wheel, whose
bytes must match the row, and only when the result hashes to the row's metadata sha256.
A wheel a row refers to is never moved, changed or deleted: a missing wheel or one
whose bytes differ from its row is reported with what the operator can do (`ADVICE`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from common.models import BuildJob, OutputFile, Project, Release
from common.wheels import BadWheel, read_contents
from master.index import pages as index
from master.index.static import HTML_PAGE, JSON_PAGE, SERIAL_FILE, StaticIndex
from master.storage import STALE_PART_SECONDS, Storage, file_sha256

log = logging.getLogger(__name__)

# A file written less than this long ago may belong to a write under way: not judged.
SETTLE_SECONDS = STALE_PART_SECONDS
QUARANTINE_DIR = "quarantine"
# The files directly in simple/ that are not a project's folder.
_TREE_FILES = (HTML_PAGE, JSON_PAGE, SERIAL_FILE)


class Kind(StrEnum):
    MISSING_WHEEL = "missing-wheel"
    WHEEL_HASH = "wheel-hash-mismatch"
    MISSING_METADATA = "missing-metadata"
    METADATA_HASH = "metadata-hash-mismatch"
    MISSING_LOG = "missing-log"
    UNKNOWN_FILE = "unknown-file"
    STALE_PAGE = "stale-page"
    LEFTOVER_TEMP = "leftover-temp"


# What the operator does about each kind that fsck cannot (or could not) mend.
ADVICE: dict[Kind, str] = {
    Kind.MISSING_WHEEL: (
        "restore the file from a backup or a push target (its sha256 must be the row's), "
        "or take it out of the index: armwheels wheel remove FILENAME --reason R"
    ),
    Kind.WHEEL_HASH: (
        "the row's hash is the one the master computed at upload, so the file changed on "
        "disk; pip refuses it. Restore the original bytes from a backup or a push target, "
        "or take it out of the index: armwheels wheel remove FILENAME --reason R"
    ),
    Kind.MISSING_METADATA: (
        "--repair rewrites it from the wheel; if it cannot, the wheel itself is damaged"
    ),
    Kind.METADATA_HASH: (
        "--repair rewrites it from the wheel; if it cannot, the wheel itself is damaged"
    ),
    Kind.MISSING_LOG: "the build log is lost; a rebuild makes a new one",
    Kind.UNKNOWN_FILE: "--repair moves it to the quarantine directory; look, then delete",
    Kind.STALE_PAGE: "--repair rewrites it (armwheels index sync --full rewrites all)",
    Kind.LEFTOVER_TEMP: "--repair removes it",
}

_ROW_TABLE = {
    Kind.MISSING_WHEEL: "output_files",
    Kind.WHEEL_HASH: "output_files",
    Kind.MISSING_METADATA: "output_files",
    Kind.METADATA_HASH: "output_files",
    Kind.MISSING_LOG: "build_jobs",
}


@dataclass
class Finding:
    """One disagreement. `path` is relative to the data directory (absolute when it lies
    outside it); `row` is the id of the row concerned, in the kind's table."""

    kind: Kind
    path: str
    detail: str
    repairable: bool
    row: int | None = None
    repaired: bool = False

    @property
    def table(self) -> str | None:
        return _ROW_TABLE.get(self.kind)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "path": self.path,
            "table": self.table,
            "row": self.row,
            "detail": self.detail,
            "repairable": self.repairable,
            "repaired": self.repaired,
            "advice": None if self.repaired else ADVICE[self.kind],
        }


@dataclass
class Report:
    """What was looked at and what was found."""

    findings: list[Finding] = field(default_factory=list)
    wheels: int = 0  # wheel rows checked
    files: int = 0  # files under files/
    pages: int = 0  # static pages compared (0: no static copy configured)
    hashed_bytes: int = 0
    in_flight: int = 0  # files too new to judge
    static: bool = False
    quarantine: str | None = None  # where --repair moved unknown files

    @property
    def left(self) -> list[Finding]:
        """The problems that remain (all of them before a repair)."""
        return [finding for finding in self.findings if not finding.repaired]

    def as_dict(self) -> dict[str, Any]:
        return {
            "clean": not self.left,
            "problems": len(self.findings),
            "repaired": sum(finding.repaired for finding in self.findings),
            "left": len(self.left),
            "checked": {
                "wheels": self.wheels,
                "files": self.files,
                "pages": self.pages,
                "hashed_bytes": self.hashed_bytes,
                "in_flight": self.in_flight,
                "static": self.static,
            },
            "quarantine": self.quarantine,
            "findings": [finding.as_dict() for finding in self.findings],
        }


def run_fsck(
    factory: sessionmaker[Session],
    data_dir: Path,
    static: bool,
    repair: bool = False,
    now: float | None = None,
) -> Report:
    """Check the farm under `data_dir` (with its static copy when `static`), then mend
    what can be mended when `repair`."""
    report = check(factory, data_dir, static, now)
    if repair and any(finding.repairable for finding in report.findings):
        mend(factory, data_dir, report, now)
    return report


def check(
    factory: sessionmaker[Session], data_dir: Path, static: bool, now: float | None = None
) -> Report:
    storage = Storage(data_dir)
    report = Report(static=static)
    settled = (time.time() if now is None else now) - SETTLE_SECONDS
    # Rows first, then the disk: a wheel published in between is young, so not unknown.
    with factory() as session:
        known = _check_wheels(session, storage, report)
        _check_logs(session, data_dir, report)
    _check_unknown(storage, known, settled, report)
    tree = StaticIndex(data_dir) if static else None
    _check_temporary(storage, tree, settled, report)
    if tree is not None:
        _check_static(factory, tree, report)
    report.findings.sort(key=lambda finding: (finding.kind, finding.path))
    kinds = Counter(finding.kind.value for finding in report.findings)
    log.info(
        "fsck checked",
        extra={
            "wheels": report.wheels,
            "files": report.files,
            "pages": report.pages,
            "hashed_bytes": report.hashed_bytes,
            "in_flight": report.in_flight,
            "problems": len(report.findings),
            "repairable": sum(finding.repairable for finding in report.findings),
            **{kind.replace("-", "_"): count for kind, count in sorted(kinds.items())},
        },
    )
    return report


def _relative(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def _check_wheels(session: Session, storage: Storage, report: Report) -> set[str]:
    """Each wheel row against its two files; returns those files, relative to files/."""
    known: set[str] = set()
    rows = session.execute(
        select(
            OutputFile.id,
            OutputFile.filename,
            OutputFile.sha256,
            OutputFile.size,
            OutputFile.metadata_sha256,
            OutputFile.published,
            Release.removed_at,
            Project.name,
        )
        .join(Release, OutputFile.release_id == Release.id)
        .join(Project, Release.project_id == Project.id)
        .order_by(OutputFile.id)
        .execution_options(yield_per=5000)
    )
    for row_id, filename, sha256, size, metadata_sha256, published, removed_at, project in rows:
        report.wheels += 1
        wheel = storage.wheel_path(project, filename)
        metadata = storage.metadata_path(project, filename)
        known.update((f"{project}/{filename}", f"{project}/{metadata.name}"))
        served = "served" if published and removed_at is None else "not served"
        found = _RowFindings(report, storage.root, row_id)
        wheel_ok = False
        if not wheel.is_file():
            found(Kind.MISSING_WHEEL, wheel, f"{served} wheel has no file (sha256 {sha256})")
        else:
            actual, actual_size = file_sha256(wheel)
            report.hashed_bytes += actual_size
            wheel_ok = actual == sha256
            if not wheel_ok:
                found(
                    Kind.WHEEL_HASH,
                    wheel,
                    f"{served} wheel is {actual_size} bytes with sha256 {actual}; "
                    f"its row says {size} bytes, sha256 {sha256}",
                )
        if not metadata.is_file():
            mendable = wheel_ok and _metadata_of(wheel, metadata_sha256) is not None
            found(Kind.MISSING_METADATA, metadata, "wheel has no .metadata file", mendable)
            continue
        actual_metadata, _ = file_sha256(metadata)
        if actual_metadata != metadata_sha256:
            mendable = wheel_ok and _metadata_of(wheel, metadata_sha256) is not None
            found(
                Kind.METADATA_HASH,
                metadata,
                f".metadata has sha256 {actual_metadata}; its row says {metadata_sha256}",
                mendable,
            )
    return known


@dataclass
class _RowFindings:
    """Adds the findings of one wheel row."""

    report: Report
    root: Path
    row: int

    def __call__(self, kind: Kind, path: Path, detail: str, repairable: bool = False) -> None:
        where = _relative(path, self.root)
        self.report.findings.append(Finding(kind, where, detail, repairable, self.row))


def _metadata_of(wheel: Path, metadata_sha256: str) -> bytes | None:
    """The wheel's core metadata as the upload path extracts it, if it hashes to
    `metadata_sha256` (else None: the wheel is not the one its row describes)."""
    try:
        data = read_contents(wheel).metadata
    except BadWheel:
        return None
    return data if hashlib.sha256(data).hexdigest() == metadata_sha256 else None


def _check_logs(session: Session, data_dir: Path, report: Report) -> None:
    rows = session.execute(
        select(BuildJob.id, BuildJob.log_path).where(BuildJob.log_path.is_not(None))
    )
    for job_id, log_path in rows:
        path = Path(log_path or "")
        if not path.is_file():
            where = _relative(path, data_dir)
            report.findings.append(
                Finding(Kind.MISSING_LOG, where, "the job's final build log is gone", False, job_id)
            )


def _check_unknown(storage: Storage, known: set[str], settled: float, report: Report) -> None:
    for folder, _dirs, names in os.walk(storage.files):
        for name in names:
            path = Path(folder, name)
            report.files += 1
            if str(path.relative_to(storage.files)) in known:
                continue
            try:
                if os.lstat(path).st_mtime > settled:
                    report.in_flight += 1
                    continue
            except FileNotFoundError:
                continue  # removed meanwhile
            report.findings.append(
                Finding(
                    Kind.UNKNOWN_FILE,
                    _relative(path, storage.root),
                    "no wheel row names this file",
                    True,
                )
            )


def _check_temporary(
    storage: Storage, tree: StaticIndex | None, settled: float, report: Report
) -> None:
    candidates = list(storage.tmp.glob("*.part"))
    if tree is not None and tree.simple.is_dir():
        candidates += tree.simple.rglob(".*.part")
    for path in candidates:
        try:
            stat = os.lstat(path)
        except FileNotFoundError:
            continue  # renamed into place meanwhile
        if stat.st_mtime > settled:
            report.in_flight += 1
            continue
        age = datetime.fromtimestamp(stat.st_mtime, UTC).strftime("%Y-%m-%d %H:%M UTC")
        report.findings.append(
            Finding(
                Kind.LEFTOVER_TEMP,
                _relative(path, storage.root),
                f"temporary file of a write interrupted before {age} ({stat.st_size} bytes)",
                True,
            )
        )


def _check_static(factory: sessionmaker[Session], tree: StaticIndex, report: Report) -> None:
    """Compare every page without holding the tree's lock (a busy master keeps writing),
    then compare again under the lock the pages that differed: what is left differs while
    no writer is at work."""
    with factory() as session:
        found, report.pages = _compare_static(session, tree, None)
    if found:
        with tree.locked(), factory() as session:
            found, _ = _compare_static(session, tree, _projects_of(found, tree))
    report.findings += found


def _projects_of(findings: list[Finding], tree: StaticIndex) -> set[str]:
    """The projects whose pages or folders the findings name (the project list and the
    serial are always compared)."""
    names = set()
    simple = _relative(tree.simple, tree.root)
    for finding in findings:
        parts = Path(finding.path).parts
        if len(parts) >= 2 and parts[0] == simple and parts[1] not in _TREE_FILES:
            names.add(parts[1])
    return names


def _compare_static(
    session: Session, tree: StaticIndex, only: set[str] | None
) -> tuple[list[Finding], int]:
    """Findings for the tree's pages against the database: every project's (or only
    these projects'), the project list's and the serial. Returns them and the number of
    pages compared."""
    serial = index.last_serial(session)
    shown = tree.shown_serial()
    if shown is None and serial == 0 and not tree.simple.exists():
        return [], 0  # nothing published yet and no tree: the master starts one
    findings: list[Finding] = []
    compared = 0

    def compare(pages: dict[Path, str]) -> None:
        nonlocal compared
        for path, content in pages.items():
            compared += 1
            try:
                actual: str | None = path.read_text(encoding="utf-8")
            except FileNotFoundError:
                actual = None
            except (OSError, UnicodeDecodeError):
                actual = ""
            if actual != content:
                detail = "missing" if actual is None else "differs from what the master serves"
                where = _relative(path, tree.root)
                findings.append(Finding(Kind.STALE_PAGE, where, detail, True))

    def extra(folder: Path) -> None:
        where = _relative(folder, tree.root)
        detail = f"pages of {folder.name}, of which the master serves no files"
        findings.append(Finding(Kind.STALE_PAGE, where, detail, True))

    if only is None:
        serials = index.project_serials(session)
        names = []
        for project_id, name, files in index.all_served_files(session):
            compare(tree.project_pages(name, files, serials.get(project_id, 0)))
            names.append(name)
        listed = set(names)
        if tree.simple.is_dir():
            for folder in tree.simple.iterdir():
                if (
                    folder.is_dir()
                    and not folder.name.startswith(".")
                    and folder.name not in listed
                ):
                    extra(folder)
        names.sort()  # code-point order, as the writer keeps it
    else:
        for name in sorted(only):
            project = session.scalar(select(Project).where(Project.name == name))
            files = index.project_files(session, project) if project is not None else []
            if project is not None and files:
                compare(tree.project_pages(name, files, index.last_serial(session, project.id)))
            elif (tree.simple / name).is_dir():
                extra(tree.simple / name)
        names = index.published_projects(session)
    compare(tree.root_pages(names))
    if shown != serial:
        where = _relative(tree.simple / SERIAL_FILE, tree.root)
        if shown is None:
            detail = f"missing or unreadable (the database is at serial {serial})"
        else:
            detail = f"shows serial {shown}, the database is at {serial}"
        findings.append(Finding(Kind.STALE_PAGE, where, detail, True))
    return findings, compared


def mend(
    factory: sessionmaker[Session], data_dir: Path, report: Report, now: float | None = None
) -> None:
    """Repair what `check` found repairable, marking each finding mended as it is."""
    storage = Storage(data_dir)
    moved = removed = rewritten = 0
    for finding in report.findings:
        if not finding.repairable:
            continue
        path = data_dir / finding.path
        try:
            if finding.kind == Kind.UNKNOWN_FILE:
                if report.quarantine is None:
                    report.quarantine = _relative(_new_quarantine(data_dir, now), data_dir)
                target = data_dir / report.quarantine / finding.path
                target.parent.mkdir(parents=True, exist_ok=True)
                path.rename(target)
                log.info("file quarantined", extra={"file": finding.path, "to": str(target)})
                moved += 1
                finding.repaired = True
            elif finding.kind == Kind.LEFTOVER_TEMP:
                path.unlink(missing_ok=True)
                removed += 1
                finding.repaired = True
            elif finding.kind in (Kind.MISSING_METADATA, Kind.METADATA_HASH):
                finding.repaired = _mend_metadata(factory, storage, finding, report, now)
                rewritten += finding.repaired
        except OSError as exc:
            finding.detail += f" (repair failed: {exc})"
            log.warning("fsck repair failed", extra={"file": finding.path, "error": str(exc)})
    pages = [finding for finding in report.findings if finding.kind == Kind.STALE_PAGE]
    if pages:
        try:
            _mend_static(factory, StaticIndex(data_dir), pages)
        except OSError as exc:  # a full disk, say: the pages stay as they were found
            for finding in pages:
                finding.detail += f" (repair failed: {exc})"
            log.warning("fsck repair failed", extra={"file": "simple", "error": str(exc)})
    log.info(
        "fsck repaired",
        extra={
            "repaired": sum(finding.repaired for finding in report.findings),
            "left": len(report.left),
            "quarantined": moved,
            "temporary_removed": removed,
            "metadata_rewritten": rewritten,
            "pages_rewritten": sum(finding.repaired for finding in pages),
            "quarantine": report.quarantine or "",
        },
    )


def _new_quarantine(data_dir: Path, now: float | None) -> Path:
    """A fresh folder under <data_dir>/quarantine/ named by the time of the repair."""
    when = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    root = data_dir / QUARANTINE_DIR
    root.mkdir(parents=True, exist_ok=True)
    stamp = when.strftime("%Y%m%dT%H%M%SZ")
    for attempt in range(1000):
        folder = root / (stamp if attempt == 0 else f"{stamp}-{attempt}")
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        return folder
    raise FileExistsError(f"no free quarantine folder for {stamp} in {root}")


def _mend_metadata(
    factory: sessionmaker[Session],
    storage: Storage,
    finding: Finding,
    report: Report,
    now: float | None,
) -> bool:
    """Write a wheel's `.metadata` again from the wheel, once its bytes are checked
    against the row again; a damaged `.metadata` is kept in the quarantine first."""
    with factory() as session:
        output = session.get(OutputFile, finding.row)
        if output is None:
            return False
        project, filename = output.release.project.name, output.filename
        sha256, metadata_sha256 = output.sha256, output.metadata_sha256
    wheel = storage.wheel_path(project, filename)
    if not wheel.is_file() or file_sha256(wheel)[0] != sha256:
        return False
    data = _metadata_of(wheel, metadata_sha256)
    if data is None:
        return False
    target = storage.metadata_path(project, filename)
    if target.exists():
        if report.quarantine is None:
            report.quarantine = _relative(_new_quarantine(storage.root, now), storage.root)
        kept = storage.root / report.quarantine / finding.path
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(target, kept)
    storage.write_bytes(target, data)
    log.info("metadata file rewritten", extra={"file": finding.path})
    return True


def _mend_static(
    factory: sessionmaker[Session], tree: StaticIndex, findings: list[Finding]
) -> None:
    """Bring the tree up to date the way the master does (replaying the changes past
    its serial; a tree with no serial is regenerated), then rewrite the pages that still
    differ (damaged or deleted under a current serial), or the whole tree when its
    serial is ahead of the database (a database restored from an older backup)."""
    names = _projects_of(findings, tree)
    serial_page = _relative(tree.simple / SERIAL_FILE, tree.root)
    root_pages = {_relative(path, tree.root) for path in tree.root_pages([])}
    with factory() as session:
        tree.sync(session)
    with tree.locked(), factory() as session:
        left, _ = _compare_static(session, tree, names)
    if any(finding.path == serial_page for finding in left):
        with factory() as session:
            tree.regenerate(session)
    elif left:
        with factory() as session:
            tree.rewrite(
                session,
                _projects_of(left, tree),
                root=any(finding.path in root_pages for finding in left),
            )
    with tree.locked(), factory() as session:
        left, _ = _compare_static(session, tree, names)
    still = {finding.path for finding in left}
    for finding in findings:
        finding.repaired = finding.path not in still

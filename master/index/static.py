"""A static copy of the Simple index that nginx or an object store can serve as it is.

Layout under the root (the master's data directory, or an export directory):

    simple/index.html, simple/index.json            the project list
    simple/<project>/index.html, index.json         one project's page, both formats
    simple/.serial                                  the index serial the tree shows
    files/<project>/<wheel>, <wheel>.metadata       what the pages link to (../../files/)
    <distribution>/simple/..., <distribution>/files/...
                                                    each distribution target's own index,
                                                    the same layout, its files linked

The tree is brought up to date by replaying the index changes past the serial it shows:
only the projects that changed are rewritten, and the project list only when a project
gains its first served wheel or loses its last, so publishing a wheel writes a constant
number of files whatever the size of the index. Every file is written under a temporary
name, fsynced and renamed into place: a reader sees the old page or the new one, never
half of one.
"""

from __future__ import annotations

import bisect
import fcntl
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from common.models import IndexChange, Project
from master.index import pages as index
from master.index.pages import IndexFile
from master.storage import fsync_dir

log = logging.getLogger(__name__)

HTML_PAGE = "index.html"
JSON_PAGE = "index.json"
SERIAL_FILE = ".serial"

Progress = Callable[[int], None]


@dataclass
class SyncReport:
    """What one update of the tree did."""

    serial: int
    projects: int = 0
    files_written: int = 0
    files_removed: int = 0
    files_linked: int = 0
    root_rewritten: bool = False


class StaticIndex:
    def __init__(self, root: Path, distributions: Iterable[str] = (), index_name: str = "") -> None:
        """The tree of /simple/ under `root`, and one under root/<name> for each of the
        distribution targets named (`index_name`: this tree is that distribution's)."""
        self.root = root
        self.index_name = index_name
        base = root / index_name if index_name else root
        self.simple = base / "simple"
        self.files = base / "files"
        # A distribution's tree links its wheels from the root's files/ (the master's
        # storage, or an export's own copy), where every wheel is kept.
        self.children = [StaticIndex(root, index_name=name) for name in sorted(distributions)]
        # The project list as last read or written, keyed by its file's (mtime, size):
        # a new project then costs a render of the list, not a parse of it as well.
        self._names: tuple[tuple[int, int], list[str]] | None = None

    def tree(self, index_name: str) -> StaticIndex:
        """This tree ("") or the distribution tree of that name."""
        if index_name == self.index_name:
            return self
        return next(child for child in self.children if child.index_name == index_name)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """One writer at a time per tree (the request that published, the master's loop,
        an operator's `armwheels index sync`); `armwheels fsck` holds it to compare pages
        that no writer is changing. Not reentrant: the methods below take it themselves."""
        self.simple.mkdir(parents=True, exist_ok=True)
        with (self.simple / ".lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def shown_serial(self) -> int | None:
        """The serial the tree shows, or None when there is no complete tree yet."""
        try:
            return int((self.simple / SERIAL_FILE).read_text().strip())
        except (OSError, ValueError):
            return None

    def sync(self, session: Session) -> SyncReport:
        """Rewrite the projects changed since the serial the tree shows (all of them if
        there is no tree yet), then each distribution's tree the same way."""
        report = self._sync(session)
        for child in self.children:
            try:
                child.sync(session)
            except OSError as exc:
                # /simple/ is up to date; the next sync, or fsck, brings this tree along.
                log.warning(
                    "distribution index not updated",
                    extra={"index": child.index_name, "error": str(exc)},
                )
        return report

    def _sync(self, session: Session) -> SyncReport:
        with self.locked():
            shown = self.shown_serial()
            if shown is None:
                # A distribution's tree links its files from the master's storage.
                return self._regenerate(session, self.root if self.index_name else None, None)
            changed = session.execute(
                select(IndexChange.project_id, func.max(IndexChange.id))
                .where(IndexChange.id > shown)
                .group_by(IndexChange.project_id)
            ).all()
            if not changed:
                return SyncReport(shown)
            report = SyncReport(max(serial for _, serial in changed))
            joined: set[str] = set()
            left: set[str] = set()
            for project_id, serial in changed:
                project = session.get(Project, project_id)
                if project is None:
                    continue
                was_listed = (self.simple / project.name / JSON_PAGE).exists()
                files = index.project_files(session, project, self.index_name)
                if self.index_name:
                    self._link_files(self.root, project.name, files, report)
                self._write_project(project.name, files, serial, report)
                if files and not was_listed:
                    joined.add(project.name)
                elif not files and was_listed:
                    left.add(project.name)
            if joined or left:
                self._write_root(_updated(self._listed_names(), joined, left), report)
            self._write_serial(report.serial, report)
        log.info(
            "static index updated",
            extra={
                "serial": report.serial,
                "projects": report.projects,
                "written": report.files_written,
                "removed": report.files_removed,
            },
        )
        return report

    def regenerate(
        self,
        session: Session,
        files_from: Path | None = None,
        progress: Progress | None = None,
    ) -> SyncReport:
        """Write the whole tree from the database; with `files_from` (the master's data
        directory) also link or copy every served wheel and metadata file into it."""
        with self.locked():
            report = self._regenerate(session, files_from, progress)
        for child in self.children:
            # Its files are linked from where every wheel is kept: the master's storage.
            child.regenerate(session, files_from or self.root)
        return report

    def rewrite(self, session: Session, names: Iterable[str], root: bool = False) -> SyncReport:
        """Rewrite these projects' pages (and with `root` the project list) from the
        database now, whatever the serial says: how `armwheels fsck --repair` mends pages
        found damaged or missing in a tree whose serial is current. The serial is left
        as it is (the pages written are at least as new as it)."""
        with self.locked():
            report = SyncReport(self.shown_serial() or 0)
            for name in sorted(set(names)):
                project = session.scalar(select(Project).where(Project.name == name))
                files = (
                    index.project_files(session, project, self.index_name)
                    if project is not None
                    else []
                )
                serial = index.last_serial(session, project.id) if project is not None else 0
                self._write_project(name, files, serial, report)
            if root:
                self._write_root(index.published_projects(session, self.index_name), report)
        log.info(
            "static index pages rewritten",
            extra={"projects": report.projects, "written": report.files_written},
        )
        return report

    def project_pages(self, name: str, files: list[IndexFile], serial: int) -> dict[Path, str]:
        """A served project's two pages, path and content, as the tree holds them."""
        folder = self.simple / name
        return {
            folder / HTML_PAGE: index.render_project_html(name, files, serial),
            folder / JSON_PAGE: index.render_project_json(name, files, serial),
        }

    def root_pages(self, names: list[str]) -> dict[Path, str]:
        """The project list's two pages, path and content (`names` in code-point order)."""
        return {
            self.simple / HTML_PAGE: index.render_root_html(names),
            self.simple / JSON_PAGE: index.render_root_json(names),
        }

    def _regenerate(
        self, session: Session, files_from: Path | None, progress: Progress | None
    ) -> SyncReport:
        serial = index.last_serial(session)
        serials = index.project_serials(session)
        report = SyncReport(serial)
        names: list[str] = []
        for project_id, name, files in index.all_served_files(session, self.index_name):
            self._write_project(name, files, serials.get(project_id, 0), report, durable=False)
            if files_from is not None:
                self._link_files(files_from, name, files, report)
            names.append(name)
            if progress is not None:
                progress(len(files))
        listed = set(names)
        if self.simple.is_dir():
            for stale in self.simple.iterdir():
                if stale.is_dir() and stale.name not in listed:
                    shutil.rmtree(stale, ignore_errors=True)
                    report.files_removed += 2
        os.sync()  # every page on disk before the serial says the tree is complete
        names.sort()  # code-point order, as updates keep it (not the database's collation)
        self._write_root(names, report)
        self._write_serial(serial, report)
        log.info(
            "static index regenerated",
            extra={
                "serial": serial,
                "projects": report.projects,
                "written": report.files_written,
                "linked": report.files_linked,
            },
        )
        return report

    def _write_project(
        self,
        name: str,
        files: list[IndexFile],
        serial: int,
        report: SyncReport,
        durable: bool = True,
    ) -> None:
        folder = self.simple / name
        report.projects += 1
        if not files:
            if folder.is_dir():
                shutil.rmtree(folder, ignore_errors=True)
                report.files_removed += 2
            return
        folder.mkdir(parents=True, exist_ok=True)
        for path, content in self.project_pages(name, files, serial).items():
            _write_atomic(path, content, durable)
        if durable:
            fsync_dir(folder)
        report.files_written += 2

    def _write_root(self, names: list[str], report: SyncReport) -> None:
        self.simple.mkdir(parents=True, exist_ok=True)
        for path, content in self.root_pages(names).items():
            _write_atomic(path, content)
        stat = (self.simple / JSON_PAGE).stat()
        self._names = ((stat.st_mtime_ns, stat.st_size), list(names))
        report.files_written += 2
        report.root_rewritten = True

    def _write_serial(self, serial: int, report: SyncReport) -> None:
        _write_atomic(self.simple / SERIAL_FILE, f"{serial}\n")
        fsync_dir(self.simple)
        report.files_written += 1

    def _listed_names(self) -> list[str]:
        try:
            stat = (self.simple / JSON_PAGE).stat()
            key = (stat.st_mtime_ns, stat.st_size)
            if self._names is not None and self._names[0] == key:
                return list(self._names[1])
            body = json.loads((self.simple / JSON_PAGE).read_text())
            return [entry["name"] for entry in body["projects"]]
        except (OSError, ValueError, KeyError, TypeError):
            # No readable list: rebuild it from the project folders on disk.
            return sorted(
                folder.name for folder in self.simple.iterdir() if (folder / JSON_PAGE).exists()
            )

    def _link_files(
        self, source_root: Path, name: str, files: list[IndexFile], report: SyncReport
    ) -> None:
        target = self.files / name
        target.mkdir(parents=True, exist_ok=True)
        for served in files:
            for filename in (served.filename, served.filename + ".metadata"):
                source = source_root / "files" / name / filename
                destination = target / filename
                if destination.exists():
                    continue
                try:
                    os.link(source, destination)
                except OSError:
                    shutil.copy2(source, destination)
                report.files_linked += 1


def _updated(names: list[str], joined: set[str], left: set[str]) -> list[str]:
    """The sorted project list with a few names added and removed, without re-sorting
    a hundred thousand (the list is in sorted order already)."""
    for name in sorted(joined):
        at = bisect.bisect_left(names, name)
        if at == len(names) or names[at] != name:
            names.insert(at, name)
    for name in left:
        at = bisect.bisect_left(names, name)
        if at < len(names) and names[at] == name:
            del names[at]
    return names


def _write_atomic(path: Path, content: str, durable: bool = True) -> None:
    """Temporary name, then rename: readers never see half a page. `durable` fsyncs the
    file first; a full regeneration skips that per file and syncs the disk once."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(content.encode())
            if durable:
                out.flush()
                os.fsync(out.fileno())
        Path(temporary).chmod(0o644)
        Path(temporary).replace(path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise

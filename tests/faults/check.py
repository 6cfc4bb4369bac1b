"""What the fault suite checks after a fault: the farm's files agree with its database
(run_fsck), and every job ended as it did in an undisturbed run (compare).

run_fsck stands for `armwheels fsck` (master/index/fsck.py, written on another branch) until
that lands; it checks what fsck checks, with the master's own code for what the index
serves, and is to be replaced by a call of fsck.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from common.models import BuildJob, IndexChange, OutputFile, Project, Release
from common.states import JobState
from master.index import pages as index
from master.index.static import HTML_PAGE, JSON_PAGE


@dataclass
class FsckReport:
    """Disagreements between the database, the files on disk and the static index, each
    one line naming the project first."""

    rows_without_file: list[str] = field(default_factory=list)
    hash_mismatches: list[str] = field(default_factory=list)
    files_without_row: list[str] = field(default_factory=list)
    stale_pages: list[str] = field(default_factory=list)

    def problems(self, projects: Iterable[str] | None = None) -> list[str]:
        """Every problem, or those of `projects` only."""
        found = (
            self.rows_without_file
            + self.hash_mismatches
            + self.files_without_row
            + self.stale_pages
        )
        if projects is None:
            return found
        wanted = set(projects)
        return [line for line in found if line.split(":", 1)[0] in wanted]


def run_fsck(factory: sessionmaker[Session], data_dir: Path) -> FsckReport:
    """No wheel without a row, no row without its file, every served hash the file's, and
    every static page what the master would serve now. (master/index/fsck.py's check() takes
    the same arguments; it leaves out files younger than its settling time, so a swap
    passes it a `now` past them: the suite checks right after its faults.)"""
    report = FsckReport()
    files = data_dir / "files"
    with factory() as session:
        rows = session.execute(
            select(OutputFile.filename, OutputFile.sha256, OutputFile.size, Project.name)
            .join(Release, OutputFile.release_id == Release.id)
            .join(Project, Release.project_id == Project.id)
        ).all()
        known = set()
        for filename, sha256, size, project in rows:
            path = files / project / filename
            known.add(path)
            if not path.is_file():
                report.rows_without_file.append(f"{project}: row {filename} has no file")
                continue
            data = path.read_bytes()
            if len(data) != size or hashlib.sha256(data).hexdigest() != sha256:
                report.hash_mismatches.append(f"{project}: {filename} is not the row's bytes")
        if files.is_dir():
            for path in sorted(files.glob("*/*.whl")):
                if path not in known:
                    report.files_without_row.append(f"{path.parent.name}: {path.name} has no row")
        _check_static(session, data_dir / "simple", report)
    return report


def _check_static(session: Session, simple: Path, report: FsckReport) -> None:
    serials = dict(
        session.execute(
            select(IndexChange.project_id, func.max(IndexChange.id)).group_by(
                IndexChange.project_id
            )
        ).all()
    )
    served = set()
    for project_id, name, files in index.all_served_files(session):
        served.add(name)
        serial = serials.get(project_id, 0)
        for page, render in (
            (HTML_PAGE, index.render_project_html),
            (JSON_PAGE, index.render_project_json),
        ):
            path = simple / name / page
            expected = render(name, files, serial)
            if not path.is_file() or path.read_text() != expected:
                report.stale_pages.append(f"{name}: simple/{name}/{page} differs from the index")
    if simple.is_dir():
        for folder in simple.iterdir():
            if folder.is_dir() and folder.name not in served:
                report.stale_pages.append(f"{folder.name}: a page for a project without wheels")


@dataclass
class Outcome:
    """How a job ended, in the terms two runs of the same sdist are compared by."""

    state: str
    wheel_tags: tuple[str, ...]  # the wheels' names without the project's own part


def outcomes(session: Session, jobs: Iterable[int]) -> dict[int, Outcome]:
    found = {}
    for job_id in jobs:
        job = session.get(BuildJob, job_id)
        if job is None:
            continue
        wheels = session.scalars(select(OutputFile.filename).where(OutputFile.job_id == job_id))
        state = job.state.value
        if job.state == JobState.FAILED and job.failure_reason is not None:
            state += f" ({job.failure_reason.value})"
        found[job_id] = Outcome(state, tuple(sorted(_tags(name) for name in wheels)))
    return found


def _tags(filename: str) -> str:
    return re.sub(r"^[^-]+-[^-]+-", "", filename)


@dataclass
class FaultResult:
    """One row of the fault table."""

    fault: str
    injected: int = 0
    jobs: int = 0
    jobs_lost: int = 0
    duplicate_or_partial: int = 0
    problems: list[str] = field(default_factory=list)
    skipped: str | None = None  # why this host could not inject it

    @property
    def survived(self) -> bool:
        return (
            self.injected > 0
            and self.jobs_lost == 0
            and self.duplicate_or_partial == 0
            and not self.problems
        )


def compare(
    result: FaultResult,
    expected: Outcome,
    factory: sessionmaker[Session],
    data_dir: Path,
    jobs: list[int],
    projects: list[str],
) -> FaultResult:
    """Fill `result` in: a job that did not end as the undisturbed run's did is lost (or
    was left unfinished); a second wheel of one job, or a file the database and the
    index disagree about, is a duplicate or partial wheel."""
    result.jobs = len(jobs)
    with factory() as session:
        ended = outcomes(session, jobs)
        for job_id in jobs:
            outcome = ended.get(job_id)
            if outcome is None or outcome.state != expected.state:
                result.jobs_lost += 1
                state = outcome.state if outcome else "missing"
                result.problems.append(f"job {job_id} ended {state}, not {expected.state}")
            elif len(outcome.wheel_tags) > len(expected.wheel_tags):
                result.duplicate_or_partial += 1
                result.problems.append(f"job {job_id} has wheels {outcome.wheel_tags}")
            elif outcome.wheel_tags != expected.wheel_tags:
                result.jobs_lost += 1
                result.problems.append(f"job {job_id} built {outcome.wheel_tags}")
    fsck = run_fsck(factory, data_dir).problems(projects)
    result.duplicate_or_partial += len(fsck)
    result.problems += fsck
    return result


COLUMNS = ("fault", "times injected", "survived", "jobs lost", "duplicate or partial wheels")


def table_rows(results: Iterable[FaultResult]) -> list[tuple[str, ...]]:
    return [
        (
            r.fault,
            str(r.injected),
            f"skipped: {r.skipped}" if r.skipped else ("yes" if r.survived else "NO"),
            str(r.jobs_lost),
            str(r.duplicate_or_partial),
        )
        for r in results
    ]


def format_table(results: list[FaultResult]) -> str:
    """The fault table as plain text, with each row's problems under it."""
    rows = [COLUMNS, *table_rows(results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = []
    for row, result in zip(rows, [None, *results], strict=True):
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
        lines += [f"    {problem}" for problem in (result.problems if result else [])]
    return "\n".join(lines)

"""What the fault suite checks after a fault: the farm's files agree with its database
(`armwheels fsck`'s check, master/index/fsck.py), and every job ended as it did in an
undisturbed run (compare).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from common.models import BuildJob, OutputFile
from common.states import JobState
from master.index import fsck


def fsck_findings(factory: sessionmaker[Session], data_dir: Path) -> list[fsck.Finding]:
    """`armwheels fsck` of the farm (its static copy included), judging every file: fsck
    leaves out files younger than its settling time, as writes that may be under way,
    and the suite checks right after its faults, once the farm has converged."""
    now = time.time() + fsck.SETTLE_SECONDS + 1
    return fsck.check(factory, data_dir, static=True, now=now).findings


def problems(
    findings: Iterable[fsck.Finding],
    projects: Iterable[str] | None = None,
    jobs: Iterable[int] = (),
) -> list[str]:
    """Each finding as one line; with `projects`, only those under files/ or simple/ of
    these projects and the missing logs of `jobs` (a finding of the farm as a whole,
    such as a leftover temporary file, is for the whole farm's check)."""
    wanted = None if projects is None else set(projects)
    logs = set(jobs)
    lines = []
    for finding in findings:
        parts = Path(finding.path).parts
        project = parts[1] if len(parts) >= 2 and parts[0] in ("files", "simple") else None
        mine = (
            wanted is None
            or project in wanted
            or (finding.kind == fsck.Kind.MISSING_LOG and finding.row in logs)
        )
        if mine:
            lines.append(f"{finding.kind.value}: {finding.path}: {finding.detail}")
    return lines


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
    found = problems(fsck_findings(factory, data_dir), projects, jobs)
    result.duplicate_or_partial += len(found)
    result.problems += found
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

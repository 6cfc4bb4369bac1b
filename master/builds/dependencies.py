"""Jobs that wait for a build dependency the farm builds first (dep-wait).

A builder takes build requirements as wheels from the farm's upstream index and from
the farm's own index. When a requirement has a wheel on neither (numpy for armv7l, say),
the build cannot run, and the builder reports the requirement. The master then decides,
here, for that job and again on every reconcile round and whenever a wheel is published:

- the farm serves a wheel of it by now: the job is pending again (resume);
- its project is one the farm knows: the newest release the requirement admits gets a
  job for the waiting job's target and interpreter (at the waiting job's priority), and
  the job waits for it; when that job fails, the waiting one fails too, naming it;
- the farm does not know the project: the job waits, and its build page says how to
  import it (`armwheels import NAME`); the next round plans it once it is imported;
- the requirement is the project itself, a cycle of waiting jobs, or no release of the
  project matches: the job fails, saying which.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version
from sqlalchemy import select
from sqlalchemy.orm import Session

from common.config import Settings
from common.models import BuildJob, OutputFile, Project, Release
from common.states import FailureReason, JobState
from common.tags import covering_wheel, publishing_index
from master.builds import jobs
from master.builds.build_plan import create_jobs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decision:
    """What becomes of a job waiting for `requirement`: "resume", "fail" or "wait"."""

    action: str
    summary: str


@dataclass
class SettleOutcome:
    resumed: int = 0
    failed: int = 0
    waiting: int = 0


def on_missing(
    session: Session,
    job: BuildJob,
    requirement: str,
    report: jobs.ResultReport,
    settings: Settings,
) -> JobState:
    """A builder's failure names a build requirement without a wheel for the job's
    target: the job waits for it, fails (the requirement cannot be had), or is tried
    again at once (a wheel was published meanwhile). Returns the state entered."""
    decision = decide(session, job, requirement, settings)
    if decision.action == "wait":
        jobs.wait_for(job, requirement, decision.summary, report.build_seconds)
    elif decision.action == "resume":
        retry = jobs.ResultReport(
            "failed", FailureReason.MISSING_DEPENDENCY, decision.summary, report.build_seconds, True
        )
        jobs.finish(job, retry, settings.master.max_attempts)
    else:
        failed = jobs.ResultReport(
            "failed", FailureReason.MISSING_DEPENDENCY, decision.summary, report.build_seconds
        )
        jobs.finish(job, failed, settings.master.max_attempts)
    return job.state


def settle(session: Session, settings: Settings, project: str | None = None) -> SettleOutcome:
    """Decide again for the jobs in dep-wait (those waiting for `project`, or all): resume
    those whose dependency is published, fail those whose dependency failed, plan the
    dependency's build where it has none yet."""
    outcome = SettleOutcome()
    waiting = session.scalars(
        select(BuildJob)
        .where(BuildJob.state == JobState.DEP_WAIT)
        .order_by(BuildJob.id)
        .with_for_update(skip_locked=True)
    ).all()
    for job in waiting:
        if job.waiting_for is None:
            jobs.give_up(job, "waited for a build dependency it does not name")
            outcome.failed += 1
            continue
        if project is not None and _project_of(job.waiting_for) != project:
            outcome.waiting += 1
            continue
        decision = decide(session, job, job.waiting_for, settings)
        if decision.action == "resume":
            jobs.resume(job, decision.summary)
            outcome.resumed += 1
        elif decision.action == "fail":
            jobs.give_up(job, decision.summary)
            outcome.failed += 1
        else:
            job.summary = decision.summary
            outcome.waiting += 1
    if outcome.resumed or outcome.failed:
        log.info(
            "dep-wait jobs settled",
            extra={
                "resumed": outcome.resumed,
                "failed": outcome.failed,
                "waiting": outcome.waiting,
            },
        )
    return outcome


def decide(session: Session, job: BuildJob, text: str, settings: Settings) -> Decision:
    """What becomes of `job`, which needs `text` (a PEP 508 requirement) to build."""
    try:
        requirement = Requirement(text)
    except InvalidRequirement as exc:
        return Decision("fail", f"build dependency {text!r} is not a requirement: {exc}")
    name = canonicalize_name(requirement.name)
    own = job.release.project.name
    if name == own:
        return Decision("fail", f"its build requires {own} itself ({text}), which has no wheel")
    if wheel := served_wheel(session, job, name, requirement):
        return Decision("resume", f"{wheel} is published")
    if cycle := _cycle(session, job, name):
        return Decision("fail", f"build dependency cycle: {' -> '.join(cycle)}")
    project = session.scalar(select(Project).where(Project.name == name))
    if project is None or project.removed_at is not None:
        return Decision("wait", _unknown(name, text, settings))
    release = newest_release(session, project, requirement)
    if release is None:
        known = _known_versions(session, project)
        return Decision(
            "fail",
            f"no release of {name} the farm knows matches {text}"
            f" (known: {', '.join(known) or 'none'})",
        )
    return _plan(session, job, release, text, settings)


def served_wheel(
    session: Session, job: BuildJob, name: str, requirement: Requirement
) -> str | None:
    """A published wheel of `name` in the job's index that its target installs and whose
    version the requirement admits."""
    index = publishing_index(job.target, job.policy)
    filenames = session.scalars(
        select(OutputFile.filename)
        .join(Release, OutputFile.release_id == Release.id)
        .join(Project, Release.project_id == Project.id)
        .where(
            Project.name == name,
            OutputFile.published.is_(True),
            Release.removed_at.is_(None),
            OutputFile.index_name == index,
        )
    ).all()
    admitted = [f for f in filenames if _wheel_admitted(f, requirement)]
    return covering_wheel(admitted, job.python_tag, job.policy)


def newest_release(session: Session, project: Project, requirement: Requirement) -> Release | None:
    """The newest release of `project` with an sdist, not yanked nor removed, that the
    requirement admits (pre-releases only where its specifier asks for them)."""
    releases: dict[Version, Release] = {}
    for release in session.scalars(
        select(Release).where(
            Release.project_id == project.id,
            Release.yanked.is_(False),
            Release.removed_at.is_(None),
        )
    ):
        if release.source_files and (version := _version(release.version)) is not None:
            releases[version] = release
    versions = list(requirement.specifier.filter(releases))
    return releases[max(versions)] if versions else None


def _plan(
    session: Session, job: BuildJob, release: Release, text: str, settings: Settings
) -> Decision:
    """The dependency's job for the waiting job's target and interpreter: the active
    one, a new one, or the failure of the last one."""
    name, version = release.project.name, release.version
    where = f"{job.target} {job.python_tag}"
    last = session.scalar(
        select(BuildJob)
        .where(
            BuildJob.release_id == release.id,
            BuildJob.target == job.target,
            BuildJob.python_tag == job.python_tag,
        )
        .order_by(BuildJob.id.desc())
        .limit(1)
    )
    if last is not None and last.state == JobState.FAILED:
        reason = last.failure_reason.value if last.failure_reason else "failed"
        return Decision(
            "fail",
            f"build dependency {name} {version} failed to build for {where}"
            f" (job {last.id}, {reason}: {last.summary or 'no summary'})",
        )
    if last is not None and last.state == JobState.SKIPPED:
        return Decision(
            "fail",
            f"build dependency {name} {version} is not built for {where}"
            f" (job {last.id}: {last.summary or last.skip_reason})",
        )
    if last is not None and last.state == JobState.BUILT:
        # Built, yet no wheel of it serves: withdrawn, or published under another index.
        return Decision(
            "fail",
            f"build dependency {name} {version} was built for {where} (job {last.id})"
            " but no wheel of it is published",
        )
    if last is None:
        target = settings.targets.get(job.target)
        if target is None:
            return Decision("fail", f"target {job.target} is no longer configured")
        only = {job.target: target.model_copy(update={"python_tags": [job.python_tag]})}
        created = create_jobs(
            session,
            release,
            release.source_files[0],
            only,
            job.priority,
            requested_by=f"dep-wait of job {job.id}",
        )
        if not created:
            return Decision(
                "fail",
                f"build dependency {name} {version} does not admit {job.python_tag}"
                f" (Requires-Python {release.requires_python})",
            )
        last = created[0]
        log.info(
            "build dependency planned",
            extra={"job_id": last.id, "for_job": job.id, "project": name, "version": version},
        )
    return Decision("wait", f"waits for {text}: the farm builds {name} {version} (job {last.id})")


def _cycle(session: Session, job: BuildJob, name: str) -> list[str] | None:
    """The chain of projects waiting for each other, from the job's project back to it
    through `name`, among this target's dep-wait jobs; None when there is none."""
    own = job.release.project.name
    waits: dict[str, set[str]] = {}
    rows = session.execute(
        select(Project.name, BuildJob.waiting_for)
        .join(Release, BuildJob.release_id == Release.id)
        .join(Project, Release.project_id == Project.id)
        .where(
            BuildJob.state == JobState.DEP_WAIT,
            BuildJob.target == job.target,
            BuildJob.id != job.id,
        )
    ).all()
    for project, waiting_for in rows:
        if waiting_for and (wanted := _project_of(waiting_for)):
            waits.setdefault(project, set()).add(wanted)
    path = [own, name]
    seen = {own}
    while path[-1] not in seen:
        seen.add(path[-1])
        following = sorted(waits.get(path[-1], ()))
        if not following:
            return None
        step = own if own in following else following[0]
        path.append(step)
    return path if path[-1] == own else None


def _unknown(name: str, text: str, settings: Settings) -> str:
    projects = settings.upstream.projects
    followed = projects == "all" or name in {canonicalize_name(p) for p in projects}
    if followed:
        return (
            f"waits for {text}: the farm follows {name} but has no release of it yet;"
            " it is built when the feed brings one"
        )
    return (
        f"waits for {text}: the farm does not follow {name};"
        f" `armwheels import {name}` builds it, then this job"
    )


def _project_of(text: str) -> str | None:
    try:
        return canonicalize_name(Requirement(text).name)
    except InvalidRequirement:
        return None


def _wheel_admitted(filename: str, requirement: Requirement) -> bool:
    try:
        _, version, _, _ = parse_wheel_filename(filename)
    except InvalidWheelFilename:
        return False
    return requirement.specifier.contains(version, prereleases=True)


def _version(text: str) -> Version | None:
    try:
        return Version(text)
    except InvalidVersion:
        return None


def _known_versions(session: Session, project: Project) -> list[str]:
    """The newest five versions of the project, for a failure's summary."""
    texts = session.scalars(select(Release.version).where(Release.project_id == project.id))
    parsed = [(version, text) for text in texts if (version := _version(text)) is not None]
    return [text for _, text in sorted(parsed)[-5:]]

"""Operator actions on jobs, wheels, tokens and the skip list, shared by the HTTP API and the
command line. Each checks its input, acts, and records itself in the audit log in the
caller's transaction; a refusal says why with the HTTP status it maps to. Identical
requests at the same moment (a double click, a retrying client, two operators) do the
action once: the rows it changes are locked before they are read, and a row it adds is
refused by a unique constraint, so the others are answered 409 or 404."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from common.db import lock_rows
from common.models import BuildJob, OutputFile, Project, SkipRule, Token
from common.names import BadName, normalize_project
from common.states import JobState, TokenRole
from master import audit, auth
from master.builds import build_paths, jobs, skips


class Refused(Exception):
    """An action that cannot be done, with the HTTP status it answers."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _job(session: Session, job_id: int) -> BuildJob:
    lock_rows(session, BuildJob.state, BuildJob.id == job_id)
    job = session.get(BuildJob, job_id)
    if job is None:
        raise Refused(404, f"no job {job_id}")
    return job


def cancel_job(
    session: Session,
    job_id: int,
    actor: str,
    role: str,
    reason: str,
    keep_log: Callable[[BuildJob], None] | None = None,
) -> BuildJob:
    """A waiting or running job stops being built. A builder still running it is told at
    its next heartbeat or live-log chunk, and kills the build (any result it still sends is
    refused: the job is no longer assigned to it). A running job's streamed log is kept as
    its final log by `keep_log` (master.builds.live_logs.final_log_keeper)."""
    job = _job(session, job_id)
    if not jobs.allowed(job.state, jobs.Event.CANCEL):
        raise Refused(409, f"job {job_id} is {job.state.value}: nothing to cancel")
    was = job.state.value
    if job.state == JobState.BUILDING and keep_log is not None:
        keep_log(job)
    jobs.cancel(job, actor, reason)
    audit.record(session, actor, role, "cancel", f"job {job_id}", was=was, reason=reason)
    return job


def requeue_job(session: Session, job_id: int, actor: str, role: str, reason: str) -> BuildJob:
    """A failed or skipped job waits again with fresh attempts (a built one is rebuilt
    with a rebuild request instead, which keeps its history)."""
    job = _job(session, job_id)
    if not jobs.allowed(job.state, jobs.Event.REQUEUE):
        raise Refused(409, f"job {job_id} is {job.state.value}: only failed or skipped")
    was = job.state.value
    jobs.requeue(job, actor, reason)
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError as exc:
        raise Refused(409, "another job for that target is waiting or running") from exc
    audit.record(session, actor, role, "requeue", f"job {job_id}", was=was, reason=reason)
    return job


def remove_wheel(session: Session, filename: str, actor: str, role: str, reason: str) -> None:
    """Take a wheel out of the index (file and row stay, for the record): the pages and
    the static copy drop it, and pip no longer sees it."""
    lock_rows(session, OutputFile.published, OutputFile.filename == filename)
    output = session.scalar(select(OutputFile).where(OutputFile.filename == filename))
    if output is None:
        raise Refused(404, f"no wheel {filename}")
    if not output.published:
        raise Refused(409, f"{filename} is already out of the index")
    output.published = False
    audit.record(session, actor, role, "remove-wheel", filename, reason=reason)


def _lock_skip_rules(session: Session, project: str) -> None:
    """A project's rules, locked (a rule not yet added is kept single by its unique
    index on PostgreSQL; SQLite's write lock serialises the whole action)."""
    with suppress(BadName):  # a bad name is refused by the skip list, with the reason
        lock_rows(session, SkipRule.reason, SkipRule.project == normalize_project(project))


def add_skip(
    session: Session, project: str, version: str | None, reason: str, actor: str, role: str
) -> tuple[SkipRule, int]:
    _lock_skip_rules(session, project)
    try:
        with session.begin_nested():
            rule, settled = skips.add_rule(session, project, version, reason, actor)
    except skips.SkipRuleError as exc:
        raise Refused(409 if "already" in str(exc) else 400, str(exc)) from exc
    except IntegrityError as exc:  # the same rule, added by a concurrent request
        subject = f"{project} {version or '(all releases)'}"
        raise Refused(409, f"{subject} is already on the skip list") from exc
    subject = f"{rule.project} {rule.version or '(all releases)'}"
    audit.record(session, actor, role, "skip", subject, reason=rule.reason, jobs_skipped=settled)
    return rule, settled


def remove_skip(session: Session, project: str, version: str | None, actor: str, role: str) -> str:
    _lock_skip_rules(session, project)
    try:
        skips.remove_rule(session, project, version)
    except skips.SkipRuleError as exc:
        raise Refused(404 if "not on the skip list" in str(exc) else 400, str(exc)) from exc
    subject = f"{project} {version or '(all releases)'}"
    audit.record(session, actor, role, "unskip", subject)
    return subject


def reset_cross(session: Session, project: str, actor: str, role: str) -> str:
    """Let builders try the cross path for a project marked for emulation again."""
    try:
        name = normalize_project(project)
    except BadName as exc:
        raise Refused(400, str(exc)) from exc
    found = session.scalars(
        select(Project).where(Project.name == name).with_for_update()
    ).one_or_none()
    if found is None:
        raise Refused(404, f"unknown project: {name}")
    was = build_paths.clear(found)
    if was is None:
        raise Refused(409, f"{name} is not marked for emulation")
    audit.record(session, actor, role, "cross-reset", name, was=was)
    return name


def token_projects(role: TokenRole, projects: list[str] | None) -> list[str] | None:
    """A maintainer token names the projects it may act on; other roles name none."""
    if projects:
        if role != TokenRole.MAINTAINER:
            raise Refused(400, "projects scope maintainer tokens only")
        try:
            return sorted({normalize_project(name) for name in projects})
        except BadName as exc:
            raise Refused(400, str(exc)) from exc
    if role == TokenRole.MAINTAINER:
        raise Refused(400, "a maintainer token needs at least one project")
    return None


def create_token(
    session: Session,
    name: str,
    role: TokenRole,
    projects: list[str] | None,
    actor: str,
    actor_role: str,
) -> str:
    """A new token; returns its secret, shown once and stored only as a hash."""
    scope = token_projects(role, projects)
    lock_rows(session, Token.revoked_at, Token.name == name)
    exists = Refused(409, f"a token named {name!r} exists")
    if session.scalar(select(Token.id).where(Token.name == name)) is not None:
        raise exists
    try:
        with session.begin_nested():
            secret = auth.create_token(session, name, role, scope)
    except IntegrityError as exc:  # created by a concurrent request since the check
        raise exists from exc
    audit.record(
        session, actor, actor_role, "token-create", name, token_role=role.value, projects=scope
    )
    return secret


def revoke_token(session: Session, name: str, actor: str, actor_role: str) -> None:
    lock_rows(session, Token.revoked_at, Token.name == name)
    if not auth.revoke_token(session, name):
        raise Refused(404, f"no active token named {name!r}")
    audit.record(session, actor, actor_role, "token-revoke", name)

"""The operator's HTTP controls: the skip list, cancelling and re-queueing jobs, taking a
wheel out of the index, and reading the audit log. Every action needs an operator token
and is recorded in the audit log in the same transaction as the action."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from common.models import BuildJob, Token
from common.states import TokenRole
from master import audit, operations
from master.builds import skips
from master.builds.live_logs import final_log_keeper
from master.web.api_deps import DB, JobId, OperatorToken

router = APIRouter(prefix="/api/v1", tags=["operators"])

Reason = Annotated[str, Field(min_length=1, max_length=500)]


class SkipBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    project: str = Field(min_length=1, max_length=200)
    version: str | None = Field(default=None, min_length=1, max_length=100)
    reason: Reason


class ReasonBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Reason


@contextmanager
def _answer(db: Session) -> Iterator[None]:
    """Commit what the action did, or answer its refusal (nothing is kept)."""
    try:
        yield
    except operations.Refused as exc:
        db.rollback()
        raise HTTPException(exc.status, exc.message) from exc
    db.commit()


def _job_summary(job: BuildJob) -> dict[str, Any]:
    return {
        "id": job.id,
        "state": job.state.value,
        "target": job.target,
        "arch": job.arch,
        "python_tag": job.python_tag,
        "summary": job.summary,
    }


@router.get("/skips")
def list_skips(db: DB) -> dict[str, Any]:
    """The skip list is public: users may want to know why a project has no wheels."""
    return {
        "skips": [
            {
                "project": rule.project,
                "version": rule.version,
                "reason": rule.reason,
                "created_by": rule.created_by,
                "created_at": rule.created_at.isoformat(),
            }
            for rule in skips.list_rules(db)
        ]
    }


@router.post("/skips", status_code=201)
def add_skip(body: SkipBody, db: DB, token: OperatorToken) -> dict[str, Any]:
    with _answer(db):
        rule, settled = operations.add_skip(
            db, body.project, body.version, body.reason, token.name, token.role.value
        )
    return {"project": rule.project, "version": rule.version, "jobs_skipped": settled}


@router.delete("/skips/{project}")
def remove_skip(
    project: str, db: DB, token: OperatorToken, version: str | None = None
) -> dict[str, Any]:
    with _answer(db):
        subject = operations.remove_skip(db, project, version, token.name, token.role.value)
    return {"removed": subject}


@router.post("/jobs/{job_id}/cancel")
def cancel_job(
    request: Request, job_id: JobId, body: ReasonBody, db: DB, token: OperatorToken
) -> dict[str, Any]:
    keep_log = final_log_keeper(request.app.state.settings)
    with _answer(db):
        job = operations.cancel_job(
            db, job_id, token.name, token.role.value, body.reason, keep_log=keep_log
        )
    return _job_summary(job)


@router.post("/jobs/{job_id}/requeue")
def requeue_job(job_id: JobId, body: ReasonBody, db: DB, token: OperatorToken) -> dict[str, Any]:
    with _answer(db):
        job = operations.requeue_job(db, job_id, token.name, token.role.value, body.reason)
    return _job_summary(job)


@router.delete("/files/{filename}")
def remove_wheel(
    filename: str,
    db: DB,
    token: OperatorToken,
    reason: Annotated[str, Query(min_length=1, max_length=500)],
) -> dict[str, Any]:
    with _answer(db):
        operations.remove_wheel(db, filename, token.name, token.role.value, reason)
    return {"removed": filename}


class TokenBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._-]+$")
    role: TokenRole
    projects: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = Field(
        default=None, max_length=1000
    )


@router.get("/tokens")
def list_tokens(db: DB, _token: OperatorToken) -> dict[str, Any]:
    """Names, roles and scopes; never secrets (only their hashes are stored)."""
    tokens = db.scalars(select(Token).order_by(Token.name)).all()
    return {
        "tokens": [
            {
                "name": token.name,
                "role": token.role.value,
                "projects": token.projects,
                "created_at": token.created_at.isoformat(),
                "revoked_at": token.revoked_at.isoformat() if token.revoked_at else None,
            }
            for token in tokens
        ]
    }


@router.post("/tokens", status_code=201)
def create_token(body: TokenBody, db: DB, token: OperatorToken) -> dict[str, Any]:
    """The secret is in this answer only."""
    with _answer(db):
        secret = operations.create_token(
            db, body.name, body.role, body.projects, token.name, token.role.value
        )
    return {"name": body.name, "role": body.role.value, "secret": secret}


@router.delete("/tokens/{name}")
def revoke_token(name: str, db: DB, token: OperatorToken) -> dict[str, Any]:
    with _answer(db):
        operations.revoke_token(db, name, token.name, token.role.value)
    return {"revoked": name}


@router.get("/audit")
def audit_log(
    db: DB, _token: OperatorToken, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> dict[str, Any]:
    return {
        "events": [
            {
                "id": event.id,
                "at": event.at.isoformat(),
                "actor": event.actor,
                "role": event.role,
                "action": event.action,
                "subject": event.subject,
                "detail": event.detail,
            }
            for event in audit.recent(db, limit)
        ]
    }

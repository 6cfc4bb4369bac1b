"""The public job API: a job's detail and its log as it grows, the farm's status, and
maintainers' rebuild requests."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import (
    APIRouter,
    HTTPException,
    Query,
)
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from common.db import lock_rows
from common.models import BuildJob, Token
from common.names import BadName, normalize_project
from common.protocol import TargetName
from common.states import Arch, JobState
from master import audit
from master.auth import NotPermitted, check_project_scope
from master.builds.live_logs import (
    LiveView,
    claim_key,
)
from master.builds.rebuild import RebuildError, RebuildRefused, UnknownProject, request_rebuild
from master.web import status
from master.web.api_deps import (
    DB,
    JobId,
    MaintainerToken,
)
from master.web.context import MasterContext

log = logging.getLogger(__name__)


class RebuildRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str | None = Field(default=None, min_length=1, max_length=100)
    arch: Arch | None = None
    target: TargetName | None = None


def router(ctx: MasterContext) -> APIRouter:
    """Jobs, logs, status and rebuild requests."""
    settings = ctx.settings
    storage = ctx.storage
    live = ctx.live
    app = APIRouter()

    @app.post("/api/v1/projects/{name}/rebuild", status_code=202)
    def rebuild(
        name: str, db: DB, token: MaintainerToken, body: RebuildRequest | None = None
    ) -> dict[str, Any]:
        """A maintainer (for a project its token names) or an operator asks for a release
        to be built again. A request duplicating waiting jobs is answered with them."""
        try:
            normal = normalize_project(name)
            check_project_scope(token, normal)
        except BadName as exc:
            raise HTTPException(400, str(exc)) from exc
        except NotPermitted as exc:
            raise HTTPException(403, str(exc)) from exc
        wanted = body or RebuildRequest()
        # One request per token at a time from here to the commit: concurrent requests
        # would all count the same earlier ones and all pass the rate limit.
        lock_rows(db, Token.name, Token.id == token.id)
        now = datetime.now(UTC)
        window = timedelta(seconds=settings.master.rebuild_window)
        if audit.count_since(db, token.name, "rebuild", now - window) >= (
            settings.master.rebuild_limit
        ):
            oldest = audit.oldest_since(db, token.name, "rebuild", now - window) or now
            wait = max(1, int((oldest + window - now).total_seconds()) + 1)
            raise HTTPException(
                429,
                f"rate limit: {settings.master.rebuild_limit} rebuild requests per"
                f" {int(window.total_seconds())} s for token {token.name}",
                headers={"Retry-After": str(wait)},
            )
        try:
            outcome = request_rebuild(
                db,
                settings,
                normal,
                wanted.version,
                wanted.arch,
                requested_by=token.name,
                target=wanted.target,
            )
        except UnknownProject as exc:
            raise HTTPException(404, str(exc)) from exc
        except RebuildRefused as exc:
            raise HTTPException(409, str(exc)) from exc
        except RebuildError as exc:
            raise HTTPException(400, str(exc)) from exc
        jobs = [*outcome.created, *outcome.existing]
        audit.record(
            db,
            token.name,
            token.role.value,
            "rebuild",
            f"{outcome.project} {outcome.version}",
            jobs=[job.id for job in jobs],
            arch=wanted.arch,
            target=wanted.target,
            duplicate=not outcome.created,
        )
        db.commit()
        return {
            "project": outcome.project,
            "version": outcome.version,
            "created": len(outcome.created),
            "duplicate": not outcome.created,
            "jobs": [
                {
                    "id": job.id,
                    "target": job.target,
                    "arch": job.arch,
                    "python_tag": job.python_tag,
                    "state": job.state.value,
                    "url": f"/api/v1/jobs/{job.id}",
                }
                for job in sorted(jobs, key=lambda job: job.id)
            ],
        }

    @app.get("/api/v1/jobs/{job_id}")
    def job_detail(job_id: JobId, db: DB) -> dict[str, Any]:
        job = db.get(BuildJob, job_id)
        if job is None:
            raise HTTPException(404, "no such job")
        building = job.state == JobState.BUILDING
        return {
            "job": job.id,
            "project": job.release.project.name,
            "version": job.release.version,
            "target": job.target,
            "arch": job.arch,
            "python_tag": job.python_tag,
            "policy": job.policy,
            "state": job.state.value,
            "attempts": job.attempts,
            "reason": job.failure_reason.value if job.failure_reason else None,
            "summary": job.summary,
            "build_seconds": job.build_seconds,
            "files": [
                {
                    "filename": o.filename,
                    "sha256": o.sha256,
                    "size": o.size,
                    "platform_tag": o.platform_tag,
                    "grafted": o.grafted,
                }
                for o in job.outputs
            ],
            "log": f"/logs/{job.id}" if job.log_path or building else None,
            "live_log": f"/api/v1/jobs/{job.id}/log" if building else None,
        }

    @app.get("/api/v1/jobs/{job_id}/log")
    def job_log(job_id: JobId, db: DB, offset: Annotated[int, Query(ge=0)] = 0) -> Response:
        """The log from byte `offset` on, for a dashboard tailing a build: the live log while
        the job is building, the final one after. `X-Log-Total` is the offset to ask for
        next; `X-Log-Id` changes when another attempt or the final log replaces the log
        being tailed (read it again from 0 then). A dropped middle shows as a marker line."""
        job = db.get(BuildJob, job_id)
        if job is None:
            raise HTTPException(404, "no such job")
        view, log_id = _current_log(job, db, offset)
        if view is None:
            raise HTTPException(404, "no log for this job")
        if offset > view.total:
            return JSONResponse(
                {"error": f"offset {offset} is past the end ({view.total})", "total": view.total},
                status_code=416,
                headers={"X-Log-Total": str(view.total), "X-Log-Id": log_id},
            )
        return Response(
            view.data,
            media_type="text/plain",
            headers={
                "X-Log-Total": str(view.total),
                "X-Log-Id": log_id,
                "X-Job-State": job.state.value,
            },
        )

    def _current_log(job: BuildJob, db: Session, offset: int) -> tuple[LiveView | None, str]:
        """The live log of a building job, else its final log (`LiveView` either way)."""
        if job.state == JobState.BUILDING:
            claim = claim_key(job.started_at)
            view = live.read(job.id, claim, offset)
            if view is not None:
                return view, f"live-{claim}"
            db.refresh(job)  # the result may have replaced the live log just now
            if job.state == JobState.BUILDING:
                return LiveView(0, b""), f"live-{claim}"
        if not job.log_path:
            return None, ""
        final = storage.read_log(Path(job.log_path))
        return LiveView(len(final), final[offset:]), f"final-{Path(job.log_path).name}"

    @app.get("/api/v1/status")
    def api_status(db: DB) -> dict[str, Any]:
        return status.collect(db, settings.master.builder_timeout)

    @app.get("/logs/{job_id}")
    def build_log(job_id: JobId, db: DB) -> Response:
        """The whole log: live while the job is building, the final one afterwards."""
        job = db.get(BuildJob, job_id)
        view = None if job is None else _current_log(job, db, 0)[0]
        if view is None:
            raise HTTPException(404, "no log for this job")
        return Response(view.data, media_type="text/plain")

    return app

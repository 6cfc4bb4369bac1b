"""The master's HTTP server: builder API, Simple index, files and logs (dashboard: dashboard.py)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import (
    Depends,
    FastAPI,
    File,
    Form,
    HTTPException,
    Query,
    Request,
    UploadFile,
)
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import or_, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.staticfiles import StaticFiles

from common.config import Settings
from common.models import Builder, BuildJob, OutputFile, Project, Release, Token, utcnow
from common.names import BadName, normalize_project
from common.protocol import (
    HEARTBEAT_SECONDS,
    LOG_PART,
    MAX_CHUNK_BYTES,
    WHEEL_PART,
    Heartbeat,
    HeartbeatAnswer,
    JobAnswer,
    JobSpec,
    LogAccepted,
    LogGap,
    LogRefusal,
    Registered,
    Registration,
    ResultAnswer,
    ResultForm,
)
from common.recipes import RecipeBook
from common.states import Arch, FailureReason, JobState
from common.version import VERSION
from common.wheels import BadWheel, parse_name
from master import audit, index, jobs, status
from master.api_deps import (
    DB,
    BodyLimit,
    BuilderToken,
    JobId,
    MaintainerToken,
    RawBody,
)
from master.auth import NotPermitted, builder_for, check_project_scope
from master.auth_throttle import AuthThrottle
from master.dashboard import STATIC_DIR
from master.dashboard import router as dashboard_router
from master.disk_full import disk_full_answer, is_disk_full
from master.jobs import HandBack, IllegalTransition
from master.live_logs import (
    LiveLogs,
    LiveView,
    OffsetGap,
    claim_key,
    keep_as_final_log,
    live_caps,
)
from master.metrics import render_metrics
from master.operations import lock_rows
from master.operator_api import router as operator_router
from master.page_cache import PageCache
from master.rebuild import RebuildError, RebuildRefused, UnknownProject, request_rebuild
from master.request_guard import RequestGuard
from master.static_index import HTML_PAGE, JSON_PAGE, StaticIndex
from master.storage import Storage
from master.uploads import (
    AlreadyServed,
    Rejected,
    accept_wheel,
    check_job_owner,
    not_building_here,
)

log = logging.getLogger(__name__)

# A building job its builder's heartbeat does not name is handed back only when claimed
# longer ago than this: a heartbeat sent just before a claim must not take the job back.
HAND_BACK_GRACE = timedelta(seconds=3 * HEARTBEAT_SECONDS)
# A result's body beyond its wheel and log: the other form fields and the multipart
# framing (the summary, the largest field, is at most MAX_SUMMARY_CHARS characters).
FORM_OVERHEAD_BYTES = 1024 * 1024


class RebuildRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str | None = Field(default=None, min_length=1, max_length=100)
    arch: Arch | None = None


def _current_builder(db: DB, token: BuilderToken) -> Builder:
    found = builder_for(db, token)
    if found is None:
        raise HTTPException(409, "builder is not registered")
    return found


CurrentBuilder = Annotated[Builder, Depends(_current_builder)]


# The raw body of a live-log chunk, cut off past MAX_CHUNK_BYTES by the request guard.
LogChunk = Annotated[bytes, Depends(RawBody(MAX_CHUNK_BYTES))]


def _unreported_jobs(db: Session, builder: Builder, reported: int | None) -> list[BuildJob]:
    """Jobs building on `builder` that its heartbeat does not name, claimed before the
    grace period; rows another request holds (a result being stored) are left alone."""
    query = select(BuildJob).where(
        BuildJob.builder_id == builder.id,
        BuildJob.state == JobState.BUILDING,
        or_(BuildJob.started_at.is_(None), BuildJob.started_at < utcnow() - HAND_BACK_GRACE),
    )
    if reported is not None:
        query = query.where(BuildJob.id != reported)
    return list(db.scalars(query.with_for_update(skip_locked=True)).all())


def _stop_reason(db: Session, builder: Builder, job_id: int) -> str | None:
    """Why the job a heartbeat names is no longer its builder's to build (None: it is).
    One primary-key lookup; a row locked by a result being stored reads as it was."""
    job = db.get(BuildJob, job_id)
    # Its own result, stored while this heartbeat was on its way: nothing left to stop.
    own_result = (
        job is not None
        and job.builder_id == builder.id
        and job.state in (JobState.BUILT, JobState.FAILED)
    )
    return None if own_result else not_building_here(job, builder)


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 If-None-Match: a list of (possibly weak) tags, or *."""
    if not if_none_match:
        return False
    tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return "*" in tags or etag in tags


def _sync_static(static: StaticIndex, db: Session, job_id: int) -> None:
    """Bring the static tree up to date now; on failure the master's loop retries, so
    the wheel is published either way."""
    try:
        static.sync(db)
    except OSError:
        log.exception("static index update failed", extra={"job_id": job_id})


def create_app(settings: Settings, factory: sessionmaker[Session]) -> FastAPI:
    app = FastAPI(title="armwheels master", version=VERSION)
    storage = Storage(settings.master.data_dir)
    limits = settings.master
    live = LiveLogs(storage, *live_caps(limits.max_log_bytes))
    recipes = RecipeBook(settings.master.recipes)
    static = StaticIndex(settings.master.data_dir) if settings.index.static else None
    app.state.factory = factory
    app.state.settings = settings  # the dashboard's pages read it
    app.state.page_cache = PageCache()
    app.include_router(operator_router)
    app.include_router(dashboard_router)
    app.add_middleware(
        RequestGuard, throttle=AuthThrottle(limits.auth_failure_limit, limits.auth_failure_window)
    )
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"error": str(exc.detail)},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse({"error": f"{where}: {first.get('msg')}"}, status_code=422)

    async def disk_full(request: Request, exc: Exception) -> JSONResponse:
        """503 for a write refused by a full disk (or database); any other error is the
        server's own (500)."""
        if not is_disk_full(exc):
            raise exc
        log.error(
            "request refused: the disk is full",
            extra={"route": request.url.path, "error": str(exc)[:200]},
        )
        return disk_full_answer(limits.disk_full_retry_after)

    app.add_exception_handler(OSError, disk_full)
    app.add_exception_handler(DBAPIError, disk_full)

    @app.post("/api/v1/builders/register")
    def register(reg: Registration, db: DB, token: BuilderToken) -> Registered:
        found = builder_for(db, token)
        if found is None:
            found = Builder(name=token.name, token_id=token.id, arch=reg.arch, backend=reg.backend)
            db.add(found)
        found.arch, found.backend = reg.arch, reg.backend
        found.python_tags, found.version = reg.python_tags, reg.version
        found.free_disk, found.reported_job_id = reg.free_disk, None
        found.last_seen_at = utcnow()
        # A builder that registers again has lost whatever it was doing.
        # The attempt counts (a board that keeps rebooting mid-build is the build's
        # trouble too): past the cap the job is lost, keeping what was streamed of it.
        orphaned = db.scalars(
            select(BuildJob)
            .where(BuildJob.builder_id == found.id, BuildJob.state == JobState.BUILDING)
            .with_for_update()
        ).all()
        stale = []
        for job in orphaned:
            claim = claim_key(job.started_at)
            entered = jobs.hand_back(job, HandBack.RE_REGISTERED, settings.master.max_attempts)
            if entered == JobState.FAILED:
                keep_as_final_log(job, live, limits.max_log_bytes)
            else:
                stale.append((job.id, claim))
        found.current_job_id = None
        db.commit()
        for job_id, claim in stale:
            live.discard(job_id, claim)
        log.info("builder registered", extra={"builder": found.name, "arch": found.arch})
        return Registered(builder_id=found.id, name=found.name)

    @app.post("/api/v1/builders/heartbeat")
    def heartbeat(me: CurrentBuilder, db: DB, beat: Heartbeat | None = None) -> HeartbeatAnswer:
        """A sign of life; a job the builder holds but no longer runs (it says so) goes
        back to the queue now rather than after builder_timeout. The job it says it runs,
        when no longer building there (cancelled, requeued, handed to another builder), is
        named under `stop`, with `why`: the builder kills that build and reports nothing."""
        me.last_seen_at = utcnow()
        stale: list[tuple[int, str]] = []
        stop: list[int] = []
        why: str | None = None
        if beat is not None:  # an empty heartbeat (older builders) says nothing of jobs
            me.reported_job_id, me.free_disk = beat.job_id, beat.free_disk
            if beat.job_id is not None:
                why = _stop_reason(db, me, beat.job_id)
                if why is not None:
                    stop.append(beat.job_id)
                    log.info(
                        "builder told to stop a job no longer its own",
                        extra={"job_id": beat.job_id, "builder": me.name, "why": why},
                    )
            for job in _unreported_jobs(db, me, beat.job_id):
                claim = claim_key(job.started_at)
                jobs.hand_back(job, HandBack.UNREPORTED, settings.master.max_attempts)
                stale.append((job.id, claim))
        db.commit()
        for job_id, claim in stale:
            live.discard(job_id, claim)
        return HeartbeatAnswer(handed_back=[job_id for job_id, _ in stale], stop=stop, why=why)

    @app.post("/api/v1/jobs/{job_id}/claim")
    def claim(job_id: JobId, me: CurrentBuilder, db: DB) -> JobSpec:
        job = db.get(BuildJob, job_id, with_for_update=True)
        if job is None:
            raise HTTPException(404, "no such job")
        if job.arch != me.arch:
            raise HTTPException(409, f"job {job_id} is for {job.arch}, builder is {me.arch}")
        if job.python_tag not in me.python_tags:
            raise HTTPException(
                409, f"job {job_id} needs {job.python_tag}, builder has no such interpreter"
            )
        try:
            jobs.claim(job, me)
        except IllegalTransition as exc:
            raise HTTPException(409, f"job {job_id} is {job.state.value}") from exc
        me.last_seen_at = utcnow()
        db.commit()
        source = job.source_file
        return JobSpec(
            job_id=job.id,
            project=job.release.project.name,
            version=job.release.version,
            arch=job.arch,
            python_tag=job.python_tag,
            policy=job.policy,
            sdist_filename=source.filename,
            sdist_url=source.url,
            sdist_sha256=source.sha256,
            sdist_size=source.size,
            attempt=job.attempts,
            recipe=recipes.recipe_for(job.release.project.name, job.release.version),
        )

    @app.post("/api/v1/jobs/{job_id}/release")
    def release(job_id: JobId, me: CurrentBuilder, db: DB) -> JobAnswer:
        """A stopping builder hands its job back: pending again, the attempt not counted."""
        try:
            job = check_job_owner(db.get(BuildJob, job_id, with_for_update=True), me)
        except Rejected as exc:
            raise HTTPException(exc.status, exc.message) from exc
        claim = claim_key(job.started_at)
        jobs.hand_back(job, HandBack.RELEASED, settings.master.max_attempts)
        db.commit()
        live.discard(job.id, claim)
        return JobAnswer(job=job.id, state=job.state.value)

    @app.post("/api/v1/jobs/{job_id}/log")
    def append_log(
        job_id: JobId,
        me: CurrentBuilder,
        db: DB,
        chunk: LogChunk,
        offset: Annotated[int, Query(ge=0)],
    ) -> Response:
        """A chunk of the live log of a job building on this builder, at `offset` of its log.
        Idempotent: bytes the master has are acknowledged again; a gap answers 409 with
        the offset to resend from. A job no longer building on this builder is refused
        (404, 403 or 409) with `"stop": true`, its `state` and `why`: the builder kills
        that build and reports nothing."""

        def still_mine() -> str:
            # Read again under the live-log lock: a result stored meanwhile ends the log.
            job = db.get(BuildJob, job_id, populate_existing=True)
            return claim_key(check_job_owner(job, me).started_at)

        try:
            total = live.append(job_id, offset, chunk, still_mine)
        except Rejected as exc:
            log.info(
                "live log refused: the job is not the builder's",
                extra={"job_id": job_id, "builder": me.name, "why": exc.taken_back or ""},
            )
            refusal = LogRefusal(
                error=exc.message,
                stop=exc.taken_back is not None,
                state=exc.state,
                why=exc.taken_back,
            )
            return JSONResponse(refusal.model_dump(mode="json"), status_code=exc.status)
        except OffsetGap as gap:
            log.info(
                "live log chunk past the end",
                extra={"job_id": job_id, "offset": offset, "expected": gap.expected},
            )
            answer = LogGap(
                error=f"log chunk at {offset}, expected {gap.expected}", expected=gap.expected
            )
            return JSONResponse(answer.model_dump(mode="json"), status_code=409)
        return JSONResponse(LogAccepted(job=job_id, total=total).model_dump(mode="json"))

    @app.post(
        "/api/v1/jobs/{job_id}/result",
        dependencies=[
            Depends(BodyLimit(limits.max_upload_bytes + limits.max_log_bytes + FORM_OVERHEAD_BYTES))
        ],
    )
    def result(
        job_id: JobId,
        me: CurrentBuilder,
        db: DB,
        request: Request,
        form: Annotated[ResultForm, Form()],
        log_file: Annotated[UploadFile, File(alias=LOG_PART)],
        wheel: Annotated[UploadFile | None, File(alias=WHEEL_PART)] = None,
    ) -> ResultAnswer:
        outcome, reason, build_seconds = form.outcome, form.reason, form.build_seconds
        wheel_sha256, summary, transient = form.wheel_sha256, form.summary, form.transient
        try:
            job = check_job_owner(db.get(BuildJob, job_id, with_for_update=True), me)
            if outcome == "built" and (wheel is None or not wheel_sha256):
                raise Rejected(400, "a built outcome needs a wheel and its sha256")
            if outcome == "failed" and reason is None:
                raise Rejected(400, "a failed outcome needs a reason")
        except Rejected as exc:
            raise HTTPException(exc.status, exc.message) from exc
        project = job.release.project.name
        claim = claim_key(job.started_at)
        written: list[Path] = []  # files of this result, removed if it cannot be kept
        try:
            log_path, log_size = storage.store_log(
                project, job.id, job.attempts, log_file.file, limits.max_log_bytes
            )
            written.append(log_path)
            job.log_path, job.log_size = str(log_path), log_size
            report = jobs.ResultReport(outcome, reason, summary, build_seconds, transient)
            rejection: Rejected | None = None
            published: OutputFile | None = None
            covered: AlreadyServed | None = None
            if outcome == "built" and wheel is not None and wheel_sha256:
                try:
                    published = accept_wheel(
                        db,
                        storage,
                        job,
                        wheel.filename or "",
                        wheel_sha256,
                        wheel.file,
                        limits.max_upload_bytes,
                        push_targets=settings.push,
                    )
                    written += [
                        storage.wheel_path(project, published.filename),
                        storage.metadata_path(project, published.filename),
                    ]
                except AlreadyServed as exc:
                    covered = exc
                except Rejected as exc:
                    rejection = exc
                    report = jobs.ResultReport(
                        "failed", FailureReason.UPLOAD_REJECTED, exc.message, build_seconds
                    )
            if covered is not None:
                jobs.cover(job, str(covered))
            else:
                jobs.finish(job, report, settings.master.max_attempts)
            db.commit()
        except Exception as exc:
            if is_disk_full(exc):
                # Nothing of the result is kept: the job stays building for its builder
                # to send the result again (503).
                db.rollback()
                for path in written:
                    path.unlink(missing_ok=True)
                log.warning(
                    "result not stored: the disk is full",
                    extra={"job_id": job_id, "builder": me.name},
                )
            raise
        live.discard(job.id, claim)  # the final log replaces the live one
        if published is not None and static is not None:
            _sync_static(static, db, job.id)
        log.info(
            "job finished",
            extra={
                "job_id": job.id,
                "state": job.state.value,
                "reason": report.reason or "",
                "builder": me.name,
            },
        )
        if rejection is not None:
            raise HTTPException(rejection.status, rejection.message)
        return ResultAnswer(
            job=job.id,
            state=job.state.value,
            file=published.filename if published else None,
            served=covered.existing.filename if covered else None,
        )

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
                db, settings, normal, wanted.version, wanted.arch, requested_by=token.name
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

    def _simple(request: Request, content: str, media: str, serial: int) -> Response:
        """A Simple page with what caches need: a strong ETag of its bytes (so pip and
        proxies revalidate for a 304), a max-age, Vary on Accept, and the serial."""
        body = content.encode()
        etag = f'"{hashlib.sha256(body).hexdigest()[:32]}"'
        headers = {
            "Vary": "Accept",
            "ETag": etag,
            "Cache-Control": f"max-age={settings.index.page_max_age}, public",
            "X-PyPI-Last-Serial": str(serial),
        }
        if etag_matches(request.headers.get("if-none-match"), etag):
            return Response(status_code=304, headers=headers)
        return Response(body, media_type=media, headers=headers)

    def _negotiate(request: Request) -> str:
        try:
            return index.negotiate(
                request.headers.get("accept"), request.query_params.get("format")
            )
        except index.NotAcceptable as exc:
            raise HTTPException(406, str(exc)) from exc

    def get_and_head(path: str) -> Callable[[Callable[..., Response]], Callable[..., Response]]:
        """GET in the OpenAPI document and HEAD beside it (kept out of the document: one
        route for both methods would give two operations the same operationId)."""

        def register(endpoint: Callable[..., Response]) -> Callable[..., Response]:
            app.head(path, include_in_schema=False)(endpoint)
            return app.get(path)(endpoint)

        return register

    @get_and_head("/simple/")
    def simple_root(request: Request, db: DB) -> Response:
        media = _negotiate(request)
        serial = index.last_serial(db)
        page = index.JSON_TYPE if media == index.JSON_TYPE else "html"
        if static is not None:
            # The tree keeps the project list current without a scan of every file.
            static.sync(db)
            name = JSON_PAGE if page == index.JSON_TYPE else HTML_PAGE
            return _simple(request, (static.simple / name).read_text(), media, serial)
        names = index.published_projects(db)
        if page == index.JSON_TYPE:
            return _simple(request, index.render_root_json(names), media, serial)
        return _simple(request, index.render_root_html(names), media, serial)

    @get_and_head("/simple/{name}/")
    def simple_project(name: str, request: Request, db: DB) -> Response:
        try:
            normal = normalize_project(name)
        except BadName as exc:
            raise HTTPException(404, str(exc)) from exc
        if normal != name:
            query = f"?{request.url.query}" if request.url.query else ""
            return RedirectResponse(f"/simple/{normal}/{query}", status_code=301)
        media = _negotiate(request)
        project = db.scalar(select(Project).where(Project.name == normal))
        files = index.project_files(db, project) if project else []
        if project is None or not files:
            raise HTTPException(404, f"no files for {normal}")
        serial = index.last_serial(db, project.id)
        if media == index.JSON_TYPE:
            return _simple(request, index.render_project_json(normal, files, serial), media, serial)
        return _simple(request, index.render_project_html(normal, files, serial), media, serial)

    @get_and_head("/simple/{name}")
    def simple_project_slash(name: str) -> RedirectResponse:
        return RedirectResponse(f"/simple/{name}/", status_code=301)

    @get_and_head("/files/{name}/{filename}")
    def files(name: str, filename: str, request: Request, db: DB) -> Response:
        metadata = filename.endswith(".metadata")
        wheel_name = filename.removesuffix(".metadata")
        try:
            parse_name(wheel_name)
            normal = normalize_project(name)
        except (BadWheel, BadName) as exc:
            raise HTTPException(404, str(exc)) from exc
        output = db.scalar(
            select(OutputFile)
            .join(Release, OutputFile.release_id == Release.id)
            .where(OutputFile.filename == wheel_name, *index.SERVED)
        )
        if output is None or output.release.project.name != normal:
            raise HTTPException(404, "no such file")
        # A published file never changes: its hash is its ETag and caches may keep it.
        digest = output.metadata_sha256 if metadata else output.sha256
        headers = {"ETag": f'"{digest}"', "Cache-Control": "max-age=31536000, immutable"}
        if etag_matches(request.headers.get("if-none-match"), headers["ETag"]):
            return Response(status_code=304, headers=headers)
        if metadata:
            return FileResponse(
                storage.metadata_path(normal, wheel_name), media_type="text/plain", headers=headers
            )
        return FileResponse(
            storage.wheel_path(normal, wheel_name),
            media_type="application/octet-stream",
            filename=wheel_name,
            headers=headers,
        )

    @app.get("/metrics")
    def metrics() -> Response:
        """Prometheus scrape: the farm's state read from the database at scrape time."""
        body, content_type = render_metrics(factory, settings)
        return Response(body, media_type=content_type)

    return app

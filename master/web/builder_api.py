"""The builder API: registration, heartbeats, claims, hand-backs, live-log chunks and
results. Every job state change it makes goes through master.jobs."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path
from typing import Annotated

from fastapi import (
    APIRouter,
    Depends,
    File,
    Form,
    HTTPException,
    Query,
    Request,
    UploadFile,
)
from fastapi.responses import JSONResponse, Response
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from common.config import ConfigError
from common.models import Builder, BuildJob, OutputFile, utcnow
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
    slot_name,
)
from common.states import FailureReason, JobState
from common.wheels import Check
from master.auth import builder_for
from master.builds import build_paths, dependencies, jobs, learned_packages
from master.builds.build_plan import plan_fallbacks
from master.builds.jobs import HandBack, IllegalTransition
from master.builds.live_logs import (
    OffsetGap,
    claim_key,
    keep_as_final_log,
)
from master.index.static import StaticIndex
from master.index.uploads import (
    AlreadyServed,
    Rejected,
    accept_wheel,
    check_job_owner,
    not_building_here,
)
from master.web.api_deps import (
    DB,
    BodyLimit,
    BuilderSlot,
    BuilderToken,
    JobId,
    RawBody,
)
from master.web.context import MasterContext
from master.web.disk_full import is_disk_full

log = logging.getLogger(__name__)

# A building job its builder's heartbeat does not name is handed back only when claimed
# longer ago than this: a heartbeat sent just before a claim must not take the job back.
HAND_BACK_GRACE = timedelta(seconds=3 * HEARTBEAT_SECONDS)
# A result's body beyond its wheel and log: the other form fields and the multipart
# framing (the summary, the largest field, is at most MAX_SUMMARY_CHARS characters).
FORM_OVERHEAD_BYTES = 1024 * 1024


def _current_builder(db: DB, token: BuilderToken, slot: BuilderSlot) -> Builder:
    found = builder_for(db, token, slot)
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


def _sync_static(static: StaticIndex, db: Session, job_id: int) -> None:
    """Bring the static tree up to date now; on failure the master's loop retries, so
    the wheel is published either way."""
    try:
        static.sync(db)
    except OSError:
        log.exception("static index update failed", extra={"job_id": job_id})


def router(ctx: MasterContext) -> APIRouter:
    """The routes a builder calls, with its builder token."""
    settings = ctx.settings
    storage = ctx.storage
    live = ctx.live
    static = ctx.static
    recipes = ctx.recipes
    limits = ctx.settings.master
    app = APIRouter()

    @app.post("/api/v1/builders/register")
    def register(reg: Registration, db: DB, token: BuilderToken, slot: BuilderSlot) -> Registered:
        target = reg.target or reg.arch
        configured = settings.targets.get(target)
        if configured is not None and configured.arch != reg.arch:
            raise HTTPException(
                400, f"target {target} is for {configured.arch}, the builder builds {reg.arch}"
            )
        found = builder_for(db, token, slot)
        # A builder that registers again has lost whatever it was doing.
        # The attempt counts (a board that keeps rebooting mid-build is the build's
        # trouble too): past the cap the job is lost, keeping what was streamed of it.
        # Its jobs are locked before its row is written, in the order the reconciler and
        # claims take them (job, then builder): the other order deadlocked with the
        # reconciler handing back the same job.
        orphaned = (
            []
            if found is None
            else db.scalars(
                select(BuildJob)
                .where(BuildJob.builder_id == found.id, BuildJob.state == JobState.BUILDING)
                .with_for_update()
            ).all()
        )
        if found is None:
            found = Builder(
                name=slot_name(token.name, slot),
                token_id=token.id,
                slot=slot,
                arch=reg.arch,
                target=target,
                backend=reg.backend,
            )
            db.add(found)
        found.arch, found.target, found.backend = reg.arch, target, reg.backend
        found.python_tags, found.version = reg.python_tags, reg.version
        found.free_disk, found.reported_job_id = reg.free_disk, None
        found.last_seen_at = utcnow()
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
        log.info(
            "builder registered",
            extra={"builder": found.name, "target": found.target, "arch": found.arch},
        )
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
        if job.target != me.target:
            raise HTTPException(
                409, f"job {job_id} is for target {job.target}, builder builds {me.target}"
            )
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
        project = job.release.project
        recipe = learned_packages.with_learned(
            recipes.recipe_for(project.name, job.release.version), project
        )
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
            recipe=recipe,
            emulate_because=build_paths.emulate_because(job.release.project, recipe),
            newer_policy=settings.newer_policy(job.target),
            target=job.target,
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
                    try:
                        float_abi = settings.float_abi(job.target, job.policy)
                    except ConfigError as exc:
                        raise Rejected(409, str(exc), check=Check.POLICY) from exc
                    published = accept_wheel(
                        db,
                        storage,
                        job,
                        wheel.filename or "",
                        wheel_sha256,
                        wheel.file,
                        limits.max_upload_bytes,
                        push_targets=settings.push,
                        newer_policy=settings.newer_policy(job.target),
                        float_abi=float_abi,
                        system_packages=(form.system_packages or "").split(),
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
            elif report.outcome == "failed" and form.waiting_for and rejection is None:
                dependencies.on_missing(db, job, form.waiting_for, report, settings)
            else:
                jobs.finish(job, report, settings.master.max_attempts)
                plan_fallbacks(db, job, settings)
            if job.state in (JobState.BUILT, JobState.FAILED):
                # Jobs waiting for this project's wheel resume, or fail with it.
                dependencies.settle(db, settings, project=project)
            built = outcome == "built" and rejection is None
            build_paths.record(job, form.build_path, built=built)
            learned_packages.record(job, form, built)
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

    return app

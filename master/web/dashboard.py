"""The dashboard: server-rendered HTML pages over the farm's database.

Every page runs a fixed, small number of queries, each bounded by a LIMIT or grouped in
SQL over indexed columns, so pages stay fast with a million build rows. The overview's
live part is also served alone (/fragments/overview) for static/dashboard.js to refresh
without reloading the page. Everything untrusted (names, summaries, logs, audit
subjects) goes through Jinja2's autoescaping.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jinja2
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from packaging.version import InvalidVersion, Version
from sqlalchemy import bindparam, case, func, select
from sqlalchemy.orm import Session, aliased, sessionmaker
from starlette.concurrency import run_in_threadpool

from common.config import Settings
from common.models import AuditEvent, Builder, BuildJob, OutputFile, Project, Release
from common.names import BadName, normalize_project
from common.states import FINAL_STATES, FailureReason, JobState, SkipReason
from common.tags import who_installs
from master.builds import liveness
from master.index import pages as index
from master.pypi.feed import read_cursor
from master.pypi.watch import how_to_add, watching
from master.storage import Storage
from master.web.api_deps import DB, MAX_JOB_ID
from master.web.page_cache import PageCache

HERE = Path(__file__).parent
TEMPLATES_DIR = HERE / "templates"
STATIC_DIR = HERE / "static"

WAITING_STATES = (JobState.PENDING, JobState.QUEUED)
WAITING_SHOWN = 20
RUNNING_SHOWN = 100
RECENT_SHOWN = 20
SEARCH_LIMIT = 50
SEARCH_MAX_LENGTH = 200
RELEASES_SHOWN = 50
WHEELS_SHOWN = 200
HISTORY_SHOWN = 20
BUILDERS_SHOWN = 1000
AUDIT_SHOWN = 100
# The build page renders at most this much of a finished log (its tail); /logs/ID has all.
LOG_TAIL_BYTES = 256 * 1024

router = APIRouter()


def human_age(seconds: float | None) -> str:
    """'42 s', '3 min', '5 h', '2 d'; an em dash for nothing."""
    if seconds is None:
        return "—"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{int(seconds)} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h"
    return f"{int(seconds // 86400)} d"


def human_size(size: int | None) -> str:
    if size is None:
        return "—"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover - the loop always returns


def _utc(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value else "—"


def _ago(value: datetime | None, now: datetime) -> str:
    if value is None:
        return "—"
    return human_age((now - value).total_seconds()) + " ago"


def _one_line(text: str | None, limit: int = 200) -> str:
    for line in (text or "").splitlines():
        if line.strip():
            line = line.strip()
            return line if len(line) <= limit else line[: limit - 1] + "…"
    return ""


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        # Templates ship with the package and change only with an upgrade (a restart):
        # no stat() of the template file on every render.
        auto_reload=False,
        autoescape=True,  # project names, summaries, logs and audit subjects are untrusted
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["utc"] = _utc
    env.filters["age"] = human_age
    env.filters["size"] = human_size
    env.filters["one_line"] = _one_line
    env.filters["installs_on"] = who_installs
    return env


environment = _environment()


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _now() -> datetime:
    return datetime.now(UTC)


def _render(name: str, context: dict[str, Any]) -> bytes:
    now = _now()
    context = {"now": now, "ago": lambda value: _ago(value, now), **context}
    return environment.get_template(name).render(context).encode()


def _page(name: str, context: dict[str, Any], status_code: int = 200) -> HTMLResponse:
    return HTMLResponse(_render(name, context), status_code=status_code)


def _page_cache(request: Request) -> PageCache:
    cache: PageCache = request.app.state.page_cache
    return cache


async def _cached(
    request: Request, key: Hashable, ttl: float, render: Callable[[Session], bytes]
) -> bytes:
    """A kept page straight from the event loop; otherwise rendered in a worker thread with
    a database session of its own (a page served from the cache opens none)."""
    cache = _page_cache(request)
    kept = cache.peek(key, ttl)
    if isinstance(kept, bytes):
        return kept

    def in_thread() -> bytes:
        with read_session(request.app.state.factory) as db:
            return cache.get(key, ttl, lambda: render(db))

    async with _render_slots(request):
        return await run_in_threadpool(in_thread)


@contextmanager
def read_session(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session for rendering a page, its reads outside a transaction (autocommit): BEGIN
    and the ROLLBACK that ends a read-only transaction were two of a project page's five
    round trips to PostgreSQL, 40% of its render time. Each statement still sees a
    consistent snapshot; a page's statements may see moments apart, which a page
    refreshed every second (and kept for one) can afford."""
    with factory() as db:
        db.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        yield db


# Renders are Python work under one interpreter lock: with two at once one computes while
# the other waits on the database; more threads only take turns and every request ends
# late (20 clients on random project pages: p99 250 ms unbounded, 63 ms with 2, and 40%
# more pages per second). The others wait their turn in order, on the event loop.
RENDERS_AT_ONCE = 2


def _render_slots(request: Request) -> asyncio.Semaphore:
    """This process's render slots, for the event loop serving it."""
    loop = asyncio.get_running_loop()
    found: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = getattr(
        request.app.state, "render_slots", None
    )
    if found is None or found[0] is not loop:
        found = (loop, asyncio.Semaphore(RENDERS_AT_ONCE))
        request.app.state.render_slots = found
    return found[1]


def _message(title: str, message: str, status_code: int) -> HTMLResponse:
    return _page("message.html", {"title": title, "message": message}, status_code)


# --- rows shown by several pages ------------------------------------------------------


@dataclass
class JobRow:
    id: int
    project: str
    version: str
    target: str
    arch: str
    python_tag: str
    state: str
    reason: str | None
    summary: str | None
    created: datetime | None
    queued: datetime | None
    started: datetime | None
    finished: datetime | None
    seconds: float | None
    attempts: int
    builder: str | None = None
    build_path: str | None = None  # common.states.BuildPath, once a builder reported
    # System packages installed into the build image, and those the builder added itself.
    build_packages: list[str] = field(default_factory=list)
    auto_packages: list[str] = field(default_factory=list)
    # In dep-wait: the build requirement it waits for.
    waiting_for: str | None = None

    @property
    def label(self) -> str:
        return f"{self.project} {self.version} {self.target} {self.python_tag}"


def _job_rows(session: Session, query: Any) -> list[JobRow]:
    """Rows of (BuildJob, version, project name, builder name) as JobRows."""
    return [
        JobRow(
            id=job.id,
            project=name,
            version=version,
            target=job.target,
            arch=job.arch,
            python_tag=job.python_tag,
            state=job.state.value,
            reason=job.failure_reason.value if job.failure_reason else None,
            summary=job.summary,
            created=job.created_at,
            queued=job.queued_at,
            started=job.started_at,
            finished=job.finished_at,
            seconds=job.build_seconds,
            attempts=job.attempts,
            builder=builder,
            build_path=job.build_path,
            build_packages=job.build_packages or [],
            auto_packages=job.auto_packages or [],
            waiting_for=job.waiting_for,
        )
        for job, version, name, builder in session.execute(query)
    ]


def _jobs_query() -> Any:
    return (
        select(BuildJob, Release.version, Project.name, Builder.name)
        .join(Release, BuildJob.release_id == Release.id)
        .join(Project, Release.project_id == Project.id)
        .outerjoin(Builder, BuildJob.builder_id == Builder.id)
    )


# --- the overview ---------------------------------------------------------------------


@dataclass
class QueueRow:
    target: str
    arch: str
    depth: int = 0
    running: int = 0
    oldest: datetime | None = None


@dataclass
class Bucket:
    label: str
    built: int = 0
    failed: int = 0


@dataclass
class Throughput:
    key: str
    title: str
    unit: str
    hours: float
    buckets: list[Bucket] = field(default_factory=list)

    @property
    def built(self) -> int:
        return sum(b.built for b in self.buckets)

    @property
    def failed(self) -> int:
        return sum(b.failed for b in self.buckets)

    @property
    def total(self) -> int:
        return self.built + self.failed

    @property
    def rate(self) -> str:
        return f"{100 * self.built / self.total:.1f}%" if self.total else "—"

    @property
    def per_hour(self) -> str:
        return f"{self.total / self.hours:.1f}"

    @property
    def peak(self) -> int:
        return max((b.built + b.failed for b in self.buckets), default=0)


def _queues(session: Session, settings: Settings, now: datetime) -> list[QueueRow]:
    """A row per enabled target, and per target since disabled while it has jobs."""
    enabled = settings.enabled_targets()
    rows = {name: QueueRow(name, target.arch) for name, target in sorted(enabled.items())}
    for target, arch, state, count in session.execute(
        select(BuildJob.target, BuildJob.arch, BuildJob.state, func.count())
        .where(BuildJob.state.in_((*WAITING_STATES, JobState.BUILDING)))
        .group_by(BuildJob.target, BuildJob.arch, BuildJob.state)
    ):
        row = rows.setdefault(target, QueueRow(target, arch))
        if state == JobState.BUILDING:
            row.running += count
        else:
            row.depth += count
    for target, oldest in session.execute(
        select(BuildJob.target, func.min(BuildJob.created_at))
        .where(BuildJob.state.in_(WAITING_STATES))
        .group_by(BuildJob.target)
    ):
        if target in rows:
            rows[target].oldest = oldest
    return [row for row in rows.values() if row.target in enabled or row.depth]


def _bucket_column(session: Session, per: str) -> Any:
    """The start of a finished job's hour or day, grouped in SQL (the dialects differ)."""
    if session.get_bind().dialect.name == "postgresql":
        return func.date_trunc(per, func.timezone("UTC", BuildJob.finished_at))
    return func.strftime("%Y-%m-%d %H" if per == "hour" else "%Y-%m-%d", BuildJob.finished_at)


def _throughput(session: Session, now: datetime, per: str) -> Throughput:
    if per == "hour":
        start = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=23)
        step, fmt, count = timedelta(hours=1), "%Y-%m-%d %H", 24
        result = Throughput("24h", "last 24 hours", "hour", 24.0)
    else:
        start = now.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=6)
        step, fmt, count = timedelta(days=1), "%Y-%m-%d", 7
        result = Throughput("7d", "last 7 days", "day", 7 * 24.0)
    buckets = {
        (start + step * i).strftime(fmt): Bucket((start + step * i).strftime(fmt))
        for i in range(count)
    }
    bucket = _bucket_column(session, per).label("bucket")
    for key, state, number in session.execute(
        select(bucket, BuildJob.state, func.count())
        .where(
            BuildJob.state.in_((JobState.BUILT, JobState.FAILED)),
            BuildJob.finished_at >= start,
        )
        .group_by(bucket, BuildJob.state)
    ):
        label = key.strftime(fmt) if isinstance(key, datetime) else str(key)
        found = buckets.get(label)
        if found is None:
            continue
        if state == JobState.BUILT:
            found.built += number
        else:
            found.failed += number
    result.buckets = list(buckets.values())
    return result


# Hourly and daily figures move slowly while every open overview asks for them every few
# seconds: each process computes them at most once per THROUGHPUT_TTL.
THROUGHPUT_TTL = 30.0


def _recent_throughput(session: Session, now: datetime, cache: PageCache) -> list[Throughput]:
    return cache.get(
        "throughput",
        THROUGHPUT_TTL,
        lambda: [_throughput(session, now, "hour"), _throughput(session, now, "day")],
    )


@dataclass(frozen=True)
class IndexRow:
    path: str
    serves: str


def _indexes(settings: Settings) -> list[IndexRow]:
    """/simple/ and each distribution target's own index, with whom each serves."""
    manylinux = sorted(
        {t.policy for t in settings.enabled_targets().values() if t.kind == "manylinux"}
    )
    rows = [IndexRow("/simple/", f"manylinux wheels ({', '.join(manylinux) or 'none enabled'})")]
    for name, target in sorted(settings.targets.items()):
        if target.kind == "distribution":
            machines = ", ".join(target.machines)
            float_abi = f", {target.float_abi}-float" if target.arch == "armv7l" else ""
            rows.append(
                IndexRow(f"/{name}/simple/", f"{name} systems only ({machines}{float_abi})")
            )
    return rows


@dataclass(frozen=True)
class GettingStarted:
    """The overview of a farm without a job yet: what it watches, how to add a project."""

    watching: str
    how_to_add: str


def _getting_started(session: Session, settings: Settings) -> GettingStarted | None:
    """None once the farm has a job (one indexed row read)."""
    if session.scalar(select(BuildJob.id).limit(1)) is not None:
        return None
    upstream = settings.upstream
    cursor = read_cursor(session) if upstream.feed == "changelog" else None
    return GettingStarted(watching(upstream, cursor), how_to_add(upstream))


def _overview(
    session: Session, settings: Settings, now: datetime, cache: PageCache
) -> dict[str, Any]:
    waiting = _job_rows(
        session,
        _jobs_query()
        .where(BuildJob.state.in_(WAITING_STATES))
        .order_by(BuildJob.priority.desc(), BuildJob.id)
        .limit(WAITING_SHOWN),
    )
    running = _job_rows(
        session,
        _jobs_query()
        .where(BuildJob.state == JobState.BUILDING)
        .order_by(BuildJob.started_at, BuildJob.id)
        .limit(RUNNING_SHOWN),
    )
    latest = _job_rows(
        session,
        _jobs_query()
        .where(BuildJob.finished_at.is_not(None))
        .order_by(BuildJob.finished_at.desc(), BuildJob.id.desc())
        .limit(RECENT_SHOWN),
    )
    dep_wait = _job_rows(
        session,
        _jobs_query()
        .where(BuildJob.state == JobState.DEP_WAIT)
        .order_by(BuildJob.priority.desc(), BuildJob.id)
        .limit(WAITING_SHOWN),
    )
    failures = _job_rows(
        session,
        _jobs_query()
        .where(BuildJob.state == JobState.FAILED, BuildJob.finished_at.is_not(None))
        .order_by(BuildJob.finished_at.desc(), BuildJob.id.desc())
        .limit(RECENT_SHOWN),
    )
    return {
        "getting_started": _getting_started(session, settings),
        "queues": _queues(session, settings, now),
        "indexes": _indexes(settings),
        "waiting": waiting,
        "running": running,
        "dep_wait": dep_wait,
        "builders": liveness.count_by_state(session, now, settings.master.builder_timeout),
        "throughput": _recent_throughput(session, now, cache),
        "latest": latest,
        "failures": failures,
    }


def _overview_figures(db: Session, settings: Settings, cache: PageCache) -> dict[str, Any]:
    return cache.get(
        "overview figures",
        settings.master.overview_cache,
        lambda: _overview(db, settings, _now(), cache),
    )


def overview_body(
    db: Session, settings: Settings, cache: PageCache, template: str = "overview.html"
) -> bytes:
    """The overview (or, with _overview.html, its live part) from the figures `cache`
    keeps; a fresh cache renders it from the database."""
    data = _overview_figures(db, settings, cache)
    return _render(template, {"title": "armwheels — overview", **data})


async def _overview_page(request: Request, template: str) -> bytes:
    """The overview (or its live part), rendered once per `master.overview_cache` seconds
    for all the dashboards open (each asks again every 2 s), both from the same figures."""
    settings = _settings(request)
    return await _cached(
        request,
        ("overview", template),
        settings.master.overview_cache,
        lambda db: overview_body(db, settings, _page_cache(request), template),
    )


@router.get("/", response_class=HTMLResponse)
async def overview(request: Request) -> HTMLResponse:
    return HTMLResponse(await _overview_page(request, "overview.html"))


@router.get("/fragments/overview", response_class=HTMLResponse)
async def overview_fragment(request: Request) -> HTMLResponse:
    response = HTMLResponse(await _overview_page(request, "_overview.html"))
    response.headers["Cache-Control"] = "no-store"
    return response


# --- projects -------------------------------------------------------------------------


def _search_text(q: str) -> str:
    """A partial project name in PEP 503 form: lower case, runs of -_. as one dash."""
    return re.sub(r"[-_.]+", "-", q.strip().lower())


@router.get("/projects", response_class=HTMLResponse)
def projects(db: DB, q: str = "") -> HTMLResponse:
    title = "armwheels — project search"
    if len(q) > SEARCH_MAX_LENGTH:
        return _message(title, f"a search is at most {SEARCH_MAX_LENGTH} characters", 400)
    text = _search_text(q)
    if not text:
        return _message(title, "type part of a project name to search for", 400)
    rank = case(
        (Project.name == text, 0), (Project.name.startswith(text, autoescape=True), 1), else_=2
    )
    names = list(
        db.scalars(
            select(Project.name)
            .where(Project.name.contains(text, autoescape=True))
            .order_by(rank, Project.name)
            .limit(SEARCH_LIMIT)
        )
    )
    return _page(
        "projects.html",
        {"title": f"armwheels — projects matching {q}", "q": q, "names": names},
    )


@dataclass
class Cell:
    job: int
    state: str


@dataclass
class MatrixRow:
    version: str
    yanked: bool
    removed: bool
    skip: str | None
    cells: list[Cell | None]


def _version_key(version: str) -> tuple[int, Version | str]:
    try:
        return (1, Version(version))
    except InvalidVersion:
        return (0, version)


# The project page's statements, built once (building them costs more than running
# them), run as Core statements: plain rows, no ORM objects.
_PROJECT_RELEASES = (
    select(
        Project.id.label("project_id"),
        Project.name,
        Project.display_name,
        Project.removed_at.label("project_removed_at"),
        Project.learned_packages,
        Release.id,
        Release.version,
        Release.yanked,
        Release.removed_at,
        Release.skip_reason,
    )
    .outerjoin(Release, Release.project_id == Project.id)
    .where(Project.name == bindparam("name"))
)
_newest_jobs = (
    select(func.max(BuildJob.id).label("id"))
    .where(BuildJob.release_id.in_(bindparam("releases", expanding=True)))
    .group_by(BuildJob.release_id, BuildJob.target, BuildJob.python_tag)
    .subquery()
)
_newest_job = aliased(BuildJob)
_MATRIX = select(
    _newest_job.id,
    _newest_job.release_id,
    _newest_job.target,
    _newest_job.python_tag,
    _newest_job.state,
).join(_newest_jobs, _newest_job.id == _newest_jobs.c.id)
_WHEELS = (
    select(
        OutputFile.filename,
        OutputFile.size,
        OutputFile.sha256,
        Release.version,
        OutputFile.index_name,
        OutputFile.system_packages,
        BuildJob.build_packages,
        BuildJob.auto_packages,
    )
    .join(Release, OutputFile.release_id == Release.id)
    .join(BuildJob, OutputFile.job_id == BuildJob.id)
    .where(Release.project_id == bindparam("project"), *index.PUBLISHED)
    .order_by(OutputFile.id.desc())
    .limit(WHEELS_SHOWN)
)


@dataclass
class ProjectView:
    name: str
    display_name: str
    removed_at: datetime | None


def _matrix(
    session: Session, found: Sequence[Any], targets: list[tuple[str, str]]
) -> list[MatrixRow]:
    """The newest job of each shown release and target; `found` are the project's
    release rows, newest version first."""
    shown = found[:RELEASES_SHOWN]
    latest: dict[tuple[int, str, str], Cell] = {}
    if shown:
        for job_id, release_id, target, tag, state in session.connection().execute(
            _MATRIX, {"releases": [row.id for row in shown]}
        ):
            latest[(release_id, target, tag)] = Cell(job_id, JobState(state).value)
    return [
        MatrixRow(
            version=row.version,
            yanked=row.yanked,
            removed=row.removed_at is not None,
            skip=SkipReason(row.skip_reason).value if row.skip_reason else None,
            cells=[latest.get((row.id, target, tag)) for target, tag in targets],
        )
        for row in shown
    ]


class _NoProject(LookupError):
    """Nothing to render (and nothing to keep): the page answers 404."""


def project_body(db: Session, settings: Settings, name: str) -> bytes:
    connection = db.connection()
    found = connection.execute(_PROJECT_RELEASES, {"name": name}).all()
    if not found:
        raise _NoProject(name)
    first = found[0]
    project = ProjectView(first.name, first.display_name, first.project_removed_at)
    releases = sorted(
        (row for row in found if row.id is not None),
        key=lambda row: _version_key(row.version),
        reverse=True,
    )
    targets = [
        (name, tag)
        for name, target in sorted(settings.enabled_targets().items())
        for tag in target.python_tags
    ]
    rows = _matrix(db, releases, targets)
    wheels = list(connection.execute(_WHEELS, {"project": first.project_id}))
    return _render(
        "project.html",
        {
            "title": f"armwheels — {project.name}",
            "project": project,
            "targets": targets,
            "rows": rows,
            "release_count": len(releases),
            "releases_shown": RELEASES_SHOWN,
            "wheels": wheels,
            "wheels_shown": WHEELS_SHOWN,
            "public_url": settings.master.public_url,
            "rebuild_targets": sorted(settings.enabled_targets()),
            "learned_packages": sorted((first.learned_packages or {}).items()),
        },
    )


@router.get("/projects/{name}", response_class=HTMLResponse, response_model=None)
async def project_page(request: Request, name: str) -> Response:
    """A project's matrix and wheels; a popular project's page is rendered once per
    `master.project_cache` seconds for everyone asking."""
    try:
        normal = normalize_project(name)
    except BadName:
        return _message("armwheels — no such project", "no such project", 404)
    if normal != name:
        return RedirectResponse(f"/projects/{normal}", status_code=301)
    settings = _settings(request)
    try:
        body = await _cached(
            request,
            ("project", normal),
            settings.master.project_cache,
            lambda db: project_body(db, settings, normal),
        )
    except _NoProject:
        return _message("armwheels — no such project", f"no project named {normal}", 404)
    return HTMLResponse(body)


# --- builds ---------------------------------------------------------------------------


def _log_tail(settings: Settings, job: BuildJob) -> tuple[str, bool]:
    """The final log's last LOG_TAIL_BYTES as text, and whether it was cut."""
    if not job.log_path:
        return "", False
    try:
        data = Storage(settings.master.data_dir).read_log(Path(job.log_path))
    except OSError:
        return "", False
    cut = len(data) > LOG_TAIL_BYTES
    return data[-LOG_TAIL_BYTES:].decode("utf-8", errors="replace"), cut


@router.get("/builds/{job_id}", response_class=HTMLResponse)
def build_page(request: Request, job_id: str, db: DB) -> HTMLResponse:
    # Ids are 32-bit integers: a larger number is no build (PostgreSQL would refuse it).
    wanted = int(job_id) if job_id.isdigit() and len(job_id) <= 10 else 0
    found = db.get(BuildJob, wanted) if 0 < wanted <= MAX_JOB_ID else None
    if found is None:
        return _message("armwheels — no such build", f"no build {job_id}", 404)
    [row] = _job_rows(db, _jobs_query().where(BuildJob.id == found.id))
    history = _job_rows(
        db,
        _jobs_query()
        .where(
            BuildJob.release_id == found.release_id,
            BuildJob.target == found.target,
            BuildJob.python_tag == found.python_tag,
            BuildJob.id != found.id,
        )
        .order_by(BuildJob.id.desc())
        .limit(HISTORY_SHOWN),
    )
    files = list(
        db.execute(
            select(OutputFile.filename, OutputFile.size, OutputFile.sha256, OutputFile.published)
            .where(OutputFile.job_id == found.id)
            .order_by(OutputFile.id)
        )
    )
    building = found.state == JobState.BUILDING
    log_text, log_cut = ("", False) if building else _log_tail(_settings(request), found)
    skip = found.skip_reason.value if found.skip_reason else None
    # Which check refused the builder's wheel (common.wheels.Check).
    rejected = found.rejected_by if found.failure_reason == FailureReason.UPLOAD_REJECTED else None
    return _page(
        "build.html",
        {
            "title": f"armwheels — build {found.id}: {row.label}",
            "job": row,
            "skip": skip,
            "rejected_by": rejected,
            "policy": found.policy,
            "priority": found.priority,
            "requested_by": found.requested_by,
            "final": found.state in FINAL_STATES,
            "files": files,
            "history": history,
            "building": building,
            "log_text": log_text,
            "log_cut": log_cut,
            "log_bytes": LOG_TAIL_BYTES,
        },
    )


# --- builders and audit ---------------------------------------------------------------


@dataclass
class BuilderRow:
    name: str
    target: str
    arch: str
    backend: str
    python_tags: Sequence[str]
    state: str
    current_job: int | None
    last_seen: datetime
    free_disk: int | None
    version: str


@router.get("/builders", response_class=HTMLResponse)
def builders_page(request: Request, db: DB) -> HTMLResponse:
    now = _now()
    timeout = _settings(request).master.builder_timeout
    rows = []
    for builder in db.scalars(select(Builder).order_by(Builder.name).limit(BUILDERS_SHOWN)):
        rows.append(
            BuilderRow(
                name=builder.name,
                target=builder.target,
                arch=builder.arch,
                backend=builder.backend,
                python_tags=builder.python_tags,
                state=liveness.state(builder, now, timeout),
                current_job=builder.current_job_id,
                last_seen=builder.last_seen_at,
                free_disk=builder.free_disk,
                version=builder.version,
            )
        )
    return _page("builders.html", {"title": "armwheels — builders", "builders": rows})


@router.get("/audit", response_class=HTMLResponse)
def audit_page(db: DB) -> HTMLResponse:
    events = list(db.scalars(select(AuditEvent).order_by(AuditEvent.id.desc()).limit(AUDIT_SHOWN)))
    return _page(
        "audit.html",
        {"title": "armwheels — audit log", "events": events},
    )

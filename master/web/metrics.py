"""Prometheus metrics for operators, read from the database at scrape time.

The database is the farm's source of truth and several masters may share it, so nothing
here is counted in process memory: every scrape asks the database with a handful of
grouped queries (GROUP BY and conditional counts, never one Python step per row, so a
scrape stays cheap with a million build rows). Every master therefore reports the same
farm, whichever one Prometheus happens to reach, and nothing is lost or reset when a
master restarts. The "_total" counters are counts of finished job rows: they only go
down if such rows are deleted or sent round again.

The collector lives in its own `CollectorRegistry`, never the library's global default
one, so the process's own metrics and tests never leak into or out of it.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session, sessionmaker

from common.config import Settings
from common.models import BuildJob, FeedCursor, IndexChange, OutputFile, WheelPush
from common.states import ACTIVE_STATES, FINAL_STATES, BuildPath, FailureReason, JobState
from common.wheels import Check
from master.builds import liveness
from master.index.pushes import FAILED as PUSH_FAILED
from master.index.pushes import PENDING as PUSH_PENDING
from master.index.pushes import PUSHED as PUSH_PUSHED
from master.web.context import MasterContext

# Upper bounds (seconds) of the build duration histogram: from a quick C extension to a
# two-hour build under emulation; slower builds land in +Inf. Labels are written "30.0"
# as the library's own Histogram writes them.
DURATION_BUCKETS: tuple[float, ...] = (30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
WAITING_STATES: tuple[JobState, ...] = (JobState.PENDING, JobState.QUEUED)
PUSH_STATES: tuple[str, ...] = (PUSH_PENDING, PUSH_PUSHED, PUSH_FAILED)
# A failed job whose builder recorded no reason.
UNKNOWN_REASON = "unknown"


def _age(now: datetime, then: datetime | None) -> float:
    """Seconds from `then` to `now`, never negative (masters' clocks may disagree a little)."""
    if then is None:
        return 0.0
    return max(0.0, (now - then).total_seconds())


class FarmCollector(Collector):
    """Reads the farm's state from the database each time it is collected."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        settings: Settings,
        now: datetime | None = None,
    ) -> None:
        self.factory = factory
        self.settings = settings
        self.now = now

    def collect(self) -> Iterator[Metric]:
        now = self.now or datetime.now(UTC)
        with self.factory() as session:
            yield from self._jobs(session, now)
            yield from self._outcomes(session)
            yield self._rejections(session)
            yield self._build_paths(session)
            yield self._durations(session)
            yield self._builders(session, now)
            yield from self._feeds(session, now)
            yield from self._index(session)
            yield self._pushes(session)

    def _jobs(self, session: Session, now: datetime) -> Iterator[Metric]:
        """Waiting and running jobs per target: one grouped query over the active states."""
        waiting: dict[str, int] = {}
        oldest: dict[str, datetime] = {}
        running: dict[str, int] = {}
        dep_wait: dict[str, int] = {}
        arch_of: dict[str, str] = {name: t.arch for name, t in self.settings.targets.items()}
        rows = session.execute(
            select(
                BuildJob.target,
                BuildJob.arch,
                BuildJob.state,
                func.count(),
                func.min(BuildJob.created_at),
            )
            .where(BuildJob.state.in_(ACTIVE_STATES))
            .group_by(BuildJob.target, BuildJob.arch, BuildJob.state)
        )
        for target, arch, state, count, first in rows:
            arch_of.setdefault(target, arch)
            if state in WAITING_STATES:
                waiting[target] = waiting.get(target, 0) + count
                if first is not None:
                    oldest[target] = min(oldest.get(target, first), first)
            elif state == JobState.BUILDING:
                running[target] = running.get(target, 0) + count
            elif state == JobState.DEP_WAIT:
                dep_wait[target] = dep_wait.get(target, 0) + count
        # Every enabled target has a sample (0 when idle); a target since disabled still
        # shows while it has jobs, so none are hidden.
        targets = sorted(
            set(self.settings.enabled_targets()) | set(waiting) | set(running) | set(dep_wait)
        )
        labels = ["target", "arch"]
        depth = GaugeMetricFamily(
            "armwheels_queue_depth",
            "Build jobs waiting for a builder (pending or queued), per target.",
            labels=labels,
        )
        age = GaugeMetricFamily(
            "armwheels_oldest_queued_seconds",
            "Age in seconds of the oldest waiting (pending or queued) build job, per "
            "target; 0 when none waits.",
            labels=labels,
        )
        busy = GaugeMetricFamily(
            "armwheels_builds_running",
            "Build jobs being built right now, per target.",
            labels=labels,
        )
        blocked = GaugeMetricFamily(
            "armwheels_jobs_dep_wait",
            "Build jobs waiting for a build dependency to be built first (dep-wait), per target.",
            labels=labels,
        )
        for target in targets:
            values = [target, arch_of[target]]
            depth.add_metric(values, waiting.get(target, 0))
            age.add_metric(values, _age(now, oldest.get(target)))
            busy.add_metric(values, running.get(target, 0))
            blocked.add_metric(values, dep_wait.get(target, 0))
        yield depth
        yield age
        yield busy
        yield blocked

    def _outcomes(self, session: Session) -> Iterator[Metric]:
        """Finished jobs by outcome, and failed ones by reason: one grouped query."""
        outcomes = {state.value: 0 for state in FINAL_STATES}
        reasons = {reason.value: 0 for reason in FailureReason}
        rows = session.execute(
            select(BuildJob.state, BuildJob.failure_reason, func.count())
            .where(BuildJob.state.in_(FINAL_STATES))
            .group_by(BuildJob.state, BuildJob.failure_reason)
        )
        for state, reason, count in rows:
            outcomes[state.value] += count
            if state == JobState.FAILED:
                key = reason.value if reason is not None else UNKNOWN_REASON
                reasons[key] = reasons.get(key, 0) + count
        builds = CounterMetricFamily(
            "armwheels_builds",
            "Finished build jobs by outcome (built, failed, skipped).",
            labels=["outcome"],
        )
        for outcome, count in outcomes.items():
            builds.add_metric([outcome], count)
        failures = CounterMetricFamily(
            "armwheels_build_failures",
            "Failed build jobs by the failure reason recorded for them.",
            labels=["reason"],
        )
        for reason_value, count in sorted(reasons.items()):
            failures.add_metric([reason_value], count)
        yield builds
        yield failures

    def _rejections(self, session: Session) -> Metric:
        """Uploads refused (jobs failed upload-rejected) by the check that refused them:
        one grouped query; every check has a sample (0 when none)."""
        counts = {check.value: 0 for check in Check}
        rows = session.execute(
            select(BuildJob.rejected_by, func.count())
            .where(
                BuildJob.state == JobState.FAILED,
                BuildJob.failure_reason == FailureReason.UPLOAD_REJECTED,
            )
            .group_by(BuildJob.rejected_by)
        )
        for check, count in rows:
            key = check or UNKNOWN_REASON
            counts[key] = counts.get(key, 0) + count
        rejections = CounterMetricFamily(
            "armwheels_upload_rejections",
            "Wheels refused before publication (jobs failed upload-rejected), by the check "
            "that refused them.",
            labels=["check"],
        )
        for check_value, count in sorted(counts.items()):
            rejections.add_metric([check_value], count)
        return rejections

    def _build_paths(self, session: Session) -> Metric:
        """Built and failed jobs by the path their builder took (common.states.BuildPath):
        the cross path's share, and its fallback rate (emulated-after-cross against
        cross), over the jobs on record; every path has a sample."""
        counts = {
            (path.value, state.value): 0
            for path in BuildPath
            for state in (JobState.BUILT, JobState.FAILED)
        }
        rows = session.execute(
            select(BuildJob.build_path, BuildJob.state, func.count())
            .where(
                BuildJob.state.in_((JobState.BUILT, JobState.FAILED)),
                BuildJob.build_path.is_not(None),
            )
            .group_by(BuildJob.build_path, BuildJob.state)
        )
        for path, state, count in rows:
            key = (str(path), state.value)
            counts[key] = counts.get(key, 0) + count
        family = CounterMetricFamily(
            "armwheels_build_paths",
            "Finished build jobs (built or failed) by the path their builder took: cross, "
            "emulated-after-cross (the cross build fell back), emulated, native.",
            labels=["path", "outcome"],
        )
        for (path, outcome), count in sorted(counts.items()):
            family.add_metric([path, outcome], count)
        return family

    def _durations(self, session: Session) -> Metric:
        """The build time histogram in one query: a conditional count per bucket."""
        seconds = BuildJob.build_seconds
        row = session.execute(
            select(
                *(func.count(case((seconds <= bound, BuildJob.id))) for bound in DURATION_BUCKETS),
                func.count(seconds),
                func.sum(seconds),
            ).where(BuildJob.state.in_(FINAL_STATES), seconds.is_not(None))
        ).one()
        *cumulative, total, total_seconds = row
        buckets: list[tuple[str, float]] = [
            (str(float(bound)), count)
            for bound, count in zip(DURATION_BUCKETS, cumulative, strict=True)
        ]
        buckets.append(("+Inf", total))
        return HistogramMetricFamily(
            "armwheels_build_duration_seconds",
            "How long finished build jobs took to build, in seconds.",
            buckets=buckets,
            sum_value=float(total_seconds or 0.0),
        )

    def _builders(self, session: Session, now: datetime) -> Metric:
        """Builders by state, as master/builds/liveness.py counts them."""
        counts = liveness.count_by_state(session, now, self.settings.master.builder_timeout)
        builders = GaugeMetricFamily(
            "armwheels_builders",
            "Registered builders by state: online (recent heartbeat, no job), busy (recent "
            "heartbeat, running a job), offline (no heartbeat within master.builder_timeout).",
            labels=["state"],
        )
        for state, count in counts.items():
            builders.add_metric([state], count)
        return builders

    def _feeds(self, session: Session, now: datetime) -> Iterator[Metric]:
        """Each change feed's cursor (one row per feed, a handful of rows)."""
        lag = GaugeMetricFamily(
            "armwheels_feed_lag_seconds",
            "Seconds since each upstream change feed last advanced its cursor.",
            labels=["feed"],
        )
        serial = GaugeMetricFamily(
            "armwheels_feed_serial",
            "The upstream serial each change feed has applied changes up to.",
            labels=["feed"],
        )
        rows = session.execute(
            select(FeedCursor.name, FeedCursor.serial, FeedCursor.updated_at).order_by(
                FeedCursor.name
            )
        )
        for name, cursor_serial, updated_at in rows:
            lag.add_metric([name], _age(now, updated_at))
            serial.add_metric([name], cursor_serial)
        yield lag
        yield serial

    def _index(self, session: Session) -> Iterator[Metric]:
        """The index's serial and the wheels it serves, in one query."""
        row = session.execute(
            select(
                select(func.max(IndexChange.id)).scalar_subquery(),
                select(func.count())
                .select_from(OutputFile)
                .where(OutputFile.published.is_(True))
                .scalar_subquery(),
            )
        ).one()
        index_serial, published = row
        yield GaugeMetricFamily(
            "armwheels_index_serial",
            "The index's serial: the id of the newest change to what it serves (0 if none).",
            value=index_serial or 0,
        )
        yield GaugeMetricFamily(
            "armwheels_wheels_published",
            "Wheels the index serves (built and published, not withdrawn).",
            value=published or 0,
        )

    def _pushes(self, session: Session) -> Metric:
        """Wheel uploads to push targets by target and state; configured targets always
        show every state (0 when none)."""
        counts: dict[tuple[str, str], int] = {
            (target.name, state): 0 for target in self.settings.push for state in PUSH_STATES
        }
        rows = session.execute(
            select(WheelPush.target, WheelPush.state, func.count()).group_by(
                WheelPush.target, WheelPush.state
            )
        )
        for target, state, count in rows:
            counts[(target, state)] = count
        pushes = GaugeMetricFamily(
            "armwheels_pushes",
            "Published wheels' uploads to each push target, by state (pending, pushed, failed).",
            labels=["target", "state"],
        )
        for (target, state), count in sorted(counts.items()):
            pushes.add_metric([target, state], count)
        return pushes


def render_metrics(
    factory: sessionmaker[Session], settings: Settings, now: datetime | None = None
) -> tuple[bytes, str]:
    """The farm's metrics in Prometheus' text format, and the content type to serve."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FarmCollector(factory, settings, now))
    return generate_latest(registry), CONTENT_TYPE_LATEST


def router(ctx: MasterContext) -> APIRouter:
    """GET /metrics, the Prometheus scrape."""
    app = APIRouter()

    @app.get("/metrics")
    def metrics() -> Response:
        """Prometheus scrape: the farm's state read from the database at scrape time."""
        body, content_type = render_metrics(ctx.factory, ctx.settings)
        return Response(body, media_type=content_type)

    return app

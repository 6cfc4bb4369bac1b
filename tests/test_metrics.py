"""Prometheus metrics: a known farm state read back from the rendered text format."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import prometheus_client
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from common.config import Settings
from common.db import transaction
from common.models import BuildJob, FeedCursor, IndexChange, WheelPush
from common.states import FailureReason, JobState
from master.web.metrics import render_metrics
from tests.seed import add_builder, add_release, publish_wheel

NOW = datetime(2030, 6, 1, 12, 0, 0, tzinfo=UTC)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _parse(body: bytes) -> tuple[Samples, dict[str, str]]:
    """Every sample by (name, labels), and every family's type by name."""
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(body.decode()):
        types[family.name] = family.type
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = sample.value
    return samples, types


def _get(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def _with_prefix(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: value for (sample, labels), value in samples.items() if sample == name}


def _set(
    job: BuildJob,
    state: JobState,
    *,
    created: datetime | None = None,
    seconds: float | None = None,
    reason: FailureReason | None = None,
) -> None:
    job.state = state
    if created is not None:
        job.created_at = created
    job.build_seconds = seconds
    job.failure_reason = reason
    if state in (JobState.BUILT, JobState.FAILED, JobState.SKIPPED):
        job.finished_at = NOW - timedelta(minutes=1)


def _seed(session: Session, settings: Settings) -> None:
    """Six releases, each with one aarch64 and one armv7l job, put in known states."""
    jobs: dict[tuple[str, str], BuildJob] = {}
    for version in ("1", "2", "3", "4", "5", "6"):
        _, _, created = add_release(session, settings, project="demo", version=version)
        for job in created:
            jobs[(job.arch, version)] = job
    assert len(jobs) == 12

    # aarch64: three waiting (oldest 600 s), one building, two built.
    _set(jobs[("aarch64", "1")], JobState.PENDING, created=NOW - timedelta(seconds=600))
    _set(jobs[("aarch64", "2")], JobState.QUEUED, created=NOW - timedelta(seconds=300))
    # Waiting again after a transient failure: neither a failure nor a finished build.
    _set(
        jobs[("aarch64", "3")],
        JobState.PENDING,
        created=NOW - timedelta(seconds=60),
        seconds=50.0,
        reason=FailureReason.NETWORK,
    )
    _set(jobs[("aarch64", "4")], JobState.BUILDING, created=NOW - timedelta(hours=2))
    _set(jobs[("aarch64", "5")], JobState.BUILT, seconds=45.0)
    _set(jobs[("aarch64", "6")], JobState.BUILT, seconds=100.0)
    # armv7l: nothing waiting, one building, four failed, one skipped.
    _set(jobs[("armv7l", "1")], JobState.BUILDING, created=NOW - timedelta(hours=3))
    _set(jobs[("armv7l", "2")], JobState.FAILED, seconds=700.0, reason=FailureReason.COMPILE_ERROR)
    _set(jobs[("armv7l", "3")], JobState.FAILED, seconds=1300.0, reason=FailureReason.COMPILE_ERROR)
    _set(jobs[("armv7l", "4")], JobState.FAILED, seconds=7200.0, reason=FailureReason.TIMEOUT)
    _set(jobs[("armv7l", "5")], JobState.SKIPPED)
    _set(jobs[("armv7l", "6")], JobState.FAILED, seconds=9000.0)  # no reason recorded

    # Two published wheels (their releases' jobs: built in 30 s / skipped), one withdrawn.
    kept = publish_wheel(session, settings, project="pub", version="1.0")
    gone = publish_wheel(session, settings, project="pub", version="2.0")
    for output in (kept, gone):
        for job in session.scalars(
            select(BuildJob).where(BuildJob.release_id == output.release_id)
        ):
            if job.arch == "aarch64":
                _set(job, JobState.BUILT, seconds=30.0)
            else:
                _set(job, JobState.SKIPPED)
    session.flush()
    gone.published = False
    session.add_all(
        [
            WheelPush(output=kept, target="mirror", state="pushed", attempts=1),
            WheelPush(output=gone, target="mirror", state="failed", attempts=5),
        ]
    )

    add_builder(session, "idle", last_seen=NOW - timedelta(seconds=10))
    busy = add_builder(session, "busy", arch="armv7l", last_seen=NOW - timedelta(seconds=20))
    busy.current_job_id = jobs[("armv7l", "1")].id
    add_builder(session, "gone", last_seen=NOW - timedelta(hours=1))
    stale = add_builder(session, "stale", last_seen=NOW - timedelta(seconds=301))
    stale.current_job_id = jobs[("aarch64", "4")].id  # still holds a job, but silent

    session.add(
        FeedCursor(name="pypi-xmlrpc", serial=12345, updated_at=NOW - timedelta(seconds=90))
    )


def test_metrics_report_the_seeded_farm(settings: Settings, factory: sessionmaker[Session]) -> None:
    settings.targets["armv7l"].enabled = True
    with transaction(factory) as session:
        _seed(session, settings)
    with factory() as session:
        index_serial = session.scalar(select(func.max(IndexChange.id)))
    assert index_serial is not None and index_serial > 0

    body, content_type = render_metrics(factory, settings, now=NOW)

    assert content_type == CONTENT_TYPE_LATEST
    assert content_type.startswith("text/plain")
    samples, types = _parse(body)
    assert types["armwheels_queue_depth"] == "gauge"
    assert types["armwheels_builds"] == "counter"
    assert types["armwheels_build_failures"] == "counter"
    assert types["armwheels_build_duration_seconds"] == "histogram"

    # Waiting and running per target; armv7l has nothing waiting and still has samples.
    assert _with_prefix(samples, "armwheels_queue_depth") == {
        frozenset({("target", "aarch64"), ("arch", "aarch64")}): 3,
        frozenset({("target", "armv7l"), ("arch", "armv7l")}): 0,
    }
    assert _get(samples, "armwheels_oldest_queued_seconds", target="aarch64", arch="aarch64") == 600
    assert _get(samples, "armwheels_oldest_queued_seconds", target="armv7l", arch="armv7l") == 0
    assert _get(samples, "armwheels_builds_running", target="aarch64", arch="aarch64") == 1
    assert _get(samples, "armwheels_builds_running", target="armv7l", arch="armv7l") == 1

    # Finished jobs by outcome, failures by reason (every reason has a sample).
    assert _with_prefix(samples, "armwheels_builds_total") == {
        frozenset({("outcome", "built")}): 4,
        frozenset({("outcome", "failed")}): 4,
        frozenset({("outcome", "skipped")}): 3,
    }
    failures = _with_prefix(samples, "armwheels_build_failures_total")
    expected_failures = {frozenset({("reason", reason.value)}): 0.0 for reason in FailureReason}
    expected_failures[frozenset({("reason", "compile-error")})] = 2
    expected_failures[frozenset({("reason", "timeout")})] = 1
    expected_failures[frozenset({("reason", "unknown")})] = 1
    assert failures == expected_failures

    # Finished builds' seconds: 30, 30, 45, 100, 700, 1300, 7200, 9000 (bounds inclusive).
    buckets = {
        dict(labels)["le"]: value
        for labels, value in _with_prefix(
            samples, "armwheels_build_duration_seconds_bucket"
        ).items()
    }
    assert buckets == {
        "30.0": 2,
        "60.0": 3,
        "120.0": 4,
        "300.0": 4,
        "600.0": 4,
        "1200.0": 5,
        "1800.0": 6,
        "3600.0": 6,
        "7200.0": 7,
        "+Inf": 8,
    }
    assert _get(samples, "armwheels_build_duration_seconds_count") == 8
    assert _get(samples, "armwheels_build_duration_seconds_sum") == 18405

    # Builders: heartbeat within master.builder_timeout (300 s) decides online/offline.
    assert settings.master.builder_timeout == 300
    assert _with_prefix(samples, "armwheels_builders") == {
        frozenset({("state", "online")}): 1,
        frozenset({("state", "busy")}): 1,
        frozenset({("state", "offline")}): 2,
    }

    assert _with_prefix(samples, "armwheels_feed_lag_seconds") == {
        frozenset({("feed", "pypi-xmlrpc")}): 90
    }
    assert _get(samples, "armwheels_feed_serial", feed="pypi-xmlrpc") == 12345

    assert _get(samples, "armwheels_index_serial") == index_serial
    assert _get(samples, "armwheels_wheels_published") == 1

    assert _with_prefix(samples, "armwheels_pushes") == {
        frozenset({("target", "mirror"), ("state", "pushed")}): 1,
        frozenset({("target", "mirror"), ("state", "failed")}): 1,
    }


def test_empty_database_renders_zeros(settings: Settings, factory: sessionmaker[Session]) -> None:
    body, content_type = render_metrics(factory, settings, now=NOW)

    assert content_type == CONTENT_TYPE_LATEST
    samples, types = _parse(body)
    assert types["armwheels_build_duration_seconds"] == "histogram"
    # Only aarch64 is enabled by default: it has its zero samples.
    for name in (
        "armwheels_queue_depth",
        "armwheels_oldest_queued_seconds",
        "armwheels_builds_running",
    ):
        assert _with_prefix(samples, name) == {
            frozenset({("target", "aarch64"), ("arch", "aarch64")}): 0
        }
    assert set(_with_prefix(samples, "armwheels_builds_total").values()) == {0}
    assert len(_with_prefix(samples, "armwheels_builds_total")) == 3
    assert set(_with_prefix(samples, "armwheels_build_failures_total").values()) == {0}
    buckets = _with_prefix(samples, "armwheels_build_duration_seconds_bucket")
    assert len(buckets) == 10
    assert set(buckets.values()) == {0}
    assert _get(samples, "armwheels_build_duration_seconds_count") == 0
    assert _get(samples, "armwheels_build_duration_seconds_sum") == 0
    assert set(_with_prefix(samples, "armwheels_builders").values()) == {0}
    assert len(_with_prefix(samples, "armwheels_builders")) == 3
    assert _get(samples, "armwheels_index_serial") == 0
    assert _get(samples, "armwheels_wheels_published") == 0
    assert _with_prefix(samples, "armwheels_feed_lag_seconds") == {}
    assert _with_prefix(samples, "armwheels_pushes") == {}


def test_metrics_stay_out_of_the_global_registry(
    settings: Settings, factory: sessionmaker[Session]
) -> None:
    render_metrics(factory, settings)  # now defaults to the current time
    global_text = prometheus_client.generate_latest(prometheus_client.REGISTRY).decode()
    assert "armwheels_" not in global_text


def test_the_master_serves_metrics(settings: Settings, factory: sessionmaker[Session]) -> None:
    from fastapi.testclient import TestClient

    from master.web.app import create_app

    with TestClient(create_app(settings, factory)) as client:
        answer = client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    families = {family.name for family in text_string_to_metric_families(answer.text)}
    assert {"armwheels_queue_depth", "armwheels_build_duration_seconds"} <= families

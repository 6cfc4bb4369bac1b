"""One rule for "builder online", on SQLite and PostgreSQL: a builder heard from just
inside master.builder_timeout is online, one just outside it offline, in the status, the
dashboard, the metrics, the dispatcher and the reconciler alike."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from common.config import Settings
from common.db import transaction
from common.models import Builder, BuildJob
from common.states import JobState
from master.builds import liveness
from master.builds.reconciler import reconcile
from master.builds.scheduler import served_targets
from master.web import status
from master.web.app import create_app
from master.web.metrics import render_metrics
from tests.seed import add_builder, add_release
from tests.test_dashboard import Page

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
# Not the default, nor the five minutes the status once had written in.
TIMEOUT = 120.0
# Wide enough that the test's own run time cannot carry a builder across the line.
MARGIN = timedelta(seconds=30)
TICK = timedelta(microseconds=1)  # both databases keep microseconds


def _metric_builders(
    factory: sessionmaker[Session], settings: Settings, now: datetime | None = None
) -> dict[str, float]:
    body, _ = render_metrics(factory, settings, now)
    [family] = [
        f for f in text_string_to_metric_families(body.decode()) if f.name == "armwheels_builders"
    ]
    return {sample.labels["state"]: sample.value for sample in family.samples}


def _building(session: Session, settings: Settings, builder: Builder) -> int:
    _, _, [job] = add_release(session, settings, project=f"job-of-{builder.name}")
    job.state, job.builder_id, job.attempts = JobState.BUILDING, builder.id, 1
    builder.current_job_id = job.id
    session.flush()
    return job.id


def test_the_timeout_itself_is_offline(settings: Settings, factory: sessionmaker[Session]) -> None:
    """At a fixed moment: a builder silent for exactly the timeout is offline, one a
    microsecond younger online; the row test, the SQL test, the metrics and the
    reconciler draw the line at the same place."""
    settings.master.builder_timeout = TIMEOUT
    edge = NOW - timedelta(seconds=TIMEOUT)
    seen = {"younger": edge + TICK, "exactly": edge, "older": edge - TICK}
    jobs: dict[str, int] = {}
    with transaction(factory) as session:
        for name, last_seen in seen.items():
            jobs[name] = _building(
                session, settings, add_builder(session, name, last_seen=last_seen)
            )
    with factory() as session:
        rows = session.scalars(select(Builder)).all()
        by_row = {b.name for b in rows if liveness.is_online(b, NOW, TIMEOUT)}
        by_sql = set(session.scalars(select(Builder.name).where(liveness.online(NOW, TIMEOUT))))
        states = {b.name: liveness.state(b, NOW, TIMEOUT) for b in rows}
    assert by_row == by_sql == {"younger"}
    assert states == {"younger": "busy", "exactly": "offline", "older": "offline"}
    assert _metric_builders(factory, settings, now=NOW) == {"online": 0, "busy": 1, "offline": 2}
    with transaction(factory) as session:
        assert reconcile(session, settings, NOW).handed_back == 2
    with factory() as session:
        left = {name: session.get_one(BuildJob, job).state for name, job in jobs.items()}
        assert left == {
            "younger": JobState.BUILDING,
            "exactly": JobState.PENDING,
            "older": JobState.PENDING,
        }


def test_every_view_of_the_farm_agrees(settings: Settings, factory: sessionmaker[Session]) -> None:
    """Now: one idle and one busy builder just inside the timeout, one busy builder just
    outside it, each with its own Python so the dispatcher's answer tells them apart."""
    settings.master.builder_timeout = TIMEOUT
    settings.master.overview_cache = 0
    now = datetime.now(UTC)
    inside, outside = (
        now - timedelta(seconds=TIMEOUT) + MARGIN,
        now - timedelta(seconds=TIMEOUT) - MARGIN,
    )
    with transaction(factory) as session:
        add_builder(session, "idle", python_tags=("cp311",), last_seen=inside)
        busy = add_builder(session, "busy", python_tags=("cp312",), last_seen=inside)
        gone = add_builder(session, "gone", python_tags=("cp313",), last_seen=outside)
        busy_job = _building(session, settings, busy)
        gone_job = _building(session, settings, gone)
    expected = {"idle": "online", "busy": "busy", "gone": "offline"}
    counts = {"online": 1, "busy": 1, "offline": 1}

    with factory() as session:
        assert {
            b["name"]: b["state"] for b in status.collect(session, TIMEOUT)["builders"]
        } == expected
        assert served_targets(session, TIMEOUT) == {("aarch64", "cp311"), ("aarch64", "cp312")}
    assert _metric_builders(factory, settings) == counts

    with TestClient(create_app(settings, factory)) as client:
        api = client.get("/api/v1/status").json()["builders"]
        assert {b["name"]: b["state"] for b in api} == expected
        page = Page(client.get("/builders").text)
        rows = page.by_id("builders").find_all("tr")[1:]
        assert {
            tr.attrs["data-builder"]: tr.find("td", class_="builder-state").text for tr in rows
        } == expected
        summary = Page(client.get("/").text).by_id("builders-summary")
        assert {state: int(summary.find("td", class_=state).text) for state in counts} == counts

    with transaction(factory) as session:
        assert reconcile(session, settings).handed_back == 1
    with factory() as session:
        assert session.get_one(BuildJob, busy_job).state == JobState.BUILDING
        assert session.get_one(BuildJob, gone_job).state == JobState.PENDING

"""Lost jobs come back: silent builders, lost messages, and the attempt cap."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from common.config import Settings
from common.db import transaction
from common.models import Builder, BuildJob, Token
from common.states import FailureReason, JobState, TokenRole
from master.builds.live_logs import LiveLogs, claim_key, live_caps
from master.builds.reconciler import reconcile
from master.storage import Storage
from tests.seed import add_release

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def _builder(session: Session, name: str, last_seen: datetime) -> Builder:
    token = Token(name=name, role=TokenRole.BUILDER, token_hash=name.ljust(64, "0"))
    session.add(token)
    session.flush()
    builder = Builder(
        name=name,
        token_id=token.id,
        target="aarch64",
        arch="aarch64",
        backend="docker",
        last_seen_at=last_seen,
    )
    session.add(builder)
    session.flush()
    return builder


def _building(job: BuildJob, builder: Builder, attempts: int) -> None:
    job.state, job.builder_id, job.attempts = JobState.BUILDING, builder.id, attempts
    builder.current_job_id = job.id


def test_silent_builder_hands_its_job_back(
    settings: Settings, factory: sessionmaker[Session]
) -> None:
    with transaction(factory) as session:
        _, _, [quiet_job] = add_release(session, settings, project="quiet")
        _, _, [busy_job] = add_release(session, settings, project="busy")
        quiet = _builder(session, "quiet", NOW - timedelta(minutes=30))
        busy = _builder(session, "busy", NOW - timedelta(seconds=20))
        _building(quiet_job, quiet, attempts=1)
        _building(busy_job, busy, attempts=1)
    with transaction(factory) as session:
        outcome = reconcile(session, settings, NOW)
    assert (outcome.handed_back, outcome.requeued, outcome.lost) == (1, 0, 0)
    with factory() as session:
        handed = session.get(BuildJob, quiet_job.id)
        kept = session.get(BuildJob, busy_job.id)
        assert handed is not None and kept is not None
        assert handed.state == JobState.PENDING and handed.builder_id is None
        assert kept.state == JobState.BUILDING
        silent = session.get(Builder, quiet.id)
        assert silent is not None and silent.current_job_id is None
    with transaction(factory) as session:
        assert reconcile(session, settings, NOW).handed_back == 0  # nothing twice


def test_attempt_cap_fails_the_job_as_lost(
    settings: Settings, factory: sessionmaker[Session]
) -> None:
    settings.master.max_attempts = 2
    with transaction(factory) as session:
        _, _, [job] = add_release(session, settings)
        gone = _builder(session, "gone", NOW - timedelta(hours=2))
        _building(job, gone, attempts=2)
    with transaction(factory) as session:
        assert reconcile(session, settings, NOW).lost == 1
    with factory() as session:
        failed = session.get(BuildJob, job.id)
        assert failed is not None
        assert failed.state == JobState.FAILED and failed.failure_reason == FailureReason.LOST
        assert "2 attempts" in (failed.summary or "")


def test_queued_too_long_is_sent_again(settings: Settings, factory: sessionmaker[Session]) -> None:
    settings.master.requeue_after = 3600
    with transaction(factory) as session:
        _, _, [old] = add_release(session, settings, project="old")
        _, _, [new] = add_release(session, settings, project="new")
        old.state, old.queued_at = JobState.QUEUED, NOW - timedelta(hours=2)
        new.state, new.queued_at = JobState.QUEUED, NOW - timedelta(minutes=5)
    with transaction(factory) as session:
        assert reconcile(session, settings, NOW).requeued == 1
    with factory() as session:
        assert session.get(BuildJob, old.id).state == JobState.PENDING  # type: ignore[union-attr]
        assert session.get(BuildJob, new.id).state == JobState.QUEUED  # type: ignore[union-attr]


def test_lost_job_keeps_what_its_builder_streamed(
    settings: Settings, factory: sessionmaker[Session]
) -> None:
    """The live log is the only record of a build whose builder vanished: it becomes the
    job's final log (capped head and tail) and the live copy goes."""
    settings.master.max_attempts = 1
    storage = Storage(settings.master.data_dir)
    live = LiveLogs(storage, *live_caps(settings.master.max_log_bytes))
    started = NOW - timedelta(hours=1)
    with transaction(factory) as session:
        _, _, [job] = add_release(session, settings, project="vanished")
        gone = _builder(session, "vanished", NOW - timedelta(hours=2))
        _building(job, gone, attempts=1)
        job.started_at = started
    streamed = b"collecting msgpack\nbuilding extension\ngcc -O2 -c _cmsgpack.c\n"
    live.append(job.id, 0, streamed, lambda: claim_key(started))
    with transaction(factory) as session:
        assert reconcile(session, settings, NOW, live=live).lost == 1
    with factory() as session:
        failed = session.get(BuildJob, job.id)
        assert failed is not None and failed.log_path is not None
        assert storage.read_log(Path(failed.log_path)) == streamed
        assert failed.log_size == len(streamed)
    assert live.read(job.id, claim_key(started)) is None
    assert not (live.root / str(job.id)).exists()

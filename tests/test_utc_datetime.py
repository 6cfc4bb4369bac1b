"""Every datetime the model layer reads back is aware and in UTC, on SQLite (which keeps
no zone) and on PostgreSQL (which answers in the session's zone), whatever zone it was
written in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from common.config import Settings
from common.db import transaction
from common.models import Builder, BuildJob
from tests.seed import add_builder, add_release

MOMENT = datetime(2030, 6, 1, 12, 0, 0, 123456, tzinfo=UTC)
TOKYO = timezone(timedelta(hours=9))


def _in_utc(value: datetime | None) -> datetime:
    assert value is not None and value.tzinfo is UTC, repr(value)
    return value


def test_datetimes_come_back_aware_in_utc(
    settings: Settings, factory: sessionmaker[Session]
) -> None:
    with transaction(factory) as session:
        add_builder(session, "tokyo", last_seen=MOMENT.astimezone(TOKYO))
        # A naive value is taken to be UTC, as everything the farm writes is.
        add_builder(session, "naive", last_seen=MOMENT.replace(tzinfo=None) + timedelta(hours=1))
        _, _, [job] = add_release(session, settings)
        job.started_at = MOMENT
    with factory() as session:
        if session.get_bind().dialect.name == "postgresql":
            session.execute(text("SET TIME ZONE 'Asia/Tokyo'"))
        seen = {b.name: _in_utc(b.last_seen_at) for b in session.scalars(select(Builder))}
        assert seen == {"tokyo": MOMENT, "naive": MOMENT + timedelta(hours=1)}
        # Aggregates over a column and comparisons with an aware bound value, too.
        assert _in_utc(session.scalar(select(func.min(Builder.last_seen_at)))) == MOMENT
        later = select(Builder.name).where(Builder.last_seen_at > MOMENT.astimezone(TOKYO))
        assert list(session.scalars(later)) == ["naive"]
        assert _in_utc(session.scalar(select(BuildJob.started_at))) == MOMENT
        assert _in_utc(session.scalar(select(BuildJob.created_at))) > MOMENT - timedelta(days=3650)

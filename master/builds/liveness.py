"""When a builder counts as online: one rule for the status, the dashboard, the metrics,
the dispatcher and the reconciler, so that none of them calls a builder online that another
calls gone.

A builder is online while its last heartbeat (or registration, claim) is younger than
master.builder_timeout; one silent for that long or longer has died, and the reconciler
hands its job back. `is_online` reads a loaded row, `online` is the same test as a SQL
condition for queries that count or select builders.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import ColumnElement, case, func, select
from sqlalchemy.orm import Session

from common.models import Builder

BuilderState = Literal["online", "busy", "offline"]
# Online without a job, online with one, not heard from within the timeout.
BUILDER_STATES: tuple[BuilderState, ...] = ("online", "busy", "offline")


def _silent_since(now: datetime, timeout: float) -> datetime:
    """A builder last seen at or before this moment is offline."""
    return now - timedelta(seconds=timeout)


def is_online(builder: Builder, now: datetime, timeout: float) -> bool:
    return builder.last_seen_at > _silent_since(now, timeout)


def online(now: datetime, timeout: float) -> ColumnElement[bool]:
    """`is_online` as a condition on the builders table."""
    return Builder.last_seen_at > _silent_since(now, timeout)


def state(builder: Builder, now: datetime, timeout: float) -> BuilderState:
    if not is_online(builder, now, timeout):
        return "offline"
    return "busy" if builder.current_job_id is not None else "online"


def count_by_state(session: Session, now: datetime, timeout: float) -> dict[BuilderState, int]:
    """Registered builders in each state, counted in one query."""
    recent = online(now, timeout)
    has_job = Builder.current_job_id.is_not(None)
    row = session.execute(
        select(
            func.count(case((recent & ~has_job, Builder.id))),
            func.count(case((recent & has_job, Builder.id))),
            func.count(case((~recent, Builder.id))),
        )
    ).one()
    return dict(zip(BUILDER_STATES, row, strict=True))

"""The audit log: every maintainer and operator action, with who asked and when.

Recorded in the same transaction as the action itself, so the log never claims an
action that did not happen nor misses one that did. Rebuild rate limits count it too.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from common.models import AuditEvent

log = logging.getLogger(__name__)


def record(
    session: Session,
    actor: str,
    role: str,
    action: str,
    subject: str,
    **detail: Any,
) -> AuditEvent:
    event = AuditEvent(
        at=datetime.now(UTC), actor=actor, role=role, action=action, subject=subject, detail=detail
    )
    session.add(event)
    log.info(
        "audit",
        extra={"actor": actor, "role": role, "action": action, "subject": subject},
    )
    return event


def count_since(session: Session, actor: str, action: str, since: datetime) -> int:
    return (
        session.scalar(
            select(func.count()).where(
                AuditEvent.actor == actor, AuditEvent.action == action, AuditEvent.at >= since
            )
        )
        or 0
    )


def oldest_since(session: Session, actor: str, action: str, since: datetime) -> datetime | None:
    return session.scalar(
        select(func.min(AuditEvent.at)).where(
            AuditEvent.actor == actor, AuditEvent.action == action, AuditEvent.at >= since
        )
    )


def recent(session: Session, limit: int = 50) -> list[AuditEvent]:
    return list(session.scalars(select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)))

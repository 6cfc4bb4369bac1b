"""Records every change to what the index serves, whichever code made it.

Wheels are published by the upload path, withdrawn by operators, and releases are
yanked, removed and restored by three different feeds. Rather than trusting each of
them to remember the index, every session notices such changes as it flushes and, when
it commits, writes one `IndexChange` per project and change. Their ids are the index's
serial: pages show them as `_last-serial`, and the static index replays them to rewrite
only the projects that changed.

Serials must become visible in order, or a reader that saw serial N could later meet a
smaller one committed after it: on PostgreSQL the commit that writes changes takes a
transaction-scoped advisory lock first, as late as possible (SQLite serialises writers
anyway).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event, inspect, select, text
from sqlalchemy.orm import Session, sessionmaker

from common.models import IndexChange, OutputFile, Release

PENDING_KEY = "armwheels.index_changes"
# pg_advisory_xact_lock key: "armwheels index serial".
SERIAL_LOCK = 0x61776978


def _changed(obj: Any, attribute: str) -> bool:
    history = inspect(obj).attrs[attribute].history
    return bool(history.added or history.deleted) and list(history.added) != list(history.deleted)


def _release_action(release: Release) -> str | None:
    if _changed(release, "removed_at"):
        return "remove-release" if release.removed_at is not None else "restore-release"
    if _changed(release, "yanked"):
        return "yank" if release.yanked else "unyank"
    if _changed(release, "yanked_reason"):
        return "yank-reason"
    return None


def _serves_files(session: Session, release: Release) -> bool:
    if release.id is None:
        return False
    with session.no_autoflush:
        found = session.scalar(
            select(OutputFile.id)
            .where(OutputFile.release_id == release.id, OutputFile.published.is_(True))
            .limit(1)
        )
    return found is not None


def _pending(session: Session) -> list[tuple[int, str, str | None]]:
    pending: list[tuple[int, str, str | None]] = session.info.setdefault(PENDING_KEY, [])
    return pending


def _before_flush(session: Session, _context: Any, _instances: Any) -> None:
    for obj in session.new:
        if isinstance(obj, OutputFile) and obj.published:
            _pending(session).append((obj.release.project_id, "publish", obj.filename))
    for obj in session.dirty:
        if isinstance(obj, OutputFile) and _changed(obj, "published"):
            action = "publish" if obj.published else "withdraw"
            _pending(session).append((obj.release.project_id, action, obj.filename))
        elif isinstance(obj, Release):
            release_action = _release_action(obj)
            if release_action is not None and _serves_files(session, obj):
                _pending(session).append((obj.project_id, release_action, None))


def _before_commit(session: Session) -> None:
    session.flush()  # commit flushes after this hook: collect the last changes first
    pending = session.info.pop(PENDING_KEY, None)
    if not pending:
        return
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SERIAL_LOCK})
    for project_id, action, filename in dict.fromkeys(pending):
        session.add(IndexChange(project_id=project_id, action=action, filename=filename))
    session.flush()


def _forget(session: Session, *_args: Any) -> None:
    session.info.pop(PENDING_KEY, None)


def track_index_changes(factory: sessionmaker[Session]) -> None:
    """Make every session from `factory` record the index changes it commits."""
    event.listen(factory, "before_flush", _before_flush)
    event.listen(factory, "before_commit", _before_commit)
    event.listen(factory, "after_rollback", _forget)

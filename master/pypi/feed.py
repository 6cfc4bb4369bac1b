"""Applies PyPI's changelog to the database, never missing or repeating a change.

Events are applied in serial order, in batches; each batch's transaction also moves the
feed's cursor to the batch's last serial, so after a crash the feed resumes exactly
after the last change it recorded. Applying an event only records facts (a release
exists, a file was added or removed, a release was yanked or removed) and marks the
release for a JSON API refresh; builds are planned by the refresh, from what PyPI
serves at that time.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session, sessionmaker

from common.config import Settings
from common.db import transaction
from common.models import FeedActionCount, FeedCursor, Project, Release
from common.states import SkipReason
from master.builds.jobs import skip_releases
from master.pypi.changelog import ChangelogClient, ChangelogPage
from master.pypi.journal import ACTING_KINDS, ActionKind, JournalEvent
from master.pypi.releases import mark_releases_removed, restore_release, utc_from_timestamp

log = logging.getLogger(__name__)

CHANGELOG_FEED = "pypi-changelog"
# Events per transaction (and cursor update): large enough to amortise each flush.
BATCH_EVENTS = 5000
# Large enough that a restart after hours of downtime catches up in one round.
MAX_PAGES_PER_ROUND = 40
_CHUNK = 1000
T = TypeVar("T")


def _chunks(items: list[T], size: int = _CHUNK) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass
class FeedOutcome:
    events: int = 0
    malformed: int = 0
    pages: int = 0
    serial: int | None = None
    kinds: Counter[str] = field(default_factory=Counter)


def read_cursor(session: Session, feed: str = CHANGELOG_FEED) -> int | None:
    cursor = session.get(FeedCursor, feed)
    return cursor.serial if cursor is not None else None


def _write_cursor(session: Session, feed: str, serial: int) -> None:
    cursor = session.get(FeedCursor, feed)
    if cursor is None:
        session.add(FeedCursor(name=feed, serial=serial))
    elif serial < cursor.serial:
        raise RuntimeError(f"feed {feed}: cursor would move back from {cursor.serial} to {serial}")
    else:
        cursor.serial = serial


def _count(session: Session, feed: str, kinds: Counter[str]) -> None:
    existing = {
        row.kind: row
        for row in session.scalars(
            select(FeedActionCount).where(
                FeedActionCount.feed == feed, FeedActionCount.kind.in_(list(kinds))
            )
        )
    }
    for kind, count in kinds.items():
        row = existing.get(kind)
        if row is None:
            session.add(FeedActionCount(feed=feed, kind=kind, count=count))
        else:
            row.count += count


class _Batch:
    """The rows one batch of events touches, loaded in a few queries."""

    def __init__(self, session: Session, events: list[JournalEvent]) -> None:
        self.session = session
        names = sorted({e.project for e in events})
        self.projects: dict[str, Project] = {}
        for chunk in _chunks(names):
            for project in session.scalars(select(Project).where(Project.name.in_(chunk))):
                self.projects[project.name] = project
        self.releases: dict[tuple[str, str], Release] = {}
        keys = sorted(
            {
                (self.projects[e.project].id, e.version)
                for e in events
                if e.version is not None and e.project in self.projects
            }
        )
        names_by_id = {p.id: p.name for p in self.projects.values()}
        for key_chunk in _chunks(keys):
            query = select(Release).where(
                tuple_(Release.project_id, Release.version).in_(key_chunk)
            )
            for release in session.scalars(query):
                self.releases[(names_by_id[release.project_id], release.version)] = release

        # Releases whose waiting jobs may need ending, settled once at the end of the batch
        # from their final state (a yank and an unyank in one batch cancel out).
        self.to_settle: list[Release] = []

    def releases_of(self, project: Project) -> list[Release]:
        """The project's releases in the database and those this batch created."""
        stored = (
            list(self.session.scalars(select(Release).where(Release.project_id == project.id)))
            if project.id is not None
            else []
        )
        pending = [r for (name, _), r in self.releases.items() if name == project.name]
        return list({id(r): r for r in [*stored, *pending]}.values())

    def settle(self) -> None:
        removed = [r.id for r in self.to_settle if r.id is not None and r.removed_at is not None]
        yanked = [
            r.id for r in self.to_settle if r.id is not None and r.removed_at is None and r.yanked
        ]
        skip_releases(self.session, sorted(set(removed)), SkipReason.REMOVED_UPSTREAM)
        skip_releases(self.session, sorted(set(yanked)), SkipReason.YANKED_UPSTREAM)

    def project(self, event: JournalEvent, create: bool) -> Project | None:
        project = self.projects.get(event.project)
        if project is None and create:
            project = Project(name=event.project, display_name=event.display_name)
            self.session.add(project)
            self.projects[event.project] = project
        return project

    def release(self, event: JournalEvent, create: bool) -> Release | None:
        assert event.version is not None
        key = (event.project, event.version)
        release = self.releases.get(key)
        if release is None and create:
            project = self.project(event, create=True)
            assert project is not None
            release = Release(project=project, version=event.version, upstream_files=[])
            self.session.add(release)
            self.releases[key] = release
        return release


def apply_events(session: Session, events: list[JournalEvent], settings: Settings) -> Counter[str]:
    """Record what a batch of changelog events changed; returns counts by kind."""
    watched = settings.upstream.projects
    kinds: Counter[str] = Counter()
    relevant: list[JournalEvent] = []
    for event in events:
        if watched != "all" and event.project not in watched:
            kinds["unwatched"] += 1
        elif event.kind in ACTING_KINDS:
            kinds[event.kind.value] += 1
            relevant.append(event)
        else:
            kinds[f"ignored:{event.kind.value}"] += 1
    if not relevant:
        return kinds
    batch = _Batch(session, relevant)
    with session.no_autoflush:
        for event in relevant:
            _apply(batch, event)
    session.flush()
    batch.settle()
    return kinds


def _apply(batch: _Batch, event: JournalEvent) -> None:
    kind = event.kind
    when = utc_from_timestamp(event.timestamp)
    if kind is ActionKind.CREATE_PROJECT:
        project = batch.project(event, create=False)
        if project is not None:
            project.removed_at = None
            project.upstream_serial = event.serial
        return
    if kind is ActionKind.REMOVE_PROJECT:
        project = batch.project(event, create=False)
        if project is None:
            return
        releases = batch.releases_of(project)
        mark_releases_removed(batch.session, releases, when, settle=False)
        batch.to_settle.extend(releases)
        project.removed_at = when
        project.upstream_serial = event.serial
        return
    creates = kind in (
        ActionKind.NEW_RELEASE,
        ActionKind.ADD_SDIST,
        ActionKind.ADD_WHEEL,
        ActionKind.ADD_OTHER_FILE,
    )
    release = batch.release(event, create=creates)
    if release is None:
        # A change to a release the farm never recorded: nothing of ours depends on it.
        return
    release.project.upstream_serial = event.serial
    if creates:
        restore_release(release)
        if event.filename and event.filename not in release.upstream_files:
            release.upstream_files = sorted([*release.upstream_files, event.filename])
        release.refresh_needed = True
    elif kind is ActionKind.REMOVE_FILE:
        if event.filename in release.upstream_files:
            release.upstream_files = [f for f in release.upstream_files if f != event.filename]
        if release.removed_at is None:
            release.refresh_needed = True
    elif kind is ActionKind.REMOVE_RELEASE:
        mark_releases_removed(batch.session, [release], when, settle=False)
        batch.to_settle.append(release)
    elif kind is ActionKind.YANK_RELEASE:
        release.yanked = True
        batch.to_settle.append(release)
        if release.removed_at is None:
            release.refresh_needed = True  # the JSON API gives the reason
    elif kind is ActionKind.UNYANK_RELEASE:
        release.yanked = False
        release.yanked_reason = None
        if release.skip_reason == SkipReason.YANKED_UPSTREAM:
            release.skip_reason = None
        if release.removed_at is None:
            release.refresh_needed = True


def start_cursor(
    factory: sessionmaker[Session], client: ChangelogClient, settings: Settings
) -> int:
    """The feed's cursor, created on first use at the configured start."""
    with factory() as session:
        serial = read_cursor(session)
    if serial is not None:
        return serial
    start = settings.upstream.changelog_start
    if start is None:
        start = client.last_serial()
    with transaction(factory) as session:
        if read_cursor(session) is None:
            _write_cursor(session, CHANGELOG_FEED, start)
            log.info("changelog cursor created", extra={"feed": CHANGELOG_FEED, "serial": start})
    with factory() as session:
        serial = read_cursor(session)
    assert serial is not None
    return serial


def follow_changelog(
    factory: sessionmaker[Session],
    client: ChangelogClient,
    settings: Settings,
    max_pages: int = MAX_PAGES_PER_ROUND,
) -> FeedOutcome:
    """Apply every change after the cursor, page by page, until caught up (or max_pages)."""
    outcome = FeedOutcome()
    serial = start_cursor(factory, client, settings)
    outcome.serial = serial
    # The next page is fetched while this one is applied: the network and the database
    # work side by side. A page fetched but not applied is simply asked for again.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="changelog-fetch") as pool:
        upcoming: Future[ChangelogPage] = pool.submit(client.since, serial)
        while outcome.pages < max_pages:
            page = upcoming.result()
            outcome.pages += 1
            outcome.malformed += page.malformed
            if page.last_serial is None:
                break
            if outcome.pages < max_pages:
                upcoming = pool.submit(client.since, page.last_serial)
            _apply_page(factory, settings, page, outcome)
            serial = page.last_serial
            outcome.serial = serial
    return outcome


def _apply_page(
    factory: sessionmaker[Session], settings: Settings, page: ChangelogPage, outcome: FeedOutcome
) -> None:
    assert page.last_serial is not None
    for batch in _chunks(page.events, BATCH_EVENTS):
        with transaction(factory) as session:
            kinds = apply_events(session, batch, settings)
            _count(session, CHANGELOG_FEED, kinds)
            _write_cursor(session, CHANGELOG_FEED, batch[-1].serial)
        outcome.events += len(batch)
        outcome.kinds.update(kinds)
    if page.malformed:
        with transaction(factory) as session:
            _count(session, CHANGELOG_FEED, Counter({"malformed": page.malformed}))
            _write_cursor(session, CHANGELOG_FEED, page.last_serial)
    log.info(
        "changelog page applied",
        extra={
            "feed": CHANGELOG_FEED,
            "since": page.since,
            "serial": page.last_serial,
            "events": len(page.events),
            "malformed": page.malformed,
        },
    )

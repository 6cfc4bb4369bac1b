"""The changelog feed records each kind of change, and its cursor moves with its changes."""

from __future__ import annotations

from collections import Counter

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from common.config import Settings
from common.db import transaction
from common.models import BuildJob, Project, Release
from common.states import JobState, SkipReason
from master.pypi.feed import apply_events
from master.pypi.journal import JournalEvent, parse_entry
from tests.seed import add_release

T0 = 1_700_000_000


def events(*entries: tuple[str, str | None, str]) -> list[JournalEvent]:
    parsed = []
    for serial, (name, version, action) in enumerate(entries, start=100):
        event = parse_entry([name, version, T0 + serial, action, serial])
        assert isinstance(event, JournalEvent)
        parsed.append(event)
    return parsed


def _release(session: Session, project: str, version: str) -> Release:
    release = session.scalar(
        select(Release).join(Project).where(Project.name == project, Release.version == version)
    )
    assert release is not None
    return release


def test_new_releases_and_files_are_recorded_and_marked_for_details(
    settings: Settings, factory: sessionmaker[Session]
) -> None:
    settings.upstream.projects = "all"
    settings.upstream.feed = "changelog"
    batch = events(
        ("Demo_Pkg", None, "create"),
        ("Demo_Pkg", None, "add Owner alice"),
        ("Demo_Pkg", "1.0", "new release"),
        ("Demo_Pkg", "1.0", "add source file demo_pkg-1.0.tar.gz"),
        ("Demo_Pkg", "1.0", "add py3 file demo_pkg-1.0-py3-none-any.whl"),
        ("Demo_Pkg", "1.0", "remove file demo_pkg-1.0-py3-none-any.whl"),
        ("Demo_Pkg", None, "docdestroy"),
        ("Other", None, "something new"),
        ("Other", "2.0", "yank release"),  # a release never recorded: nothing to change
    )
    with transaction(factory) as session:
        kinds = apply_events(session, batch, settings)
    assert kinds == Counter(
        {
            "create-project": 1,
            "ignored:role-change": 1,
            "new-release": 1,
            "add-sdist": 1,
            "add-wheel": 1,
            "remove-file": 1,
            "ignored:docs": 1,
            "ignored:unknown": 1,
            "yank-release": 1,
        }
    )
    with factory() as session:
        project = session.scalar(select(Project).where(Project.name == "demo-pkg"))
        assert project is not None and project.display_name == "Demo_Pkg"
        assert project.upstream_serial == 105
        release = _release(session, "demo-pkg", "1.0")
        assert release.refresh_needed
        assert release.upstream_files == ["demo_pkg-1.0.tar.gz"]
        assert session.scalar(select(Project).where(Project.name == "other")) is None


def test_watch_lists_ignore_other_projects(
    settings: Settings, factory: sessionmaker[Session]
) -> None:
    settings.upstream.projects = ["demo"]
    batch = events(("demo", "1.0", "new release"), ("other", "1.0", "new release"))
    with transaction(factory) as session:
        kinds = apply_events(session, batch, settings)
    assert kinds == Counter({"new-release": 1, "unwatched": 1})


def test_yank_removal_and_return_settle_jobs_and_keep_history(
    settings: Settings, factory: sessionmaker[Session]
) -> None:
    settings.upstream.projects = "all"
    settings.upstream.feed = "changelog"
    with transaction(factory) as session:
        add_release(session, settings, "demo", "1.0")
        add_release(session, settings, "demo", "2.0")
        add_release(session, settings, "gone", "1.0")
    with transaction(factory) as session:
        apply_events(
            session,
            events(
                ("demo", "1.0", "yank release"),
                ("demo", "2.0", "remove release"),
                ("gone", None, "remove project"),
            ),
            settings,
        )
    with factory() as session:
        yanked = _release(session, "demo", "1.0")
        assert yanked.yanked and yanked.refresh_needed and yanked.removed_at is None
        removed = _release(session, "demo", "2.0")
        assert removed.removed_at is not None and not removed.refresh_needed
        assert removed.skip_reason == SkipReason.REMOVED_UPSTREAM
        project = session.scalar(select(Project).where(Project.name == "gone"))
        assert project is not None and project.removed_at is not None
        assert _release(session, "gone", "1.0").removed_at is not None
        jobs = session.execute(
            select(Project.name, Release.version, BuildJob.state, BuildJob.skip_reason)
            .join(Release, BuildJob.release_id == Release.id)
            .join(Project)
            .order_by(Project.name, Release.version)
        ).all()
        assert [tuple(row) for row in jobs] == [
            ("demo", "1.0", JobState.SKIPPED, SkipReason.YANKED_UPSTREAM),
            ("demo", "2.0", JobState.SKIPPED, SkipReason.REMOVED_UPSTREAM),
            ("gone", "1.0", JobState.SKIPPED, SkipReason.REMOVED_UPSTREAM),
        ]
    # Unyanked and re-released: back in play, marked for details again.
    with transaction(factory) as session:
        apply_events(
            session,
            events(("demo", "1.0", "unyank release"), ("gone", "3.0", "new release")),
            settings,
        )
    with factory() as session:
        unyanked = _release(session, "demo", "1.0")
        assert not unyanked.yanked and unyanked.refresh_needed
        project = session.scalar(select(Project).where(Project.name == "gone"))
        assert project is not None and project.removed_at is None
        assert _release(session, "gone", "1.0").removed_at is not None

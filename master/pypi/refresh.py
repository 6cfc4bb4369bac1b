"""Fills in releases a change feed named, from the JSON API, and plans their builds.

One JSON API request covers every marked release of a project. A document older than
the last change the feed saw for the project (PyPI's CDN can lag) is not used: the
releases stay marked and are tried again next round, as bandersnatch does with stale
pages.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from common.config import Settings
from common.db import transaction
from common.models import Project, Release
from master.builds.build_plan import PRIORITY_NEW, plan_builds
from master.pypi.json_api import JsonApiClient, ProjectDetails
from master.pypi.releases import apply_release_files
from master.pypi.upstream import TransientUpstreamError, UpstreamError

log = logging.getLogger(__name__)


# JSON API requests in flight at once: refresh time is mostly network latency.
FETCH_CONCURRENCY = 8


def _fetch(client: JsonApiClient, name: str) -> tuple[ProjectDetails | None, str | None]:
    """(details, None); (None, None) for unusable data; (None, error) to retry later."""
    try:
        return client.project(name), None
    except TransientUpstreamError as exc:
        return None, str(exc)
    except UpstreamError as exc:
        log.warning("release details unusable: %s", exc, extra={"project": name})
        return None, None


@dataclass
class RefreshOutcome:
    projects: int = 0
    releases: int = 0
    jobs: int = 0
    stale: int = 0
    failed: int = 0


def _apply_marked(
    session: Session, project: Project, details: ProjectDetails, settings: Settings
) -> tuple[int, int]:
    marked = list(
        session.scalars(
            select(Release).where(
                Release.project_id == project.id, Release.refresh_needed.is_(True)
            )
        )
    )
    jobs = 0
    # Each step flushes what the next one reads; autoflush before every query only costs.
    with session.no_autoflush:
        for release in marked:
            release.refresh_needed = False
            if release.removed_at is not None:
                continue
            files = None if details.missing else details.releases.get(release.version)
            if files is None:
                # Gone again since the feed named it; its removal event says so too.
                continue
            applied = apply_release_files(session, release, files)
            jobs += len(plan_builds(session, release, applied.source, settings, PRIORITY_NEW))
    return len(marked), jobs


def refresh_marked(
    factory: sessionmaker[Session],
    client: JsonApiClient,
    settings: Settings,
    limit: int | None = None,
) -> RefreshOutcome:
    """Refresh up to `limit` projects that have releases waiting for details."""
    outcome = RefreshOutcome()
    with factory() as session:
        rows = session.execute(
            select(Project.id, Project.name, Project.upstream_serial)
            .where(
                Project.id.in_(
                    select(Release.project_id).where(
                        Release.refresh_needed.is_(True), Release.removed_at.is_(None)
                    )
                )
            )
            .order_by(Project.id)
            .limit(limit or settings.upstream.refresh_batch)
        ).all()
    with ThreadPoolExecutor(max_workers=FETCH_CONCURRENCY) as pool:
        fetched = list(pool.map(lambda row: _fetch(client, row[1]), rows))
    for (project_id, name, feed_serial), (details, error) in zip(rows, fetched, strict=True):
        if error is not None:
            outcome.failed += 1
            log.warning("release details not read: %s", error, extra={"project": name})
            continue
        if details is None:
            # Malformed upstream data: logged and dropped, the next change names it again.
            outcome.failed += 1
            details = ProjectDetails(name, None, missing=True)
        if (
            not details.missing
            and details.serial is not None
            and feed_serial is not None
            and details.serial < feed_serial
        ):
            outcome.stale += 1
            log.info(
                "stale JSON API document, retried later",
                extra={"project": name, "serial": details.serial, "wanted": feed_serial},
            )
            continue
        with transaction(factory) as session:
            project = session.get(Project, project_id)
            assert project is not None
            releases, jobs = _apply_marked(session, project, details, settings)
        outcome.projects += 1
        outcome.releases += releases
        outcome.jobs += jobs
    if outcome.projects or outcome.failed or outcome.stale:
        log.info(
            "releases refreshed",
            extra={
                "projects": outcome.projects,
                "releases": outcome.releases,
                "jobs": outcome.jobs,
                "stale": outcome.stale,
                "failed": outcome.failed,
            },
        )
    return outcome

"""Rows the tests need, made through the same code paths the master uses."""

from __future__ import annotations

from sqlalchemy.orm import Session

from common.config import Settings
from common.models import BuildJob, Project, Release, SourceFile
from master.releases import get_or_create_project
from master.scheduler import create_jobs


def add_release(
    session: Session,
    settings: Settings,
    project: str = "demo",
    version: str = "1.0",
    requires_python: str | None = None,
    upstream_files: list[str] | None = None,
) -> tuple[Project, Release, list[BuildJob]]:
    owner = get_or_create_project(session, project)
    release = Release(
        project=owner,
        version=version,
        requires_python=requires_python,
        upstream_files=upstream_files or [f"{project}-{version}.tar.gz"],
    )
    source = SourceFile(
        release=release,
        filename=f"{project}-{version}.tar.gz",
        url=f"http://127.0.0.1:1/{project}-{version}.tar.gz",
        sha256="0" * 64,
        size=10,
    )
    session.add_all([release, source])
    session.flush()
    jobs = create_jobs(session, release, source, settings.enabled_targets())
    return owner, release, jobs

"""Rows the tests need, made through the same code paths the master uses."""

from __future__ import annotations

import hashlib
import io
from datetime import UTC, datetime

from sqlalchemy.orm import Session

from common.config import Settings
from common.models import Builder, BuildJob, OutputFile, Project, Release, SourceFile, Token
from common.states import TokenRole
from master.builds.build_plan import PRIORITY_NEW, create_jobs
from master.index.uploads import accept_wheel
from master.pypi.releases import get_or_create_project
from master.storage import Storage
from tests.conftest import make_wheel


def add_release(
    session: Session,
    settings: Settings,
    project: str = "demo",
    version: str = "1.0",
    requires_python: str | None = None,
    upstream_files: list[str] | None = None,
    priority: int = PRIORITY_NEW,
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
    jobs = create_jobs(session, release, source, settings.planned_targets(), priority)
    return owner, release, jobs


def add_builder(
    session: Session,
    name: str,
    arch: str = "aarch64",
    python_tags: tuple[str, ...] = ("cp311",),
    last_seen: datetime | None = None,
) -> Builder:
    """A registered builder, as POST /api/v1/builders/register leaves it."""
    token = Token(name=name, role=TokenRole.BUILDER, token_hash=name.ljust(64, "0")[:64])
    session.add(token)
    session.flush()
    builder = Builder(
        name=name,
        token_id=token.id,
        target=arch,
        arch=arch,
        backend="docker",
        python_tags=list(python_tags),
        last_seen_at=last_seen or datetime.now(UTC),
    )
    session.add(builder)
    session.flush()
    return builder


def publish_wheel(
    session: Session,
    settings: Settings,
    project: str = "demo",
    version: str = "1.0",
) -> OutputFile:
    """A release whose aarch64 wheel is published through the master's upload path."""
    _, _, jobs = add_release(session, settings, project=project, version=version)
    job = next(job for job in jobs if job.arch == "aarch64")
    escaped = project.replace("-", "_")  # a wheel name's distribution part has no dashes
    filename = f"{escaped}-{version}-{job.python_tag}-{job.python_tag}-{job.policy}.whl"
    body = make_wheel(filename, modules=(escaped,))
    storage = Storage(settings.master.data_dir)
    return accept_wheel(
        session,
        storage,
        job,
        filename,
        hashlib.sha256(body).hexdigest(),
        io.BytesIO(body),
        settings.master.max_upload_bytes,
    )

"""Publishing into a large index: time and files written per publish, and a full rebuild.

Fills a scratch PostgreSQL database with PROJECTS projects of FILES_PER_PROJECT wheels
each (default 100,000 projects and 1,000,000 files, each wheel with its release, sdist,
job and index change), writes the static index once from scratch, then publishes more
wheels through the master's real upload path (`accept_wheel`) and brings the tree up to
date (`StaticIndex.sync`), as the master does after each upload. Printed figures:
  full regeneration        every page of the index written from the database
  publish, existing        one more wheel of a listed project: its 2 pages and the serial
  publish, new project     a project's first wheel: also the project list
  files written            per publish, whatever the size of the index
Goal (issue 5): under 50 ms and a constant number of files per publish.

Usage: .venv/bin/python -m benchmarks.index [PROJECTS] [FILES_PER_PROJECT] [PUBLISHES]
Needs PostgreSQL on 127.0.0.1:5432 (user postgres).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine, text

from common.config import load_settings
from common.db import make_engine, make_sessionmaker, transaction, upgrade
from master.index.static import StaticIndex
from tests.conftest import _postgres_database
from tests.seed import publish_wheel

GOAL_MS = 50.0
RELEASES_PER_PROJECT = 5
scratch_database = contextmanager(_postgres_database)


def fill(engine: Engine, projects: int, files_per_project: int, console: Console) -> None:
    """Generate the rows in the server (generate_series): minutes of client inserts saved."""
    per_release = max(1, files_per_project // RELEASES_PER_PROJECT)
    releases = projects * RELEASES_PER_PROJECT
    files = releases * per_release
    statements = [
        (
            "projects",
            "INSERT INTO projects (id, name, display_name, created_at)"
            " SELECT g, 'project-' || g, 'Project-' || g, now()"
            " FROM generate_series(1, :projects) g",
        ),
        (
            "releases",
            "INSERT INTO releases (id, project_id, version, yanked, upstream_files,"
            " refresh_needed, created_at)"
            " SELECT g, (g - 1) / :rpp + 1, ((g - 1) % :rpp + 1) || '.0', (g % 97 = 0),"
            " '[]', false, now() FROM generate_series(1, :releases) g",
        ),
        (
            "source files",
            "INSERT INTO source_files (id, release_id, filename, url, sha256, created_at)"
            " SELECT g, g, 'src-' || g || '.tar.gz', 'https://example.invalid/' || g,"
            " md5(g::text) || md5(g::text), now() FROM generate_series(1, :releases) g",
        ),
        (
            "jobs",
            "INSERT INTO build_jobs (id, release_id, source_file_id, arch, python_tag, policy,"
            " state, priority, attempts, created_at)"
            " SELECT g, (g - 1) / :fpr + 1, (g - 1) / :fpr + 1, 'aarch64', 'cp3' || (g % :fpr),"
            " 'manylinux2014_aarch64', 'built', 5, 1, now()"
            " FROM generate_series(1, :files) g",
        ),
        (
            "wheels",
            "INSERT INTO output_files (id, job_id, release_id, filename, sha256, size,"
            " python_tag, abi_tag, platform_tag, requires_python, metadata_sha256, grafted,"
            " published, uploaded_at)"
            " SELECT g, g, (g - 1) / :fpr + 1,"
            " 'project_' || ((g - 1) / :fpr / :rpp + 1) || '-' || (((g - 1) / :fpr) % :rpp + 1)"
            " || '.0-cp3' || (g % :fpr) || '-cp3' || (g % :fpr) || '-manylinux2014_aarch64.whl',"
            " md5(g::text) || md5((g + 1)::text), 100000 + g % 5000, 'cp3' || (g % :fpr),"
            " 'cp3' || (g % :fpr), 'manylinux2014_aarch64', '>=3.8',"
            " md5((g + 2)::text) || md5((g + 3)::text), '[]', true, now()"
            " FROM generate_series(1, :files) g",
        ),
        (
            "index changes",
            "INSERT INTO index_changes (id, project_id, action, filename, created_at)"
            " SELECT g, (g - 1) / :fpr / :rpp + 1, 'publish', NULL, now()"
            " FROM generate_series(1, :files) g",
        ),
    ]
    values = {
        "projects": projects,
        "releases": releases,
        "files": files,
        "rpp": RELEASES_PER_PROJECT,
        "fpr": per_release,
    }
    with engine.begin() as connection:
        for label, statement in statements:
            started = time.perf_counter()
            connection.execute(text(statement), values)
            console.print(f"  {label}: {time.perf_counter() - started:.1f} s")
        for table in (
            "projects",
            "releases",
            "source_files",
            "build_jobs",
            "output_files",
            "index_changes",
        ):
            connection.execute(
                text(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), max(id)) FROM {table}"
                )
            )
        connection.execute(text("ANALYZE"))


def main() -> None:
    projects = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    per_project = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    publishes = int(sys.argv[3]) if len(sys.argv) > 3 else 30
    console = Console()
    with scratch_database() as url, tempfile.TemporaryDirectory() as data:
        settings = load_settings(None, database={"url": url}, master={"data_dir": Path(data)})
        engine = make_engine(url)
        upgrade(engine)
        factory = make_sessionmaker(engine)
        console.print(f"filling {projects:,} projects x {per_project} wheels")
        started = time.perf_counter()
        fill(engine, projects, per_project, console)
        console.print(f"filled in {time.perf_counter() - started:.1f} s")
        static = StaticIndex(Path(data))

        started = time.perf_counter()
        with factory() as session:
            full = static.regenerate(session)
        full_seconds = time.perf_counter() - started
        console.print(
            f"full regeneration: {full.projects:,} projects, {full.files_written:,} files,"
            f" {full_seconds:.1f} s"
        )

        def publish(project: str, version: str) -> tuple[float, float, int, bool]:
            begun = time.perf_counter()
            with transaction(factory) as session:
                publish_wheel(session, settings, project, version)
            committed = time.perf_counter()
            with factory() as session:
                report = static.sync(session)
            done = time.perf_counter()
            return committed - begun, done - committed, report.files_written, report.root_rewritten

        existing = [
            publish(f"project-{1 + i * 997 % projects}", f"9.{i}") for i in range(publishes)
        ]
        new = [publish(f"newcomer-{i}", "1.0") for i in range(max(3, publishes // 5))]
        engine.dispose()

    table = Table(title=f"index of {projects:,} projects, {full.files_written - 3:,} pages")
    for column in ("measure", "median ms", "p95 ms", "files written", "project list"):
        table.add_column(column)

    def row(label: str, samples: list[tuple[float, float, int, bool]], part: int) -> None:
        times = sorted(sample[part] * 1000 for sample in samples)
        p95 = times[min(len(times) - 1, int(len(times) * 0.95))]
        written = sorted({sample[2] for sample in samples})
        rewritten = "rewritten" if any(sample[3] for sample in samples) else "untouched"
        table.add_row(
            label, f"{statistics.median(times):.1f}", f"{p95:.1f}", str(written), rewritten
        )

    row("publish, existing project: static update", existing, 1)
    row("publish, existing project: upload transaction", existing, 0)
    row("publish, new project: static update", new, 1)
    table.add_row(
        "full regeneration", f"{full_seconds * 1000:.0f}", "", f"{full.files_written:,}", ""
    )
    console.print(table)
    update = statistics.median(sample[1] * 1000 for sample in existing)
    console.print(
        f"static update per publish: {update:.1f} ms (goal {GOAL_MS:.0f} ms, ratio"
        f" {update / GOAL_MS:.2f}); full regeneration / one publish:"
        f" {full_seconds * 1000 / update:,.0f}x"
    )


if __name__ == "__main__":
    main()

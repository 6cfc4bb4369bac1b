"""The Alembic migrations build exactly the schema the models declare, on both databases."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.exc import IntegrityError

from common.config import load_settings
from common.db import (
    current_revision,
    head_revision,
    make_engine,
    make_sessionmaker,
    transaction,
    upgrade,
)
from common.models import Base, BuildJob
from common.states import JobState
from tests.seed import add_release


def test_migrated_schema_matches_models(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        upgrade(engine)
        assert current_revision(engine) == head_revision(engine)
        with engine.connect() as connection:
            context = MigrationContext.configure(connection)
            differences = compare_metadata(context, Base.metadata)
        assert differences == []
        indexes = {ix["name"]: ix for ix in inspect(engine).get_indexes("build_jobs")}
        assert indexes["uq_build_jobs_active_target"]["unique"]
    finally:
        engine.dispose()


def test_upgrade_from_first_revision_keeps_rows_and_the_active_job_constraint(
    database_url: str,
) -> None:
    settings = load_settings(None, database={"url": database_url})
    engine = make_engine(database_url)
    try:
        upgrade(engine, "0001")
        factory = make_sessionmaker(engine)
        # Rows written under 0001 with raw SQL, as an older master would have left them.
        with engine.begin() as connection:
            connection.exec_driver_sql(
                "INSERT INTO projects (name, display_name, created_at) "
                "VALUES ('old', 'old', CURRENT_TIMESTAMP)"
            )
        upgrade(engine)
        with transaction(factory) as session:
            _project, release, jobs = add_release(session, settings, project="old")
            assert release.refresh_needed is False
            assert jobs
        try:
            with transaction(factory) as session:
                job = jobs[0]
                session.add(
                    BuildJob(
                        release_id=job.release_id,
                        source_file_id=job.source_file_id,
                        target=job.target,
                        arch=job.arch,
                        python_tag=job.python_tag,
                        policy=job.policy,
                        state=JobState.PENDING,
                    )
                )
        except IntegrityError:
            pass
        else:
            raise AssertionError("a second active job for one target was accepted")
    finally:
        engine.dispose()


def test_named_targets_upgrade_gives_old_rows_their_arch_as_target(database_url: str) -> None:
    """0011: jobs and builders of a farm whose targets were its arches keep building."""
    engine = make_engine(database_url)
    now = "CURRENT_TIMESTAMP"
    try:
        upgrade(engine, "0010")
        with engine.begin() as connection:
            for sql in (
                f"INSERT INTO projects (id, name, display_name, created_at) "
                f"VALUES (1, 'old', 'old', {now})",
                f"INSERT INTO releases (id, project_id, version, yanked, upstream_files,"
                f" created_at) VALUES (1, 1, '1.0', false, '[]', {now})",
                f"INSERT INTO source_files (id, release_id, filename, url, sha256, created_at)"
                f" VALUES (1, 1, 'old-1.0.tar.gz', 'http://x/old-1.0.tar.gz', "
                f"'{'0' * 64}', {now})",
                f"INSERT INTO build_jobs (id, release_id, source_file_id, arch, python_tag,"
                f" policy, state, priority, attempts, created_at) VALUES (1, 1, 1, 'armv7l',"
                f" 'cp311', 'manylinux_2_31_armv7l', 'pending', 0, 0, {now})",
                f"INSERT INTO tokens (id, name, role, token_hash, created_at)"
                f"  VALUES (1, 'b1', 'builder', '{'1' * 64}', {now})",
                f"INSERT INTO builders (id, name, token_id, arch, backend, python_tags, version,"
                f" registered_at, last_seen_at) VALUES (1, 'pi', 1, 'aarch64', 'native',"
                f" '[\"cp311\"]', '0.1', {now}, {now})",
            ):
                connection.exec_driver_sql(sql)
        upgrade(engine)
        with engine.connect() as connection:
            jobs = connection.exec_driver_sql("SELECT target, arch FROM build_jobs").all()
            builders = connection.exec_driver_sql("SELECT target, arch FROM builders").all()
        assert [tuple(row) for row in jobs] == [("armv7l", "armv7l")]
        assert [tuple(row) for row in builders] == [("aarch64", "aarch64")]
    finally:
        engine.dispose()

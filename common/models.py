"""The farm's schema (SQLAlchemy 2): the database is the source of truth."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from common.states import ACTIVE_STATES, FailureReason, JobState, SkipReason, TokenRole

# The partial unique index's condition; the same text is in migration 0001.
ACTIVE_SQL = "state IN (" + ", ".join(f"'{state.value}'" for state in ACTIVE_STATES) + ")"


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A moment, stored in UTC and always read back as an aware UTC datetime.

    SQLite keeps no zone and hands datetimes back naive, PostgreSQL answers in the
    session's zone: every column of the farm goes through this type, so no caller has to
    guess. A naive value written is taken to be UTC, as the farm writes only UTC. The
    column is a plain timezone-aware DateTime in the database (the migrations' type).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return self.process_result_value(value, dialect)  # the same normalisation both ways

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def _enum(kind: type[Any], name: str) -> Enum:
    return Enum(
        kind,
        name=name,
        native_enum=False,
        create_constraint=False,
        length=32,
        values_callable=lambda members: [m.value for m in members],
    )


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON,
    }


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)  # PEP 503 normal form
    display_name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Simple API poll state: lets the poller send If-None-Match and skip unchanged pages.
    upstream_etag: Mapped[str | None] = mapped_column(String(200))
    upstream_serial: Mapped[int | None] = mapped_column(BigInteger)
    polled_at: Mapped[datetime | None]
    # Removed upstream: its releases leave our index, their history stays here.
    removed_at: Mapped[datetime | None]
    # Why builders emulate this project instead of cross-compiling it: its last cross build
    # fell back (master/builds/build_paths.py); cleared by an operator.
    emulate_because: Mapped[str | None] = mapped_column(Text)
    # System packages its builds needed and the builders added (builder/auto_packages.py),
    # by package manager: its next builds start with them (master/builds/learned_packages.py).
    learned_packages: Mapped[dict[str, list[str]] | None] = mapped_column(JSON)

    releases: Mapped[list[Release]] = relationship(back_populates="project")


class Release(Base):
    __tablename__ = "releases"
    __table_args__ = (UniqueConstraint("project_id", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    version: Mapped[str] = mapped_column(String(100))
    requires_python: Mapped[str | None] = mapped_column(String(200))
    yanked: Mapped[bool] = mapped_column(default=False)
    yanked_reason: Mapped[str | None] = mapped_column(Text)
    # Filenames PyPI already serves for this release: we never publish one of the same name.
    upstream_files: Mapped[list[str]] = mapped_column(JSON, default=list)
    # Removed upstream: its wheels leave our index (history stays).
    removed_at: Mapped[datetime | None]
    # A change feed named this release: its files must be read from the JSON API.
    refresh_needed: Mapped[bool] = mapped_column(default=False, server_default=false(), index=True)
    # Set when the whole release is not built (no sdist, skip list, pure Python upstream).
    skip_reason: Mapped[SkipReason | None] = mapped_column(_enum(SkipReason, "skip_reason"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    project: Mapped[Project] = relationship(back_populates="releases")
    source_files: Mapped[list[SourceFile]] = relationship(back_populates="release")


class SourceFile(Base):
    __tablename__ = "source_files"

    id: Mapped[int] = mapped_column(primary_key=True)
    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id"), index=True)
    filename: Mapped[str] = mapped_column(String(300), unique=True)
    url: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int | None] = mapped_column(BigInteger)
    upload_time: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    release: Mapped[Release] = relationship(back_populates="source_files")


class Token(Base):
    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    role: Mapped[TokenRole] = mapped_column(_enum(TokenRole, "token_role"))
    # sha256 of the secret; the secret itself is shown once and never stored.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    projects: Mapped[list[str] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]


class Builder(Base):
    """One build slot of a builder host: a host with several slots (builder.slots) has a
    row per slot, each claiming, beating for and handing back its own job."""

    __tablename__ = "builders"
    __table_args__ = (UniqueConstraint("token_id", "slot"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    # The token's name, with "#<slot>" after it for slots past the first (builder_name()).
    name: Mapped[str] = mapped_column(String(120), unique=True)
    token_id: Mapped[int] = mapped_column(ForeignKey("tokens.id"))
    slot: Mapped[int] = mapped_column(default=0, server_default="0")
    arch: Mapped[str] = mapped_column(String(16))
    # The target (targets.<name>) it builds: it claims only that target's jobs.
    target: Mapped[str] = mapped_column(String(48))
    backend: Mapped[str] = mapped_column(String(16))
    python_tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    version: Mapped[str] = mapped_column(String(40), default="")
    registered_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    current_job_id: Mapped[int | None] = mapped_column(Integer)
    # What the builder itself last said: its free work-dir space and the job it is running.
    free_disk: Mapped[int | None] = mapped_column(BigInteger)
    reported_job_id: Mapped[int | None] = mapped_column(Integer)


class BuildJob(Base):
    __tablename__ = "build_jobs"
    __table_args__ = (
        # One active job per (release, target, interpreter): duplicates are refused by
        # the database.
        Index(
            "uq_build_jobs_active_target",
            "release_id",
            "target",
            "python_tag",
            unique=True,
            sqlite_where=text(ACTIVE_SQL),
            postgresql_where=text(ACTIVE_SQL),
        ),
        Index("ix_build_jobs_state_arch", "state", "arch"),
        Index("ix_build_jobs_state_target", "state", "target"),
        # The dashboard's latest builds and failures, and its throughput ranges.
        Index("ix_build_jobs_finished_at", "finished_at"),
        Index("ix_build_jobs_state_finished_at", "state", "finished_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id"), index=True)
    source_file_id: Mapped[int] = mapped_column(ForeignKey("source_files.id"))
    # The configured target (targets.<name>) it builds for, and that target's arch.
    target: Mapped[str] = mapped_column(String(48))
    arch: Mapped[str] = mapped_column(String(16))
    python_tag: Mapped[str] = mapped_column(String(16))
    policy: Mapped[str] = mapped_column(String(64))
    state: Mapped[JobState] = mapped_column(_enum(JobState, "job_state"), default=JobState.PENDING)
    priority: Mapped[int] = mapped_column(default=5)
    attempts: Mapped[int] = mapped_column(default=0)
    failure_reason: Mapped[FailureReason | None] = mapped_column(
        _enum(FailureReason, "failure_reason")
    )
    skip_reason: Mapped[SkipReason | None] = mapped_column(_enum(SkipReason, "skip_reason"))
    summary: Mapped[str | None] = mapped_column(Text)
    # The check that refused the job's wheel (common.wheels.Check) when it failed as
    # upload-rejected: the dashboard shows it, the metrics count by it.
    rejected_by: Mapped[str | None] = mapped_column(String(32))
    # How the builder made the wheel, or its last failure (common.states.BuildPath).
    build_path: Mapped[str | None] = mapped_column(String(24))
    # The system packages installed into the build image for its last build, those of
    # them the builder added because the build failed without them, and the image's
    # package manager: the record of what the wheel needed to build.
    build_packages: Mapped[list[str] | None] = mapped_column(JSON)
    auto_packages: Mapped[list[str] | None] = mapped_column(JSON)
    package_manager: Mapped[str | None] = mapped_column(String(16))
    # In dep-wait: the build requirement (PEP 508, as the builder's pip named it) that has
    # no wheel for the job's target yet (master/builds/dependencies.py).
    waiting_for: Mapped[str | None] = mapped_column(String(200))
    builder_id: Mapped[int | None] = mapped_column(ForeignKey("builders.id"))
    requested_by: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    queued_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    build_seconds: Mapped[float | None] = mapped_column(Float)
    log_path: Mapped[str | None] = mapped_column(Text)
    log_size: Mapped[int | None] = mapped_column(BigInteger)

    release: Mapped[Release] = relationship()
    source_file: Mapped[SourceFile] = relationship()
    builder: Mapped[Builder | None] = relationship()
    outputs: Mapped[list[OutputFile]] = relationship(back_populates="job")


class OutputFile(Base):
    __tablename__ = "output_files"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("build_jobs.id"), index=True)
    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id"), index=True)
    filename: Mapped[str] = mapped_column(String(300), unique=True)
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    python_tag: Mapped[str] = mapped_column(String(64))
    abi_tag: Mapped[str] = mapped_column(String(64))
    platform_tag: Mapped[str] = mapped_column(String(200))
    requires_python: Mapped[str | None] = mapped_column(String(200))
    metadata_sha256: Mapped[str] = mapped_column(String(64))
    # Shared libraries auditwheel copied into the wheel.
    grafted: Mapped[list[str]] = mapped_column(JSON, default=list)
    # The index that serves it: "" for /simple/ (manylinux wheels), else the name of the
    # distribution target whose /<name>/simple/ alone serves it (linux_* wheels).
    index_name: Mapped[str] = mapped_column(String(48), default="", server_default="")
    # A distribution wheel's Debian packages (`package=version`): the libraries it loads
    # come from them, not from the wheel, as piwheels records apt dependencies.
    system_packages: Mapped[list[str]] = mapped_column(JSON, default=list)
    published: Mapped[bool] = mapped_column(default=True)
    uploaded_at: Mapped[datetime] = mapped_column(default=utcnow)

    job: Mapped[BuildJob] = relationship(back_populates="outputs")
    release: Mapped[Release] = relationship()


class SkipRule(Base):
    """An operator's decision not to build a project, or one release of it."""

    __tablename__ = "skip_rules"
    __table_args__ = (
        UniqueConstraint("project", "version"),
        # The constraint above lets NULLs differ, so a project's whole-project rule (no
        # version) is kept single by its own index: two operators adding it at once get
        # one rule and one refusal.
        Index(
            "uq_skip_rules_whole_project",
            "project",
            unique=True,
            sqlite_where=text("version IS NULL"),
            postgresql_where=text("version IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    project: Mapped[str] = mapped_column(String(200), index=True)  # PEP 503 normal form
    version: Mapped[str | None] = mapped_column(String(100))  # None: every release
    reason: Mapped[str] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class FeedActionCount(Base):
    """How many changelog events of each kind a feed has applied or ignored on purpose."""

    __tablename__ = "feed_action_counts"

    feed: Mapped[str] = mapped_column(String(100), primary_key=True)
    kind: Mapped[str] = mapped_column(String(40), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, default=0)


class FeedCursor(Base):
    """Where a change feed stopped: committed in the transaction that applied its changes."""

    __tablename__ = "feed_cursors"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    serial: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class IndexChange(Base):
    """One change to what the index serves (a wheel published or withdrawn, a release
    yanked, removed or restored). Its id is the index's serial, as PyPI's journal id is
    PyPI's: a project's `_last-serial` is its newest change, and the static index is
    brought up to date by replaying changes past the serial it shows."""

    __tablename__ = "index_changes"
    __table_args__ = (Index("ix_index_changes_project_id_id", "project_id", "id"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"))
    action: Mapped[str] = mapped_column(String(40))
    filename: Mapped[str | None] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WheelPush(Base):
    """A published wheel's upload to one configured push target, and how it went."""

    __tablename__ = "wheel_pushes"
    __table_args__ = (
        UniqueConstraint("output_file_id", "target"),
        Index("ix_wheel_pushes_state_next_attempt_at", "state", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    output_file_id: Mapped[int] = mapped_column(ForeignKey("output_files.id"))
    target: Mapped[str] = mapped_column(String(64))
    # pending (waiting or retrying), pushed, failed (gave up or refused for good)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(default=0)
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime | None]
    pushed_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    output: Mapped[OutputFile] = relationship()


class AuditEvent(Base):
    """Who did what to the farm, and when: rebuild requests, token, skip, job and index
    changes by maintainers and operators. Also the ledger rebuild rate limits count."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_actor_action_at", "actor", "action", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(100))  # token name, or cli:<user>
    role: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(40))
    subject: Mapped[str] = mapped_column(String(300))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

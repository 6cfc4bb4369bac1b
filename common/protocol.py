"""What a builder and the master say to each other over HTTP: every body of the builder API.

Both sides read and write these models, so a body has one definition that cannot drift
between a builder and a master of another release. The rules are the job spec's
(common/job_spec.py):

- a field a newer release adds is ignored by an older one: a rolling upgrade must not
  stop the farm;
- a missing or mistyped field is refused, never guessed: the master answers 422 with a
  JSON body naming the field, a builder raises ProtocolError naming the body and field;
- the bytes on the wire stay those builders of earlier releases send and read.

The exchanges, all under /api/v1 and authenticated with the builder's token:

    POST builders/register            Registration            -> Registered
    POST builders/heartbeat           Heartbeat (or no body)  -> HeartbeatAnswer
    POST jobs/{id}/claim              no body                 -> JobSpec
    POST jobs/{id}/release            no body                 -> JobAnswer
    POST jobs/{id}/log?offset=N       raw bytes               -> LogAccepted,
                                      409 LogGap, or 4xx LogRefusal
    POST jobs/{id}/result             multipart: ResultForm's fields and the files
                                      LOG_PART and WHEEL_PART -> ResultAnswer

Any other refusal is an ErrorBody.

A builder host with several build slots (builder.slots) sends SLOT_HEADER with every
request: each slot is a builder of its own to the master (registered, beating, claiming
and handing back on its own), all under the host's one token. Without the header the
request is slot 0's, as every builder before slots was.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from packaging.requirements import InvalidRequirement, Requirement
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from common.job_spec import JobSpec
from common.states import Arch, BuildPath, FailureReason

__all__ = [
    "HEARTBEAT_SECONDS",
    "LOG_PART",
    "MAX_CHUNK_BYTES",
    "MAX_DISK_BYTES",
    "MAX_JOB_ID",
    "MAX_SLOTS",
    "MAX_SUMMARY_CHARS",
    "SLOT_HEADER",
    "WHEEL_PART",
    "Body",
    "ErrorBody",
    "Heartbeat",
    "HeartbeatAnswer",
    "JobAnswer",
    "JobSpec",
    "LogAccepted",
    "LogGap",
    "LogRefusal",
    "Outcome",
    "ProtocolError",
    "PythonTag",
    "Registered",
    "Registration",
    "ResultAnswer",
    "ResultForm",
    "TargetName",
    "slot_name",
]

# The longest a builder waits between two heartbeats (when idle: it beats more often
# while it builds). The master counts its grace periods and its least builder timeout
# in it.
HEARTBEAT_SECONDS = 30.0
# Job ids are 32-bit integers in the database: larger ones are refused as input.
MAX_JOB_ID = 2**31 - 1
# The largest free-disk figure a builder may report: the column is a signed 64-bit integer.
MAX_DISK_BYTES = 2**63 - 1
# The largest live-log chunk the master accepts in one request.
MAX_CHUNK_BYTES = 1024 * 1024
# The longest summary a result may carry.
MAX_SUMMARY_CHARS = 10_000
# The header naming the build slot a request speaks for (0 when absent), and how many
# slots one builder token may have.
SLOT_HEADER = "X-Armwheels-Slot"
MAX_SLOTS = 64
# The name of each slot past the first: "<token name>#<slot>".
SLOT_SEPARATOR = "#"
# The names of the result's file parts: the build log (always) and the wheel (when built).
LOG_PART = "log"
WHEEL_PART = "wheel"

Outcome = Literal["built", "failed"]
# A CPython interpreter a builder has, as a wheel's tag names it.
PythonTag = Annotated[str, Field(pattern=r"^cp3\d{1,2}$")]
# A configured target's name (targets.<name>): part of its queue names (build.<target>.
# <tag>) and of paths, so lower case letters, digits, '-' and '_', starting with a letter.
TARGET_NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,47}$"
TargetName = Annotated[str, Field(pattern=TARGET_NAME_PATTERN)]


class ProtocolError(ValueError):
    """A body the other side cannot read: the message names the body and its first bad
    field, e.g. `HeartbeatAnswer: stop.0: Input should be a valid integer`."""

    def __init__(self, body: str, field: str, problem: str) -> None:
        super().__init__(f"{body}: {field}: {problem}" if field else f"{body}: {problem}")
        self.body, self.field, self.problem = body, field, problem

    @classmethod
    def of(cls, body: str, exc: ValidationError) -> ProtocolError:
        errors = exc.errors()
        if not errors:
            return cls(body, "", str(exc))
        first = errors[0]
        field = ".".join(str(part) for part in first["loc"])
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        return cls(body, field, f"{first['msg']}{more}")


def slot_name(name: str, slot: int) -> str:
    """The name a build slot goes by (the master's builder rows, logs, container labels):
    the host's name for its first slot, as before slots, and "<name>#<slot>" after it."""
    return name if slot == 0 else f"{name}{SLOT_SEPARATOR}{slot}"


class Body(BaseModel):
    """A body of the builder API: fields it does not know are ignored, every field it
    knows is checked."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    @classmethod
    def from_json(cls, data: Any) -> Self:
        """The body in decoded JSON `data`; ProtocolError when it is not one."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ProtocolError.of(cls.__name__, exc) from exc

    @classmethod
    def from_bytes(cls, content: bytes | str) -> Self:
        """The body in JSON text `content`; ProtocolError when it is not one (not JSON
        included)."""
        try:
            return cls.model_validate_json(content)
        except ValidationError as exc:
            raise ProtocolError.of(cls.__name__, exc) from exc


# --- builder to master ---------------------------------------------------------------


class Registration(Body):
    """A builder starting: what it builds and with what. Registering again says that the
    builder lost whatever it was doing."""

    arch: Arch
    # Added with named targets: a builder without it builds the target named after its
    # arch, as every builder did before.
    target: TargetName | None = None
    backend: str = Field(min_length=1, max_length=16)
    python_tags: list[PythonTag] = Field(default_factory=list, max_length=50)
    version: str = Field(default="", max_length=40)
    free_disk: int | None = Field(default=None, ge=0, le=MAX_DISK_BYTES, strict=True)


class Heartbeat(Body):
    """A builder's sign of life, every HEARTBEAT_SECONDS at most: the job it runs (if any)
    and its free disk. The earliest builders sent no body: still a sign of life."""

    job_id: int | None = Field(default=None, ge=1, le=MAX_JOB_ID, strict=True)
    free_disk: int | None = Field(default=None, ge=0, le=MAX_DISK_BYTES, strict=True)


# Debian package names and versions (policy 5.6.1 and 5.6.12), space-separated.
SYSTEM_PACKAGES_PATTERN = (
    r"^[a-z0-9][a-z0-9+.-]*=[0-9A-Za-z.+~:-]+( [a-z0-9][a-z0-9+.-]*=[0-9A-Za-z.+~:-]+)*$"
)

# Distribution package names (common/recipes.py's grammar), separated by spaces.
PACKAGE_NAMES_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9+._-]{0,127}( [A-Za-z0-9][A-Za-z0-9+._-]{0,127})*$"
# The package managers whose package names a result may carry.
PackageManager = Literal["apt-get", "yum", "dnf"]


class ResultForm(Body):
    """The text fields of a result (a multipart form, beside the files LOG_PART and
    WHEEL_PART). A built outcome carries a wheel and its sha256, a failed one a reason:
    the master checks that with the job, answering 400."""

    outcome: Outcome
    reason: FailureReason | None = None
    summary: str = Field(default="", max_length=MAX_SUMMARY_CHARS)
    build_seconds: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    wheel_sha256: str | None = Field(default=None, max_length=64)
    # A failure worth another attempt (the farm's, not the sdist's).
    transient: bool = False
    # How the builder got there (cross, emulated-after-cross, emulated, native); builders
    # older than the cross path send none.
    build_path: BuildPath | None = None
    # A distribution target's wheel: the Debian packages it links, `package=version`
    # separated by spaces.
    system_packages: str | None = Field(
        default=None, max_length=4096, pattern=SYSTEM_PACKAGES_PATTERN
    )
    # The system packages installed into the build image for this build (recipe,
    # learned and the farm's own additions), the part the builder added in this attempt
    # because the build failed without it, and the package manager they are named for.
    build_packages: str | None = Field(default=None, max_length=4096, pattern=PACKAGE_NAMES_PATTERN)
    auto_packages: str | None = Field(default=None, max_length=4096, pattern=PACKAGE_NAMES_PATTERN)
    package_manager: PackageManager | None = None
    # A failed build's build requirement (PEP 508, as pip named it) that has no wheel for
    # the target on the farm's upstream index nor on the farm's own: the master may build
    # it first and let this job wait (dep-wait).
    waiting_for: str | None = Field(default=None, max_length=200)

    @field_validator("waiting_for")
    @classmethod
    def _requirement(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            requirement = Requirement(value)
        except InvalidRequirement as exc:
            raise ValueError(f"not a requirement: {exc}") from exc
        if requirement.url:
            raise ValueError("a requirement naming a URL is never waited for")
        return value

    def fields(self) -> dict[str, str]:
        """The form's fields as a builder sends them: empty ones left out, the build
        time in milliseconds' precision."""
        data = {"outcome": self.outcome, "summary": self.summary}
        if self.build_seconds is not None:
            data["build_seconds"] = f"{self.build_seconds:.3f}"
        if self.transient:
            data["transient"] = "true"
        if self.reason:
            data["reason"] = self.reason.value
        if self.wheel_sha256:
            data["wheel_sha256"] = self.wheel_sha256
        if self.build_path:
            data["build_path"] = self.build_path.value
        if self.system_packages:
            data["system_packages"] = self.system_packages
        for name in ("build_packages", "auto_packages", "package_manager", "waiting_for"):
            if value := getattr(self, name):
                data[name] = value
        return data


# --- master to builder ---------------------------------------------------------------


class Registered(Body):
    """The master's answer to a registration: the builder's row and name (its token's)."""

    builder_id: int
    name: str


class HeartbeatAnswer(Body):
    """The master's answer to a heartbeat: jobs it took back from this builder because
    the heartbeat did not name them, and the named job if it is no longer the builder's
    (`stop`, with `why`): the builder kills that build and reports nothing of it. What a
    master leaves out (one that predates `stop`) reads as empty."""

    ok: bool = True
    handed_back: list[int] = Field(default_factory=list)
    stop: list[int] = Field(default_factory=list)
    why: str | None = None


class JobAnswer(Body):
    """A job and the state it is in now (the answer to a hand-back). The state is text:
    a newer master may know states this builder does not."""

    job: int
    state: str


class LogAccepted(Body):
    """A live-log chunk taken: `total` is how much of the log the master has, where the
    next chunk starts."""

    job: int
    total: int = Field(ge=0)


class ErrorBody(Body):
    """Any refusal (4xx, 5xx): what was wrong, for a person to read."""

    error: str


class LogGap(ErrorBody):
    """409 to a live-log chunk that starts past what the master has: resend from
    `expected`."""

    expected: int = Field(ge=0)


class LogRefusal(ErrorBody):
    """A live-log chunk refused. `stop` says that the job is no longer the builder's
    (cancelled, requeued, given to another builder), with its `state` and `why`."""

    stop: bool = False
    state: str | None = None
    why: str | None = None

    def taken_back(self) -> str | None:
        """Why the job is no longer the builder's; None for any other refusal."""
        if not self.stop:
            return None
        return self.why or self.state or self.error or "taken back"


class ResultAnswer(Body):
    """A result stored: the job's state now and the wheel published, if any; `served`
    names the wheel already served that covers the job, when one does (left out
    otherwise, as masters always have)."""

    job: int
    state: str
    file: str | None
    served: str | None = Field(default=None, exclude_if=lambda served: served is None)

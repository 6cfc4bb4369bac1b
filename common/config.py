"""Farm configuration: one TOML file, overridden by ARMWHEELS_<SECTION>__<KEY> variables.

Everything is validated at start-up so that a typo stops the node with one line
instead of surfacing hours later inside a build.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

from packaging.tags import Tag
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from common.job_spec import DEFAULT_NEWER_POLICY, NewerPolicy
from common.names import BadName, normalize_project, python_version_of_tag
from common.protocol import HEARTBEAT_SECONDS, MAX_SLOTS, TARGET_NAME_PATTERN
from common.recipes import package_names, parse_recipes
from common.states import ARCHES, Arch
from common.tags import (
    DISTRIBUTION_MACHINES,
    distribution_machines,
    distribution_platform,
    is_distribution_policy,
    is_manylinux,
)

DebianSuite = Literal["bullseye", "bookworm", "trixie"]
TargetKind = Literal["manylinux", "distribution"]
FloatAbi = Literal["hard", "soft"]
# Top-level paths of the master, and folders of its data directory: a distribution
# target is served at /<name>/simple/, its static tree kept in <data_dir>/<name>/.
RESERVED_TARGET_NAMES = frozenset(
    {"api", "audit", "builders", "builds", "doctor", "files", "logs", "metrics", "projects"}
    | {"simple", "static", "tmp", "live", "quarantine", "fragments"}
)

CONFIG_ENV = "ARMWHEELS_CONFIG"


class ConfigError(Exception):
    """A configuration problem, worded as one line for the operator."""


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from exc


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatabaseSettings(_Section):
    # Empty means "SQLite file in the master's data directory".
    url: str = ""
    echo: bool = False


class BrokerSettings(_Section):
    # Empty means "kombu's SQLAlchemy transport on SQLite in the data directory".
    url: str = ""
    # Longer than the longest build: an unacknowledged message is redelivered after it.
    visibility_timeout: int = Field(default=4 * 3600, ge=60)


class UpstreamSettings(_Section):
    index_url: str = "https://pypi.org/simple/"
    # A list of project names, or the string "all".
    projects: list[str] | Literal["all"] = Field(default_factory=list)
    poll_interval: float = Field(default=300.0, gt=0)
    timeout: float = Field(default=30.0, gt=0)
    # When a project is first seen, build all its releases (True) or only the newest.
    backfill: bool = False
    # How changes are found: "simple" polls each watched project's Simple API page;
    # "changelog" follows PyPI's XML-RPC changelog (needed for projects = "all").
    feed: Literal["simple", "changelog"] = "simple"
    xmlrpc_url: str = "https://pypi.org/pypi"
    # JSON API base: <json_url>/<project>/json fills in releases the changelog names.
    json_url: str = "https://pypi.org/pypi/"
    # Where a new changelog cursor starts: None = the current last serial (no history;
    # `armwheels import` backfills), or a serial to replay from.
    changelog_start: int | None = Field(default=None, ge=0)
    # Build targets PyPI already covers with a compatible wheel (ours cannot shadow it:
    # the filename check refuses a name PyPI serves).
    build_covered: bool = False
    # Release-detail lookups per feed round (JSON API requests).
    refresh_batch: int = Field(default=200, ge=1)

    @field_validator("index_url", "json_url")
    @classmethod
    def _index_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value if value.endswith("/") else value + "/"

    @field_validator("xmlrpc_url")
    @classmethod
    def _xmlrpc_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @model_validator(mode="after")
    def _feed_covers_projects(self) -> UpstreamSettings:
        if self.projects == "all" and self.feed != "changelog":
            raise ValueError('projects = "all" needs feed = "changelog"')
        return self

    @field_validator("projects")
    @classmethod
    def _projects(cls, value: list[str] | str) -> list[str] | str:
        if isinstance(value, str):
            return value
        try:
            return sorted({normalize_project(name) for name in value})
        except BadName as exc:
            raise ValueError(str(exc)) from exc


class MasterSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8980, ge=1, le=65535)
    public_url: str = ""
    data_dir: Path = Path("armwheels-data")
    max_upload_bytes: int = Field(default=512 * 1024 * 1024, gt=0)
    max_log_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    dispatch_interval: float = Field(default=5.0, gt=0)
    # A builder silent for this long has died: it is offline (status, dashboard, metrics,
    # dispatch) and its job is handed back.
    builder_timeout: float = Field(default=300.0, ge=HEARTBEAT_SECONDS)
    # A job queued this long without a claim is sent again (its message may be lost).
    requeue_after: float = Field(default=6 * 3600.0, ge=60)
    # Attempts before a job that keeps getting lost fails with reason "lost".
    max_attempts: int = Field(default=3, ge=1, le=100)
    # Jobs of one arch in the broker at once; the rest wait in the database in priority
    # order, so a later rebuild still goes first. Keep it above the arch's builder count.
    queue_depth: int = Field(default=50, ge=1)
    # Per-project build recipes (TOML, see common/recipes.py); re-read when it changes.
    recipes: Path | None = None
    # Rebuild requests one token may make per window (duplicates of pending jobs count).
    rebuild_limit: int = Field(default=20, ge=1)
    rebuild_window: float = Field(default=3600.0, gt=0)
    # Seconds the dashboard overview's figures are shared between requests (0: never).
    overview_cache: float = Field(default=1.0, ge=0, le=60)
    # Processes serving HTTP (see master/web/http_server.py); 0: one per core on PostgreSQL
    # (at most 8), one on SQLite.
    http_workers: int = Field(default=0, ge=0, le=64)
    # Seconds a project's dashboard page is shared between requests (0: never).
    project_cache: float = Field(default=1.0, ge=0, le=60)
    # Failed authentications one client address may make per window (per HTTP worker
    # process); past them its requests needing a token are answered 429 until the window
    # has moved on.
    auth_failure_limit: int = Field(default=20, ge=1)
    auth_failure_window: float = Field(default=60.0, gt=0)
    # Seconds a builder is told to wait (Retry-After) when the master's disk is full.
    disk_full_retry_after: int = Field(default=30, ge=1, le=3600)

    @field_validator("recipes")
    @classmethod
    def _recipes(cls, value: Path | None) -> Path | None:
        if value is not None:
            parse_recipes(_read_text(value), str(value))
        return value

    @model_validator(mode="after")
    def _public_url(self) -> MasterSettings:
        if not self.public_url:
            self.public_url = f"http://{self.host}:{self.port}"
        self.public_url = self.public_url.rstrip("/")
        return self


class IndexSettings(_Section):
    # Seconds proxies and pip may reuse a Simple page before revalidating it (its ETag
    # makes revalidation cheap); files are immutable and cached for a year.
    page_max_age: int = Field(default=600, ge=0, le=86400)
    # Keep a static copy of the index under <data_dir>/simple (HTML and JSON side by
    # side) current on every change, for nginx or an object store to serve.
    static: bool = True


class PushTarget(_Section):
    """Another index every new wheel is uploaded to (the upload API twine uses)."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    url: str
    username: str = "__token__"
    # The password or API token; better given as ARMWHEELS_PUSH_<NAME>_PASSWORD in the
    # environment (named by password_env) than written in the file.
    password: SecretStr = SecretStr("")
    password_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    # Only these projects (PEP 503 names); empty means every project.
    projects: list[str] = Field(default_factory=list)
    timeout: float = Field(default=60.0, gt=0)
    max_attempts: int = Field(default=8, ge=1, le=100)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("projects")
    @classmethod
    def _projects(cls, value: list[str]) -> list[str]:
        try:
            return sorted({normalize_project(name) for name in value})
        except BadName as exc:
            raise ValueError(str(exc)) from exc

    def secret(self) -> str:
        """The password: from the named environment variable when set, else the file's."""
        if self.password_env:
            return os.environ.get(self.password_env, "")
        return self.password.get_secret_value()


class TargetSettings(_Section):
    """What the farm builds every release for: an arch, a manylinux policy, the image that
    builds it and the CPython tags of that image. Several targets may share an arch (for
    example manylinux2014 and manylinux_2_28 builds of aarch64).

    A distribution target (kind = "distribution") builds instead in one distribution's
    own image, for exactly that distribution: its wheels carry the honest linux_<machine>
    tags and are served only under /<target name>/simple/, never under /simple/."""

    # The ELF machine of its wheels; may be left out when the target is named after it.
    arch: Arch
    image: str
    python_tags: list[str] = Field(default_factory=lambda: ["cp311"], min_length=1)
    # manylinux targets: the manylinux policy. Distribution targets leave it out: theirs
    # is the linux_* platform tag of their machines.
    policy: str = ""
    kind: TargetKind = "manylinux"
    # 32-bit ARM: "hard" (armhf; every manylinux armv7l target) or "soft" (armel, only
    # as a distribution target): the EABI float flag every ELF file must carry.
    float_abi: FloatAbi = "hard"
    # Another manylinux target of the arch whose builds this one takes over: a job of
    # this target is made only when that target's job fails because the wheel needs a
    # newer glibc than its policy (auditwheel-rejected under newer_policy = "fail"), so
    # a manylinux_2_28 target serves what manylinux2014 cannot, and nothing twice.
    fallback_for: str | None = None
    # Distribution targets: what platform.machine() says on the systems it serves
    # (default: every CPU from the float ABI's baseline up, armv5tel for armel, armv7l
    # for armhf, with armv8l for a 64-bit kernel under the 32-bit userland).
    machines: list[str] = Field(default_factory=list)
    # A wheel that meets only a newer policy than `policy`: "publish" or "fail" it.
    newer_policy: NewerPolicy = DEFAULT_NEWER_POLICY
    enabled: bool = True
    # The Debian release that `armwheels image build` makes `image` from, on hosts
    # without a registry: the one whose glibc is the policy's floor, where there is one
    # (bullseye 2.31, bookworm 2.36, trixie 2.41). A pulled production image ignores it.
    suite: DebianSuite = "bookworm"

    @field_validator("python_tags")
    @classmethod
    def _python_tags(cls, value: list[str]) -> list[str]:
        for tag in value:
            try:
                python_version_of_tag(tag)
            except BadName as exc:
                raise ValueError(str(exc)) from exc
            Tag(tag, tag, "any")
        return value

    @model_validator(mode="after")
    def _kind(self) -> TargetSettings:
        """A manylinux target promises a glibc floor, and manylinux armv7l is hard-float;
        a distribution target's platform tag is its machines'."""
        if self.arch != "armv7l" and self.float_abi != "hard":
            raise ValueError(f"float_abi is for 32-bit ARM targets, not {self.arch}")
        if self.kind == "manylinux":
            if not self.policy:
                raise ValueError("policy is required (a manylinux policy of the arch)")
            if not is_manylinux(self.policy) or not self.policy.endswith("_" + self.arch):
                raise ValueError(
                    f"policy {self.policy!r} is not a manylinux policy for {self.arch}"
                )
            if self.float_abi != "hard":
                raise ValueError(
                    "manylinux armv7l wheels are hard-float: a soft-float (armel) target is"
                    ' kind = "distribution"'
                )
            if self.machines:
                raise ValueError('machines are for kind = "distribution" targets')
            return self
        allowed = DISTRIBUTION_MACHINES[self.arch]
        machines = self.machines or list(distribution_machines(self.arch, self.float_abi))
        unknown = [m for m in machines if m not in allowed]
        if unknown:
            raise ValueError(
                f"machines {unknown} are not {self.arch} (known: {', '.join(allowed)})"
            )
        machines = sorted(set(machines), key=allowed.index)
        platform = distribution_platform(machines)
        if self.policy and self.policy != platform:
            raise ValueError(
                f"a distribution target's policy is its machines' platform tag ({platform})"
            )
        self.machines, self.policy = machines, platform
        return self


def _default_targets() -> dict[str, TargetSettings]:
    """Each arch's CPythons as ARM devices run them (Debian and Raspberry Pi OS bullseye
    3.9, bookworm 3.11, trixie 3.13), one target per local image, whose Debian release
    is that CPython's. Only `aarch64` is on: the others are one `enabled = true` (and an
    `armwheels image build --target NAME`) away; a farm on PyPA's images serves all three
    from one target instead (docs/targets.md)."""
    return {
        "aarch64": TargetSettings(
            arch="aarch64",
            image="armwheels/build-aarch64:bookworm",
            python_tags=["cp311"],
            policy="manylinux2014_aarch64",
        ),
        # Debian has no release at manylinux2014's glibc (2.17): auditwheel tags what a
        # wheel built on bullseye (2.31) or trixie (2.41) needs, and newer_policy =
        # "publish" (the default) serves one meeting only a newer policy to the devices
        # with that glibc, among them every system of the release whose CPython it is for.
        "aarch64-bullseye": TargetSettings(
            arch="aarch64",
            image="armwheels/build-aarch64:bullseye",
            suite="bullseye",
            python_tags=["cp39"],
            policy="manylinux2014_aarch64",
            enabled=False,
        ),
        "aarch64-trixie": TargetSettings(
            arch="aarch64",
            image="armwheels/build-aarch64:trixie",
            suite="trixie",
            python_tags=["cp313"],
            policy="manylinux2014_aarch64",
            enabled=False,
        ),
        # PyPA publishes no manylinux2014 image for armv7l: its oldest is manylinux_2_31,
        # whose glibc floor is bullseye's: the local image links nothing newer.
        "armv7l": TargetSettings(
            arch="armv7l",
            image="armwheels/build-armv7l:bullseye",
            suite="bullseye",
            python_tags=["cp39"],
            policy="manylinux_2_31_armv7l",
            enabled=False,
        ),
        # CPython 3.11 and 3.13 for the same devices (Debian and Raspberry Pi OS bookworm,
        # trixie): glibc 2.36 and 2.41, so a wheel linking newer symbols than 2.31's meets
        # a newer policy.
        "armv7l-bookworm": TargetSettings(
            arch="armv7l",
            image="armwheels/build-armv7l:bookworm",
            suite="bookworm",
            python_tags=["cp311"],
            policy="manylinux_2_31_armv7l",
            enabled=False,
        ),
        "armv7l-trixie": TargetSettings(
            arch="armv7l",
            image="armwheels/build-armv7l:trixie",
            suite="trixie",
            python_tags=["cp313"],
            policy="manylinux_2_31_armv7l",
            enabled=False,
        ),
    }


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# Addresses an egress build never reaches, whatever the operator opens (ipaddress's
# is_<kind> properties).
ALWAYS_REFUSED = ("loopback", "unspecified", "link_local", "multicast")


def openable_network(text: str) -> IPNetwork:
    """A network an operator may open to egress builds; ValueError names the problem."""
    network = ipaddress.ip_network(text, strict=False)
    for kind in ALWAYS_REFUSED:
        for address in (network.network_address, network.broadcast_address):
            if getattr(address, f"is_{kind}"):
                raise ValueError(f"{text}: {kind.replace('_', '-')} addresses are never opened")
    return network


class AutoPackagesSettings(_Section):
    """Whether a build that fails for a missing system library (a header, a library, a
    pkg-config module or CMake package whose package the diagnosis names) is built again
    in the same attempt with that package installed into a derived image. Packages come
    only from the build image's own distribution archive (its package manager's sources);
    `deny` lists those never installed this way."""

    enabled: bool = True
    deny: list[str] = Field(default_factory=list)
    # Builds again at most this many times per attempt, each adding what the last one
    # named (a project may report one missing library at a time).
    rounds: int = Field(default=2, ge=1, le=5)

    @field_validator("deny")
    @classmethod
    def _deny(cls, value: list[str]) -> list[str]:
        return package_names(value)


class BuilderSettings(_Section):
    master_url: str = ""
    token: SecretStr = SecretStr("")
    name: str = ""
    # auto: native on a host of the target's arch; else cross where the cross image
    # exists (x86_64 hosts), with the emulated docker backend as the fallback of each
    # build; else docker (every build emulated).
    backend: Literal["auto", "cross", "docker", "native"] = "auto"
    cross_image: str = "armwheels/cross:bookworm"
    work_dir: Path = Path("armwheels-work")
    # Mounted into build containers and exported as PIP_CERT/SSL_CERT_FILE.
    ca_bundle: Path | None = None
    # Names of host environment variables passed into builds (proxies).
    pass_env: list[str] = Field(
        default_factory=lambda: [
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "NO_PROXY",
            "http_proxy",
            "https_proxy",
            "no_proxy",
            "PIP_INDEX_URL",
        ]
    )
    # The build container's network: "none" (the default: builds are offline, their
    # build dependencies come from the wheelhouse), "host", or a Docker network's name.
    # A recipe with egress = true reaches the outside through the egress proxy instead.
    network: str = "none"
    # The network of the trusted step that installs a recipe's system packages into a
    # derived image (apt-get / yum, never sdist code).
    recipe_network: str = "host"
    auto_packages: AutoPackagesSettings = Field(default_factory=AutoPackagesSettings)
    # Ports an egress build may CONNECT to through the builder's filtering proxy.
    egress_ports: list[int] = Field(default_factory=lambda: [443, 80], min_length=1)
    # Hosts the egress proxy never connects to, besides loopback and private addresses;
    # the master's and the broker's hosts are added to it.
    egress_refused_hosts: list[str] = Field(default_factory=list)
    # Non-global networks (CIDR) the egress proxy may connect to after all, for networks
    # whose resolver answers public names with such addresses; loopback, link-local,
    # multicast and unspecified addresses are never opened.
    egress_allowed_networks: list[str] = Field(default_factory=list)
    # Builds again after fetching a build requirement an offline build asked for (a
    # backend's get_requires_for_build_wheel), at most this many times.
    offline_rounds: int = Field(default=3, ge=0, le=20)
    build_timeout: int = Field(default=3600, ge=10)
    memory_limit: str = "4g"
    # CPU cores a build may use (fractions allowed); empty means all of the host's.
    cpus: float | None = Field(default=None, gt=0, le=1024)
    pids_limit: int = Field(default=4096, ge=64)
    # Builds this host runs at once, each a job claimed, beaten for and handed back on its
    # own. Empty: as many as the host's cores and memory hold with `cpus` and
    # `memory_limit` each (builder/slots.py), so one when `cpus` is unset.
    slots: int | None = Field(default=None, ge=1, le=MAX_SLOTS)
    # A build whose work directory (sources, venv, temporary files, wheels) grows past
    # this is killed; /tmp inside a container is a tmpfs of `tmp_size` bytes.
    work_dir_limit: int = Field(default=20 * 1024**3, ge=64 * 1024**2)
    tmp_size: int = Field(default=1024**3, ge=16 * 1024**2)
    # Unprivileged account that runs the sdist's code: a uid inside containers, a user
    # name for the native backend when the builder runs as root.
    build_user: str = "nobody"
    build_uid: int = Field(default=65534, ge=1)
    # Wheels of build dependencies shared between the jobs of this builder; downloaded
    # only as wheels by the builder itself and mounted read-only into builds.
    wheelhouse: bool = True
    wheelhouse_limit: int = Field(default=2 * 1024**3, ge=0)
    # What one build step may write to its log; past it the builder keeps the first and
    # last halves (the master's rule) and the build goes on within its other limits.
    max_log_bytes: int = Field(default=64 * 1024**2, ge=64 * 1024)

    @field_validator("egress_ports")
    @classmethod
    def _egress_ports(cls, value: list[int]) -> list[int]:
        for port in value:
            if not 1 <= port <= 65535:
                raise ValueError(f"not a port: {port}")
        return sorted(set(value))

    @field_validator("egress_allowed_networks")
    @classmethod
    def _egress_allowed_networks(cls, value: list[str]) -> list[str]:
        for text in value:
            openable_network(text)
        return value

    @field_validator("ca_bundle")
    @classmethod
    def _ca_bundle(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"file not found: {value}")
        return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ARMWHEELS_",
        env_nested_delimiter="__",
        extra="forbid",
        case_sensitive=False,
    )

    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    upstream: UpstreamSettings = Field(default_factory=UpstreamSettings)
    master: MasterSettings = Field(default_factory=MasterSettings)
    targets: dict[str, TargetSettings] = Field(default_factory=_default_targets)
    builder: BuilderSettings = Field(default_factory=BuilderSettings)
    index: IndexSettings = Field(default_factory=IndexSettings)
    push: list[PushTarget] = Field(default_factory=list)

    _toml_file: ClassVar[Path | None] = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if cls._toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=cls._toml_file))
        return tuple(sources)

    @field_validator("targets", mode="before")
    @classmethod
    def _target_arches(cls, value: Any) -> Any:
        """A target named after an arch is of that arch unless it says otherwise."""
        if isinstance(value, dict):
            for name, target in value.items():
                if isinstance(target, dict) and "arch" not in target:
                    if name not in ARCHES:
                        raise ValueError(
                            f"target {name!r} names no arch: set arch to one of {', '.join(ARCHES)}"
                        )
                    target["arch"] = name
        return value

    @field_validator("targets")
    @classmethod
    def _targets(cls, value: dict[str, TargetSettings]) -> dict[str, TargetSettings]:
        for name, target in value.items():
            if not re.match(TARGET_NAME_PATTERN, name):
                raise ValueError(
                    f"target name {name!r}: lower case letters, digits, '-' and '_' only"
                )
            if target.kind == "distribution" and name in RESERVED_TARGET_NAMES:
                raise ValueError(f"target name {name!r} is a path of the master's own")
        for name, target in value.items():
            if target.fallback_for is None:
                continue
            primary = value.get(target.fallback_for)
            if primary is None or primary.arch != target.arch or target.fallback_for == name:
                raise ValueError(
                    f"targets.{name}.fallback_for: {target.fallback_for} is not another"
                    f" target of {target.arch}"
                )
            if "distribution" in (target.kind, primary.kind) or primary.fallback_for:
                raise ValueError(
                    f"targets.{name}.fallback_for: only a manylinux target may fall back to"
                    " another manylinux target that falls back to none"
                )
            if primary.newer_policy != "fail":
                raise ValueError(
                    f"targets.{name}.fallback_for: target {target.fallback_for} publishes"
                    " wheels of a newer policy (newer_policy = publish), so none of its jobs"
                    " ever falls back: set its newer_policy to fail"
                )
        distributions = [(n, t) for n, t in value.items() if t.kind == "distribution"]
        for position, (name, target) in enumerate(distributions):
            for other, seen in distributions[:position]:
                if target.policy == seen.policy and set(target.python_tags) & set(seen.python_tags):
                    raise ValueError(
                        f"targets {other} and {name} would publish wheels of the same names"
                        f" ({target.policy}): give them different machines or python_tags"
                    )
        return value

    @field_validator("push")
    @classmethod
    def _push_names(cls, value: list[PushTarget]) -> list[PushTarget]:
        names = [target.name for target in value]
        if len(names) != len(set(names)):
            raise ValueError("push target names must be unique")
        return value

    @model_validator(mode="after")
    def _derived(self) -> Settings:
        data_dir = self.master.data_dir.absolute()
        self.master.data_dir = data_dir
        if not self.database.url:
            self.database.url = f"sqlite:///{data_dir / 'armwheels.db'}"
        if not self.broker.url:
            self.broker.url = f"sqla+sqlite:///{data_dir / 'broker.db'}"
        if not self.builder.master_url:
            self.builder.master_url = self.master.public_url
        self.builder.master_url = self.builder.master_url.rstrip("/")
        farm = {urlsplit(self.builder.master_url).hostname, urlsplit(self.broker.url).hostname}
        refused = set(self.builder.egress_refused_hosts) | {host for host in farm if host}
        self.builder.egress_refused_hosts = sorted(refused)
        self.builder.work_dir = self.builder.work_dir.absolute()
        return self

    def enabled_targets(self) -> dict[str, TargetSettings]:
        return {name: t for name, t in self.targets.items() if t.enabled}

    def distribution_indexes(self) -> list[str]:
        """The distribution targets' names, each an index of its own (a disabled one
        keeps serving the wheels it has)."""
        return sorted(n for n, t in self.targets.items() if t.kind == "distribution")

    def planned_targets(self) -> dict[str, TargetSettings]:
        """The enabled targets every release is planned for: fallback targets only get
        the jobs their primary target hands them (fallbacks_of)."""
        return {n: t for n, t in self.enabled_targets().items() if t.fallback_for is None}

    def fallbacks_of(self, target: str) -> dict[str, TargetSettings]:
        """The enabled targets that take over `target`'s jobs needing a newer glibc."""
        return {n: t for n, t in self.enabled_targets().items() if t.fallback_for == target}

    def targets_of(self, arch: str, enabled: bool = True) -> list[str]:
        """The names of the targets of an arch, sorted."""
        chosen = self.enabled_targets() if enabled else self.targets
        return sorted(name for name, t in chosen.items() if t.arch == arch)

    def builder_target(self, arch: str | None, target: str | None) -> str:
        """The one target a builder started with --arch and/or --target builds; ConfigError
        when none or several fit."""
        if target is not None:
            found = self.targets.get(target)
            if found is None or not found.enabled:
                known = ", ".join(sorted(self.enabled_targets())) or "none"
                raise ConfigError(f"no enabled target {target} (enabled: {known})")
            if arch is not None and found.arch != arch:
                raise ConfigError(f"target {target} is for {found.arch}, not {arch}")
            return target
        if arch is None:
            raise ConfigError("name the target to build: --arch ARCH or --target NAME")
        names = self.targets_of(arch)
        if not names:
            raise ConfigError(f"no enabled target for {arch} in the configuration")
        if len(names) > 1:
            raise ConfigError(
                f"{arch} has several targets ({', '.join(names)}): pass --target NAME,"
                " one builder per target"
            )
        return names[0]

    def float_abi(self, target: str, policy: str) -> FloatAbi:
        """The float ABI a job's ELF files must have. A distribution job's target must
        still be configured: its float ABI is not in the job (ConfigError)."""
        settings = self.targets.get(target)
        if settings is None or settings.policy != policy:
            if is_distribution_policy(policy):
                raise ConfigError(
                    f"target {target} is no longer configured as it was: its wheel's float"
                    " ABI cannot be checked"
                )
            return "hard"
        return settings.float_abi

    def newer_policy(self, target: str) -> NewerPolicy:
        """The target's rule for a wheel meeting only a newer policy; "fail" for a target
        no longer configured, whose jobs may still be building."""
        settings = self.targets.get(target)
        return settings.newer_policy if settings is not None else "fail"


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "config"
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "unknown setting"
    return f"{where}: {message}"


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Read and validate the configuration, raising ConfigError with one line."""
    if path is None and os.environ.get(CONFIG_ENV):
        path = Path(os.environ[CONFIG_ENV])
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            with path.open("rb") as handle:
                tomllib.load(handle)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    previous = Settings._toml_file
    Settings._toml_file = path
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        origin = str(path) if path else "environment"
        raise ConfigError(f"invalid configuration ({origin}): {_describe(exc)}") from exc
    finally:
        Settings._toml_file = previous

"""A local stand-in for PyPI's changelog: XML-RPC, JSON API, Simple API and file downloads.

PyPI's XML-RPC endpoint cannot be reached from the test machines, so the farm's changelog
client is exercised against this server instead. It replays a deterministic, realistic
journal (see `generate_journal`) up to a movable head and answers with PyPI's wire
protocol: same method names, tuple shapes, 50,000-entry pages, fault codes and strings.
Run it as `python -m tests.pypi_replay --port P --events N --seed S`, or from a test via
`replay_server(...)`, which also hands the test the same journal to compute expectations.
"""

from __future__ import annotations

import argparse
import base64
import bisect
import functools
import gc
import gzip
import hashlib
import io
import json
import random
import subprocess
import sys
import tarfile
import tempfile
import xmlrpc.client
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

import httpx
from packaging.specifiers import SpecifierSet
from packaging.utils import (
    canonicalize_name,
    canonicalize_version,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import Version
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.servers import ROOT, free_port, stop_process, wait_until

DEFAULT_PAGE_LIMIT = 50_000
DEFAULT_BASE_SERIAL = 1000
DEFAULT_START_TIME = 1_704_067_200  # 2024-01-01T00:00:00Z
SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"
RATE_LIMIT_TEXT = (
    "HTTPTooManyRequests: The action could not be performed because there were too many "
    "requests by the client. Limit may reset in {seconds} seconds."
)

ROLES = ("Owner", "Maintainer")
#: Kinds (see `action_kind`) every generated stream of >= 1,000 events contains.
REQUIRED_KINDS: tuple[str, ...] = (
    "create",
    "new release",
    "add source file",
    "add binary wheel",
    "add pure wheel",
    "remove file",
    "remove release",
    "remove project",
    "yank release",
    "unyank release",
    "add Owner",
    "add Maintainer",
    "remove Owner",
    "remove Maintainer",
    "invite Maintainer",
    "accepted Maintainer",
    "revoke_invite Maintainer",
    "decline_invite Maintainer",
    "change Owner to Maintainer",
    "docdestroy",
    "unknown",
)
_PLAIN_ACTIONS = frozenset(
    {
        "create",
        "new release",
        "remove release",
        "remove project",
        "yank release",
        "unyank release",
        "docdestroy",
    }
)
_ROLE_VERBS = frozenset({"add", "remove", "invite", "accepted", "revoke_invite", "decline_invite"})


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One row of PyPI's journal, as `changelog_since_serial` reports it."""

    name: str
    version: str | None
    timestamp: int
    action: str
    serial: int

    def as_tuple(self) -> tuple[str, str | None, int, str, int]:
        return (self.name, self.version, self.timestamp, self.action, self.serial)


def action_kind(action: str) -> str:
    """Classify an action string; anything PyPI might add later is "unknown"."""
    if action in _PLAIN_ACTIONS:
        return action
    words = action.split(" ")
    if len(words) == 4 and words[0] == "add" and words[2] == "file":
        if words[1] == "source":
            return "add source file"
        return "add pure wheel" if words[1].startswith("py") else "add binary wheel"
    if len(words) == 3 and words[0] == "remove" and words[1] == "file":
        return "remove file"
    if len(words) == 3 and words[0] in _ROLE_VERBS and words[1] in ROLES:
        return f"{words[0]} {words[1]}"
    change = len(words) == 5 and words[0] == "change" and words[3] == "to"
    if change and words[1] in ROLES and words[4] in ROLES:
        return f"change {words[1]} to {words[4]}"
    return "unknown"


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Building 100k long-lived objects triggers many useless collections: skip them."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# --- deterministic derived data -----------------------------------------------------------


def _stable_int(*parts: str) -> int:
    """A hash that, unlike hash(), is the same in every process."""
    digest = hashlib.blake2b("\0".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


_REQUIRES_PYTHON: tuple[str | None, ...] = (
    None,
    None,
    None,
    None,
    ">=3.8",
    ">=3.8",
    ">=3.9",
    ">=3.9",
    ">=3.10",
    ">=3.11",
    ">=3.12",
    ">=3.7",
    ">=3.8,<4",
    ">=2.7, !=3.0.*, !=3.1.*, !=3.2.*, !=3.3.*",
)


def requires_python_for(normalized: str, version: str) -> str | None:
    """Requires-Python of a release: not in the journal, so derived from it (per major)."""
    return _requires_python(normalized, version.split(".", 1)[0])


@functools.lru_cache(maxsize=65536)
def _requires_python(normalized: str, major: str) -> str | None:
    return _REQUIRES_PYTHON[_stable_int("requires-python", normalized, major) % 14]


_YANK_REASONS: tuple[str | None, ...] = (
    None,
    None,
    "broken build",
    "Security issue, upgrade to the next release",
    "wrong dependency pins",
)


def yank_reason_for(normalized: str, version: str, serial: int) -> str | None:
    """The reason given when yanking: the journal does not carry it, so derive it."""
    return _YANK_REASONS[_stable_int("yank", normalized, version, str(serial)) % 5]


def _microseconds(filename: str) -> int:
    return _stable_int("upload", filename) % 1_000_000


def _zip_entry(zf: zipfile.ZipFile, path: str, data: bytes) -> None:
    info = zipfile.ZipInfo(path, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    zf.writestr(info, data)


def _record_line(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


@functools.lru_cache(maxsize=1024)
def file_bytes(filename: str) -> bytes:
    """The bytes served for a file: a small valid sdist or wheel, a function of the name.

    Sdists are buildable (setuptools pyproject); a random-sized blob makes sizes differ.
    """
    rng = random.Random(_stable_int("bytes", filename))
    blob = rng.randbytes(rng.randint(64, 4096))
    if filename.endswith(".whl"):
        _name, version, _build, tags = parse_wheel_filename(filename)
        base = filename.split("-", 1)[0]
        dist_info = f"{base}-{version}.dist-info"
        metadata = f"Metadata-Version: 2.1\nName: {base}\nVersion: {version}\n".encode()
        tag_lines = "".join(f"Tag: {tag}\n" for tag in sorted(str(t) for t in tags))
        pure = all(t.platform == "any" for t in tags)
        wheel = (
            "Wheel-Version: 1.0\nGenerator: pypi-replay\n"
            f"Root-Is-Purelib: {'true' if pure else 'false'}\n{tag_lines}"
        ).encode()
        members = [
            (f"{base}/__init__.py", f'__version__ = "{version}"\n'.encode()),
            (f"{base}/_blob.bin", blob),
            (f"{dist_info}/METADATA", metadata),
            (f"{dist_info}/WHEEL", wheel),
        ]
        record = "\n".join([*(_record_line(p, d) for p, d in members), f"{dist_info}/RECORD,,"])
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as zf:
            for path, data in members:
                _zip_entry(zf, path, data)
            _zip_entry(zf, f"{dist_info}/RECORD", (record + "\n").encode())
        return buffer.getvalue()
    if filename.endswith(".tar.gz"):
        _name, version = parse_sdist_filename(filename)
        base = filename.split("-", 1)[0]
        root = f"{base}-{version}"
        pkg_info = f"Metadata-Version: 2.1\nName: {base}\nVersion: {version}\n".encode()
        pyproject = (
            '[build-system]\nrequires = ["setuptools>=61"]\n'
            'build-backend = "setuptools.build_meta"\n\n'
            f'[project]\nname = "{base}"\nversion = "{version}"\n'
        ).encode()
        members = [
            (f"{root}/PKG-INFO", pkg_info),
            (f"{root}/pyproject.toml", pyproject),
            (f"{root}/{base}/__init__.py", f'__version__ = "{version}"\n'.encode()),
            (f"{root}/{base}/_blob.bin", blob),
        ]
        buffer = io.BytesIO()
        with (
            gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as gz,
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            for path, data in members:
                info = tarfile.TarInfo(path)
                info.size = len(data)
                info.mode = 0o644
                info.mtime = 0
                tar.addfile(info, io.BytesIO(data))
        return buffer.getvalue()
    raise ValueError(f"not an sdist or wheel filename: {filename}")


@dataclass(frozen=True, slots=True)
class FileDigests:
    size: int
    sha256: str
    md5: str
    blake2b_256: str


@functools.cache
def file_digests(filename: str) -> FileDigests:
    """What the JSON and Simple APIs publish for `file_bytes(filename)`."""
    data = file_bytes(filename)
    return FileDigests(
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        md5=hashlib.md5(data, usedforsecurity=False).hexdigest(),
        blake2b_256=hashlib.blake2b(data, digest_size=32).hexdigest(),
    )


# --- replayed state ---------------------------------------------------------------------


class JournalError(ValueError):
    """An entry that does not fit the state it is applied to (the generator's self-check)."""


@dataclass(slots=True)
class FileState:
    filename: str
    packagetype: str  # "sdist" or "bdist_wheel"
    python_version: str  # "source", "cp311", "py3", ...
    upload_time: int
    serial: int

    def upload_datetime(self) -> datetime:
        moment = datetime.fromtimestamp(self.upload_time, UTC)
        return moment.replace(microsecond=_microseconds(self.filename))


@dataclass(slots=True)
class ReleaseState:
    version: str
    created: int
    serial: int
    requires_python: str | None
    files: dict[str, FileState] = field(default_factory=dict)
    yanked: bool = False
    yanked_reason: str | None = None


@dataclass(slots=True)
class ProjectState:
    name: str  # display name as last created
    normalized: str
    created: int
    last_serial: int
    releases: dict[str, ReleaseState] = field(default_factory=dict)
    roles: dict[str, str] = field(default_factory=dict)  # user -> role
    invites: dict[str, str] = field(default_factory=dict)  # user -> role

    def latest(self) -> ReleaseState | None:
        """PyPI's "latest": highest non-yanked final, else non-yanked pre, else anything."""
        if not self.releases:
            return None
        return max(
            self.releases.values(),
            key=lambda r: (not r.yanked, not Version(r.version).is_prerelease, Version(r.version)),
        )


@dataclass
class ReplayState:
    """Projects, releases, files and roles after applying the journal up to `head`."""

    head: int = 0
    applied: int = 0  # how many journal entries are applied
    last_serial: int | None = None
    projects: dict[str, ProjectState] = field(default_factory=dict)  # by normalised name
    files: dict[str, tuple[str, str]] = field(default_factory=dict)  # filename -> (key, ver)
    removed: set[str] = field(default_factory=set)  # normalised names removed, not re-created
    _keys: dict[str, str] = field(default_factory=dict, repr=False)

    def key(self, name: str) -> str:
        key = self._keys.get(name)
        if key is None:
            key = self._keys[name] = canonicalize_name(name)
        return key

    def lookup(self, name: str) -> ProjectState | None:
        return self.projects.get(self.key(name))

    def advance(self, journal: list[JournalEntry], head: int) -> None:
        """Apply the entries after the current head up to `head` (never backwards)."""
        if head < self.head:
            raise ValueError(f"cannot move back from {self.head} to {head}")
        index = self.applied
        with _gc_paused():
            while index < len(journal) and journal[index].serial <= head:
                self.apply(journal[index])
                index += 1
        self.applied = index
        self.head = head

    def apply(self, entry: JournalEntry, kind: str | None = None) -> None:
        """Apply one entry; `kind` is `action_kind(entry.action)` if the caller has it."""
        if self.last_serial is not None and entry.serial <= self.last_serial:
            raise JournalError(f"{entry}: serial not increasing")
        key = self.key(entry.name)
        project = self.projects.get(key)
        action = entry.action
        if action == "create":
            if project is not None:
                raise JournalError(f"{entry}: project exists")
            self.projects[key] = ProjectState(entry.name, key, entry.timestamp, entry.serial)
            self.removed.discard(key)
        elif project is None:
            raise JournalError(f"{entry}: no such project")
        else:
            project.last_serial = entry.serial
            self._apply_to(project, entry, kind or action_kind(action))
        self.last_serial = entry.serial

    def _release(self, project: ProjectState, entry: JournalEntry) -> ReleaseState:
        release = project.releases.get(entry.version or "")
        if release is None:
            raise JournalError(f"{entry}: no such release")
        return release

    def _apply_to(self, project: ProjectState, entry: JournalEntry, kind: str) -> None:
        words = entry.action.split(" ")
        if kind == "new release":
            if entry.version is None or entry.version in project.releases:
                raise JournalError(f"{entry}: release missing a version or exists")
            rp = requires_python_for(project.normalized, entry.version)
            project.releases[entry.version] = ReleaseState(
                entry.version, entry.timestamp, entry.serial, rp
            )
        elif kind in ("add source file", "add binary wheel", "add pure wheel"):
            release = self._release(project, entry)
            filename = words[3]
            if filename in self.files:
                raise JournalError(f"{entry}: file exists")
            packagetype = "sdist" if words[1] == "source" else "bdist_wheel"
            release.files[filename] = FileState(
                filename, packagetype, words[1], entry.timestamp, entry.serial
            )
            self.files[filename] = (project.normalized, release.version)
        elif kind == "remove file":
            release = self._release(project, entry)
            if release.files.pop(words[2], None) is None:
                raise JournalError(f"{entry}: no such file")
            del self.files[words[2]]
        elif kind == "remove release":
            release = self._release(project, entry)
            for filename in release.files:
                del self.files[filename]
            del project.releases[release.version]
        elif kind == "remove project":
            for release in project.releases.values():
                for filename in release.files:
                    del self.files[filename]
            del self.projects[project.normalized]
            self.removed.add(project.normalized)
        elif kind == "yank release":
            release = self._release(project, entry)
            if release.yanked:
                raise JournalError(f"{entry}: already yanked")
            release.yanked = True
            release.yanked_reason = yank_reason_for(
                project.normalized, release.version, entry.serial
            )
        elif kind == "unyank release":
            release = self._release(project, entry)
            if not release.yanked:
                raise JournalError(f"{entry}: not yanked")
            release.yanked, release.yanked_reason = False, None
        elif kind not in ("unknown", "docdestroy"):
            self._apply_role(project, entry, words)

    def _apply_role(self, project: ProjectState, entry: JournalEntry, words: list[str]) -> None:
        verb, role, user = words[0], words[1], words[2]
        if verb == "add":
            if user in project.roles:
                raise JournalError(f"{entry}: user has a role")
            project.roles[user] = role
        elif verb == "remove":
            if project.roles.pop(user, None) != role:
                raise JournalError(f"{entry}: user had not that role")
        elif verb == "invite":
            if user in project.roles or user in project.invites:
                raise JournalError(f"{entry}: user has a role or invite")
            project.invites[user] = role
        elif verb in ("accepted", "revoke_invite", "decline_invite"):
            if project.invites.pop(user, None) != role:
                raise JournalError(f"{entry}: no such invite")
            if verb == "accepted":
                project.roles[user] = role
        elif verb == "change":
            if project.roles.get(user) != role:
                raise JournalError(f"{entry}: user had not that role")
            project.roles[user] = words[4]


def state_at(journal: list[JournalEntry], head: int | None = None) -> ReplayState:
    """The state a farm following the journal up to `head` (default: all of it) should see."""
    state = ReplayState()
    last = journal[-1].serial if journal else 0
    state.advance(journal, last if head is None else head)
    return state


# --- the journal generator ----------------------------------------------------------------

_WORD_TEXT = (
    "alpha beta cloud data django flask async http json yaml toml tensor torch array frame "
    "sci plot graph net web api client server tool kit utils helpers core lib fast tiny mini "
    "mega super auto aws azure redis mongo sql db cache queue task job flow pipe stream event "
    "log trace metrics stats ml nlp vision image audio video text parse lex ast compile build "
    "wheel pack deploy docker kube cli shell term color rich pretty test mock fixture bench "
    "crypto hash auth oauth jwt token secure geo map time date cron money pay shop cart game "
    "engine robot sensor iot serial usb gpu cuda arm rust zig quantum bio chem astro math "
    "linear sparse matrix vector table sheet excel pdf doc markdown html xml css svg"
)
_WORDS = _WORD_TEXT.split()
_PLATFORMS = (
    ("manylinux_2_17_x86_64.manylinux2014_x86_64", 1.0),
    ("macosx_11_0_arm64", 0.5),
    ("macosx_10_9_x86_64", 0.3),
    ("win_amd64", 0.5),
    ("musllinux_1_2_x86_64", 0.2),
    ("win32", 0.05),
    ("manylinux_2_17_aarch64.manylinux2014_aarch64", 0.25),
    ("manylinux_2_31_armv7l", 0.07),
    ("musllinux_1_2_aarch64", 0.08),
)
_AARCH64 = "manylinux_2_17_aarch64.manylinux2014_aarch64"
_MINORS = (8, 9, 10, 11, 12, 13)
_PROFILE_KINDS = ("sdist", "pure", "binary", "wheel-pure", "wheel-binary")
_PROFILE_WEIGHTS = (0.28, 0.35, 0.25, 0.07, 0.05)


@functools.cache
def _cpython_minors(requires_python: str | None) -> tuple[int, ...]:
    if requires_python is None:
        return _MINORS
    spec = SpecifierSet(requires_python)
    allowed = tuple(m for m in _MINORS if spec.contains(f"3.{m}"))
    return allowed or (13,)


@dataclass(slots=True)
class _Profile:
    """How a project publishes: which files a release gets. Mutable: projects evolve."""

    kind: str
    platforms: list[str]
    python_count: int
    abi3: bool
    universal: bool


class _Generator:
    """Emits events by applying them to a ReplayState, so every stream is consistent."""

    def __init__(self, events: int, seed: int, base_serial: int, start_time: int) -> None:
        self.events = events
        self.rng = random.Random(seed)
        self.state = ReplayState()
        self.entries: list[JournalEntry] = []
        self.serial = base_serial - 1
        self.time = start_time
        self.seen: set[str] = set()
        self.live: list[str] = []
        self.live_index: dict[str, int] = {}
        self.tickets: list[str] = []
        self.all_names: set[str] = set()
        self.removed: list[str] = []
        self.profiles: dict[str, _Profile] = {}
        self.max_version: dict[str, Version] = {}
        self.used_versions: dict[str, set[Version]] = {}
        self.used_filenames: set[str] = set()
        self.pending: list[tuple[str, str]] = []  # (key, user) with an open invite
        self.users = self._make_users(400)
        ops: dict[str, tuple[float, Callable[[bool], bool]]] = {
            "new release": (0.60, self._op_upload),
            "create": (0.12, self._op_new_project),
            "late files": (0.07, self._op_late_files),
            "yank release": (0.02, self._op_yank),
            "unyank release": (0.01, self._op_unyank),
            "remove file": (0.015, self._op_remove_file),
            "remove release": (0.01, self._op_remove_release),
            "remove project": (0.006, self._op_remove_project),
            "recreate": (0.004, self._op_recreate),
            "docdestroy": (0.004, self._op_docdestroy),
            "unknown": (0.012, self._op_unknown),
            "add Owner": (0.004, lambda f: self._op_add_role("Owner", f)),
            "add Maintainer": (0.01, lambda f: self._op_add_role("Maintainer", f)),
            "remove Owner": (0.003, lambda f: self._op_remove_role("Owner", f)),
            "remove Maintainer": (0.004, lambda f: self._op_remove_role("Maintainer", f)),
            "invite Maintainer": (0.012, lambda f: self._op_invite("Maintainer", f)),
            "invite Owner": (0.004, lambda f: self._op_invite("Owner", f)),
            "accepted Maintainer": (0.008, lambda f: self._op_answer("accepted", "Maintainer")),
            "accepted Owner": (0.003, lambda f: self._op_answer("accepted", "Owner")),
            "decline_invite Maintainer": (
                0.002,
                lambda f: self._op_answer("decline_invite", "Maintainer"),
            ),
            "revoke_invite Maintainer": (
                0.002,
                lambda f: self._op_answer("revoke_invite", "Maintainer"),
            ),
            "change Owner to Maintainer": (0.002, lambda f: self._op_change("Owner", f)),
            "change Maintainer to Owner": (0.002, lambda f: self._op_change("Maintainer", f)),
        }
        self.ops = {kind: op for kind, (_w, op) in ops.items()}
        self.op_list = [op for _w, op in ops.values()]
        cumulative: list[float] = []
        total = 0.0
        for weight, _op in ops.values():
            total += weight
            cumulative.append(total)
        self.cum_weights = cumulative
        self.forced_ops: dict[str, Callable[[bool], bool]] = {
            **self.ops,
            "add source file": lambda f: self._op_new_project(f, "sdist"),
            "add binary wheel": lambda f: self._op_new_project(f, "binary"),
            "add pure wheel": lambda f: self._op_new_project(f, "pure"),
        }
        self.prerequisite = {
            "unyank release": "yank release",
            "accepted Maintainer": "invite Maintainer",
            "revoke_invite Maintainer": "invite Maintainer",
            "decline_invite Maintainer": "invite Maintainer",
            "remove Owner": "add Owner",
            "change Owner to Maintainer": "add Owner",
            "remove Maintainer": "add Maintainer",
        }

    # -- plumbing

    def run(self) -> list[JournalEntry]:
        rng = self.rng
        force_from = self.events * 3 // 10
        while len(self.entries) < self.events:
            self.time += int(rng.expovariate(1 / 8))
            if len(self.live) < 10:
                self._op_new_project(False)
                continue
            if len(self.entries) >= force_from and rng.random() < 0.5:
                missing = [k for k in REQUIRED_KINDS if k not in self.seen]
                if missing:
                    kind = missing[0]
                    if not self.forced_ops[kind](True):
                        self.forced_ops[self.prerequisite.get(kind, "create")](True)
                    continue
            point = rng.random() * self.cum_weights[-1]
            op = self.op_list[bisect.bisect_right(self.cum_weights, point)]
            op(False)
        return self.entries

    def _emit(self, name: str, version: str | None, action: str) -> None:
        if len(self.entries) >= self.events:
            return
        self.serial += 1
        if self.entries and self.rng.random() < 0.02:
            self.serial += self.rng.randint(1, 5)  # ids taken by rolled-back transactions
        entry = JournalEntry(name, version, self.time, action, self.serial)
        kind = action_kind(action)
        self.state.apply(entry, kind)
        self.entries.append(entry)
        self.seen.add(kind)

    def _make_users(self, count: int) -> list[str]:
        users: set[str] = set()
        while len(users) < count:
            word = self.rng.choice(_WORDS)
            suffix = self.rng.choice(("", "_dev", "-bot", str(self.rng.randint(1, 99))))
            users.add(f"{word}{suffix}")
        return sorted(users)

    def _add_live(self, key: str) -> None:
        self.live_index[key] = len(self.live)
        self.live.append(key)
        popularity = min(30, int(self.rng.paretovariate(1.3)))
        self.tickets.extend([key] * popularity)

    def _drop_live(self, key: str) -> None:
        index = self.live_index.pop(key)
        last = self.live.pop()
        if last != key:
            self.live[index] = last
            self.live_index[last] = index

    def _popular(self) -> ProjectState:
        """A live project, busy ones more often (a few projects release all the time)."""
        key = self.rng.choice(self.tickets)
        if key not in self.live_index:
            key = self.rng.choice(self.live)
        return self.state.projects[key]

    def _pick(self, accept: Callable[[ProjectState], bool], forced: bool) -> ProjectState | None:
        for _ in range(25):
            project = self.state.projects[self.rng.choice(self.live)]
            if accept(project):
                return project
        if forced:
            for key in self.live:
                if accept(self.state.projects[key]):
                    return self.state.projects[key]
        return None

    # -- names and versions

    def _render(self, words: list[str], separators: tuple[str, ...]) -> str:
        rng = self.rng
        style = rng.random()
        if style < 0.6:
            parts = list(words)
        elif style < 0.8:
            parts = [w.capitalize() for w in words]
        elif style < 0.9:
            parts = [words[0].capitalize(), *words[1:]]
        elif style < 0.97:
            parts = [w.capitalize() if rng.random() < 0.5 else w for w in words]
        else:
            parts = [w.upper() for w in words]
        name = parts[0]
        for part in parts[1:]:
            name += rng.choice(separators) + part
        return name

    def _fresh_name(self) -> str:
        rng = self.rng
        if self.live and rng.random() < 0.1:
            # A neighbour of a live name that normalises differently: "foo-bar" -> "foobar".
            key = rng.choice(self.live)
            if "-" in key:
                display = self._render(["".join(key.split("-"))], ("",))
                if canonicalize_name(display) not in self.all_names:
                    return display
        while True:
            count = rng.choices((1, 2, 3), weights=(0.25, 0.55, 0.2))[0]
            words = rng.sample(_WORDS, count)
            if rng.random() < 0.1:
                words.append(rng.choice(("2", "3", "ng", "x", "py")))
            display = self._render(words, ("-", "-", "_", ".", ""))
            if canonicalize_name(display) not in self.all_names:
                return display

    def _mark_version(self, key: str, version: Version) -> None:
        # Version equality is PEP 440's: 1.0 == 1.0.0, which PyPI also refuses to reuse.
        self.used_versions.setdefault(key, set()).add(version)
        if key not in self.max_version or version > self.max_version[key]:
            self.max_version[key] = version

    @staticmethod
    def _bump(version: Version, index: int) -> str:
        release = list(version.release)
        release[index] += 1
        release[index + 1 :] = [0] * (len(release) - index - 1)
        return ".".join(str(part) for part in release)

    def _next_version(self, key: str) -> Version:
        rng = self.rng
        used = self.used_versions.setdefault(key, set())
        last = self.max_version.get(key)
        if last is None:
            candidate = rng.choice(("0.1.0", "0.0.1", "1.0.0", "0.1", "1.0", "2024.1.0", "0.1a1"))
        else:
            patch = len(last.release) - 1
            minor = max(patch - 1, 0)
            roll = rng.random()
            if last.pre is not None and roll < 0.5:
                candidate = f"{last.base_version}{last.pre[0]}{last.pre[1] + 1}"
            elif last.is_prerelease:
                candidate = last.base_version
            elif roll < 0.55:
                candidate = self._bump(last, patch)
            elif roll < 0.8:
                candidate = self._bump(last, minor)
            elif roll < 0.85:
                candidate = self._bump(last, 0)
            elif roll < 0.9:
                candidate = f"{last.base_version}.post{(last.post or 0) + 1}"
            elif roll < 0.97:
                candidate = self._bump(last, minor) + rng.choice(("rc1", "a1", "b1"))
            else:
                candidate = self._bump(last, patch) + ".dev0"
        version = Version(candidate)
        while version in used or (last is not None and version <= last):
            base = max(version, last) if last is not None else version
            version = Version(self._bump(Version(base.base_version), len(base.release) - 1))
        return version

    def _backport_version(self, project: ProjectState) -> Version | None:
        """A fix on an older series (1.4.3 after 2.0.0): "latest" is not "last uploaded"."""
        key = project.normalized
        top = self.max_version[key]
        finals = [Version(v) for v in project.releases]
        finals = [v for v in finals if not v.is_prerelease and v.release[0] < top.release[0]]
        if not finals:
            return None
        base = self.rng.choice(sorted(finals))
        candidate = Version(self._bump(Version(base.base_version), len(base.release) - 1))
        if candidate in self.used_versions[key]:
            return None
        return candidate

    # -- files

    def _make_profile(self, kind: str | None) -> _Profile:
        rng = self.rng
        if kind is None:
            kind = rng.choices(_PROFILE_KINDS, weights=_PROFILE_WEIGHTS)[0]
        platforms = [name for name, chance in _PLATFORMS if rng.random() < chance]
        return _Profile(
            kind=kind,
            platforms=platforms,
            python_count=rng.choice((1, 1, 2, 3, 4)),
            abi3=rng.random() < 0.15,
            universal=rng.random() < 0.3,
        )

    def _planned_files(self, key: str, version: str, profile: _Profile) -> list[tuple[str, str]]:
        """(python_version, filename) of every file this release would get today."""
        base = key.replace("-", "_")
        files: list[tuple[str, str]] = []
        if profile.kind in ("sdist", "pure", "binary"):
            files.append(("source", f"{base}-{version}.tar.gz"))
        rp = requires_python_for(key, version)
        if profile.kind in ("pure", "wheel-pure"):
            universal = profile.universal and (rp is None or rp.startswith(">=2.7"))
            tag = "py2.py3" if universal else "py3"
            files.append((tag, f"{base}-{version}-{tag}-none-any.whl"))
        if profile.kind in ("binary", "wheel-binary"):
            minors = _cpython_minors(rp)
            if profile.abi3:
                pythons = [(f"cp3{minors[0]}", "abi3")]
            else:
                pythons = [(f"cp3{m}", f"cp3{m}") for m in minors[-profile.python_count :]]
            for python, abi in pythons:
                for platform in profile.platforms:
                    files.append((python, f"{base}-{version}-{python}-{abi}-{platform}.whl"))
        return files

    def _upload_files(
        self, project: ProjectState, version: str, files: list[tuple[str, str]]
    ) -> None:
        for tag, filename in files:
            self.used_filenames.add(filename)
            self._emit(project.name, version, f"add {tag} file {filename}")
            self.time += self.rng.choice((0, 0, 1, 1, 2, 5))

    def _upload(self, project: ProjectState, parsed: Version, sdist_only: bool = False) -> None:
        key = project.normalized
        self._mark_version(key, parsed)
        version = str(parsed)
        planned = self._planned_files(key, version, self.profiles[key])
        files = [f for f in planned if f[1] not in self.used_filenames]
        if sdist_only:
            files = [f for f in files if f[0] == "source"] or files
        sdists = [f for f in files if f[0] == "source"]
        wheels = [f for f in files if f[0] != "source"]
        self.rng.shuffle(wheels)
        files = sdists + wheels if self.rng.random() < 0.7 else wheels + sdists
        self._emit(project.name, version, "new release")
        self._upload_files(project, version, files)

    # -- operations: each returns whether it emitted anything

    def _op_new_project(self, forced: bool, kind: str | None = None) -> bool:
        display = self._fresh_name()
        key = canonicalize_name(display)
        self.all_names.add(key)
        self.profiles[key] = self._make_profile(kind)
        self._create(display, key)
        return True

    def _create(self, display: str, key: str) -> None:
        self._emit(display, None, "create")
        self._emit(display, None, f"add Owner {self.rng.choice(self.users)}")
        project = self.state.projects.get(key)
        if project is None:  # the stream ended
            return
        self._add_live(key)
        self._upload(project, self._next_version(key))

    def _op_recreate(self, forced: bool) -> bool:
        if not self.removed:
            return False
        key = self.removed.pop(self.rng.randrange(len(self.removed)))
        words = key.split("-")
        display = self._render(words, ("-", "_", "."))
        self.profiles[key] = self._make_profile(None)
        self._create(display, key)
        return True

    def _op_upload(self, forced: bool) -> bool:
        project = self._popular()
        profile = self.profiles[project.normalized]
        version = None
        if self.rng.random() < 0.04:
            version = self._backport_version(project)
        if version is None:
            version = self._next_version(project.normalized)
        # Binary projects sometimes publish the sdist first and wheels later (or never).
        sdist_only = profile.kind == "binary" and self.rng.random() < 0.15
        self._upload(project, version, sdist_only)
        return True

    def _op_late_files(self, forced: bool) -> bool:
        rng = self.rng
        project = self._popular()
        if not project.releases:
            return False
        key = project.normalized
        profile = self.profiles[key]
        if profile.kind == "binary" and _AARCH64 not in profile.platforms and rng.random() < 0.4:
            profile.platforms.append(_AARCH64)  # the project starts shipping ARM wheels
        elif profile.kind.startswith("wheel-") and rng.random() < 0.3:
            profile.kind = profile.kind.removeprefix("wheel-")  # an sdist follows the wheels
        version = rng.choice(list(project.releases)[-3:])
        planned = self._planned_files(key, version, profile)
        missing = [f for f in planned if f[1] not in self.used_filenames]
        if not missing:
            return False
        self._upload_files(project, version, missing)
        return True

    def _op_yank(self, forced: bool) -> bool:
        project = self._pick(lambda p: any(not r.yanked for r in p.releases.values()), forced)
        if project is None:
            return False
        versions = [v for v, r in project.releases.items() if not r.yanked]
        self._emit(project.name, self.rng.choice(versions), "yank release")
        return True

    def _op_unyank(self, forced: bool) -> bool:
        project = self._pick(lambda p: any(r.yanked for r in p.releases.values()), forced)
        if project is None:
            return False
        versions = [v for v, r in project.releases.items() if r.yanked]
        self._emit(project.name, self.rng.choice(versions), "unyank release")
        return True

    def _op_remove_file(self, forced: bool) -> bool:
        project = self._pick(lambda p: any(r.files for r in p.releases.values()), forced)
        if project is None:
            return False
        release = self.rng.choice([r for r in project.releases.values() if r.files])
        filename = self.rng.choice(sorted(release.files))
        self._emit(project.name, release.version, f"remove file {filename}")
        return True

    def _op_remove_release(self, forced: bool) -> bool:
        project = self._pick(lambda p: bool(p.releases), forced)
        if project is None:
            return False
        self._emit(project.name, self.rng.choice(list(project.releases)), "remove release")
        return True

    def _op_remove_project(self, forced: bool) -> bool:
        if len(self.live) < (2 if forced else 30):
            return False
        key = self.rng.choice(self.live)
        self._emit(self.state.projects[key].name, None, "remove project")
        if key not in self.state.projects:
            self._drop_live(key)
            self.removed.append(key)
        return True

    def _op_docdestroy(self, forced: bool) -> bool:
        self._emit(self.state.projects[self.rng.choice(self.live)].name, None, "docdestroy")
        return True

    def _op_unknown(self, forced: bool) -> bool:
        project = self.state.projects[self.rng.choice(self.live)]
        user = self.rng.choice(self.users)
        repo = project.normalized
        action = self.rng.choice(
            (
                f"add Trusted Publisher GitHub {user}/{repo}",
                f"remove Trusted Publisher GitHub {user}/{repo}",
                "update classifiers",
            )
        )
        self._emit(project.name, None, action)
        return True

    def _fresh_user(self, project: ProjectState) -> str | None:
        for _ in range(10):
            user = self.rng.choice(self.users)
            if user not in project.roles and user not in project.invites:
                return user
        return None

    def _op_add_role(self, role: str, forced: bool) -> bool:
        project = self._pick(lambda p: True, forced)
        user = self._fresh_user(project) if project else None
        if project is None or user is None:
            return False
        self._emit(project.name, None, f"add {role} {user}")
        return True

    @staticmethod
    def _holders(project: ProjectState, role: str) -> list[str]:
        return sorted(user for user, held in project.roles.items() if held == role)

    def _op_remove_role(self, role: str, forced: bool) -> bool:
        need = 2 if role == "Owner" else 1  # never remove the last owner
        project = self._pick(lambda p: len(self._holders(p, role)) >= need, forced)
        if project is None:
            return False
        user = self.rng.choice(self._holders(project, role))
        self._emit(project.name, None, f"remove {role} {user}")
        return True

    def _op_invite(self, role: str, forced: bool) -> bool:
        project = self._pick(lambda p: True, forced)
        user = self._fresh_user(project) if project else None
        if project is None or user is None:
            return False
        self._emit(project.name, None, f"invite {role} {user}")
        self.pending.append((project.normalized, user))
        return True

    def _op_answer(self, verb: str, role: str) -> bool:
        for index, (key, user) in enumerate(self.pending):
            project = self.state.projects.get(key)
            if project is None or user not in project.invites:
                continue
            if project.invites[user] == role:
                del self.pending[index]
                self._emit(project.name, None, f"{verb} {role} {user}")
                return True
        return False

    def _op_change(self, role: str, forced: bool) -> bool:
        need = 2 if role == "Owner" else 1
        other = "Maintainer" if role == "Owner" else "Owner"
        project = self._pick(lambda p: len(self._holders(p, role)) >= need, forced)
        if project is None:
            return False
        user = self.rng.choice(self._holders(project, role))
        self._emit(project.name, None, f"change {role} {user} to {other}")
        return True


def generate_journal(
    events: int,
    seed: int,
    *,
    base_serial: int = DEFAULT_BASE_SERIAL,
    start_time: int = DEFAULT_START_TIME,
) -> list[JournalEntry]:
    """A deterministic, self-consistent journal of exactly `events` entries."""
    return _generate(events, seed, base_serial, start_time)[0]


def _generate(
    events: int, seed: int, base_serial: int, start_time: int = DEFAULT_START_TIME
) -> tuple[list[JournalEntry], ReplayState]:
    """The journal and the state at its end, which the generator built along the way."""
    if events < 0:
        raise ValueError("events must be >= 0")
    with _gc_paused():
        generator = _Generator(events, seed, base_serial, start_time)
        journal = generator.run()
    state = generator.state
    state.applied = len(journal)
    state.head = journal[-1].serial if journal else 0
    return journal, state


# --- the server ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Method:
    function: Callable[..., Any]
    params: tuple[tuple[str, type], ...]
    required: int


def _check_params(name: str, method: _Method, args: tuple[Any, ...]) -> str | None:
    if len(args) < method.required:
        missing = ", ".join(repr(p) for p, _t in method.params[len(args) : method.required])
        return f"{name}() missing required positional argument(s): {missing}"
    if len(args) > len(method.params):
        return f"{name}() takes {len(method.params)} positional argument(s) but {len(args)} given"
    for (param, expected), value in zip(method.params, args, strict=False):
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            return (
                f'argument "{param}" ({type(value).__name__}) is not an instance of '
                f"{expected.__name__}"
            )
    return None


def _xml(body: str, status: int = 200) -> Response:
    return Response(body, status_code=status, media_type="text/xml")


def _fault(code: int, message: str) -> Response:
    """Faults travel with HTTP 200, as on PyPI."""
    fault = xmlrpc.client.Fault(code, message)
    return _xml(xmlrpc.client.dumps(fault, methodresponse=True, allow_none=True))


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    text = json.dumps(body, sort_keys=True)  # PyPI's renderer sorts keys too
    return Response(text, status_code=status, media_type="application/json", headers=headers)


def _not_found() -> Response:
    return _json({"message": "Not Found"}, status=404)


def _int_field(data: dict[str, Any], key: str, minimum: int) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{key} must be an integer >= {minimum}")
    return value


class ReplayApp:
    """The server's state: the whole journal, a head, and the faults tests asked for."""

    def __init__(
        self,
        journal: list[JournalEntry],
        head: int | None = None,
        page_limit: int = DEFAULT_PAGE_LIMIT,
        state: ReplayState | None = None,
    ) -> None:
        self.journal = journal
        self.serials = [entry.serial for entry in journal]
        self.timestamps = [entry.timestamp for entry in journal]
        self.page_limit = page_limit
        self.rate_limit_next = 0
        self.rate_limit_reset = 1  # small by default: clients honour it and tests would wait
        self.http_503_next = 0
        self.calls: Counter[str] = Counter()
        self.state = state if state is not None else ReplayState()
        if head is None:
            head = self.serials[-1] if self.serials else 0
        self.set_head(head)
        self.methods = {
            "changelog_last_serial": _Method(self.changelog_last_serial, (), 0),
            "changelog_since_serial": _Method(self.changelog_since_serial, (("serial", int),), 1),
            "changelog": _Method(self.changelog, (("since", int), ("with_ids", bool)), 1),
            "list_packages_with_serial": _Method(self.list_packages_with_serial, (), 0),
        }

    def set_head(self, head: int) -> None:
        if head < self.state.head:
            self.state = ReplayState()  # going back: replay from the start, still fast
        self.state.advance(self.journal, head)

    # -- XML-RPC methods

    def changelog_last_serial(self) -> int | None:
        return self.state.last_serial

    def _page(self, start: int, with_ids: bool = True) -> list[tuple[Any, ...]]:
        stop = min(self.state.applied, start + self.page_limit)
        if with_ids:
            return [self.journal[i].as_tuple() for i in range(start, stop)]
        return [self.journal[i].as_tuple()[:4] for i in range(start, stop)]

    def changelog_since_serial(self, serial: int) -> list[tuple[Any, ...]]:
        return self._page(bisect.bisect_right(self.serials, serial, 0, self.state.applied))

    def changelog(self, since: int, with_ids: bool = False) -> list[tuple[Any, ...]]:
        start = bisect.bisect_right(self.timestamps, since, 0, self.state.applied)
        return self._page(start, with_ids)

    def list_packages_with_serial(self) -> dict[str, int]:
        return {p.name: p.last_serial for p in self.state.projects.values()}

    # -- HTTP endpoints

    async def xmlrpc(self, request: Request) -> Response:
        body = await request.body()
        self.calls["xmlrpc"] += 1
        if self.http_503_next > 0:
            self.http_503_next -= 1
            return Response("<h1>503 Service Unavailable</h1>", 503, media_type="text/html")
        try:
            args, name = xmlrpc.client.loads(body)
        except Exception:  # expat, unmarshaller and fault errors alike
            return _fault(-32700, "parse error; not well formed")
        if name is None:
            return _fault(-32600, "server error; invalid xml-rpc. not conforming to spec")
        self.calls[name] += 1
        if self.rate_limit_next > 0:
            self.rate_limit_next -= 1
            return _fault(-32500, RATE_LIMIT_TEXT.format(seconds=self.rate_limit_reset))
        method = self.methods.get(name)
        if method is None:
            return _fault(-32601, "server error; requested method not found")
        problem = _check_params(name, method, args)
        if problem is not None:
            return _fault(-32602, f"client error; {problem}")
        try:
            result = method.function(*args)
            text = xmlrpc.client.dumps((result,), methodresponse=True, allow_none=True)
        except Exception as exc:  # PyPI wraps application errors the same way
            return _fault(-32500, f"{type(exc).__name__}: {exc}")
        return _xml(text)

    def _file_json(self, base: str, release: ReleaseState, file: FileState) -> dict[str, Any]:
        digests = file_digests(file.filename)
        uploaded = file.upload_datetime()
        return {
            "comment_text": "",
            "digests": {
                "blake2b_256": digests.blake2b_256,
                "md5": digests.md5,
                "sha256": digests.sha256,
            },
            "downloads": -1,
            "filename": file.filename,
            "has_sig": False,
            "md5_digest": digests.md5,
            "packagetype": file.packagetype,
            "python_version": file.python_version,
            "requires_python": release.requires_python,
            "size": digests.size,
            "upload_time": uploaded.strftime("%Y-%m-%dT%H:%M:%S"),
            "upload_time_iso_8601": uploaded.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "url": f"{base}/packages/{file.filename}",
            "yanked": release.yanked,
            "yanked_reason": release.yanked_reason,
        }

    def _files_json(self, base: str, release: ReleaseState) -> list[dict[str, Any]]:
        return [self._file_json(base, release, release.files[f]) for f in sorted(release.files)]

    def _info(self, base: str, project: ProjectState, release: ReleaseState) -> dict[str, Any]:
        page = f"{base}/project/{project.name}/"
        return {
            "author": "",
            "author_email": "",
            "bugtrack_url": None,
            "classifiers": [],
            "description": f"# {project.name}\n\nReplayed from a generated journal.\n",
            "description_content_type": "text/markdown",
            "docs_url": None,
            "download_url": "",
            "downloads": {"last_day": -1, "last_month": -1, "last_week": -1},
            "dynamic": None,
            "home_page": "",
            "keywords": "",
            "license": "",
            "license_expression": None,
            "license_files": None,
            "maintainer": "",
            "maintainer_email": "",
            "name": project.name,
            "package_url": page,
            "platform": None,
            "project_url": page,
            "project_urls": None,
            "provides_extra": None,
            "release_url": f"{page}{release.version}/",
            "requires_dist": None,
            "requires_python": release.requires_python,
            "summary": f"{project.name}, replayed",
            "version": release.version,
            "yanked": release.yanked,
            "yanked_reason": release.yanked_reason,
        }

    @staticmethod
    def _ownership(project: ProjectState) -> dict[str, Any]:
        roles = sorted(project.roles.items(), key=lambda item: (item[1] != "Owner", item[0]))
        return {"organization": None, "roles": [{"role": r, "user": u} for u, r in roles]}

    @staticmethod
    def _base(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    async def project_json(self, request: Request) -> Response:
        self.calls["json"] += 1
        project = self.state.lookup(request.path_params["project"])
        latest = project.latest() if project else None
        if project is None or latest is None:
            return _not_found()  # PyPI: a project without releases has no JSON either
        base = self._base(request)
        body = {
            "info": self._info(base, project, latest),
            "last_serial": project.last_serial,
            "ownership": self._ownership(project),
            "releases": {v: self._files_json(base, r) for v, r in project.releases.items()},
            "urls": self._files_json(base, latest),
            "vulnerabilities": [],
        }
        return _json(body, headers={"X-PyPI-Last-Serial": str(project.last_serial)})

    async def release_json(self, request: Request) -> Response:
        self.calls["json"] += 1
        project = self.state.lookup(request.path_params["project"])
        if project is None:
            return _not_found()
        wanted: str = request.path_params["version"]
        release = project.releases.get(wanted)
        if release is None:
            canonical = canonicalize_version(wanted)
            matches = [
                r for v, r in project.releases.items() if canonicalize_version(v) == canonical
            ]
            if not matches:
                return _not_found()
            release = matches[0]
        base = self._base(request)
        body = {
            "info": self._info(base, project, release),
            "last_serial": project.last_serial,
            "ownership": self._ownership(project),
            "urls": self._files_json(base, release),
            "vulnerabilities": [],
        }
        return _json(body, headers={"X-PyPI-Last-Serial": str(project.last_serial)})

    async def package_file(self, request: Request) -> Response:
        filename: str = request.path_params["filename"]
        if filename not in self.state.files:
            return Response("Not Found", 404, media_type="text/plain")
        self.calls["download"] += 1
        return Response(file_bytes(filename), media_type="application/octet-stream")

    async def simple_index(self, request: Request) -> Response:
        names = sorted(p.name for p in self.state.projects.values())
        body = {
            "meta": {"_last-serial": self.state.last_serial or 0, "api-version": "1.1"},
            "projects": [{"name": name} for name in names],
        }
        return Response(json.dumps(body), media_type=SIMPLE_JSON)

    async def simple_project(self, request: Request) -> Response:
        self.calls["simple"] += 1
        project = self.state.lookup(request.path_params["project"])
        if project is None:
            return Response("404 Not Found", 404, media_type="text/plain")
        base = self._base(request)
        releases = sorted(project.releases.values(), key=lambda r: Version(r.version))
        files: list[dict[str, Any]] = []
        for release in releases:
            for filename in sorted(release.files):
                digests = file_digests(filename)
                files.append(
                    {
                        "core-metadata": False,
                        "filename": filename,
                        "hashes": {"sha256": digests.sha256},
                        "requires-python": release.requires_python,
                        "size": digests.size,
                        "upload-time": release.files[filename]
                        .upload_datetime()
                        .strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                        "url": f"{base}/packages/{filename}",
                        "yanked": (release.yanked_reason or True) if release.yanked else False,
                    }
                )
        body = {
            "files": files,
            "meta": {"_last-serial": project.last_serial, "api-version": "1.1"},
            "name": project.normalized,
            "versions": [r.version for r in releases],
        }
        text = json.dumps(body)
        etag = '"' + hashlib.sha256(text.encode()).hexdigest()[:32] + '"'
        headers = {"ETag": etag, "X-PyPI-Last-Serial": str(project.last_serial)}
        if request.headers.get("If-None-Match") == etag:
            return Response(status_code=304, headers=headers)
        return Response(text, media_type=SIMPLE_JSON, headers=headers)

    def status(self) -> dict[str, Any]:
        return {
            "head": self.state.head,
            "last_serial": self.state.last_serial,
            "entries": self.state.applied,
            "projects": len(self.state.projects),
            "page_limit": self.page_limit,
            "rate_limit_next": self.rate_limit_next,
            "rate_limit_reset": self.rate_limit_reset,
            "http_503_next": self.http_503_next,
            "calls": dict(self.calls),
        }

    async def control_state(self, request: Request) -> Response:
        return _json(self.status())

    async def control_head(self, request: Request) -> Response:
        try:
            data = await request.json()
            head = _int_field(data, "head", 0)
            if head is None:
                raise ValueError("head is required")
        except ValueError as exc:
            return _json({"message": str(exc)}, status=400)
        self.set_head(head)
        return _json(self.status())

    async def control_faults(self, request: Request) -> Response:
        try:
            data = await request.json()
            if not isinstance(data, dict):
                raise ValueError("expected a JSON object")
            rate_limit = _int_field(data, "rate_limit_next", 0)
            reset = _int_field(data, "rate_limit_reset", 0)
            http_503 = _int_field(data, "http_503_next", 0)
            page_limit = _int_field(data, "page_limit", 1)
        except ValueError as exc:
            return _json({"message": str(exc)}, status=400)
        if rate_limit is not None:
            self.rate_limit_next = rate_limit
        if reset is not None:
            self.rate_limit_reset = reset
        if http_503 is not None:
            self.http_503_next = http_503
        if page_limit is not None:
            self.page_limit = page_limit
        return _json(self.status())


def create_app(
    journal: list[JournalEntry],
    head: int | None = None,
    page_limit: int = DEFAULT_PAGE_LIMIT,
    state: ReplayState | None = None,
) -> Starlette:
    """The ASGI app. Handlers are async and CPU-only, so state needs no locking.

    `state`, if given, must be a replay of a prefix of `journal` (saves replaying it).
    """
    replay = ReplayApp(journal, head, page_limit, state)
    routes = [
        Route("/pypi", replay.xmlrpc, methods=["POST"]),
        Route("/pypi/", replay.xmlrpc, methods=["POST"]),
        Route("/RPC2", replay.xmlrpc, methods=["POST"]),
        Route("/pypi/{project}/json", replay.project_json, methods=["GET"]),
        Route("/pypi/{project}/{version}/json", replay.release_json, methods=["GET"]),
        Route("/packages/{filename}", replay.package_file, methods=["GET"]),
        Route("/simple/", replay.simple_index, methods=["GET"]),
        Route("/simple/{project}/", replay.simple_project, methods=["GET"]),
        Route("/_control/state", replay.control_state, methods=["GET"]),
        Route("/_control/head", replay.control_head, methods=["POST"]),
        Route("/_control/faults", replay.control_faults, methods=["POST"]),
    ]
    app = Starlette(routes=routes)
    app.state.replay = replay
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Replay a generated PyPI journal on loopback.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--head", type=int, default=None)
    parser.add_argument("--page-limit", type=int, default=DEFAULT_PAGE_LIMIT)
    parser.add_argument("--base-serial", type=int, default=DEFAULT_BASE_SERIAL)
    args = parser.parse_args(argv)
    journal, state = _generate(args.events, args.seed, args.base_serial)
    app = create_app(journal, args.head, args.page_limit, state)
    gc.freeze()  # the journal and state live forever: keep them out of every collection
    import uvicorn

    uvicorn.run(
        app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False, lifespan="off"
    )


# --- the test-side handle -----------------------------------------------------------------


class ReplayServer:
    """A running replay server plus the journal it serves, for computing expectations."""

    def __init__(
        self, url: str, journal: list[JournalEntry], process: subprocess.Popen[bytes], head: int
    ) -> None:
        self.url = url
        self.xmlrpc_url = f"{url}/pypi"
        self.journal = journal
        self.process = process
        self.head = head

    def proxy(self) -> xmlrpc.client.ServerProxy:
        return xmlrpc.client.ServerProxy(self.xmlrpc_url, allow_none=True)

    def _post(self, path: str, body: dict[str, int]) -> dict[str, Any]:
        response = httpx.post(f"{self.url}{path}", json=body, timeout=60)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def set_head(self, head: int) -> dict[str, Any]:
        """Move the head (forward cheaply, backward by replaying from the start)."""
        status = self._post("/_control/head", {"head": head})
        self.head = head
        return status

    def set_faults(
        self,
        *,
        rate_limit_next: int | None = None,
        http_503_next: int | None = None,
        page_limit: int | None = None,
        rate_limit_reset: int | None = None,
    ) -> dict[str, Any]:
        body = {
            key: value
            for key, value in (
                ("rate_limit_next", rate_limit_next),
                ("http_503_next", http_503_next),
                ("page_limit", page_limit),
                ("rate_limit_reset", rate_limit_reset),
            )
            if value is not None
        }
        return self._post("/_control/faults", body)

    def status(self) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/_control/state", timeout=60)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def expected_state(self) -> ReplayState:
        """What the server holds now, computed locally from the journal."""
        return state_at(self.journal, self.head)


def _ready(url: str, process: subprocess.Popen[bytes], log: IO[bytes]) -> bool:
    if process.poll() is not None:
        log.seek(0)
        output = log.read().decode(errors="replace")
        raise RuntimeError(f"pypi replay server exited with {process.returncode}:\n{output}")
    try:
        return httpx.get(f"{url}/_control/state", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def replay_server(
    events: int = 2000,
    seed: int = 1,
    head: int | None = None,
    page_limit: int = DEFAULT_PAGE_LIMIT,
    base_serial: int = DEFAULT_BASE_SERIAL,
    startup_timeout: float = 120,
) -> Iterator[ReplayServer]:
    """Run the replay server in a subprocess on a free loopback port for the block."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "tests.pypi_replay",
        "--port",
        str(port),
        "--events",
        str(events),
        "--seed",
        str(seed),
        "--page-limit",
        str(page_limit),
        "--base-serial",
        str(base_serial),
    ]
    if head is not None:
        command += ["--head", str(head)]
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            # The child generates the same journal meanwhile.
            journal = generate_journal(events, seed, base_serial=base_serial)
            last = journal[-1].serial if journal else 0
            server = ReplayServer(url, journal, process, last if head is None else head)
            wait_until(lambda: _ready(url, process, log), startup_timeout, "pypi replay", 0.05)
            yield server
        finally:
            stop_process(process, 10)


if __name__ == "__main__":
    main()

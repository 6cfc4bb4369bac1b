"""A builder's shared cache of build-dependency wheels, safe against hostile sdists.

A pip cache that builds can write to would let one sdist plant a doctored setuptools for
every later build. So builds only ever read the wheelhouse (mounted read-only, offered
with PIP_FIND_LINKS); the builder fills it itself, before the build, with
`pip download --only-binary=:all:` for the target platform: no sdist code runs, only
wheels come in, pip checks each against the index's hash, and requirements naming a URL
are refused, so nothing but what the index serves can enter.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import logging
import lzma
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import httpx
from packaging.requirements import InvalidRequirement, Requirement

from common.config import UpstreamSettings
from common.names import python_version_of_tag
from common.tags import is_distribution_policy, policy_platforms

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

log = logging.getLogger(__name__)

# What pip assumes for a project without [build-system] (PEP 518's fallback).
LEGACY_REQUIRES = ["setuptools>=40.8.0", "wheel"]
# Hard caps on reading an sdist's pyproject.toml on the host, outside any sandbox.
MAX_PYPROJECT_BYTES = 1024 * 1024
MAX_MEMBERS_SCANNED = 10_000
MAX_SCANNED_BYTES = 64 * 1024 * 1024  # decompressed bytes before pyproject.toml
MAX_SCAN_SECONDS = 10.0
READ_CHUNK = 1024 * 1024
MAX_REQUIREMENTS = 64
DOWNLOAD_TIMEOUT = 600
# How long a set of requirements fetched whole from the index is answered from the cache
# alone: PyPI serves its Simple pages with max-age=600, and pip reuses them that long.
FRESH_SECONDS = 600.0
# How long the farm's own index may take to answer, and how long that answer is kept.
FARM_INDEX_TIMEOUT = 5.0
FARM_INDEX_SEEN_SECONDS = 60.0
# The farm's upstream index unless the builder is told another (upstream.index_url).
DEFAULT_INDEX_URL: str = UpstreamSettings.model_fields["index_url"].default


class NoBuildRequirements(Exception):
    """The sdist's build requirements cannot be read safely; nothing is prefetched."""


def build_requirements(sdist: Path) -> list[Requirement]:
    """[build-system].requires from the sdist's top-level pyproject.toml, read as data."""
    text = _top_level_pyproject(sdist)
    if text is None:
        return [Requirement(line) for line in LEGACY_REQUIRES]
    try:
        data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise NoBuildRequirements(f"pyproject.toml is not TOML: {exc}") from exc
    system = data.get("build-system")
    if not isinstance(system, dict) or "requires" not in system:
        return [Requirement(line) for line in LEGACY_REQUIRES]
    requires = system["requires"]
    if not isinstance(requires, list) or len(requires) > MAX_REQUIREMENTS:
        raise NoBuildRequirements("build-system.requires is not a short list")
    found = []
    for line in requires:
        if not isinstance(line, str):
            raise NoBuildRequirements("build-system.requires holds a non-string")
        try:
            requirement = Requirement(line)
        except InvalidRequirement as exc:
            raise NoBuildRequirements(f"not a requirement: {line!r}") from exc
        if requirement.url:
            # A URL could plant any file under any wheel name: never into the cache.
            raise NoBuildRequirements(f"build requirement names a URL: {line!r}")
        found.append(requirement)
    return found


Readable = io.BufferedIOBase | BinaryIO


class _Budget(io.RawIOBase):
    """A decompressed stream that stops the read past its byte or time budget: a hostile
    sdist (gigabytes of zeros before pyproject.toml) costs the host no more than that."""

    def __init__(self, stream: Readable, max_bytes: int, seconds: float) -> None:
        self.stream = stream
        self.left = max_bytes
        self.max_bytes = max_bytes
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        if self.left <= 0:
            raise NoBuildRequirements(
                f"no pyproject.toml in the first {self.max_bytes // 2**20} MiB of the sdist"
            )
        if time.monotonic() > self.deadline:
            raise NoBuildRequirements(f"reading the sdist took over {self.seconds:.0f} s")
        data = self.stream.read(min(len(view), self.left, READ_CHUNK))
        view[: len(data)] = data
        self.left -= len(data)
        return len(data)


def _decompressed(raw: BinaryIO) -> Readable:
    """The tar stream inside a .tar.gz/.tar.bz2/.tar.xz (or a plain .tar)."""
    magic = raw.read(6)
    raw.seek(0)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if magic.startswith(b"BZh"):
        return bz2.BZ2File(raw, mode="rb")
    if magic == b"\xfd7zXZ\x00":
        return lzma.LZMAFile(raw, mode="rb")
    return raw


def _top_level_pyproject(sdist: Path) -> str | None:
    """The text of <root>/pyproject.toml, read with hard caps on members scanned,
    decompressed bytes, its own size and wall-clock time."""
    name = sdist.name
    try:
        if name.endswith(".zip"):
            with zipfile.ZipFile(sdist) as archive:
                for info in archive.infolist()[:MAX_MEMBERS_SCANNED]:
                    if _is_top_level_pyproject(info.filename) and not info.is_dir():
                        if info.file_size > MAX_PYPROJECT_BYTES:
                            raise NoBuildRequirements("pyproject.toml is too large")
                        with archive.open(info) as handle:
                            return handle.read(MAX_PYPROJECT_BYTES + 1).decode("utf-8")
            return None
        with sdist.open("rb") as raw:
            budget = io.BufferedReader(
                _Budget(_decompressed(raw), MAX_SCANNED_BYTES, MAX_SCAN_SECONDS), READ_CHUNK
            )
            # Stream mode: members one after the other, never a seek back or an index.
            with tarfile.open(fileobj=budget, mode="r|") as archive:
                for count, member in enumerate(archive):
                    if count >= MAX_MEMBERS_SCANNED:
                        raise NoBuildRequirements(
                            f"no pyproject.toml in the first {MAX_MEMBERS_SCANNED} members"
                        )
                    if member.isfile() and _is_top_level_pyproject(member.name):
                        if member.size > MAX_PYPROJECT_BYTES:
                            raise NoBuildRequirements("pyproject.toml is too large")
                        content = archive.extractfile(member)
                        if content is None:
                            return None
                        return content.read(MAX_PYPROJECT_BYTES).decode("utf-8")
    except (OSError, tarfile.TarError, zipfile.BadZipFile, EOFError, UnicodeDecodeError) as exc:
        raise NoBuildRequirements(f"sdist unreadable: {exc}") from exc
    except (lzma.LZMAError, zlib.error, ValueError) as exc:
        raise NoBuildRequirements(f"sdist unreadable: {exc}") from exc
    return None


def _is_top_level_pyproject(member: str) -> bool:
    parts = member.lstrip("./").split("/")
    return len(parts) == 2 and parts[1] == "pyproject.toml"


def platform_tags(arch: str, glibc_minor: int, policy: str = "") -> list[str]:
    """manylinux platforms a build image with glibc 2.<glibc_minor> can install; for a
    distribution target's job (`policy` its linux_* tags) only those: a manylinux armv7l
    wheel is hard-float, which an armel distribution cannot load."""
    if is_distribution_policy(policy):
        return list(policy_platforms(policy))
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(glibc_minor, 16, -1)]
    return [*tags, f"linux_{arch}"] if arch != "armv7l" else tags


def isolated_pip_environment(
    base: Mapping[str, str] | None = None, ca_bundle: Path | None = None
) -> dict[str, str]:
    """The environment of a pip the builder runs on its host: the host's (its proxies
    still apply) without any of the host's pip configuration, neither a configuration
    file (global, user, site: PIP_CONFIG_FILE=os.devnull skips them all) nor a PIP_*
    variable, so only what the builder puts on the command line counts. `ca_bundle`: the
    builder's configured one, the only PIP_* variable set."""
    source = os.environ if base is None else base
    env = {key: value for key, value in source.items() if not key.upper().startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    if ca_bundle is not None:
        env["PIP_CERT"] = str(ca_bundle)
    return env


def run_logged(
    command: list[str], log_sink: BinaryIO, env: dict[str, str], timeout: float
) -> int | None:
    """Run a trusted step of the builder's own (pip) with its output in the build log:
    its exit code, or None when it ran past `timeout`."""
    try:
        done = subprocess.run(
            command,
            stdout=log_sink,
            stderr=subprocess.STDOUT,
            env=env,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None
    return done.returncode


def target_arguments(python_tag: str, platforms: list[str]) -> list[str]:
    """pip's options that make it choose wheels for the target (interpreter, ABIs and
    platforms), not for the host it runs on."""
    arguments = [
        "--python-version",
        python_version_of_tag(python_tag),
        "--implementation",
        "cp",
        "--abi",
        python_tag,
        "--abi",
        "abi3",
        "--abi",
        "none",
    ]
    for platform in platforms:
        arguments += ["--platform", platform]
    return arguments


class Wheelhouse:
    """The cache directory and the trusted step that fills it."""

    def __init__(
        self,
        root: Path,
        limit: int,
        ca_bundle: Path | None = None,
        label: str = "wheelhouse",
        index_url: str = DEFAULT_INDEX_URL,
        farm_index_url: str | None = None,
    ) -> None:
        self.root = root
        # The farm's upstream index (upstream.index_url): the only one pip asks, whatever
        # the builder host's own pip configuration names.
        self.index_url = index_url
        # The farm's own index for the target (<master>/simple/ or a distribution's): the
        # wheels it built of build dependencies that have none upstream (numpy for
        # armv7l), asked beside the upstream index.
        self.farm_index_url = farm_index_url
        # When the farm's index was last found answering or not (monotonic time, answer).
        self._farm_index_seen: tuple[float, bool] | None = None
        # How the build log names it: the cross path fills a host one beside the target's.
        self.label = label
        self.limit = limit
        # The builder's configured CA bundle (builder.ca_bundle), for pip on its own host
        # as for its builds: behind an intercepting proxy the host's environment may not
        # name one.
        self.ca_bundle = ca_bundle
        self.root.mkdir(parents=True, exist_ok=True)
        # When each set of requirements (for one target) last came whole from the index.
        self._fetched: dict[tuple[str, ...], float] = {}

    def farm_index_answers(self, log_sink: BinaryIO) -> bool:
        """Whether pip may ask the farm's own index: one short request, its answer kept
        for FRESH_SECONDS. A farm index that does not answer (a master being restarted)
        is left out with a note, rather than having pip retry it on every download."""
        if self.farm_index_url is None:
            return False
        now = time.monotonic()
        seen = self._farm_index_seen
        if seen is not None and now - seen[0] < FARM_INDEX_SEEN_SECONDS:
            return seen[1]
        verify: str | bool = str(self.ca_bundle) if self.ca_bundle is not None else True
        try:
            answer = httpx.get(self.farm_index_url, timeout=FARM_INDEX_TIMEOUT, verify=verify)
            answers = answer.status_code < 500
            why = f"HTTP {answer.status_code}"
        except httpx.HTTPError as exc:
            answers, why = False, str(exc) or type(exc).__name__
        if not answers:
            _note(
                log_sink,
                f"the farm's index {self.farm_index_url} does not answer ({why}):"
                " build requirements come from the upstream index alone",
            )
        self._farm_index_seen = (now, answers)
        return answers

    def pip_environment(self) -> dict[str, str]:
        return isolated_pip_environment(ca_bundle=self.ca_bundle)

    def wheels(self) -> list[Path]:
        return sorted(self.root.glob("*.whl"))

    def prefetch(
        self,
        requirements: list[Requirement],
        python_tag: str,
        platforms: list[str],
        constraints: Path | None,
        env: dict[str, str],
        log_sink: BinaryIO,
    ) -> bool:
        """Download the requirements' wheels (and their dependencies') for the target.

        Returns False when pip could not get all of them as wheels; the build then
        fetches what is missing itself, as it would without a cache. The same set asked
        for again within FRESH_SECONDS is answered from the cache alone, without asking
        the index, as pip itself reuses an index page that young.
        """
        key = (
            python_tag,
            *platforms,
            constraints.read_text() if constraints is not None else "",
            *sorted(map(str, requirements)),
        )
        fetched = self._fetched.get(key)
        fresh = fetched is not None and time.monotonic() - fetched < FRESH_SECONDS
        arguments = (requirements, python_tag, platforms, constraints, env, log_sink)
        if fresh and self._download(*arguments, cache_only=True):
            return True
        if self._download(*arguments, cache_only=False):
            self._fetched[key] = time.monotonic()
            return True
        return False

    def _download(
        self,
        requirements: list[Requirement],
        python_tag: str,
        platforms: list[str],
        constraints: Path | None,
        env: dict[str, str],
        log_sink: BinaryIO,
        cache_only: bool,
    ) -> bool:
        """One pip download run into the cache; `cache_only`: from the cache's own wheels,
        without the index."""
        # pip writes a wheel in place as it copies it: downloads go to a folder of this
        # call's own and are renamed into the cache whole, since the builds of other
        # slots read the cache meanwhile.
        staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=self.root))
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--disable-pip-version-check",
            "--no-input",
            # The wheelhouse is the cache; pip's own would only warn where the builder's
            # home is not writable.
            "--no-cache-dir",
            "--only-binary=:all:",
            "--dest",
            str(staging),
            # What the cache has already is taken from it, not downloaded again.
            "--find-links",
            str(self.root),
            *target_arguments(python_tag, platforms),
        ]
        command += ["--no-index"] if cache_only else ["--index-url", self.index_url]
        if not cache_only and self.farm_index_answers(log_sink):
            assert self.farm_index_url is not None
            command += ["--extra-index-url", self.farm_index_url]
        if constraints is not None:
            command += ["--constraint", str(constraints)]
        command += [str(requirement) for requirement in requirements]
        before = {path.name for path in self.wheels()}
        # Whatever environment the caller passes, the host's pip configuration stays out.
        env = isolated_pip_environment(env, self.ca_bundle)
        try:
            code = run_logged(command, log_sink, env, DOWNLOAD_TIMEOUT)
        finally:
            self._take_in(staging)
        if code is None:
            return False
        added = [path.name for path in self.wheels() if path.name not in before]
        log.info(
            "wheelhouse prefetch",
            extra={
                "added": len(added),
                "wheels": len(before) + len(added),
                "ok": not code,
                "index": not cache_only,
            },
        )
        self.prune()
        return code == 0

    def fill_for(
        self,
        sdist: Path,
        python_tag: str,
        platforms: list[str],
        constraints: Path | None,
        log_sink: BinaryIO,
    ) -> bool:
        """The step both backends run before a build: fetch the sdist's build requirements.
        True when the build should be offered the wheelhouse."""
        try:
            requirements = build_requirements(sdist)
        except NoBuildRequirements as exc:
            _note(log_sink, f"{self.label} step skipped: {exc}")
            return False
        if not requirements:
            _note(log_sink, f"{self.label}: the sdist has no build requirements")
            return True
        wanted = ", ".join(map(str, requirements))
        _note(log_sink, f"{self.label}: fetching wheels for {wanted}")
        env = self.pip_environment()
        if self.prefetch(requirements, python_tag, platforms, constraints, env, log_sink):
            return True
        # All or nothing in one pip run: one requirement without a wheel would keep out
        # the others, so each gets its own try.
        missing = requirements
        if len(requirements) > 1:
            missing = [
                requirement
                for requirement in requirements
                if not self.prefetch(
                    [requirement], python_tag, platforms, constraints, env, log_sink
                )
            ]
        _note(log_sink, f"{self.label}: no wheel for {', '.join(map(str, missing))}")
        return True

    def fetch_missing(
        self,
        requirement: str,
        python_tag: str,
        platforms: list[str],
        constraints: Path | None,
        log_sink: BinaryIO,
    ) -> bool:
        """An offline build asked for a requirement the wheelhouse lacks (a backend's
        get_requires_for_build_wheel, or a requirement whose wheel was missing): fetch it
        the same safe way. True when it came in and the build is worth another round."""
        try:
            parsed = Requirement(requirement)
        except InvalidRequirement:
            _note(log_sink, f"offline build: {requirement!r} is not a requirement")
            return False
        if parsed.url:
            _note(log_sink, f"offline build: {requirement} names a URL; never fetched")
            return False
        _note(log_sink, f"offline build: pip asked for {parsed}; fetching its wheel")
        return self.prefetch(
            [parsed], python_tag, platforms, constraints, self.pip_environment(), log_sink
        )

    def _take_in(self, staging: Path) -> None:
        """Rename the wheels pip saved in `staging` into the cache, then drop `staging`."""
        for path in staging.glob("*.whl"):
            if not (self.root / path.name).exists():
                path.replace(self.root / path.name)
        shutil.rmtree(staging, ignore_errors=True)

    def prune(self) -> None:
        """Oldest wheels out first until the cache is under its limit; the download
        folders of a builder killed mid-download go too."""
        for staging in self.root.glob(".incoming-*"):
            with contextlib.suppress(OSError):
                if time.time() - staging.stat().st_mtime > 2 * DOWNLOAD_TIMEOUT:
                    shutil.rmtree(staging, ignore_errors=True)
        wheels = []
        for path in self.wheels():
            try:
                status = path.stat()
            except OSError:
                continue
            wheels.append((status.st_mtime, status.st_size, path))
        total = sum(size for _, size, _ in wheels)
        for _, size, path in sorted(wheels):
            if total <= self.limit:
                break
            try:
                path.unlink()
            except OSError:
                continue
            total -= size


def _note(log_sink: BinaryIO, text: str) -> None:
    log_sink.write(f"::armwheels:: {text}\n".encode())
    log_sink.flush()

"""How many real PyPI sdists the farm turns into correct, imported wheels unaided.

The farm's goal: at least 90% of a held-out set of popular compiled projects built
without an operator's recipe, and every failure naming its cause. Each sdist is built
once, as a builder would build its job: with the backend `choose_backend` picks for the
target (on an x86_64 host the cross backend, which builds again under emulation when the
cross path fails), automatic system packages as configured (on by default), no recipe
and no farm index (a build dependency with no wheel for the target is reported as the
dep-wait a farm would start, not built). A build counts only when its repaired wheel
passed the builder's verification and the import smoke test in the target's image.

Per sdist the table gives the outcome (built, or the failure's reason), the build path,
the seconds of the whole job, the system packages the farm added, the dependency it
would wait for, and the summary; then the totals, the failures grouped by reason, and
those whose summary names no cause (a generic phrase such as "building the wheel
failed"). It prints figures and asserts nothing.

The default set (SET) is chosen for breadth: plain C, C++, Cython, system libraries
(libffi, libyaml, libjpeg and zlib, libxml2 and libxslt, libpq, unixODBC, GEOS), a CMake
build (scikit-build-core), a Rust one (PyO3 with maturin) and builds that need numpy. It
leaves out the giants that take about an hour under emulation (numpy, scipy, pandas,
grpcio, cryptography) and the projects the test suite and benchmarks/build.py already
build (msgpack, markupsafe, python-lzo, frozenlist, murmurhash ...), so that the set
measures what the farm was not tuned on. Its versions are pinned (each has an sdist and
admits CPython 3.11); a NAME given without a version is resolved to its newest release
with an sdist that admits the target's Python, from PyPI's JSON Simple API.

Sdists are cached under ~/.cache/armwheels-benchmarks/sdists (checked against PyPI's
hash on every use). Builds run in a temporary work directory, removed at the end; the
derived images of automatic packages stay in Docker's cache, as on a builder.

Usage: .venv/bin/python benchmarks/sdists.py [NAME[==VERSION] ...] [--target aarch64]
           [--limit N] [--timeout 1200] [--json FILE] [--logs DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn
from uuid import uuid4

import httpx
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import (
    InvalidName,
    InvalidSdistFilename,
    canonicalize_name,
    parse_sdist_filename,
)
from packaging.version import InvalidVersion, Version
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from builder.backends import Backend, BuildOutcome, FarmFault
from builder.backends.docker import DockerBackend, remove_left_behind
from builder.classify import EXIT_CODES
from builder.identity import BuilderIdentity
from builder.worker import NoBackend, choose_backend
from common.config import ConfigError, Settings, load_settings
from common.job_spec import JobSpec

CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
SIMPLE_URL = "https://pypi.org/simple/{name}/"
SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
SDIST_CACHE = CACHE / "armwheels-benchmarks" / "sdists"
GOAL = 0.90
# Not a build's failure: the sdist could not be had, so it is left out of the rate.
NOT_FETCHED = "sdist-unavailable"
FARM_FAULT = "farm-fault"

# Summaries that say a step failed but not why: the builder's fallbacks when its log
# diagnosis found nothing specific.
GENERIC_SUMMARIES = frozenset(summary for _, summary in EXIT_CODES.values()) | {
    "build cancelled",
}
GENERIC_PATTERNS = (
    re.compile(r"build script exited with -?\d+"),
    re.compile(r"expected one repaired wheel, found \d+"),
)


@dataclass(frozen=True)
class Case:
    project: str
    version: str | None  # None: the newest release with an sdist
    kind: str = "given"


SET = [
    Case("simplejson", "3.20.1", "C, optional speedups"),
    Case("wrapt", "1.17.2", "C"),
    Case("psutil", "7.0.0", "C, per-platform code"),
    Case("setproctitle", "1.3.5", "C"),
    Case("multidict", "6.1.0", "C"),
    Case("coverage", "7.6.10", "C tracer"),
    Case("zope.interface", "7.2", "C, namespace package"),
    Case("mmh3", "5.1.0", "C"),
    Case("ruamel.yaml.clib", "0.2.12", "C, bundled libyaml"),
    Case("xxhash", "3.5.0", "C, bundled library"),
    Case("bitarray", "3.0.0", "C"),
    Case("greenlet", "3.1.1", "C++ and assembly"),
    Case("brotli", "1.1.0", "C++, bundled library"),
    Case("ujson", "5.10.0", "C and C++"),
    Case("propcache", "0.2.1", "Cython, in-tree build backend"),
    Case("cytoolz", "1.0.1", "Cython"),
    Case("pyyaml", "6.0.2", "Cython, libyaml"),
    Case("cffi", "1.17.1", "libffi"),
    Case("pillow", "11.1.0", "libjpeg, zlib"),
    Case("lxml", "5.3.0", "libxml2, libxslt (largest)"),
    Case("psycopg2", "2.9.10", "libpq (pg_config)"),
    Case("pyodbc", "5.2.0", "C++, unixODBC"),
    Case("levenshtein", "0.26.1", "CMake (scikit-build-core), C++"),
    Case("rpds-py", "0.22.3", "Rust (PyO3, maturin)"),
    Case("numexpr", "2.10.2", "numpy at build time, C++"),
    Case("shapely", "2.0.6", "numpy at build time, GEOS"),
]


class Unusable(Exception):
    """A project named that cannot be surveyed (bad input): one line says why."""


@dataclass(frozen=True)
class Sdist:
    project: str  # PyPI's name for it
    version: str
    filename: str
    url: str
    sha256: str
    size: int | None


@dataclass
class Result:
    project: str
    version: str
    kind: str
    built: bool
    reason: str | None
    summary: str
    build_path: str | None
    seconds: float
    wheel: str | None = None
    auto_packages: list[str] = field(default_factory=list)
    build_packages: list[str] = field(default_factory=list)
    waiting_for: str | None = None
    transient: bool = False

    @property
    def surveyed(self) -> bool:
        return self.reason != NOT_FETCHED

    @property
    def generic(self) -> bool:
        """A failure whose summary names no cause."""
        if self.built:
            return False
        text = self.summary.strip()
        return (
            not text
            or any(text == phrase or text.startswith(f"{phrase} (") for phrase in GENERIC_SUMMARIES)
            or any(pattern.fullmatch(text) for pattern in GENERIC_PATTERNS)
        )


# --- finding and fetching the sdists ---------------------------------------------------


def parse_case(text: str) -> Case:
    """NAME or NAME==VERSION from the command line."""
    name, sep, version = text.partition("==")
    try:
        canonicalize_name(name.strip(), validate=True)
    except InvalidName:
        raise Unusable(f"{text!r}: not a project name (NAME or NAME==VERSION)") from None
    if sep:
        try:
            Version(version)
        except InvalidVersion:
            raise Unusable(f"{text!r}: {version!r} is not a version") from None
    kinds = {canonicalize_name(case.project): case.kind for case in SET}
    name = name.strip()
    return Case(name, version.strip() if sep else None, kinds.get(canonicalize_name(name), "given"))


def python_of(tag: str) -> str:
    """cp311 -> 3.11."""
    return f"{tag[2]}.{tag[3:]}"


def _admits(requires_python: str | None, python: str) -> bool:
    if not requires_python:
        return True
    try:
        return SpecifierSet(requires_python).contains(python, prereleases=True)
    except InvalidSpecifier:
        return True  # pip ignores what it cannot read, and so does the farm's planner


def find_sdist(client: httpx.Client, case: Case, python: str) -> Sdist:
    """The case's sdist on PyPI: its given version, else the newest release (no
    pre-release, nothing yanked) with an sdist that admits `python`."""
    name = canonicalize_name(case.project)
    answer = client.get(SIMPLE_URL.format(name=name), headers={"Accept": SIMPLE_JSON})
    if answer.status_code == 404:
        raise Unusable(f"{case.project}: no such project on PyPI")
    answer.raise_for_status()
    page = answer.json()
    found: dict[Version, dict[str, Any]] = {}
    for entry in page.get("files", []):
        filename = str(entry.get("filename", ""))
        try:
            project, version = parse_sdist_filename(filename)
        except InvalidSdistFilename:
            continue  # a wheel, or an old archive whose name says no version
        if project != name or entry.get("yanked"):
            continue
        if case.version is None and (
            version.is_prerelease or not _admits(entry.get("requires-python"), python)
        ):
            continue
        # The .tar.gz, as pip prefers, when a release has both.
        if version not in found or filename.endswith(".tar.gz"):
            found[version] = entry
    if case.version is not None:
        entry_for = found.get(Version(case.version))
        if entry_for is None:
            raise Unusable(f"{case.project}=={case.version}: no sdist of it on PyPI")
        chosen = Version(case.version)
    elif not found:
        raise Unusable(f"{case.project}: no release with an sdist admits Python {python}")
    else:
        chosen = max(found)
        entry_for = found[chosen]
    return Sdist(
        str(page.get("name", name)),
        str(chosen),
        str(entry_for["filename"]),
        str(entry_for["url"]),
        str(entry_for["hashes"]["sha256"]),
        entry_for.get("size"),
    )


def fetch_sdist(client: httpx.Client, sdist: Sdist) -> Path:
    """The sdist on disk, downloaded once and checked against PyPI's hash on every use."""
    path = SDIST_CACHE / sdist.filename
    if path.is_file() and _sha256(path) == sdist.sha256:
        return path
    SDIST_CACHE.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    digest = hashlib.sha256()
    try:
        with client.stream("GET", sdist.url, follow_redirects=True) as answer:
            answer.raise_for_status()
            with partial.open("wb") as out:
                for chunk in answer.iter_bytes():
                    digest.update(chunk)
                    out.write(chunk)
        if digest.hexdigest() != sdist.sha256:
            raise ValueError(f"{sdist.filename}: sha256 differs from PyPI's")
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


# --- building ----------------------------------------------------------------------------


def build_one(
    backend: Backend,
    spec: JobSpec,
    sdist: Path,
    work: Path,
    log_path: Path,
) -> tuple[BuildOutcome, float]:
    """One job as a builder runs it, its work directory removed after it."""
    workdir = work / f"job-{spec.job_id}"
    started = time.perf_counter()
    try:
        with log_path.open("wb") as sink:
            try:
                outcome = backend.build(spec, sdist, workdir, sink)
            except FarmFault as exc:
                # The farm, not the sdist, failed: a builder would hand the job back.
                outcome = BuildOutcome(False, summary=str(exc))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return outcome, time.perf_counter() - started


def result_of(case: Case, sdist: Sdist, outcome: BuildOutcome, seconds: float) -> Result:
    reason = None
    if not outcome.built:
        reason = outcome.reason.value if outcome.reason else FARM_FAULT
    return Result(
        sdist.project,
        sdist.version,
        case.kind,
        outcome.built,
        reason,
        outcome.summary,
        outcome.build_path.value if outcome.build_path else None,
        round(seconds, 1),
        outcome.wheel.name if outcome.wheel else None,
        list(outcome.auto_packages or []),
        list(outcome.build_packages or []),
        outcome.waiting_for,
        outcome.transient,
    )


def survey(
    settings: Settings,
    target_name: str,
    cases: list[Case],
    console: Console,
    keep_logs: Path | None,
) -> tuple[list[Result], str, str]:
    """Build every case once; the results, the backend's name and the python tag."""
    target = settings.targets[target_name]
    identity = BuilderIdentity("sdist-survey", uuid4().hex)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="armwheels-sdists-") as tmp:
        scratch = Path(tmp)
        # No master: an empty master_url is filled with the default master's address on
        # validation, and this copy (not validated) keeps it empty, so no farm index.
        builder = settings.builder.model_copy(
            update={"work_dir": scratch / "work", "master_url": ""}
        )
        settings = settings.model_copy(update={"builder": builder})
        backend = choose_backend(settings, target_name, identity)
        try:
            python_tag = backend.python_tags()[0]
            console.print(
                f"target {target_name} ({target.arch}, {target.policy or target.image},"
                f" {python_tag}), backend {backend.name}, auto packages"
                f" {'on' if settings.builder.auto_packages.enabled else 'off'},"
                f" build timeout {settings.builder.build_timeout} s"
            )
            with httpx.Client(timeout=120) as client:
                found = [(case, find_sdist(client, case, python_of(python_tag))) for case in cases]
            progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
            )
            with progress, httpx.Client(timeout=120) as client:
                task = progress.add_task("surveying", total=len(found))
                for number, (case, sdist) in enumerate(found, 1):
                    label = f"[{number}/{len(found)}] {sdist.project}"
                    progress.update(task, description=label)
                    result = _run_case(
                        backend, client, case, sdist, number, python_tag, target_name,
                        settings, scratch, keep_logs,
                    )  # fmt: skip
                    results.append(result)
                    progress.console.log(_line(label, result))
                    progress.advance(task)
        finally:
            if isinstance(backend, DockerBackend):
                # The backend removes its own containers; this catches one an interrupt
                # (Ctrl-C) left between its start and its removal.
                with contextlib.suppress(Exception):
                    remove_left_behind(backend.client, identity.instance)
            backend.close()
    return results, backend.name, python_tag


def _run_case(
    backend: Backend,
    client: httpx.Client,
    case: Case,
    sdist: Sdist,
    number: int,
    python_tag: str,
    target_name: str,
    settings: Settings,
    scratch: Path,
    keep_logs: Path | None,
) -> Result:
    target = settings.targets[target_name]
    try:
        path = fetch_sdist(client, sdist)
    except (httpx.HTTPError, ValueError, OSError) as exc:
        summary = f"{sdist.filename} not fetched: {exc}"
        return Result(sdist.project, sdist.version, case.kind, False, NOT_FETCHED, summary, None, 0)
    spec = JobSpec(
        number, sdist.project, sdist.version, target.arch, python_tag, target.policy,
        sdist.filename, sdist.url, sdist.sha256, sdist.size, 1, None, None,
        target.newer_policy, target_name,
    )  # fmt: skip
    log_path = scratch / f"{canonicalize_name(sdist.project)}-{sdist.version}.log"
    outcome, seconds = build_one(backend, spec, path, scratch / "jobs", log_path)
    if keep_logs is not None:
        keep_logs.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log_path, keep_logs / log_path.name)
    log_path.unlink(missing_ok=True)
    return result_of(case, sdist, outcome, seconds)


def _line(label: str, result: Result) -> str:
    if result.built:
        text = f"{label} {result.version}: built ({result.build_path}) in {result.seconds:.0f} s"
    elif not result.surveyed:
        return f"{label}: not surveyed: {result.summary}"
    else:
        text = (
            f"{label} {result.version}: failed, {result.reason} ({result.build_path})"
            f" in {result.seconds:.0f} s: {result.summary}"
        )
    if result.auto_packages:
        text += f"; added {' '.join(result.auto_packages)}"
    if result.waiting_for:
        text += f"; would wait for {result.waiting_for}"
    return text


# --- reporting ---------------------------------------------------------------------------


def totals(results: list[Result]) -> dict[str, Any]:
    surveyed = [r for r in results if r.surveyed]
    built = [r for r in surveyed if r.built]
    failed = [r for r in surveyed if not r.built]
    by_reason: dict[str, list[str]] = {}
    for result in failed:
        by_reason.setdefault(result.reason or "", []).append(result.project)
    share = len(built) / len(surveyed) if surveyed else 0.0
    return {
        "surveyed": len(surveyed),
        "built": len(built),
        "built_share": round(share, 3),
        "goal_share": GOAL,
        "goal_met": bool(surveyed) and share >= GOAL,
        "auto_packages": [r.project for r in surveyed if r.auto_packages],
        "built_with_auto_packages": [r.project for r in built if r.auto_packages],
        "would_dep_wait": [r.project for r in surveyed if r.waiting_for],
        "failures_by_reason": by_reason,
        "failures_without_cause": [r.project for r in failed if r.generic],
        "not_fetched": [r.project for r in results if not r.surveyed],
        "seconds": round(sum(r.seconds for r in results), 1),
    }


def _names(projects: Iterable[str]) -> str:
    names = list(projects)
    return f" ({', '.join(names)})" if names else ""


def report(console: Console, results: list[Result], target_name: str, backend: str) -> None:
    table = Table(title=f"PyPI sdists built for {target_name} by the {backend} backend, unaided")
    for column in ("project", "version", "kind", "outcome", "path", "s", "auto packages"):
        table.add_column(column, justify="right" if column == "s" else "left")
    table.add_column("waiting for")
    table.add_column("summary", overflow="fold")
    for r in results:
        if r.built:
            outcome = "[green]built[/green]"
        elif not r.surveyed:
            outcome = "[yellow]not fetched[/yellow]"
        else:
            outcome = f"[red]{r.reason}[/red]"
        table.add_row(
            r.project, r.version, r.kind, outcome, r.build_path or "—", f"{r.seconds:.0f}",
            " ".join(r.auto_packages) or "—", r.waiting_for or "—",
            r.summary + (" [bold red](no cause named)[/bold red]" if r.generic else ""),
        )  # fmt: skip
    console.print(table)
    figures = totals(results)
    surveyed, built = figures["surveyed"], figures["built"]
    console.print(
        f"built {built} of {surveyed} ({figures['built_share']:.0%}) without an operator's"
        f" recipe; goal {GOAL:.0%}: {'met' if figures['goal_met'] else 'not met'}"
    )
    console.print(
        f"needed an automatic system package: {len(figures['auto_packages'])}"
        f"{_names(figures['auto_packages'])}, of which built:"
        f" {len(figures['built_with_auto_packages'])}"
    )
    console.print(
        f"would dep-wait on a farm (a build dependency with no wheel for the target):"
        f" {len(figures['would_dep_wait'])}{_names(figures['would_dep_wait'])}"
    )
    if figures["not_fetched"]:
        console.print(
            f"not surveyed (sdist not fetched, left out of the share):"
            f" {len(figures['not_fetched'])}{_names(figures['not_fetched'])}"
        )
    console.print(f"total build time: {figures['seconds']:.0f} s")
    failed = [r for r in results if r.surveyed and not r.built]
    if not failed:
        console.print("failures: none")
        return
    console.print(f"failures by reason ({len(failed)}):")
    for reason, projects in sorted(figures["failures_by_reason"].items(), key=lambda i: -len(i[1])):
        console.print(f"  {reason}: {len(projects)}")
        for r in (r for r in failed if r.reason == reason):
            flag = "  [bold red]<- names no cause[/bold red]" if r.generic else ""
            console.print(f"    {r.project} {r.version}: {r.summary}{flag}", highlight=False)
    without = figures["failures_without_cause"]
    console.print(
        f"failures whose summary names no cause: {len(without)}{_names(without)}"
        + ("" if without else ": every failure names its cause")
    )


# --- command line ------------------------------------------------------------------------


def _usage_error(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    print(f"{parser.prog}: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="benchmarks/sdists.py",
        description="Build real PyPI sdists as a builder would and count what built unaided.",
    )
    parser.add_argument(
        "projects", nargs="*", metavar="NAME[==VERSION]", help="default: the built-in set"
    )
    parser.add_argument("--target", default="aarch64", help="a configured target (aarch64)")
    parser.add_argument("--limit", type=int, metavar="N", help="survey the first N only")
    parser.add_argument("--timeout", type=int, default=1200, help="build time limit, s (1200)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the results here")
    parser.add_argument("--logs", type=Path, metavar="DIR", help="keep each build's log here")
    args = parser.parse_args(argv)
    try:
        cases = [parse_case(text) for text in args.projects] or list(SET)
    except Unusable as exc:
        _usage_error(parser, str(exc))
    if args.limit is not None:
        if args.limit < 1:
            _usage_error(parser, f"--limit {args.limit}: give 1 or more")
        cases = cases[: args.limit]
    if args.json is not None and not args.json.parent.is_dir():
        _usage_error(parser, f"--json {args.json}: no folder {args.json.parent}")
    builder: dict[str, Any] = {
        "work_dir": Path(tempfile.gettempdir()),  # replaced by the survey's own
        "build_timeout": args.timeout,
    }
    if CA_BUNDLE.exists():
        builder["ca_bundle"] = CA_BUNDLE
    try:
        settings = load_settings(None, builder=builder)
    except ConfigError as exc:
        _usage_error(parser, str(exc))
    target = settings.targets.get(args.target)
    if target is None or not target.enabled:
        known = ", ".join(name for name, t in settings.targets.items() if t.enabled)
        _usage_error(parser, f"--target {args.target}: no enabled target (enabled: {known})")
    # A log or a pipe gets the whole table on wide lines, not folded to 80 columns.
    console = Console(width=None if sys.stdout.isatty() else 200, log_path=False)
    logging.basicConfig(
        level=logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )
    try:
        results, backend, python_tag = survey(settings, args.target, cases, console, args.logs)
    except Unusable as exc:
        _usage_error(parser, str(exc))
    except NoBackend as exc:
        print(f"{parser.prog}: no backend: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except httpx.HTTPError as exc:
        print(f"{parser.prog}: PyPI's Simple API did not answer: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    report(console, results, args.target, backend)
    if args.json is not None:
        document = {
            "target": args.target,
            "backend": backend,
            "python_tag": python_tag,
            "build_timeout": args.timeout,
            "results": [asdict(r) | {"generic_summary": r.generic} for r in results],
            "totals": totals(results),
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
        console.print(f"results written to {args.json}")


if __name__ == "__main__":
    main()

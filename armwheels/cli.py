"""`armwheels` console script: argparse front end; each command imports only what it needs."""

from __future__ import annotations

import argparse
import json
import logging
import platform
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from common.config import ConfigError, Settings, load_settings
from common.logs import setup_logging
from common.protocol import TARGET_NAME_PATTERN
from common.states import ARCHES, TokenRole

if TYPE_CHECKING:
    from rich.progress import Progress
    from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger("armwheels")


class UsageError(Exception):
    """Bad input from the command line, reported in one line with exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config)


@contextmanager
def _database(settings: Settings) -> Iterator[sessionmaker[Session]]:
    """Sessions on a database whose schema is current, else a one-line UsageError; the
    engine is disposed when the block ends, however it ends."""
    from common.db import is_up_to_date, make_sessionmaker, open_engine

    with open_engine(settings.database.url) as engine:
        if not is_up_to_date(engine):
            raise UsageError("database schema is not current: run `armwheels db upgrade`")
        yield make_sessionmaker(engine)


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from common.db import open_engine, upgrade

    settings = _settings(args)
    with open_engine(settings.database.url) as engine:
        upgrade(engine)
    print(f"database at head: {settings.database.url.split('@')[-1]}")
    return 0


def cmd_master(args: argparse.Namespace) -> int:
    from master.service import SchemaOutdated, run_master

    try:
        run_master(_settings(args))
    except SchemaOutdated as exc:
        raise UsageError(str(exc)) from exc
    return 0


def cmd_builder(args: argparse.Namespace) -> int:
    from builder.worker import NoBackend, run_builder

    settings = _settings(args)
    if args.backend:
        settings.builder.backend = args.backend
    try:
        target = settings.builder_target(args.arch, args.target)
    except ConfigError as exc:
        raise UsageError(str(exc)) from exc
    try:
        return run_builder(settings, target, args.config)
    except NoBackend as exc:
        raise UsageError(str(exc)) from exc


def cmd_up(args: argparse.Namespace) -> int:
    from armwheels.up import FarmCannotStart, run_up

    try:
        return run_up(args.config)
    except FarmCannotStart as exc:
        raise UsageError(str(exc)) from exc


def cmd_doctor(args: argparse.Namespace) -> int:
    """The device doctor the master serves at /doctor, run here (common/doctor.py)."""
    from common import doctor

    farm = args.farm or _settings(args).master.public_url
    argv = [*([args.project] if args.project else []), *(["--json"] if args.json else [])]
    return doctor.main(argv, farm=farm)


def cmd_status(args: argparse.Namespace) -> int:
    from master.web.status import collect

    settings = _settings(args)
    with _database(settings) as factory, factory() as session:
        data = collect(session, settings.master.builder_timeout)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    queues = Table(title="Queues")
    queues.add_column("target")
    queues.add_column("arch")
    states = ["pending", "queued", "building", "built", "failed", "skipped"]
    for state in states:
        queues.add_column(state, justify="right")
    names = {name: target.arch for name, target in settings.targets.items()}
    for name in sorted(set(names) | set(data["targets"])):
        counts = data["targets"].get(name, {})
        queues.add_row(name, names.get(name, "?"), *(str(counts.get(s, 0)) for s in states))
    console.print(queues)
    builders = Table(title="Builders")
    for column in ("name", "target", "backend", "state", "job", "last seen"):
        builders.add_column(column)
    for b in data["builders"]:
        builders.add_row(
            b["name"],
            b["target"],
            b["backend"],
            b["state"],
            str(b["current_job"] or ""),
            b["last_seen"],
        )
    console.print(builders)
    recent = Table(title="Recent outcomes")
    for column in ("job", "release", "target", "state", "reason", "seconds"):
        recent.add_column(column)
    for r in data["recent"]:
        seconds = f"{r['seconds']:.0f}" if r["seconds"] is not None else ""
        recent.add_row(
            str(r["job"]),
            f"{r['project']} {r['version']}",
            r["target"],
            r["state"],
            r["reason"] or "",
            seconds,
        )
    console.print(recent)
    feeds = Table(title="Feeds")
    for column in ("feed", "serial", "updated", "events seen"):
        feeds.add_column(column)
    for name, feed in data["feeds"]["cursors"].items():
        feeds.add_row(
            name, str(feed["serial"]), feed["updated"] or "", str(sum(feed["actions"].values()))
        )
    console.print(feeds)
    waiting = data["feeds"]["releases_waiting_for_details"]
    skips = ", ".join(f"{k} {v}" for k, v in sorted(data["skips"].items())) or "none"
    console.print(f"releases waiting for details: {waiting}; not built: {skips}")
    return 0


def cmd_rebuild(args: argparse.Namespace) -> int:
    import getpass

    from common.db import transaction
    from master import audit
    from master.builds.rebuild import RebuildError, request_rebuild

    settings = _settings(args)
    try:
        with _database(settings) as factory, transaction(factory) as session:
            actor = f"cli:{getpass.getuser()}"
            outcome = request_rebuild(
                session,
                settings,
                args.project,
                args.version,
                args.arch,
                requested_by=actor,
                target=args.target,
            )
            created = [(j.id, j.target, j.python_tag) for j in outcome.created]
            waiting = [(j.id, j.target, j.python_tag, j.state.value) for j in outcome.existing]
            audit.record(
                session,
                actor,
                "operator",
                "rebuild",
                f"{outcome.project} {outcome.version}",
                jobs=[job_id for job_id, *_ in created + waiting],
                arch=args.arch,
                target=args.target,
                duplicate=not created,
            )
    except RebuildError as exc:
        raise UsageError(str(exc)) from exc
    for job_id, target, tag, state in waiting:
        print(f"job {job_id} already {state}: {args.project} {target} {tag}")
    if not created:
        print("nothing to do: a build is already pending for every target")
    for job_id, target, tag in created:
        print(f"job {job_id} pending: {args.project} {target} {tag}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from common.names import BadName
    from master.pypi.importer import (
        ImportRequest,
        ProjectListError,
        parse_import_request,
        read_project_list,
        run_import,
    )
    from master.pypi.json_api import JsonApiClient

    if args.top is not None and args.from_file is None:
        raise UsageError("--top needs --from FILE")
    if not args.projects and args.from_file is None:
        raise UsageError("name projects to import, or give --from FILE")
    try:
        requests = [parse_import_request(text) for text in args.projects]
        if args.from_file is not None:
            requests += [ImportRequest(n) for n in read_project_list(args.from_file, args.top)]
    except (BadName, ProjectListError) as exc:
        raise UsageError(str(exc)) from exc
    pinned = next((r for r in requests if r.version is not None), None)
    if args.all_releases and pinned is not None:
        raise UsageError(f"{pinned} names one release; --all-releases imports every one")
    requests = list(dict.fromkeys(requests))
    settings = _settings(args)
    columns = (
        TextColumn("importing"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[project]}"),
    )
    with _database(settings) as factory:
        client = JsonApiClient(settings.upstream.json_url, settings.upstream.timeout)
        try:
            with Progress(*columns, disable=not sys.stderr.isatty()) as progress:
                task = progress.add_task("import", total=len(requests), project="")
                outcome = run_import(
                    factory,
                    client,
                    settings,
                    requests,
                    all_releases=args.all_releases,
                    advance=lambda name: progress.update(task, advance=1, project=name),
                )
        finally:
            client.close()
    for name, error in outcome.failed.items():
        print(f"not imported: {name}: {error}", file=sys.stderr)
    print(
        f"imported {outcome.projects} of {len(requests)} projects: "
        f"{outcome.releases} releases, {outcome.jobs} backfill jobs"
    )
    return 1 if outcome.failed else 0


def _operate(args: argparse.Namespace, action: Callable[[Session, str], str]) -> int:
    """Run one operator action in a transaction as `cli:<user>`, audited; a refusal is a
    usage error (exit 2, one line)."""
    import getpass

    from common.db import transaction
    from master.operations import Refused

    settings = _settings(args)
    try:
        with _database(settings) as factory, transaction(factory) as session:
            message = action(session, f"cli:{getpass.getuser()}")
    except Refused as exc:
        raise UsageError(exc.message) from exc
    print(message)
    return 0


def cmd_skip_add(args: argparse.Namespace) -> int:
    from master import operations

    def act(session: Session, actor: str) -> str:
        rule, settled = operations.add_skip(
            session, args.project, args.version, args.reason, actor, "operator"
        )
        what = f"{rule.project} {rule.version or '(all releases)'}"
        return f"skipping {what}; {settled} waiting jobs skipped"

    return _operate(args, act)


def cmd_skip_remove(args: argparse.Namespace) -> int:
    from master import operations

    def act(session: Session, actor: str) -> str:
        subject = operations.remove_skip(session, args.project, args.version, actor, "operator")
        return f"no longer skipping {subject}"

    return _operate(args, act)


def cmd_job_cancel(args: argparse.Namespace) -> int:
    from master import operations
    from master.builds.live_logs import final_log_keeper

    keep_log = final_log_keeper(_settings(args))

    def act(session: Session, actor: str) -> str:
        job = operations.cancel_job(
            session, args.job_id, actor, "operator", args.reason, keep_log=keep_log
        )
        return f"job {job.id} cancelled"

    return _operate(args, act)


def cmd_job_requeue(args: argparse.Namespace) -> int:
    from master import operations

    def act(session: Session, actor: str) -> str:
        job = operations.requeue_job(session, args.job_id, actor, "operator", args.reason)
        return f"job {job.id} pending again"

    return _operate(args, act)


def cmd_wheel_remove(args: argparse.Namespace) -> int:
    from master import operations

    def act(session: Session, actor: str) -> str:
        operations.remove_wheel(session, args.filename, actor, "operator", args.reason)
        return f"{args.filename} removed from the index"

    return _operate(args, act)


def cmd_skip_list(args: argparse.Namespace) -> int:
    from master.builds.skips import list_rules

    with _database(_settings(args)) as factory, factory() as session:
        rows = [
            (r.project, r.version or "*", r.reason, r.created_by, r.created_at.isoformat())
            for r in list_rules(session)
        ]
    if args.json:
        keys = ("project", "version", "reason", "created_by", "created_at")
        print(json.dumps([dict(zip(keys, row, strict=True)) for row in rows], indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Skip list")
    for column in ("project", "version", "reason", "by", "since"):
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    Console().print(table)
    return 0


def cmd_cross_reset(args: argparse.Namespace) -> int:
    from master import operations

    def act(session: Session, actor: str) -> str:
        name = operations.reset_cross(session, args.project, actor, "operator")
        return f"{name}: builders try the cross path again"

    return _operate(args, act)


def cmd_cross_list(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from common.models import Project

    with _database(_settings(args)) as factory, factory() as session:
        rows = [
            (name, why)
            for name, why in session.execute(
                select(Project.name, Project.emulate_because)
                .where(Project.emulate_because.is_not(None))
                .order_by(Project.name)
            )
        ]
    if args.json:
        print(json.dumps([{"project": p, "why": w} for p, w in rows], indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Projects built under emulation, not cross-compiled")
    for column in ("project", "why"):
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    Console().print(table)
    return 0


def cmd_token_create(args: argparse.Namespace) -> int:
    from master import operations

    def act(session: Session, actor: str) -> str:
        role = TokenRole(args.role)
        return operations.create_token(session, args.name, role, args.projects, actor, "operator")

    return _operate(args, act)


def cmd_token_revoke(args: argparse.Namespace) -> int:
    from master import operations

    def act(session: Session, actor: str) -> str:
        operations.revoke_token(session, args.name, actor, "operator")
        return f"revoked {args.name}"

    return _operate(args, act)


def cmd_image_build(args: argparse.Namespace) -> int:
    from builder.image import build_cross_image, build_target_image

    settings = _settings(args)
    if args.cross:
        if platform.machine() != "x86_64":
            raise UsageError(f"the cross image is for x86_64 hosts, not {platform.machine()}")
        build_cross_image(settings.builder.cross_image, settings.builder.ca_bundle, args.force)
        return 0
    if args.target is not None:
        if args.target not in settings.targets:
            raise UsageError(f"no target {args.target} in the configuration")
        names = [args.target]
    else:
        names = settings.targets_of(args.arch, enabled=False)
        if not names:
            raise UsageError(f"no target configured for {args.arch}")
    # Every target of the arch, each image once (targets may share one).
    made: set[str] = set()
    for name in names:
        target = settings.targets[name]
        if target.image in made:
            continue
        made.add(target.image)
        build_target_image(target, settings.builder.ca_bundle, force=args.force)
    return 0


def _index_progress(label: str, session: Session) -> tuple[Progress, Callable[[int], None]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
    from sqlalchemy import func, select

    from common.models import OutputFile, Release
    from master.index.pages import SERVED

    total = session.scalar(
        select(func.count())
        .select_from(OutputFile)
        .join(Release, OutputFile.release_id == Release.id)
        .where(*SERVED)
    )
    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("files"))
    progress = Progress(*columns, disable=not sys.stderr.isatty())
    task = progress.add_task(label, total=total)
    return progress, lambda count: progress.update(task, advance=count)


def cmd_index_export(args: argparse.Namespace) -> int:
    """Write the whole index as static files (pages and the wheels they link to)."""
    from master.index.static import StaticIndex

    target: Path = args.directory.absolute()
    if target.exists() and not target.is_dir():
        raise UsageError(f"{target} is not a directory")
    if target.is_dir() and any(target.iterdir()) and not (target / "simple" / ".serial").exists():
        raise UsageError(f"{target} is not empty and holds no earlier export")
    settings = _settings(args)
    try:
        with _database(settings) as factory, factory() as session:
            progress, advance = _index_progress("exporting", session)
            with progress:
                report = StaticIndex(target, settings.distribution_indexes()).regenerate(
                    session, files_from=settings.master.data_dir, progress=advance
                )
    except OSError as exc:
        print(f"export failed: {exc}", file=sys.stderr)
        return 1
    print(
        f"exported {report.projects} projects at serial {report.serial} to {target}:"
        f" {report.files_written} pages written, {report.files_linked} files linked or copied"
    )
    return 0


def cmd_index_sync(args: argparse.Namespace) -> int:
    """Bring the master's static tree up to date now (the master does it on its own)."""
    from master.index.static import StaticIndex

    settings = _settings(args)
    static = StaticIndex(settings.master.data_dir, settings.distribution_indexes())
    with _database(settings) as factory, factory() as session:
        if args.full:
            progress, advance = _index_progress("regenerating", session)
            with progress:
                report = static.regenerate(session, progress=advance)
        else:
            report = static.sync(session)
    print(
        f"static index at serial {report.serial}: {report.projects} projects rewritten,"
        f" {report.files_written} files written, {report.files_removed} removed"
    )
    return 0


def cmd_fsck(args: argparse.Namespace) -> int:
    """Check that the database, the files, the static index and the hashes agree; exit 1
    while a problem is left (with --repair: one it could not mend)."""
    import getpass

    from common.db import transaction
    from master import audit
    from master.index.fsck import ADVICE, run_fsck

    settings = _settings(args)
    data_dir = settings.master.data_dir
    with _database(settings) as factory:
        if not data_dir.is_dir():
            raise UsageError(f"no data directory at {data_dir} (master.data_dir)")
        report = run_fsck(factory, data_dir, settings.index.static, repair=args.repair)
        repaired = [finding for finding in report.findings if finding.repaired]
        if repaired:
            with transaction(factory) as session:
                audit.record(
                    session,
                    f"cli:{getpass.getuser()}",
                    "operator",
                    "fsck-repair",
                    str(data_dir),
                    repaired={f.path: f.kind.value for f in repaired},
                    quarantine=report.quarantine,
                    left=len(report.left),
                )
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
        return 1 if report.left else 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    checked = (
        f"{report.wheels} wheels, {report.files} files, {report.pages} static pages"
        f" ({report.hashed_bytes} bytes hashed)"
    )
    if not report.findings:
        console.print(f"no problems: checked {checked}")
        return 0
    table = Table(title=f"fsck of {data_dir}")
    table.add_column("kind", no_wrap=True)
    table.add_column("path", overflow="fold")  # whole: the operator acts on it
    table.add_column("row", no_wrap=True)
    table.add_column("detail", overflow="fold")
    table.add_column("repair", no_wrap=True)
    for finding in report.findings:
        row = f"{finding.table} {finding.row}" if finding.row is not None else ""
        repair = "done" if finding.repaired else "possible" if finding.repairable else "no"
        table.add_row(finding.kind.value, finding.path, row, finding.detail, repair)
    console.print(table)
    left = report.left
    console.print(
        f"{len(report.findings)} problems, {len(report.findings) - len(left)} repaired,"
        f" {len(left)} left; checked {checked}"
    )
    if report.quarantine is not None:
        console.print(f"unknown files moved to the quarantine: {data_dir / report.quarantine}")
    for kind in sorted({finding.kind for finding in left}):
        console.print(f"{kind.value}: {ADVICE[kind]}")
    return 1 if left else 0


def cmd_recipe_check(args: argparse.Namespace) -> int:
    """Validate a recipe file before the master picks it up (it keeps the last good one)."""
    from common.names import BadName, normalize_project
    from common.recipes import RecipeError, parse_recipes

    path: Path | None = args.file or _settings(args).master.recipes
    if path is None:
        raise UsageError("no recipe file: give FILE or set master.recipes")
    try:
        recipes = parse_recipes(path.read_text(encoding="utf-8"), str(path))
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read: {exc}") from exc
    except RecipeError as exc:
        raise UsageError(str(exc)) from exc
    if args.project:
        try:
            recipe = recipes.get(normalize_project(args.project))
        except BadName as exc:
            raise UsageError(str(exc)) from exc
        print(recipe.model_dump_json(indent=2, exclude_defaults=True) if recipe else "{}")
        return 0
    print(f"{path}: {len(recipes)} recipes: {', '.join(sorted(recipes)) or 'none'}")
    return 0


def cmd_recipe_suggest(args: argparse.Namespace) -> int:
    """The recipe the farm learned for a project (the system packages its builders had to
    add), printed as a recipe file's entry for an operator to pin."""
    from sqlalchemy import select

    from common.models import Project
    from common.names import BadName, normalize_project
    from master.builds.learned_packages import suggest

    try:
        name = normalize_project(args.project)
    except BadName as exc:
        raise UsageError(str(exc)) from exc
    with _database(_settings(args)) as factory, factory() as session:
        project = session.scalar(select(Project).where(Project.name == name))
        if project is None:
            raise UsageError(f"unknown project {name}")
        entry = suggest(project)
    if not entry:
        print(f"# nothing learned for {name}: its builds needed no system package the farm added")
        return 0
    print(f"# learned from {name}'s builds: pin it in the recipe file (master.recipes)")
    print(entry, end="")
    return 0


def cmd_push_status(args: argparse.Namespace) -> int:
    from master.index.pushes import push_summary

    settings = _settings(args)
    with _database(settings) as factory, factory() as session:
        rows = push_summary(session, [target.name for target in settings.push])
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Pushes to other indexes")
    table.add_column("target")
    for column in ("pushed", "pending", "failed"):
        table.add_column(column, justify="right")
    table.add_column("last error")
    for row in rows:
        table.add_row(
            row.target, str(row.pushed), str(row.pending), str(row.failed), row.last_error or ""
        )
    Console().print(table)
    return 0


def cmd_push_retry(args: argparse.Namespace) -> int:
    from common.db import transaction
    from master.index.pushes import has_pushes, retry_failed

    settings = _settings(args)
    configured = [target.name for target in settings.push]
    if args.target is not None and args.target not in configured:
        raise UsageError(
            f"no push target named {args.target!r} (configured: {', '.join(configured) or 'none'})"
        )
    with _database(settings) as factory, transaction(factory) as session:
        if args.file is not None and not has_pushes(session, args.file):
            raise UsageError(f"no pushes of {args.file!r}")
        count = retry_failed(session, [args.target] if args.target else configured, args.file)
    print(f"{count} failed pushes pending again" if count else "no failed pushes to retry")
    return 0


def _name(value: str) -> str:
    if not value or len(value) > 100 or not all(c.isalnum() or c in "-_." for c in value):
        raise argparse.ArgumentTypeError(f"invalid name: {value!r}")
    return value


def _target_name(value: str) -> str:
    if not re.match(TARGET_NAME_PATTERN, value):
        raise argparse.ArgumentTypeError(f"invalid target name: {value!r}")
    return value


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"not a positive number: {value!r}")
    return number


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    # SUPPRESS: a subcommand's unset --config must not hide one given before the subcommand.
    common.add_argument(
        "--config", type=Path, default=argparse.SUPPRESS, help="TOML configuration file"
    )
    parser = _Parser(prog="armwheels", description=__doc__, parents=[common])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def add(name: str, func: Callable[[argparse.Namespace], int], text: str) -> _Parser:
        command: _Parser = sub.add_parser(name, parents=[common], help=text, description=text)
        command.set_defaults(func=func)
        return command

    add("up", cmd_up, "run the whole farm on this machine with embedded defaults")
    add("master", cmd_master, "run the feed poller, scheduler and HTTP server")
    builder = add("builder", cmd_builder, "run a builder worker for one target")
    which = builder.add_mutually_exclusive_group(required=True)
    which.add_argument("--arch", choices=ARCHES, help="the arch's target, when it has one")
    which.add_argument("--target", type=_target_name, help="a target by its name")
    builder.add_argument("--backend", choices=["auto", "cross", "docker", "native"], default=None)
    rebuild = add("rebuild", cmd_rebuild, "ask for a rebuild of a project's release")
    rebuild.add_argument("project")
    rebuild.add_argument("version", nargs="?")
    rebuild.add_argument("--arch", choices=ARCHES)
    rebuild.add_argument("--target", type=_target_name)
    status = add("status", cmd_status, "show queues, builders and recent outcomes")
    status.add_argument("--json", action="store_true")
    doctor = add("doctor", cmd_doctor, "which of the farm's wheels this device takes, and why")
    doctor.add_argument("project", nargs="?", metavar="PROJECT[==VERSION]")
    doctor.add_argument("--farm", metavar="URL", help="default: master.public_url")
    doctor.add_argument("--json", action="store_true")

    importer = add("import", cmd_import, "backfill existing releases at low priority")
    importer.description = (
        "Backfill existing releases at low priority: PROJECT its newest release,"
        " PROJECT==VERSION that one. Exit 0 when all were imported; 1 when a project or"
        " release is not upstream, or upstream failed (one line each on stderr, naming"
        " it); 2 for bad input."
    )
    importer.add_argument("projects", nargs="*", metavar="PROJECT[==VERSION]")
    importer.add_argument("--from", dest="from_file", type=Path, metavar="FILE")
    importer.add_argument("--top", type=_positive, metavar="N")
    importer.add_argument(
        "--all-releases", action="store_true", help="every release, not only the newest"
    )

    skip = sub.add_parser("skip", help="the skip list", parents=[common])
    skip_sub = skip.add_subparsers(dest="skip_command", required=True, parser_class=_Parser)
    skip_add = skip_sub.add_parser("add", parents=[common], help="stop building a project")
    skip_add.add_argument("project")
    skip_add.add_argument("version", nargs="?")
    skip_add.add_argument("--reason", required=True)
    skip_add.set_defaults(func=cmd_skip_add)
    skip_remove = skip_sub.add_parser("remove", parents=[common], help="build it again")
    skip_remove.add_argument("project")
    skip_remove.add_argument("version", nargs="?")
    skip_remove.set_defaults(func=cmd_skip_remove)
    skip_list = skip_sub.add_parser("list", parents=[common], help="show the skip list")
    skip_list.add_argument("--json", action="store_true")
    skip_list.set_defaults(func=cmd_skip_list)

    cross = sub.add_parser("cross", help="projects the cross path falls back on", parents=[common])
    cross_sub = cross.add_subparsers(dest="cross_command", required=True, parser_class=_Parser)
    cross_list = cross_sub.add_parser(
        "list", parents=[common], help="projects marked for emulation, and why"
    )
    cross_list.add_argument("--json", action="store_true")
    cross_list.set_defaults(func=cmd_cross_list)
    cross_reset = cross_sub.add_parser(
        "reset", parents=[common], help="let builders cross-compile a project again"
    )
    cross_reset.add_argument("project")
    cross_reset.set_defaults(func=cmd_cross_reset)

    job = sub.add_parser("job", help="cancel or re-queue a job", parents=[common])
    job_sub = job.add_subparsers(dest="job_command", required=True, parser_class=_Parser)
    for verb, func, text in (
        ("cancel", cmd_job_cancel, "stop a waiting or running job"),
        ("requeue", cmd_job_requeue, "put a failed or skipped job back in line"),
    ):
        action = job_sub.add_parser(verb, parents=[common], help=text)
        action.add_argument("job_id", type=_positive, metavar="JOB")
        action.add_argument("--reason", required=True)
        action.set_defaults(func=func)

    wheel = sub.add_parser("wheel", help="wheels in the index", parents=[common])
    wheel_sub = wheel.add_subparsers(dest="wheel_command", required=True, parser_class=_Parser)
    remove = wheel_sub.add_parser("remove", parents=[common], help="take a wheel out of the index")
    remove.add_argument("filename", metavar="FILENAME")
    remove.add_argument("--reason", required=True)
    remove.set_defaults(func=cmd_wheel_remove)

    db = sub.add_parser("db", help="database schema", parents=[common])
    db_sub = db.add_subparsers(dest="db_command", required=True, parser_class=_Parser)
    up = db_sub.add_parser("upgrade", parents=[common], help="apply schema migrations")
    up.set_defaults(func=cmd_db_upgrade)

    token = sub.add_parser("token", help="API tokens", parents=[common])
    token_sub = token.add_subparsers(dest="token_command", required=True, parser_class=_Parser)
    create = token_sub.add_parser("create", parents=[common], help="create a token")
    create.add_argument("name", type=_name)
    create.add_argument("--role", choices=[r.value for r in TokenRole], required=True)
    create.add_argument(
        "--project",
        dest="projects",
        action="append",
        metavar="NAME",
        help="a project a maintainer token may rebuild (repeat for several)",
    )
    create.set_defaults(func=cmd_token_create)
    revoke = token_sub.add_parser("revoke", parents=[common], help="revoke a token")
    revoke.add_argument("name", type=_name)
    revoke.set_defaults(func=cmd_token_revoke)

    recipe = sub.add_parser("recipe", help="per-project build recipes", parents=[common])
    recipe_sub = recipe.add_subparsers(dest="recipe_command", required=True, parser_class=_Parser)
    check = recipe_sub.add_parser(
        "check", parents=[common], help="validate the recipe file (default: master.recipes)"
    )
    check.add_argument("file", nargs="?", type=Path, metavar="FILE")
    check.add_argument("--project", help="print the recipe this project gets")
    check.set_defaults(func=cmd_recipe_check)
    suggest = recipe_sub.add_parser(
        "suggest",
        parents=[common],
        help="print the recipe the farm learned for a project (system packages it added)",
    )
    suggest.add_argument("project")
    suggest.set_defaults(func=cmd_recipe_suggest)

    push = sub.add_parser("push", help="pushes of new wheels to other indexes", parents=[common])
    push_sub = push.add_subparsers(dest="push_command", required=True, parser_class=_Parser)
    push_status = push_sub.add_parser("status", parents=[common], help="pushes per target")
    push_status.set_defaults(func=cmd_push_status)
    push_retry = push_sub.add_parser("retry", parents=[common], help="try failed pushes again now")
    push_retry.add_argument("--target", type=_name, metavar="NAME")
    push_retry.add_argument("--file", metavar="FILENAME", help="only this wheel")
    push_retry.set_defaults(func=cmd_push_retry)

    image = sub.add_parser("image", help="build images", parents=[common])
    image_sub = image.add_subparsers(dest="image_command", required=True, parser_class=_Parser)
    build = image_sub.add_parser(
        "build",
        parents=[common],
        help="make the local Debian build image for an arch, or the host's cross image",
    )
    which = build.add_mutually_exclusive_group(required=True)
    which.add_argument("--arch", choices=ARCHES, help="the images of the arch's targets")
    which.add_argument("--target", type=_target_name, help="the image of a target by its name")
    which.add_argument(
        "--cross", action="store_true", help="the cross image (builder.cross_image) for x86_64"
    )
    build.add_argument("--force", action="store_true")
    build.set_defaults(func=cmd_image_build)

    fsck = add("fsck", cmd_fsck, "check that the database, files, static index and hashes agree")
    fsck.add_argument(
        "--repair",
        action="store_true",
        help="rewrite stale static pages and .metadata files, quarantine unknown files,"
        " remove leftover temporary files (never touches a wheel a row refers to)",
    )
    fsck.add_argument("--json", action="store_true")

    index = sub.add_parser("index", help="the Simple index's static copy", parents=[common])
    index_sub = index.add_subparsers(dest="index_command", required=True, parser_class=_Parser)
    export = index_sub.add_parser(
        "export", parents=[common], help="write the whole index as static files to DIR"
    )
    export.add_argument("directory", type=Path, metavar="DIR")
    export.set_defaults(func=cmd_index_export)
    sync = index_sub.add_parser(
        "sync", parents=[common], help="bring <data_dir>/simple up to date now"
    )
    sync.add_argument("--full", action="store_true", help="rewrite every page")
    sync.set_defaults(func=cmd_index_sync)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.config = getattr(args, "config", None)
    setup_logging()
    try:
        code: int = args.func(args)
    except (ConfigError, UsageError) as exc:
        print(f"armwheels: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())

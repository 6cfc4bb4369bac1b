"""The `armwheels` console script, run as a real process on a temporary SQLite farm.

Malformed input is answered with exit code 2 and one line on stderr saying what is wrong.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import event, select
from sqlalchemy.orm import Session, sessionmaker

from armwheels import cli
from armwheels.cli import UsageError
from common.config import Settings, load_settings
from common.db import make_engine, make_sessionmaker, transaction
from common.models import AuditEvent
from tests.seed import add_release, publish_wheel

SCRIPT = Path(sys.executable).with_name("armwheels")
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "armwheels"]


@dataclass
class Farm:
    root: Path
    data: Path
    env: dict[str, str]

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*COMMAND, *args],
            cwd=self.root,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    def ok(self, *args: str) -> str:
        result = self.run(*args)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def upgraded(self) -> Farm:
        assert "database at head" in self.ok("db", "upgrade")
        return self


@pytest.fixture
def farm(tmp_path: Path) -> Farm:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("ARMWHEELS_")}
    data = tmp_path / "data"
    env["ARMWHEELS_MASTER__DATA_DIR"] = str(data)
    return Farm(tmp_path, data, env)


def assert_usage_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    [line] = lines
    assert line.startswith("armwheels"), line
    assert "error: " in line, line
    for fragment in fragments:
        assert fragment in line
    assert result.stdout == ""
    return line


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["frob"], ["invalid choice: 'frob'"]),
        ([], ["required", "command"]),
        (["builder"], ["armwheels builder:", "required", "--arch"]),
        (["builder", "--arch", "x86_64"], ["--arch", "invalid choice: 'x86_64'"]),
        (["builder", "--arch", "aarch64", "--backend", "podman"], ["invalid choice: 'podman'"]),
        (["rebuild"], ["required", "project"]),
        (["rebuild", "demo", "--arch", "sparc"], ["invalid choice: 'sparc'"]),
        (["status", "--bogus"], ["unrecognized arguments: --bogus"]),
        (["db"], ["armwheels db:", "required"]),
        (["db", "downgrade"], ["invalid choice: 'downgrade'"]),
        (["token", "create", "b1"], ["required", "--role"]),
        (["token", "create", "b1", "--role", "root"], ["invalid choice: 'root'"]),
        (["token", "create", "a b", "--role", "builder"], ["invalid name: 'a b'"]),
        (["token", "create", "", "--role", "builder"], ["invalid name: ''"]),
        (["token", "create", "x" * 101, "--role", "builder"], ["invalid name"]),
        (["token", "revoke", "b/1"], ["invalid name: 'b/1'"]),
        (["image", "build"], ["required", "--arch"]),
        (["import", "demo", "--top", "0"], ["--top", "not a positive number: '0'"]),
        (["import", "demo", "--top", "x"], ["--top", "not a positive number: 'x'"]),
        (["skip", "add", "demo"], ["required", "--reason"]),
        (["skip"], ["armwheels skip:", "required"]),
    ],
)
def test_bad_arguments(farm: Farm, args: list[str], fragments: list[str]) -> None:
    assert_usage_error(farm.run(*args), *fragments)
    # Nothing was touched on the way to the error.
    assert not farm.data.exists()


@pytest.mark.parametrize(
    "args",
    [
        ["--config", "bad.toml", "status"],
        ["status", "--config", "bad.toml"],
        ["--config", "bad.toml", "token", "create", "b1", "--role", "builder"],
        ["token", "--config", "bad.toml", "revoke", "b1"],
    ],
)
def test_config_file_that_is_not_toml(farm: Farm, args: list[str]) -> None:
    # --config is honoured wherever it stands on the command line.
    (farm.root / "bad.toml").write_text("[master\nport = \n")
    assert_usage_error(farm.run(*args), "bad.toml: not valid TOML")


def test_config_errors(farm: Farm) -> None:
    assert_usage_error(farm.run("--config", "absent.toml", "status"), "config file not found")
    assert_usage_error(
        farm.run("status", ARMWHEELS_MASTER__PORT="0"),
        "invalid configuration (environment): master.port",
        "greater than or equal to 1",
    )
    assert_usage_error(
        farm.run("db", "upgrade", ARMWHEELS_UPSTREAM__INDEX_URL="ftp://example.invalid/"),
        "upstream.index_url",
    )
    (farm.root / "typo.toml").write_text("[master]\nprot = 8080\n")
    assert_usage_error(farm.run("--config", "typo.toml", "status"), "master.prot: unknown setting")
    (farm.root / "bad.toml").write_text("port = = 1\n")
    assert_usage_error(farm.run("status", ARMWHEELS_CONFIG="bad.toml"), "not valid TOML")
    assert not farm.data.exists()


def test_commands_refuse_a_database_without_schema(farm: Farm) -> None:
    for args in (["status"], ["rebuild", "demo"], ["token", "revoke", "b1"]):
        assert_usage_error(farm.run(*args), "run `armwheels db upgrade`")


def test_upgrade_then_status_json(farm: Farm) -> None:
    farm.upgraded()
    assert (farm.data / "armwheels.db").is_file()
    # Upgrading a current database is a no-op.
    farm.upgraded()
    data = json.loads(farm.ok("status", "--json"))
    assert {"queues", "builders", "recent"} <= set(data)
    assert data["queues"] == {} and data["builders"] == [] and data["recent"] == []


def test_config_file_before_the_subcommand_is_used(farm: Farm) -> None:
    elsewhere = farm.root / "elsewhere"
    (farm.root / "farm.toml").write_text(f'[master]\ndata_dir = "{elsewhere.as_posix()}"\n')
    env = {k: v for k, v in farm.env.items() if k != "ARMWHEELS_MASTER__DATA_DIR"}
    result = subprocess.run(
        [*COMMAND, "--config", "farm.toml", "db", "upgrade"],
        cwd=farm.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (elsewhere / "armwheels.db").is_file()


def test_tokens(farm: Farm) -> None:
    farm.upgraded()
    secret = farm.ok("token", "create", "b1", "--role", "builder")
    assert len(secret.splitlines()) == 1 and secret.startswith("aw_")
    assert_usage_error(
        farm.run("token", "create", "b1", "--role", "operator"), "a token named 'b1' exists"
    )
    maintainer = ["token", "create", "m.1_x-y", "--role", "maintainer"]
    assert_usage_error(farm.run(*maintainer), "a maintainer token needs at least one project")
    assert_usage_error(farm.run(*maintainer, "--project", "!!"), "invalid project name")
    assert farm.ok(*maintainer, "--project", "Demo", "--project", "other").startswith("aw_")
    assert_usage_error(
        farm.run("token", "create", "op", "--role", "operator", "--project", "demo"),
        "projects scope maintainer tokens only",
    )
    assert_usage_error(farm.run("token", "revoke", "ghost"), "no active token named 'ghost'")
    assert farm.ok("token", "revoke", "b1").strip() == "revoked b1"
    assert_usage_error(farm.run("token", "revoke", "b1"), "no active token named 'b1'")


def test_rebuild(farm: Farm) -> None:
    farm.upgraded()
    assert_usage_error(farm.run("rebuild", "nope"), "unknown project: nope")
    assert_usage_error(farm.run("rebuild", "!!"), "invalid project name")
    settings = load_settings(None, master={"data_dir": farm.data})
    engine = make_engine(settings.database.url)
    try:
        with transaction(make_sessionmaker(engine)) as session:
            add_release(session, settings, "demo", "1.0")
    finally:
        engine.dispose()
    assert_usage_error(farm.run("rebuild", "demo", "9.9"), "demo has no release 9.9")
    assert_usage_error(
        farm.run("rebuild", "demo", "--arch", "armv7l"), "arch armv7l has no enabled target"
    )
    answer = farm.ok("rebuild", "Demo", "1.0")
    assert answer.startswith("job ") and "already pending: Demo aarch64 cp311" in answer
    assert "nothing to do" in answer
    data = json.loads(farm.ok("status", "--json"))
    assert data["queues"]["aarch64"]["pending"] == 1
    # The build plan's rules hold for a rebuild: a skipped project is refused, naming
    # the skip entry, until an operator removes it.
    farm.ok("skip", "add", "demo", "--reason", "needs CUDA")
    assert_usage_error(
        farm.run("rebuild", "demo"), "demo 1.0 is not built", "(all releases)", "needs CUDA"
    )
    farm.ok("skip", "remove", "demo")
    assert "pending: demo aarch64 cp311" in farm.ok("rebuild", "demo")


def test_import_refuses_bad_input_in_one_line(farm: Farm) -> None:
    farm.upgraded()
    assert_usage_error(farm.run("import"), "name projects to import, or give --from FILE")
    assert_usage_error(farm.run("import", "--top", "3"), "--top needs --from FILE")
    assert_usage_error(farm.run("import", "ok", "bad name"), "invalid project name: 'bad name'")
    assert_usage_error(farm.run("import", "--from", "missing.txt"), "missing.txt: cannot read")
    (farm.root / "list.json").write_text('{"rows": [{"project": "numpy"}, {"count": 3}]}')
    assert_usage_error(farm.run("import", "--from", "list.json"), "entry without a project name")
    (farm.root / "list.txt").write_text("numpy\n# a comment\nnot a name!\n")
    assert_usage_error(farm.run("import", "--from", "list.txt"), "invalid project name")


def test_skip_list(farm: Farm) -> None:
    farm.upgraded()
    settings = load_settings(None, master={"data_dir": farm.data})
    engine = make_engine(settings.database.url)
    try:
        with transaction(make_sessionmaker(engine)) as session:
            add_release(session, settings, "demo", "1.0")
            add_release(session, settings, "demo", "2.0")
    finally:
        engine.dispose()
    assert farm.ok("skip", "add", "Demo", "1.0", "--reason", "needs CUDA").startswith(
        "skipping demo 1.0; 1 waiting jobs skipped"
    )
    assert_usage_error(
        farm.run("skip", "add", "demo", "1.0", "--reason", "again"), "already on the skip list"
    )
    assert_usage_error(farm.run("skip", "add", "demo", "--reason", " "), "a reason of 1 to 500")
    assert_usage_error(farm.run("skip", "add", "demo", "1..0", "--reason", "x"), "invalid version")
    assert farm.ok("skip", "add", "demo", "--reason", "whole project").startswith(
        "skipping demo (all releases); 1 waiting jobs skipped"
    )
    rules = json.loads(farm.ok("skip", "list", "--json"))
    assert [(r["project"], r["version"], r["reason"]) for r in rules] == [
        ("demo", "*", "whole project"),
        ("demo", "1.0", "needs CUDA"),
    ]
    data = json.loads(farm.ok("status", "--json"))
    assert data["queues"]["aarch64"].get("pending", 0) == 0
    assert data["queues"]["aarch64"]["skipped"] == 2
    assert data["skips"] == {"release:skip-list": 2, "target:skip-list": 2}
    table = farm.ok("status")
    assert "not built: release:skip-list 2, target:skip-list 2" in " ".join(table.split())
    farm.ok("skip", "remove", "demo")
    assert_usage_error(farm.run("skip", "remove", "demo"), "is not on the skip list")
    assert len(json.loads(farm.ok("skip", "list", "--json"))) == 1


def test_import_backfills_at_low_priority(farm: Farm) -> None:
    from sqlalchemy import func, select

    from common.models import BuildJob, Project, Release
    from master.builds.build_plan import PRIORITY_BACKFILL
    from tests.pypi_replay import replay_server

    farm.upgraded()
    with replay_server(events=1500, seed=4) as server:
        state = server.expected_state()
        # Projects whose newest release has an sdist and nothing that stops a build.
        names = sorted(
            name
            for name, project in state.projects.items()
            if project.releases and not any(r.yanked for r in project.releases.values())
        )[:6]
        ranking = farm.root / "top.json"
        ranking.write_text(
            json.dumps({"rows": [{"project": n, "download_count": 9} for n in names]})
        )
        env = {"ARMWHEELS_UPSTREAM__JSON_URL": server.url + "/pypi/"}
        result = farm.run("import", "--from", str(ranking), "--top", "4", "no-such-project", **env)
        assert result.returncode == 1, result.stderr
        assert "not imported: no-such-project: no-such-project: not found upstream" in (
            result.stderr
        )
        assert "imported 4 of 5 projects" in result.stdout
        again = farm.run("import", *names[:4], "--all-releases", **env)
        assert again.returncode == 0, again.stderr
    settings = load_settings(None, master={"data_dir": farm.data})
    engine = make_engine(settings.database.url)
    try:
        with make_sessionmaker(engine)() as session:
            imported = set(session.scalars(select(Project.name)))
            assert imported == set(names[:4])
            releases = session.scalar(select(func.count()).select_from(Release))
            expected = sum(
                1 for n in names[:4] for r in state.projects[n].releases.values() if r.files
            )
            assert releases == expected
            priorities = list(session.scalars(select(BuildJob.priority)))
            assert priorities and set(priorities) == {PRIORITY_BACKFILL}
    finally:
        engine.dispose()


def test_operator_actions_on_jobs_and_wheels_are_audited(farm: Farm) -> None:
    farm.upgraded()
    settings = load_settings(None, master={"data_dir": farm.data})
    engine = make_engine(settings.database.url)
    try:
        with transaction(make_sessionmaker(engine)) as session:
            _, _, [job] = add_release(session, settings, "demo", "1.0")
            wheel = publish_wheel(session, settings, "other").filename
            job_id = job.id
    finally:
        engine.dispose()
    assert farm.ok("job", "cancel", str(job_id), "--reason", "loops").strip() == (
        f"job {job_id} cancelled"
    )
    assert_usage_error(farm.run("job", "cancel", str(job_id), "--reason", "x"), "nothing to cancel")
    assert farm.ok("job", "requeue", str(job_id), "--reason", "fixed").strip() == (
        f"job {job_id} pending again"
    )
    assert_usage_error(farm.run("job", "requeue", "999999", "--reason", "x"), "no job 999999")
    assert_usage_error(farm.run("job", "cancel", "abc", "--reason", "x"), "not a positive number")
    assert_usage_error(farm.run("job", "cancel", str(job_id)), "required", "--reason")
    assert farm.ok("wheel", "remove", wheel, "--reason", "bad").strip() == (
        f"{wheel} removed from the index"
    )
    assert_usage_error(farm.run("wheel", "remove", wheel, "--reason", "x"), "already out of")
    engine = make_engine(settings.database.url)
    try:
        with make_sessionmaker(engine)() as session:
            events = session.scalars(select(AuditEvent).order_by(AuditEvent.id)).all()
            logged = [(e.actor.startswith("cli:"), e.action, e.subject) for e in events]
    finally:
        engine.dispose()
    assert logged == [
        (True, "cancel", f"job {job_id}"),
        (True, "requeue", f"job {job_id}"),
        (True, "remove-wheel", wheel),
    ]


def test_a_command_closes_its_database_however_it_ends(
    settings: Settings, factory: sessionmaker[Session]
) -> None:
    closed: list[bool] = []
    with pytest.raises(UsageError), cli._database(settings) as opened:
        event.listen(opened.kw["bind"], "close", lambda *_: closed.append(True))
        with opened() as session:
            assert session.scalar(select(1)) == 1
        raise UsageError("refused half way")
    assert closed == [True]


def test_cross_list_and_reset(farm: Farm) -> None:
    """Projects the cross path fell back on: listed with why, reset once (audited)."""
    farm.upgraded()
    settings = load_settings(None, master={"data_dir": farm.data})
    engine = make_engine(settings.database.url)
    try:
        with transaction(make_sessionmaker(engine)) as session:
            project, _, _ = add_release(session, settings, "probed", "1.0")
            project.emulate_because = "the cross build of probed 1.0 fell back to emulation"
            add_release(session, settings, "plain", "1.0")
    finally:
        engine.dispose()
    listed = json.loads(farm.ok("cross", "list", "--json"))
    assert listed == [
        {"project": "probed", "why": "the cross build of probed 1.0 fell back to emulation"}
    ]
    assert farm.ok("cross", "reset", "Probed") == "probed: builders try the cross path again\n"
    assert json.loads(farm.ok("cross", "list", "--json")) == []
    assert_usage_error(farm.run("cross", "reset", "probed"), "probed is not marked for emulation")
    assert_usage_error(farm.run("cross", "reset", "plain"), "plain is not marked for emulation")
    assert_usage_error(farm.run("cross", "reset", "nobody"), "unknown project: nobody")
    assert_usage_error(farm.run("cross", "reset", "a b"), "invalid")

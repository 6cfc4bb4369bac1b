"""Pushing published wheels to other indexes, against a real pypiserver on loopback that
needs a password to upload (htpasswd), the way twine talks to it."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from passlib.apache import HtpasswdFile  # type: ignore[import-untyped]
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from common.config import PushTarget, Settings, load_settings
from common.db import transaction
from common.models import WheelPush
from master.index.pushes import PushRound, push_due, simple_url, upload_fields
from master.index.uploads import accept_wheel
from master.storage import Storage
from tests.seed import add_release
from tests.servers import PIP_TARGET, free_port, pypiserver, run_pip
from tests.test_cli import COMMAND, assert_usage_error
from tests.test_clients import AARCH64, real_wheel

USER = "farm"
PASSWORD = "right-horse-battery"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def htpasswd(tmp_path: Path) -> Path:
    path = tmp_path / "htpasswd"
    passwords = HtpasswdFile(str(path), new=True)
    passwords.set_password(USER, PASSWORD)
    passwords.save()
    return path


@contextmanager
def upload_server(packages: Path, htpasswd: Path, port: int | None = None) -> Iterator[str]:
    """pypiserver on loopback where uploads need USER/PASSWORD; yields its upload URL."""
    packages.mkdir(parents=True, exist_ok=True)
    with pypiserver(packages, htpasswd, port) as simple:
        yield simple.removesuffix("simple/")


def target(name: str, url: str, password: str = PASSWORD, **more: object) -> PushTarget:
    return PushTarget.model_validate(
        {"name": name, "url": url, "username": USER, "password": SecretStr(password), **more}
    )


def publish(
    factory: sessionmaker[Session], settings: Settings, project: str = "demo", version: str = "1.0"
) -> tuple[str, bytes]:
    """A real wheel through the master's accept path (which queues its pushes)."""
    filename = f"{project}-{version}-cp311-cp311-{AARCH64}.whl"
    body = real_wheel(filename, ">=3.8")
    with transaction(factory) as session:
        _, _, jobs = add_release(session, settings, project, version)
        [job] = [job for job in jobs if job.arch == "aarch64"]
        accept_wheel(
            session,
            Storage(settings.master.data_dir),
            job,
            filename,
            _sha256(body),
            io.BytesIO(body),
            settings.master.max_upload_bytes,
            push_targets=settings.push,
        )
    return filename, body


def pushes(factory: sessionmaker[Session]) -> dict[str, WheelPush]:
    with factory() as session:
        return {push.target: push for push in session.scalars(select(WheelPush))}


def run_round(
    factory: sessionmaker[Session], settings: Settings, now: datetime | None = None
) -> PushRound:
    return push_due(factory, settings, Storage(settings.master.data_dir), now=now)


def test_a_new_wheel_is_pushed_and_pip_installs_it_from_there(
    factory: sessionmaker[Session], settings: Settings, htpasswd: Path, tmp_path: Path
) -> None:
    packages = tmp_path / "packages"
    with upload_server(packages, htpasswd) as url:
        settings.push = [target("local", url)]
        filename, body = publish(factory, settings)
        queued = pushes(factory)["local"]
        assert (queued.state, queued.attempts) == ("pending", 0)

        assert run_round(factory, settings) == PushRound(pushed=1)
        row = pushes(factory)["local"]
        assert (row.state, row.attempts, row.last_status, row.last_error) == (
            "pushed",
            1,
            200,
            None,
        )
        assert row.pushed_at is not None and row.next_attempt_at is None
        # The index holds our exact bytes and advertises their hash.
        assert _sha256((packages / filename).read_bytes()) == _sha256(body)
        assert f"{filename}#sha256={_sha256(body)}" in httpx.get(f"{url}simple/demo/").text
        download = tmp_path / "downloads"
        run_pip(
            *("download", "--no-deps", *PIP_TARGET),
            *("--platform", "manylinux2014_aarch64", "--index-url", f"{url}simple/"),
            *("-d", str(download), "demo==1.0"),
            cwd=tmp_path,
        )
        [got] = download.iterdir()
        assert got.name == filename and _sha256(got.read_bytes()) == _sha256(body)
        # Nothing is due any more: the next round does nothing.
        assert run_round(factory, settings) == PushRound()


def test_a_wrong_password_fails_for_good_with_the_servers_answer(
    factory: sessionmaker[Session], settings: Settings, htpasswd: Path, tmp_path: Path
) -> None:
    packages = tmp_path / "packages"
    with upload_server(packages, htpasswd) as url:
        settings.push = [target("local", url, password="wrong")]
        publish(factory, settings)
        assert run_round(factory, settings) == PushRound(failed=1)
        # A failed push is not tried again by later rounds.
        later = datetime.now(UTC) + timedelta(days=30)
        assert run_round(factory, settings, now=later) == PushRound()
    row = pushes(factory)["local"]
    assert row.state == "failed" and row.attempts == 1
    assert row.last_status in (401, 403)
    assert row.last_error is not None
    assert row.last_error.startswith(f"HTTP {row.last_status} Forbidden"), row.last_error
    assert row.next_attempt_at is None and row.pushed_at is None
    assert list(packages.iterdir()) == []


def test_an_index_that_is_down_is_tried_again_later(
    factory: sessionmaker[Session], settings: Settings, htpasswd: Path, tmp_path: Path
) -> None:
    port = free_port()
    settings.push = [target("local", f"http://127.0.0.1:{port}/")]
    filename, body = publish(factory, settings)
    before = datetime.now(UTC)
    assert run_round(factory, settings) == PushRound(retrying=1)
    row = pushes(factory)["local"]
    assert (row.state, row.attempts, row.last_status) == ("pending", 1, None)
    assert row.last_error is not None and "ConnectError" in row.last_error
    assert row.next_attempt_at is not None
    retry_at = row.next_attempt_at
    assert retry_at >= before + timedelta(seconds=30)
    # Not due yet: a round now leaves it alone.
    assert run_round(factory, settings) == PushRound()
    packages = tmp_path / "packages"
    with upload_server(packages, htpasswd, port=port):
        assert run_round(factory, settings, now=retry_at + timedelta(seconds=1)) == PushRound(
            pushed=1
        )
    row = pushes(factory)["local"]
    assert (row.state, row.attempts, row.last_status) == ("pushed", 2, 200)
    assert _sha256((packages / filename).read_bytes()) == _sha256(body)


def test_giving_up_after_max_attempts(factory: sessionmaker[Session], settings: Settings) -> None:
    settings.push = [target("local", f"http://127.0.0.1:{free_port()}/", max_attempts=2)]
    publish(factory, settings)
    assert run_round(factory, settings) == PushRound(retrying=1)
    later = datetime.now(UTC) + timedelta(days=1)
    assert run_round(factory, settings, now=later) == PushRound(failed=1)
    row = pushes(factory)["local"]
    assert (row.state, row.attempts) == ("failed", 2)
    assert row.last_error is not None and row.last_error.startswith("gave up after 2 attempts")


def test_a_file_the_index_already_has(
    factory: sessionmaker[Session], settings: Settings, htpasswd: Path, tmp_path: Path
) -> None:
    filename = f"demo-1.0-cp311-cp311-{AARCH64}.whl"
    other = tmp_path / "other"
    other.mkdir()
    # Another index holds different bytes under the same name.
    (other / filename).write_bytes(real_wheel(filename, ">=3.9"))
    with (
        upload_server(tmp_path / "packages", htpasswd) as url,
        upload_server(other, htpasswd) as other_url,
    ):
        # "one" uploads it; "two" is the same index, which answers 409 and holds our bytes.
        settings.push = [target("one", url), target("two", url), target("clash", other_url)]
        publish(factory, settings)
        assert run_round(factory, settings) == PushRound(pushed=2, failed=1)
    rows = pushes(factory)
    assert (rows["one"].state, rows["one"].last_status) == ("pushed", 200)
    assert (rows["two"].state, rows["two"].last_status, rows["two"].last_error) == (
        "pushed",
        409,
        None,
    )
    assert (rows["clash"].state, rows["clash"].last_status) == ("failed", 409)
    assert rows["clash"].last_error is not None
    assert rows["clash"].last_error.startswith(f"the index has a different {filename}")


def test_projects_filter_and_targets_no_longer_configured(
    factory: sessionmaker[Session], settings: Settings
) -> None:
    down = f"http://127.0.0.1:{free_port()}/"
    settings.push = [target("all", down), target("others", down, projects=["Other"])]
    publish(factory, settings, "demo")
    assert set(pushes(factory)) == {"all"}
    publish(factory, settings, "other")
    with factory() as session:
        queued = sorted(
            (push.output.release.project.name, push.target)
            for push in session.scalars(select(WheelPush))
        )
    assert queued == [("demo", "all"), ("other", "all"), ("other", "others")]
    # A target taken out of the configuration: its rows are left as they are.
    settings.push = [target("all", down)]
    assert run_round(factory, settings) == PushRound(retrying=2)
    rows = pushes(factory)
    assert (rows["others"].state, rows["others"].attempts) == ("pending", 0)


def test_a_missing_file_fails_with_a_clear_message(
    factory: sessionmaker[Session], settings: Settings
) -> None:
    settings.push = [target("local", f"http://127.0.0.1:{free_port()}/")]
    filename, _ = publish(factory, settings)
    Storage(settings.master.data_dir).wheel_path("demo", filename).unlink()
    assert run_round(factory, settings) == PushRound(failed=1)
    row = pushes(factory)["local"]
    assert row.last_error is not None and row.last_error.startswith("wheel file missing on disk")


def test_upload_fields_are_twines() -> None:
    metadata = (
        b"Metadata-Version: 2.1\nName: demo\nVersion: 1.0\nSummary: A demo\n"
        b"Requires-Python: >=3.8\nKeywords: a,b\nClassifier: A :: B\nClassifier: C :: D\n"
        b"Requires-Dist: six\nProject-URL: Home, https://example.invalid/\n"
        b"Description-Content-Type: text/markdown\n\nLong text.\n"
    )
    fields = upload_fields(metadata, f"demo-1.0-cp311-cp311-{AARCH64}.whl", "ab" * 32)
    assert fields == {
        ":action": "file_upload",
        "protocol_version": "1",
        "name": "demo",
        "version": "1.0",
        "filetype": "bdist_wheel",
        "pyversion": "cp311",
        "sha256_digest": "ab" * 32,
        "metadata_version": "2.1",
        "summary": "A demo",
        "description": "Long text.\n",
        "description_content_type": "text/markdown",
        "keywords": "a, b",
        "classifiers": ["A :: B", "C :: D"],
        "requires_dist": ["six"],
        "requires_python": ">=3.8",
        "project_urls": ["Home, https://example.invalid/"],
    }
    assert simple_url("https://upload.pypi.org/legacy/") == "https://pypi.org/simple/"
    assert simple_url("https://test.pypi.org/legacy/") == "https://test.pypi.org/simple/"
    assert simple_url("http://127.0.0.1:8080") == "http://127.0.0.1:8080/simple/"


def test_push_status_and_retry_commands(
    factory: sessionmaker[Session],
    settings: Settings,
    htpasswd: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("ARMWHEELS_")}
    env.update(
        {
            "ARMWHEELS_DATABASE__URL": settings.database.url,
            "ARMWHEELS_MASTER__DATA_DIR": str(settings.master.data_dir),
            "COLUMNS": "200",
        }
    )

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*COMMAND, "--config", str(config), *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    with upload_server(tmp_path / "packages", htpasswd) as url:
        config = tmp_path / "farm.toml"
        config.write_text(
            f'[[push]]\nname = "local"\nurl = "{url}"\nusername = "{USER}"\n'
            'password_env = "PUSH_LOCAL_PASSWORD"\n'
        )
        monkeypatch.setenv("PUSH_LOCAL_PASSWORD", "wrong")
        configured = load_settings(
            config, database={"url": settings.database.url}, master=settings.master.model_dump()
        )
        filename, _ = publish(factory, configured)
        assert run_round(factory, configured) == PushRound(failed=1)

        status = cli("push", "status")
        assert status.returncode == 0, status.stderr
        [line] = [line for line in status.stdout.splitlines() if " local " in line]
        assert [cell.strip() for cell in line.split("│")[1:5]] == ["local", "0", "0", "1"]
        assert "HTTP 403 Forbidden" in status.stdout

        assert_usage_error(cli("push", "retry", "--target", "nope"), "no push target named 'nope'")
        assert_usage_error(cli("push", "retry", "--target", "a b"), "invalid name: 'a b'")
        assert_usage_error(cli("push", "retry", "--file", "nope.whl"), "no pushes of 'nope.whl'")
        assert_usage_error(cli("push", "frob"), "invalid choice: 'frob'")

        retried = cli("push", "retry", "--target", "local", "--file", filename)
        assert retried.returncode == 0, retried.stderr
        assert retried.stdout.strip() == "1 failed pushes pending again"
        assert cli("push", "retry").stdout.strip() == "no failed pushes to retry"
        row = pushes(factory)["local"]
        assert (row.state, row.attempts) == ("pending", 0)

        monkeypatch.setenv("PUSH_LOCAL_PASSWORD", PASSWORD)
        assert run_round(factory, configured) == PushRound(pushed=1)
        status = cli("push", "status")
        assert status.returncode == 0, status.stderr
        [line] = [line for line in status.stdout.splitlines() if " local " in line]
        assert [cell.strip() for cell in line.split("│")[1:6]] == ["local", "1", "0", "0", ""]

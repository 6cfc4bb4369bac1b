"""Real installers (pip, uv) against a real master serving wheels published via its API."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from common.config import Settings, load_settings
from common.db import make_engine, make_sessionmaker, transaction, upgrade
from common.states import TokenRole
from master.auth import create_token
from master.index.pages import JSON_TYPE
from master.pypi.feed import apply_events
from master.pypi.journal import JournalEvent, parse_entry
from master.web.app import create_app
from tests.clients import PIP_VERSIONS, pip_crashes_on_dict_dist_info_metadata, pip_download
from tests.seed import add_release
from tests.servers import PIP_TARGET, run_pip, serve_app

# What pip (and uv) send: JSON first, HTML as a fallback (PEP 691).
PIP_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, "
    "text/html; q=0.01"
)
AARCH64 = "manylinux_2_17_aarch64.manylinux2014_aarch64"
ARMV7L = "manylinux_2_17_armv7l.manylinux2014_armv7l"


def wheel_name(version: str, platform: str) -> str:
    return f"demo-{version}-cp311-cp311-{platform}.whl"


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return f"sha256={digest.decode()}"


def real_wheel(filename: str, requires_python: str) -> bytes:
    """A wheel as a build backend writes it: METADATA, WHEEL with tags, a hashed RECORD."""
    name, version, python, abi, platforms = filename.removesuffix(".whl").split("-")
    dist_info = f"{name}-{version}.dist-info"
    tags = "".join(f"Tag: {python}-{abi}-{platform}\n" for platform in platforms.split("."))
    files = {
        f"{name}/__init__.py": f'__version__ = "{version}"\n'.encode(),
        f"{dist_info}/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
            f"Requires-Python: {requires_python}\n"
        ).encode(),
        f"{dist_info}/WHEEL": (
            f"Wheel-Version: 1.0\nGenerator: armwheels-tests\nRoot-Is-Purelib: false\n{tags}"
        ).encode(),
    }
    record = "".join(f"{path},{_record_hash(data)},{len(data)}\n" for path, data in files.items())
    record += f"{dist_info}/RECORD,,\n"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, data in files.items():
            archive.writestr(path, data)
        archive.writestr(f"{dist_info}/RECORD", record)
    return buffer.getvalue()


@dataclass
class Index:
    url: str
    simple: str
    wheels: dict[str, bytes]
    seen: list[tuple[str, str, str]]  # (path, Accept sent, Content-Type answered)


class Recorder:
    """ASGI wrapper noting what each /simple/ request asked for and got."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.seen: list[tuple[str, str, str]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/simple/"):
            await self.app(scope, receive, send)
            return
        accept = dict(scope["headers"]).get(b"accept", b"").decode()

        async def noting(message: Any) -> None:
            if message["type"] == "http.response.start":
                content_type = dict(message["headers"]).get(b"content-type", b"").decode()
                self.seen.append((scope["path"], accept, content_type))
            await send(message)

        await self.app(scope, receive, noting)


# Releases of `demo`: (version, Requires-Python of its wheels, yanked upstream).
RELEASES = [("1.0", ">=3.8", False), ("1.1", ">=3.8", True), ("2.0", ">=3.12", False)]


def _settings(tmp: Path) -> Settings:
    targets = {
        arch: {"image": f"armwheels/build-{arch}:bookworm", "policy": f"manylinux2014_{arch}"}
        for arch in ("aarch64", "armv7l")
    }
    return load_settings(
        None,
        database={"url": f"sqlite:///{tmp / 'armwheels.db'}"},
        master={"data_dir": tmp / "data"},
        builder={"work_dir": tmp / "work"},
        targets=targets,
    )


def _publish(client: httpx.Client, token: str, job_id: int, filename: str, body: bytes) -> None:
    claimed = client.post(
        f"/api/v1/jobs/{job_id}/claim", headers={"Authorization": f"Bearer {token}"}
    )
    assert claimed.status_code == 200, claimed.text
    post_built(client, token, job_id, filename, body)


def post_built(client: httpx.Client, token: str, job_id: int, filename: str, body: bytes) -> None:
    """A builder's result for a job it holds: built, with the wheel; it is published."""
    auth = {"Authorization": f"Bearer {token}"}
    answer = client.post(
        f"/api/v1/jobs/{job_id}/result",
        headers=auth,
        data={"outcome": "built", "summary": "ok", "wheel_sha256": _sha256(body)},
        files={"log": ("build.log", b"built\n"), "wheel": (filename, body)},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["file"] == filename


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Index]:
    """A live master whose builders published demo 1.0, 1.1 (then yanked) and 2.0."""
    settings = _settings(tmp_path_factory.mktemp("master"))
    engine = make_engine(settings.database.url)
    upgrade(engine)
    factory = make_sessionmaker(engine)
    jobs: dict[tuple[str, str], int] = {}
    with transaction(factory) as session:
        for version, _, _ in RELEASES:
            _, _, created = add_release(session, settings, version=version)
            jobs.update({(version, job.arch): job.id for job in created})
        tokens = {
            arch: create_token(session, f"builder-{arch}", TokenRole.BUILDER)
            for arch in ("aarch64", "armv7l")
        }
    assert len(jobs) == 2 * len(RELEASES)
    wheels: dict[str, bytes] = {}
    recorder = Recorder(create_app(settings, factory))
    with serve_app(recorder) as url, httpx.Client(base_url=url) as client:
        for arch, token in tokens.items():
            answer = client.post(
                "/api/v1/builders/register",
                headers={"Authorization": f"Bearer {token}"},
                json={"arch": arch, "backend": "docker", "python_tags": ["cp311"]},
            )
            assert answer.status_code == 200, answer.text
        for version, requires_python, _ in RELEASES:
            for arch, platform in (("aarch64", AARCH64), ("armv7l", ARMV7L)):
                filename = wheel_name(version, platform)
                wheels[filename] = real_wheel(filename, requires_python)
                _publish(client, tokens[arch], jobs[version, arch], filename, wheels[filename])
        feed = settings.model_copy(deep=True)
        feed.upstream.projects = "all"
        feed.upstream.feed = "changelog"
        for serial, (version, _, yanked) in enumerate(RELEASES, start=1):
            if yanked:
                event = parse_entry(["demo", version, 1_700_000_000, "yank release", serial])
                assert isinstance(event, JournalEvent)
                with transaction(factory) as session:
                    apply_events(session, [event], feed)
        yield Index(url, f"{url}/simple/", wheels, recorder.seen)
    engine.dispose()


def test_index_answers_pip_accept_header_with_json(index: Index) -> None:
    answer = httpx.get(f"{index.simple}demo/", headers={"Accept": PIP_ACCEPT})
    assert answer.status_code == 200
    assert answer.headers["content-type"].split(";")[0] == JSON_TYPE
    assert "Accept" in answer.headers["vary"]
    page = answer.json()
    assert page["name"] == "demo" and page["versions"] == ["1.0", "1.1", "2.0"]
    by_name = {entry["filename"]: entry for entry in page["files"]}
    assert set(by_name) == set(index.wheels)
    for filename, body in index.wheels.items():
        entry = by_name[filename]
        assert entry["hashes"] == {"sha256": _sha256(body)} and entry["size"] == len(body)
        assert entry["yanked"] is ("-1.1-" in filename)
        assert entry["requires-python"] == (">=3.12" if "-2.0-" in filename else ">=3.8")
        # The relative URL resolves to the file, and PEP 658 metadata to its hash.
        wheel = httpx.get(httpx.URL(str(answer.url)).join(entry["url"]))
        assert wheel.status_code == 200 and wheel.content == body
        metadata = httpx.get(httpx.URL(str(answer.url)).join(entry["url"] + ".metadata"))
        assert _sha256(metadata.content) == entry["core-metadata"]["sha256"]
    # PEP 691's "latest" meta version is answered with the concrete v1 type.
    latest = httpx.get(
        f"{index.simple}demo/", headers={"Accept": "application/vnd.pypi.simple.latest+json"}
    )
    assert latest.status_code == 200
    assert latest.headers["content-type"].split(";")[0] == JSON_TYPE
    root = httpx.get(index.simple, headers={"Accept": PIP_ACCEPT})
    assert root.headers["content-type"].split(";")[0] == JSON_TYPE
    assert root.json()["projects"] == [{"name": "demo"}]


def _uv(tmp_path: Path, *args: str) -> str:
    uv = Path(sys.executable).with_name("uv")
    if not uv.is_file():
        pytest.fail("uv is not installed in the venv (pip install -e '.[test]')")
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("UV_", "PIP_")) and key.lower() not in ("http_proxy", "https_proxy")
    }
    # Nothing but our loopback index: no config, no managed-Python downloads.
    env.update(
        {
            "UV_NO_CONFIG": "1",
            "UV_CACHE_DIR": str(tmp_path / "uv-cache"),
            "UV_PYTHON_DOWNLOADS": "never",
            "UV_PYTHON": sys.executable,
        }
    )
    done = subprocess.run(
        [str(uv), *args, "--no-config", "--cache-dir", str(tmp_path / "uv-cache")],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _uv_compile(tmp_path: Path, spec: str, python: str, *indexes: str) -> str:
    """`uv pip compile` of one requirement for aarch64 manylinux, wheels only, hashed."""
    (tmp_path / "requirements.in").write_text(f"{spec}\n")
    return _uv(
        tmp_path,
        "pip",
        "compile",
        "requirements.in",
        "--python-platform",
        "aarch64-manylinux_2_17",
        "--python-version",
        python,
        *indexes,
        "--only-binary",
        ":all:",
        "--generate-hashes",
        "--no-header",
        "--no-annotate",
    )


@pytest.mark.parametrize(
    "version", [v for v in PIP_VERSIONS if pip_crashes_on_dict_dist_info_metadata(v)]
)
def test_pips_that_crash_on_dist_info_metadata_in_json_install_from_us(
    index: Index, tmp_path: Path, version: str
) -> None:
    """pip 22.3 to 23.1 (Debian 12 and Raspberry Pi OS bookworm ship 23.0.1) fail with
    `TypeError: unhashable type: 'dict'` on a JSON page whose files carry the old
    `dist-info-metadata` key; PEP 714 keeps it out of JSON."""
    since = len(index.seen)
    result = pip_download(
        version, index.simple, "demo", "manylinux2014_aarch64", "3.11", tmp_path / "d"
    )
    assert result.ok, f"pip {version}: {result.error}\n{result.output[-3000:]}"
    _served_json(index, since)
    [got] = result.downloaded
    assert got.name == wheel_name("1.0", AARCH64)
    assert _sha256(got.read_bytes()) == _sha256(index.wheels[got.name])


def _served_json(index: Index, since: int) -> None:
    """The client asked /simple/demo/ for JSON first and was answered in JSON (PEP 691)."""
    asked = [entry for entry in index.seen[since:] if entry[0] == "/simple/demo/"]
    assert asked, "the client never fetched /simple/demo/"
    for _, accept, content_type in asked:
        assert accept.split(",")[0].strip() == JSON_TYPE, accept
        assert content_type.split(";")[0] == JSON_TYPE, content_type


def test_a_non_normalised_name_redirects_keeping_the_format_query(index: Index) -> None:
    answer = httpx.get(f"{index.simple}Demo/?format=json")
    assert answer.status_code == 301
    assert answer.headers["location"] == "/simple/demo/?format=json"
    followed = httpx.get(f"{index.simple}Demo/?format=json", follow_redirects=True)
    assert followed.headers["content-type"].split(";")[0] == JSON_TYPE


PYPI = "https://pypi.org/simple/"
SYSTEM_CA = Path("/etc/ssl/certs/ca-certificates.crt")


def test_pip_with_pypi_first_and_our_index_as_extra(index: Index, tmp_path: Path) -> None:
    """The way users are told to install: PyPI stays the primary index (its `demo` has
    only a 2011 egg) and pip takes our aarch64 wheel from the extra index."""
    cert = ["--cert", str(SYSTEM_CA)] if SYSTEM_CA.exists() else []
    target = tmp_path / "downloads"
    done = run_pip(
        "download",
        "--no-deps",
        *PIP_TARGET,
        *cert,
        "--platform",
        "manylinux2014_aarch64",
        "--index-url",
        PYPI,
        "--extra-index-url",
        index.simple,
        "-d",
        str(target),
        "demo",
        cwd=tmp_path,
    )
    assert f"Looking in indexes: {PYPI}, {index.simple}" in done.stdout
    [fetched] = sorted(target.iterdir())
    filename = wheel_name("1.0", AARCH64)
    assert fetched.name == filename
    assert _sha256(fetched.read_bytes()) == _sha256(index.wheels[filename])


def test_uv_with_pypi_first_and_our_index_as_extra(index: Index, tmp_path: Path) -> None:
    out = _uv_compile(
        tmp_path, "demo", "3.11", "--index-url", PYPI, "--extra-index-url", index.simple
    )
    filename = wheel_name("1.0", AARCH64)
    assert "demo==1.0" in out
    assert f"--hash=sha256:{_sha256(index.wheels[filename])}" in out

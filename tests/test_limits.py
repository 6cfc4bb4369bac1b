"""Limits before work, against real masters on loopback: bodies bounded per route and
refused as they arrive, no body read before authentication, failed authentications
throttled and logged, strict ids and bounded integers, and a full disk (a real tmpfs)
answered 503 with nothing kept, for the builder to send again."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker

from builder.client import MasterClient
from common.config import Settings
from common.db import transaction
from common.models import BuildJob
from common.protocol import MAX_CHUNK_BYTES, ResultForm
from common.states import JobState, TokenRole
from master.auth import create_token
from master.storage import STALE_PART_SECONDS
from master.web.api_deps import MAX_JSON_BYTES
from master.web.app import create_app
from master.web.auth_throttle import AuthThrottle, client_key
from tests.conftest import make_wheel
from tests.seed import add_release
from tests.servers import free_port, redis_database, serve_app, stop_process, wait_until

ROOT = Path(__file__).resolve().parent.parent
WHEEL = "demo-1.0-cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64.whl"
MiB = 1024 * 1024


@dataclass
class Answer:
    """An HTTP answer read off a raw socket, and how much of the body the master took
    before it answered and closed the connection."""

    status: int
    headers: dict[str, str]
    body: bytes
    sent: int

    def json(self) -> Any:
        return json.loads(self.body)


def raw_request(url: str, head: str, body: Iterable[bytes] = ()) -> Answer:
    """Send `head` then `body` on one connection while reading the answer, stopping when
    the master closes it; the body may be far longer than the master will read."""
    host, port = url.removeprefix("http://").split(":")
    received = bytearray()
    sent = 0
    with (
        socket.create_connection((host, int(port)), timeout=60) as sock,
        ThreadPoolExecutor(1) as pool,
    ):
        reading = pool.submit(_read_all, sock, received)
        try:
            sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n")
            for piece in body:
                sock.sendall(piece)
                sent += len(piece)
                if reading.done():
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass
        reading.result(timeout=60)
    header, _, rest = bytes(received).partition(b"\r\n\r\n")
    status_line, *lines = header.decode().split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(int(status_line.split()[1]), headers, rest, sent)


def _read_all(sock: socket.socket, into: bytearray) -> None:
    try:
        while chunk := sock.recv(65536):
            into += chunk
    except ConnectionResetError:
        pass


def zeros(total: int, piece: int = MiB) -> Iterator[bytes]:
    block = b"\0" * piece
    for _ in range(total // piece):
        yield block


def chunked(total: int, piece: int = 64 * 1024) -> Iterator[bytes]:
    """A body in chunked transfer coding, without its final empty chunk."""
    block = b"x" * piece
    for _ in range(total // piece):
        yield b"%x\r\n%s\r\n" % (piece, block)


@dataclass
class Farm:
    url: str
    settings: Settings
    factory: sessionmaker[Session]
    job_id: int
    token: str
    operator: str

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}

    def job(self) -> BuildJob:
        with self.factory() as session:
            job = session.get(BuildJob, self.job_id)
            assert job is not None
            return job

    def parts(self) -> list[Path]:
        return sorted((self.settings.master.data_dir / "tmp").glob("*.part"))


@contextmanager
def running_farm(settings: Settings, factory: sessionmaker[Session]) -> Iterator[Farm]:
    """A master under uvicorn on loopback with one job claimed by a registered builder."""
    with transaction(factory) as session:
        _, _, [job] = add_release(session, settings)
        token = create_token(session, "b1", TokenRole.BUILDER)
        operator = create_token(session, "op", TokenRole.OPERATOR)
        job_id = job.id
    with serve_app(create_app(settings, factory)) as url:
        farm = Farm(url, settings, factory, job_id, token, operator)
        registered = httpx.post(
            f"{url}/api/v1/builders/register",
            headers=farm.auth(),
            json={"arch": "aarch64", "backend": "docker", "python_tags": ["cp311"]},
        )
        assert registered.status_code == 200, registered.text
        claimed = httpx.post(f"{url}/api/v1/jobs/{job_id}/claim", headers=farm.auth())
        assert claimed.status_code == 200, claimed.text
        yield farm


@pytest.fixture
def farm(settings: Settings, factory: sessionmaker[Session]) -> Iterator[Farm]:
    settings.master.max_upload_bytes = MiB
    settings.master.max_log_bytes = MiB
    with running_farm(settings, factory) as running:
        yield running


def _error(answer: httpx.Response | Answer) -> str:
    body = answer.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str), body
    return str(body["error"])


def test_job_ids_are_parsed_strictly_on_every_router(farm: Farm) -> None:
    operator = farm.auth(farm.operator)
    http = httpx.Client(base_url=farm.url)
    for bad in ("1.0", "+1", "01", "%201", "1%20", "1_0", "0", "-1", "99999999999", "2147483648"):
        for method, path, headers, body in (
            ("POST", f"/api/v1/jobs/{bad}/claim", farm.auth(), None),
            ("GET", f"/api/v1/jobs/{bad}", {}, None),
            ("GET", f"/logs/{bad}", {}, None),
            ("POST", f"/api/v1/jobs/{bad}/cancel", operator, {"reason": "test"}),
        ):
            answer = http.request(method, path, headers=headers, json=body)
            assert answer.status_code == 422, (path, answer.text)
            assert "job_id" in _error(answer), answer.text
    assert farm.job().state == JobState.BUILDING  # "1.0" cancelled job 1 before
    assert http.get(f"/api/v1/jobs/{farm.job_id}").status_code == 200
    http.close()


def test_integers_past_their_column_are_refused_as_json(farm: Farm) -> None:
    for body in (
        {"free_disk": 10**30},
        {"job_id": 10**30},
        {"job_id": 2**31},
        {"job_id": 1.0},
        {"free_disk": "12"},
        {"free_disk": 2**63},
    ):
        answer = httpx.post(f"{farm.url}/api/v1/builders/heartbeat", headers=farm.auth(), json=body)
        assert answer.status_code == 422, (body, answer.text)
        _error(answer)
    registration = {"arch": "aarch64", "backend": "docker", "python_tags": ["cp311"]}
    for free_disk in (10**30, -1, 2**63):
        answer = httpx.post(
            f"{farm.url}/api/v1/builders/register",
            headers=farm.auth(),
            json={**registration, "free_disk": free_disk},
        )
        assert answer.status_code == 422, answer.text
        _error(answer)
    beat = {"job_id": farm.job_id, "free_disk": 2**63 - 1}
    answer = httpx.post(f"{farm.url}/api/v1/builders/heartbeat", headers=farm.auth(), json=beat)
    assert answer.status_code == 200, answer.text
    result = httpx.post(
        f"{farm.url}/api/v1/jobs/{farm.job_id}/result",
        headers=farm.auth(),
        data={"outcome": "failed", "reason": "compile-error", "build_seconds": "inf"},
        files={"log": ("build.log", b"log\n")},
    )
    assert result.status_code == 422, result.text
    assert farm.job().state == JobState.BUILDING


def test_bodies_without_a_valid_token_are_refused_unread(farm: Farm) -> None:
    for path, wrong_role in (
        (f"/api/v1/jobs/{farm.job_id}/result", farm.operator),
        ("/api/v1/builders/heartbeat", farm.operator),
        ("/api/v1/tokens", farm.token),  # an included router's route
        ("/api/v1/projects/demo/rebuild", farm.token),
    ):
        for token in (None, "aw_" + "x" * 40, wrong_role):
            auth = f"Authorization: Bearer {token}\n" if token else ""
            answer = raw_request(
                farm.url,
                f"POST {path} HTTP/1.1\nHost: x\n{auth}Content-Type: application/json\n"
                f"Content-Length: {200 * MiB}\n",
                zeros(200 * MiB),
            )
            assert answer.status == 401, (path, answer)
            assert answer.headers["www-authenticate"] == "Bearer"
            assert answer.headers["connection"] == "close"
            assert _error(answer)
            # The master answered on the headers: the kernel's buffers took the rest.
            assert answer.sent < 64 * MiB
    # With a good token, the same body is refused for its size, unread too.
    answer = raw_request(
        farm.url,
        f"POST /api/v1/tokens HTTP/1.1\nHost: x\nAuthorization: Bearer {farm.operator}\n"
        f"Content-Type: application/json\nContent-Length: {200 * MiB}\n",
        zeros(200 * MiB),
    )
    assert answer.status == 413, answer
    assert answer.sent < 64 * MiB


def test_bodies_past_the_route_limit_are_refused_as_they_arrive(farm: Farm) -> None:
    chunk = f"/api/v1/jobs/{farm.job_id}/log?offset=0"
    auth = f"Authorization: Bearer {farm.token}\n"
    # Declared too large: refused on the headers.
    for path, limit in ((chunk, MAX_CHUNK_BYTES), ("/api/v1/builders/heartbeat", MAX_JSON_BYTES)):
        answer = raw_request(
            farm.url,
            f"POST {path} HTTP/1.1\nHost: x\n{auth}Content-Length: {limit + 1}\n",
            [b"z" * (limit + 1)],
        )
        assert answer.status == 413, answer
        assert str(limit) in _error(answer)
        assert answer.headers["connection"] == "close"
    # Sent without a length (chunked): cut off once past the limit, and the rest unread.
    for path in (chunk, "/api/v1/builders/heartbeat"):
        answer = raw_request(
            farm.url,
            f"POST {path} HTTP/1.1\nHost: x\n{auth}Content-Type: application/json\n"
            "Transfer-Encoding: chunked\n",
            chunked(300 * MiB),
        )
        assert answer.status == 413, answer
        assert answer.headers["connection"] == "close"
        assert answer.sent < 64 * MiB
    assert httpx.get(f"{farm.url}/api/v1/jobs/{farm.job_id}/log").content == b""
    # Within the limit, the same route takes it.
    taken = httpx.post(
        f"{farm.url}/api/v1/jobs/{farm.job_id}/log",
        params={"offset": 0},
        content=b"y" * MAX_CHUNK_BYTES,
        headers=farm.auth(),
    )
    assert taken.status_code == 200, taken.text


def test_a_result_past_its_limit_is_refused_and_leaves_no_part_file(farm: Farm) -> None:
    # max_upload_bytes and max_log_bytes are 1 MiB: the result's limit is 3 MiB.
    big = make_wheel(WHEEL, extra={"demo/blob.bin": os.urandom(4 * MiB)})
    wheel = ("wheel", (WHEEL, big))
    form = {"outcome": "built", "wheel_sha256": hashlib.sha256(big).hexdigest()}
    url = f"{farm.url}/api/v1/jobs/{farm.job_id}/result"
    answer = httpx.post(url, headers=farm.auth(), data=form, files=[("log", b"x"), wheel])
    assert answer.status_code == 413, answer.text
    _error(answer)
    request = httpx.Request(
        "POST", url, headers=farm.auth(), data=form, files=[("log", b"x"), wheel]
    )
    body = request.read()
    streamed = raw_request(
        farm.url,
        f"POST /api/v1/jobs/{farm.job_id}/result HTTP/1.1\nHost: x\n"
        f"Authorization: Bearer {farm.token}\nContent-Type: {request.headers['content-type']}\n"
        "Transfer-Encoding: chunked\n",
        (b"%x\r\n%s\r\n" % (len(piece), piece) for piece in _pieces(body, 256 * 1024)),
    )
    assert streamed.status == 413, streamed
    assert farm.parts() == []
    assert farm.job().state == JobState.BUILDING
    # A wheel within max_upload_bytes is taken, with a log past max_log_bytes (capped).
    good = make_wheel(WHEEL)
    done = httpx.post(
        url,
        headers=farm.auth(),
        data={"outcome": "built", "wheel_sha256": hashlib.sha256(good).hexdigest()},
        files=[("log", b"l" * (MiB + 100)), ("wheel", (WHEEL, good))],
    )
    assert done.status_code == 200, done.text
    assert farm.job().state == JobState.BUILT
    assert farm.parts() == []


def _pieces(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def test_failed_authentications_are_throttled_and_logged(
    settings: Settings, factory: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    settings.master.auth_failure_limit = 3
    wrong = "aw_" + "w" * 40
    with (
        running_farm(settings, factory) as farm,
        caplog.at_level(logging.INFO, logger="master.web.request_guard"),
    ):
        heartbeat = f"{farm.url}/api/v1/builders/heartbeat"
        for headers in ({"Authorization": f"Bearer {wrong}"}, {}, farm.auth(farm.operator)):
            answer = httpx.post(heartbeat, headers=headers, json={})
            assert answer.status_code == 401, answer.text
            assert answer.headers["www-authenticate"] == "Bearer"
            _error(answer)
        throttled = httpx.post(heartbeat, headers={"Authorization": f"Bearer {wrong}"}, json={})
        assert throttled.status_code == 429, throttled.text
        assert 1 <= int(throttled.headers["retry-after"]) <= 60
        assert "too many failed authentications" in _error(throttled)
        # The address is refused before its token is looked at, the good one too...
        assert httpx.post(heartbeat, headers=farm.auth(), json={}).status_code == 429
        # ...while what needs no token is served as before.
        assert httpx.get(f"{farm.url}/api/v1/jobs/{farm.job_id}").status_code == 200
    failures = [r for r in caplog.records if r.getMessage() == "authentication failed"]
    assert [(r.client, r.route) for r in failures] == [  # type: ignore[attr-defined]
        ("127.0.0.1", "POST /api/v1/builders/heartbeat")
    ] * 3
    assert [r.reason for r in failures] == [  # type: ignore[attr-defined]
        "invalid or revoked token",
        "missing Authorization header",
        "token is not a builder token",
    ]
    [refused] = [r for r in caplog.records if "refused for failed" in r.getMessage()]
    assert refused.client == "127.0.0.1"  # type: ignore[attr-defined]
    for record in caplog.records:
        assert wrong not in str(record.__dict__) and farm.operator not in str(record.__dict__)


def test_the_throttle_forgets_failures_outside_its_window() -> None:
    now = [0.0]
    throttle = AuthThrottle(limit=2, window=10, clock=lambda: now[0], max_clients=2)
    assert not throttle.failed("10.1.1.1")
    assert throttle.blocked_for("10.1.1.1") == 0
    now[0] = 4
    assert throttle.failed("10.1.1.1")
    assert throttle.blocked_for("10.1.1.1") == 6  # until the first failure is 10 s old
    assert throttle.blocked_for("10.1.1.2") == 0
    now[0] = 10.5
    assert throttle.blocked_for("10.1.1.1") == 0
    # One IPv6 host picks any address of its /64; the table holds at most max_clients.
    assert client_key("2001:db8::1") == client_key("2001:db8::ffff") == "2001:db8::/64"
    assert client_key("::ffff:10.1.1.1") == "10.1.1.1"
    throttle.failed("2001:db8::1")
    throttle.failed("2001:db8::2")
    assert throttle.blocked_for("2001:db8::3") == 10
    throttle.failed("10.9.9.9")
    throttle.failed("10.9.9.8")
    assert throttle.blocked_for("2001:db8::3") == 0  # forgotten: the oldest of three


# -- a full disk: a real tmpfs as the master's data directory --------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def fill(disk: Path, leave: int = 0) -> Path:
    """Fill `disk` to its last byte, then free `leave` bytes of it."""
    filler = disk / "filler"
    handle = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        block = b"\0" * 65536
        with pytest.raises(OSError) as full:
            while True:
                os.write(handle, block)
        assert full.value.errno == errno.ENOSPC
        if leave:
            os.ftruncate(handle, max(0, os.fstat(handle).st_size - leave))
    finally:
        os.close(handle)
    return filler


def test_a_full_disk_answers_503_keeps_nothing_and_the_builder_sends_again(
    settings: Settings,
    factory: sessionmaker[Session],
    small_disk: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings.master.data_dir = small_disk
    # Long enough for the checks below to run before the builder sends again.
    settings.master.disk_full_retry_after = 3
    caplog.set_level(logging.INFO)
    with running_farm(settings, factory) as farm:
        chunk_url = f"{farm.url}/api/v1/jobs/{farm.job_id}/log"
        filler = fill(small_disk)
        refused = httpx.post(
            chunk_url, params={"offset": 0}, content=b"c" * 200_000, headers=farm.auth()
        )
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "3"
        assert "disk is full" in _error(refused)
        assert farm.parts() == []
        filler.unlink()
        again = httpx.post(
            chunk_url, params={"offset": 0}, content=b"c" * 200_000, headers=farm.auth()
        )
        assert again.status_code == 200, again.text
        assert again.json()["total"] == 200_000

        # Room for the log, none for the wheel: the log already stored goes too.
        log_file = tmp_path / "build.log"
        log_file.write_bytes(b"compiling\n" * 100)
        wheel = tmp_path / WHEEL
        wheel.write_bytes(make_wheel(WHEEL, extra={"demo/blob.bin": os.urandom(600_000)}))
        filler = fill(small_disk, leave=200_000)
        client = MasterClient(farm.url, farm.token)
        with ThreadPoolExecutor(1) as pool:
            form = ResultForm(
                outcome="built",
                summary="ok",
                build_seconds=1.0,
                wheel_sha256=hashlib.sha256(wheel.read_bytes()).hexdigest(),
            )
            sending = pool.submit(client.report, farm.job_id, form, log_file, wheel)
            wait_until(
                lambda: any("result not stored" in r.getMessage() for r in caplog.records),
                30,
                "a result refused for want of space",
                step=0.05,
            )
            job = farm.job()
            assert job.state == JobState.BUILDING and job.log_path is None
            assert farm.parts() == []
            assert list((small_disk / "logs").rglob("*.gz")) == []
            assert list((small_disk / "files").rglob("*.whl")) == []
            filler.unlink()
            answer = sending.result(timeout=120)
        client.close()
        assert answer.state == "built" and answer.file == WHEEL
        assert farm.job().state == JobState.BUILT
        assert (small_disk / "files" / "demo" / WHEEL).read_bytes() == wheel.read_bytes()
        assert farm.parts() == []
    resends = [r for r in caplog.records if "sending it again" in r.getMessage()]
    assert resends and resends[0].job_id == farm.job_id  # type: ignore[attr-defined]


# -- `armwheels master` for real: start-up and the memory a refused body costs ---------

REDIS_DB = 8


def _memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


@pytest.mark.redis
def test_a_real_master_removes_stale_part_files_and_reads_no_body_before_a_token(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    (data / "tmp").mkdir(parents=True)
    stale = [data / "tmp" / "tmpa.part", data / "tmp" / "tmpb.log.gz.part"]
    for path in stale:
        path.write_bytes(b"half a wheel")
        old = time.time() - STALE_PART_SECONDS - 60
        os.utime(path, (old, old))
    fresh = data / "tmp" / "tmpc.part"  # another master's write under way
    fresh.write_bytes(b"being written")
    port = free_port()
    config = tmp_path / "master.toml"
    config.write_text(
        f'[upstream]\nindex_url = "http://127.0.0.1:{free_port()}/simple/"\n'
        f'[master]\nport = {port}\ndata_dir = "{data}"\n'
        f'[database]\nurl = "sqlite:///{tmp_path / "master.db"}"\n'
        f'[broker]\nurl = "redis://127.0.0.1:6379/{REDIS_DB}"\n'
    )
    cli = [sys.executable, "-m", "armwheels.cli"]
    url = f"http://127.0.0.1:{port}"
    with redis_database(REDIS_DB), (tmp_path / "master.log").open("ab") as sink:
        subprocess.run([*cli, "db", "upgrade", "--config", str(config)], check=True, cwd=ROOT)
        process = subprocess.Popen(
            [*cli, "master", "--config", str(config)], cwd=ROOT, stdout=sink, stderr=sink
        )
        try:
            wait_until(lambda: _answers(url), 60, "the master")
            assert not any(path.exists() for path in stale)
            assert fresh.exists()
            before = _memory(process.pid)
            sent = {}
            for name, route, size, kind in (
                ("json", "/api/v1/builders/heartbeat", 300 * MiB, "application/json"),
                ("result", "/api/v1/jobs/1/result", 1536 * MiB, "multipart/form-data; b=x"),
            ):
                answer = raw_request(
                    url,
                    f"POST {route} HTTP/1.1\nHost: x\nContent-Type: {kind}\n"
                    f"Content-Length: {size}\n",
                    zeros(size),
                )
                assert answer.status == 401, answer
                sent[name] = answer.sent
            after = _memory(process.pid)
        finally:
            stop_process(process)
    print(f"master memory before {before}, after {after} KiB; body bytes sent {sent}")
    assert after["VmHWM"] - before["VmHWM"] < 32 * 1024
    assert all(count < 64 * MiB for count in sent.values())


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/simple/", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False

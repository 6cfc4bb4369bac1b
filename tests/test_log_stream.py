"""Live build logs: chunks a builder streams while building, capped head and tail, read back
while the job builds; and the builder's streamer against a real master on loopback."""

from __future__ import annotations

import hashlib
import io
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from builder.backends import BuildOutcome
from builder.client import LogOffsetMismatch, LogRefused, MasterClient
from builder.log_stream import LogStreamer
from builder.worker import JobRunner
from common.config import Settings
from common.db import transaction
from common.job_spec import JobSpec
from common.log_cap import omitted_marker
from common.models import BuildJob
from common.protocol import HeartbeatAnswer
from common.states import FailureReason, JobState, TokenRole
from master.auth import create_token
from master.operations import cancel_job
from master.storage import Storage
from master.web.app import create_app
from tests.builds import ScriptedBackend
from tests.seed import add_release
from tests.servers import free_port, serve_app, wait_until


@dataclass
class LiveFarm:
    client: TestClient
    factory: sessionmaker[Session]
    settings: Settings
    job_id: int
    token: str
    other_token: str

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}

    def send(self, offset: int, data: bytes, token: str | None = None, job_id: int = 0) -> Any:
        return self.client.post(
            f"/api/v1/jobs/{job_id or self.job_id}/log",
            params={"offset": offset},
            content=data,
            headers={**self.auth(token), "Content-Type": "application/octet-stream"},
        )

    def tail(self, offset: int = 0) -> Any:
        return self.client.get(f"/api/v1/jobs/{self.job_id}/log", params={"offset": offset})

    def whole(self) -> bytes:
        answer = self.client.get(f"/logs/{self.job_id}")
        assert answer.status_code == 200, answer.text
        return bytes(answer.content)

    def report(self, log: bytes) -> Any:
        return self.client.post(
            f"/api/v1/jobs/{self.job_id}/result",
            headers=self.auth(),
            data={"outcome": "failed", "reason": "compile-error", "summary": "no"},
            files={"log": ("build.log", log)},
        )

    def claim(self) -> Any:
        return self.client.post(f"/api/v1/jobs/{self.job_id}/claim", headers=self.auth())

    def live_files(self) -> list[Path]:
        live = self.settings.master.data_dir / "live" / str(self.job_id)
        return sorted(p for p in live.rglob("*") if p.is_file()) if live.exists() else []


@contextmanager
def live_farm(settings: Settings, factory: sessionmaker[Session]) -> Iterator[LiveFarm]:
    """A master with one job claimed by builder b1; b2 is registered too."""
    with transaction(factory) as session:
        _, _, [job] = add_release(session, settings)
        token = create_token(session, "b1", TokenRole.BUILDER)
        other = create_token(session, "b2", TokenRole.BUILDER)
        job_id = job.id
    with TestClient(create_app(settings, factory)) as client:
        farm = LiveFarm(client, factory, settings, job_id, token, other)
        for secret in (token, other):
            answer = client.post(
                "/api/v1/builders/register",
                headers=farm.auth(secret),
                json={"arch": "aarch64", "backend": "docker", "python_tags": ["cp311"]},
            )
            assert answer.status_code == 200, answer.text
        assert farm.claim().status_code == 200
        yield farm


@pytest.fixture
def farm(settings: Settings, factory: sessionmaker[Session]) -> Iterator[LiveFarm]:
    with live_farm(settings, factory) as made:
        yield made


def _ok(answer: Any, total: int) -> None:
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"job": answer.json()["job"], "total": total}


def test_chunks_append_in_order_and_read_while_building(farm: LiveFarm) -> None:
    assert farm.tail().content == b"" and farm.tail().headers["X-Log-Total"] == "0"
    _ok(farm.send(0, b"::armwheels:: job started\n"), 26)
    _ok(farm.send(26, b"compiling foo.c\n"), 42)
    assert farm.whole() == b"::armwheels:: job started\ncompiling foo.c\n"
    tail = farm.tail(26)
    assert tail.status_code == 200
    assert tail.content == b"compiling foo.c\n"
    assert tail.headers["X-Log-Total"] == "42"
    assert tail.headers["X-Job-State"] == "building"
    assert tail.headers["X-Log-Id"].startswith("live-")
    assert farm.tail(42).content == b""
    past = farm.tail(43)
    assert past.status_code == 416 and past.json()["total"] == 42
    detail = farm.client.get(f"/api/v1/jobs/{farm.job_id}").json()
    assert detail["live_log"] == f"/api/v1/jobs/{farm.job_id}/log"
    assert detail["log"] == f"/logs/{farm.job_id}"


def test_resent_chunk_is_harmless(farm: LiveFarm) -> None:
    _ok(farm.send(0, b"abcdef"), 6)
    _ok(farm.send(0, b"abcdef"), 6)  # its answer was lost: the builder sends it again
    _ok(farm.send(2, b"cd"), 6)
    _ok(farm.send(3, b"defghi"), 9)  # overlaps: only the new part is added
    _ok(farm.send(9, b""), 9)
    assert farm.whole() == b"abcdefghi"


def test_gap_answers_409_with_the_expected_offset(farm: LiveFarm) -> None:
    _ok(farm.send(0, b"abcdef"), 6)
    gap = farm.send(10, b"klm")
    assert gap.status_code == 409
    assert gap.json()["expected"] == 6 and "expected 6" in gap.json()["error"]
    assert farm.whole() == b"abcdef"
    _ok(farm.send(6, b"ghijklm"), 13)


def test_only_the_builder_holding_a_building_job_may_send(farm: LiveFarm) -> None:
    other = farm.send(0, b"x", token=farm.other_token)
    assert other.status_code == 403 and "not assigned to builder b2" in other.json()["error"]
    assert farm.send(0, b"x", job_id=999_999).status_code == 404
    bad_token = farm.client.post(f"/api/v1/jobs/{farm.job_id}/log?offset=0", content=b"x")
    assert bad_token.status_code == 401 and "error" in bad_token.json()
    assert farm.send(-1, b"x").status_code == 422
    too_big = farm.send(0, b"x" * (1024 * 1024 + 1))
    assert too_big.status_code == 413 and "at most" in too_big.json()["error"]
    assert farm.tail().headers["X-Log-Total"] == "0"
    _ok(farm.send(0, b"live part\n"), 10)
    assert farm.live_files()
    # The result replaces the live log; afterwards the job takes no more chunks.
    assert farm.report(b"the final log\n").status_code == 200
    assert farm.live_files() == []
    late = farm.send(10, b"late\n")
    assert late.status_code == 409 and "not building" in late.json()["error"]
    assert "expected" not in late.json()
    assert farm.whole() == b"the final log\n"
    final = farm.tail(4)
    assert final.content == b"final log\n" and final.headers["X-Log-Total"] == "14"
    assert final.headers["X-Log-Id"].startswith("final-")


def test_a_job_handed_back_takes_no_chunks_and_a_new_claim_starts_afresh(
    farm: LiveFarm,
) -> None:
    _ok(farm.send(0, b"first attempt\n"), 14)
    first_id = farm.tail().headers["X-Log-Id"]
    released = farm.client.post(f"/api/v1/jobs/{farm.job_id}/release", headers=farm.auth())
    assert released.status_code == 200
    assert farm.live_files() == []
    assert farm.send(14, b"more").status_code == 403  # pending: nobody's job
    assert farm.client.get(f"/logs/{farm.job_id}").status_code == 404
    assert farm.claim().json()["attempt"] == 1
    _ok(farm.send(0, b"second\n"), 7)
    assert farm.whole() == b"second\n"
    assert farm.tail().headers["X-Log-Id"] != first_id


def _pattern(size: int) -> bytes:
    return b"".join(b"line %06d\n" % n for n in range(size // 12 + 1))[:size]


def test_cap_keeps_head_and_tail_with_a_marker(
    settings: Settings, factory: sessionmaker[Session]
) -> None:
    settings.master.max_log_bytes = 100  # live and final logs keep 50 + 50 bytes
    data = _pattern(5000)
    with live_farm(settings, factory) as farm:
        for start in range(0, len(data), 37):
            _ok(farm.send(start, data[start : start + 37]), min(start + 37, len(data)))
            stored = sum(p.stat().st_size for p in farm.live_files())
            assert stored <= 50 + 2 * 50 + 37  # never the whole log, on disk either
        _ok(farm.send(0, data[:37]), 5000)  # offsets still mean the builder's log
        expected = data[:50] + omitted_marker(4900) + data[-50:]
        assert farm.whole() == expected
        tail = farm.tail(4960)
        assert tail.content == data[4960:] and tail.headers["X-Log-Total"] == "5000"
        # An offset in the dropped middle: a marker for what is missing, then the tail.
        assert farm.tail(1000).content == omitted_marker(3950) + data[-50:]
        assert farm.tail(20).content == data[20:50] + omitted_marker(4900) + data[-50:]
        # The final log is capped the same way.
        assert farm.report(data).status_code == 200
        assert farm.whole() == expected
        with factory() as session:
            job = session.get(BuildJob, farm.job_id)
            assert job is not None and job.log_size == 100


class _Pipe(io.RawIOBase):
    """A stream that cannot seek, like a socket."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        chunk = self._data.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)


@pytest.mark.parametrize("size", [0, 99, 100, 101, 3_000_000])
def test_final_log_cap_with_and_without_seeking(tmp_path: Path, size: int) -> None:
    storage = Storage(tmp_path / "data")
    data = _pattern(size)
    limit = 100
    expected = data if size <= limit else data[:50] + omitted_marker(size - 100) + data[-50:]
    for name, source in (("seek", io.BytesIO(data)), ("pipe", io.BufferedReader(_Pipe(data)))):
        assert source.seekable() == (name == "seek")
        path, kept = storage.store_log(name, 1, 1, source, limit)
        assert storage.read_log(path) == expected
        assert kept == min(size, limit)


# The builder's streamer against a real master (uvicorn on a free loopback port).


def _grow(path: Path, pieces: list[bytes], pause: float) -> threading.Thread:
    """Append to `path` in the background, as a build writes its log."""

    def write() -> None:
        with path.open("ab") as sink:
            for piece in pieces:
                sink.write(piece)
                sink.flush()
                time.sleep(pause)

    writer = threading.Thread(target=write, name="build")
    writer.start()
    return writer


def test_streamer_sends_a_growing_log_and_recovers(
    farm: LiveFarm, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="builder.log_stream")
    app = create_app(farm.settings, farm.factory)
    port = free_port()
    log_path = tmp_path / "build.log"
    log_path.write_bytes(b"")
    pieces = [_pattern(7000 + n) for n in range(60)]
    with serve_app(app, port) as url:
        client = MasterClient(url, farm.token)
        # The master has a head start the streamer does not know of (an earlier answer
        # lost): the resend is acknowledged with the master's total.
        assert client.append_log(farm.job_id, 0, pieces[0][:100]) == 100
        assert client.append_log(farm.job_id, 0, pieces[0][:50]) == 100
        with pytest.raises(LogOffsetMismatch) as gap:
            client.append_log(farm.job_id, 500, b"x")
        assert gap.value.expected == 100
        streamer = LogStreamer(client, farm.job_id, log_path, interval=0.05, chunk_bytes=4096)
        # It believes more was acknowledged than the master has: the 409 sets it right.
        streamer.acked = 9000
        streamer.start()
        writer = _grow(log_path, pieces[:30], 0.01)
        writer.join()
        wait_until(lambda: streamer.acked == log_path.stat().st_size, 30, "first half", 0.05)
    # The master is gone for a while: ticks fail, are logged, and the build goes on.
    writer = _grow(log_path, pieces[30:45], 0.01)
    writer.join()
    time.sleep(0.3)
    assert streamer.is_alive() and not streamer.refused
    with serve_app(app, port):
        writer = _grow(log_path, pieces[45:], 0.01)
        writer.join()
        streamer.stop()  # the build ended: the rest is flushed before the report
        assert not streamer.is_alive()
        assert streamer.acked == log_path.stat().st_size
        body = httpx.get(f"http://127.0.0.1:{port}/logs/{farm.job_id}").content
        client.close()
    assert body == log_path.read_bytes()
    assert len(body) > 256 * 1024  # many chunks, and more than one tick's worth
    said = [(r.getMessage(), getattr(r, "job_id", None)) for r in caplog.records]
    assert ("live log resent from the master's offset", farm.job_id) in said
    assert any(m.startswith("live log not sent") and j == farm.job_id for m, j in said)
    assert ("live log streaming resumed", farm.job_id) in said
    # A failing master is reported once, not on every tick.
    assert sum(m.startswith("live log not sent") for m, _ in said) == 1


def test_streamer_stops_when_the_job_is_not_its_own(
    farm: LiveFarm, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(farm.settings, farm.factory)
    log_path = tmp_path / "build.log"
    log_path.write_bytes(b"a line\n")
    with serve_app(app, free_port()) as url:
        client = MasterClient(url, farm.other_token)
        with pytest.raises(LogRefused):
            client.append_log(farm.job_id, 0, b"x")
        streamer = LogStreamer(client, farm.job_id, log_path, interval=0.05)
        with caplog.at_level(logging.INFO, logger="builder.log_stream"):
            streamer.start()
            wait_until(lambda: streamer.refused, 10, "refusal", 0.05)
            streamer.stop()
        client.close()
    assert not streamer.is_alive() and streamer.acked == 0
    [refusal] = [r for r in caplog.records if r.getMessage().startswith("live log refused")]
    assert getattr(refusal, "job_id", None) == farm.job_id
    assert farm.tail().headers["X-Log-Total"] == "0"


def test_streamer_and_heartbeat_learn_that_the_job_was_cancelled(
    farm: LiveFarm, tmp_path: Path
) -> None:
    """A cancelled job's next chunk is refused saying the job is no longer ours: the
    streamer passes that on (to JobRunner.abandon) once, and a heartbeat naming the job
    gets it under `stop`."""
    app = create_app(farm.settings, farm.factory)
    log_path = tmp_path / "build.log"
    log_path.write_bytes(b"compiling\n")
    told: list[tuple[int, str]] = []
    with serve_app(app, free_port()) as url:
        client = MasterClient(url, farm.token)
        assert client.heartbeat(farm.job_id, 1) == HeartbeatAnswer()
        streamer = LogStreamer(
            client,
            farm.job_id,
            log_path,
            interval=0.05,
            on_taken_back=lambda job, why: told.append((job, why)),
        )
        streamer.start()
        wait_until(lambda: streamer.acked == 10, 10, "the first chunk", 0.05)
        with transaction(farm.factory) as session:
            cancel_job(session, farm.job_id, "cli:test", "operator", "not wanted")
        with log_path.open("ab") as sink:
            sink.write(b"still compiling\n")
        wait_until(lambda: bool(told), 10, "the refusal", 0.05)
        streamer.stop()
        assert told == [(farm.job_id, "skipped (cancelled)")]
        assert streamer.refused and streamer.acked == 10
        answer = client.heartbeat(farm.job_id, 1)
        assert answer == HeartbeatAnswer(stop=[farm.job_id], why="skipped (cancelled)")
        assert client.heartbeat(None, 1).stop == []
        # A refusal that says nothing of the job (too big a chunk) is not a stop.
        with pytest.raises(LogRefused) as too_big:
            client.append_log(farm.job_id, 0, b"x" * (1024 * 1024 + 1))
        assert too_big.value.taken_back is None
        client.close()


class _SlowBackend(ScriptedBackend):
    """Builds nothing: writes its log in two parts and, between them, checks the master
    already shows the first part, as a maintainer watching the build would."""

    def __init__(self, master: str, job_id: int) -> None:
        self.master = master
        self.job_id = job_id
        self.seen_while_building = b""

    def build(self, spec: JobSpec, sdist: Path, workdir: Path, log: BinaryIO) -> BuildOutcome:
        log.write(b"compiling demo.c\n")
        log.flush()

        def shown() -> bool:
            self.seen_while_building = httpx.get(f"{self.master}/logs/{self.job_id}").content
            return b"compiling demo.c\n" in self.seen_while_building

        wait_until(shown, 30, "the live log", 0.1)
        log.write(b"demo.c:1: error: something\n")
        log.flush()
        return BuildOutcome(False, reason=FailureReason.COMPILE_ERROR, summary="demo.c:1")


@contextmanager
def file_server(folder: Path) -> Iterator[str]:
    """Python's HTTP server on loopback, serving `folder` (the sdist's upstream)."""
    server = ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(folder))
    )
    thread = threading.Thread(target=server.serve_forever, name="files", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_job_runner_streams_the_log_while_building(
    settings: Settings, factory: sessionmaker[Session], tmp_path: Path
) -> None:
    sdist = b"not really a tarball, but its hash is recorded"
    upstream = tmp_path / "upstream"
    upstream.mkdir()
    (upstream / "demo-1.0.tar.gz").write_bytes(sdist)
    with file_server(upstream) as files, live_farm(settings, factory) as farm:
        released = farm.client.post(f"/api/v1/jobs/{farm.job_id}/release", headers=farm.auth())
        assert released.status_code == 200
        with transaction(factory) as session:
            job = session.get(BuildJob, farm.job_id)
            assert job is not None
            job.source_file.url = f"{files}/demo-1.0.tar.gz"
            job.source_file.sha256 = hashlib.sha256(sdist).hexdigest()
            job.source_file.size = len(sdist)
        with serve_app(create_app(settings, factory), free_port()) as url:
            client = MasterClient(url, farm.token)
            backend = _SlowBackend(url, farm.job_id)
            JobRunner(settings, "aarch64", backend, client).run(farm.job_id)
            client.close()
        assert b"sdist verified" in backend.seen_while_building
        assert b"error: something" not in backend.seen_while_building
        final = farm.whole()
        assert final.endswith(
            b"demo.c:1: error: something\n::armwheels:: outcome: compile-error: demo.c:1\n"
        )
        assert farm.live_files() == []
        with factory() as session:
            done = session.get(BuildJob, farm.job_id)
            assert done is not None and done.state == JobState.FAILED

"""The master serving HTTP from several worker processes: `armwheels master` for real."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from common.config import load_settings
from master.web.http_server import MAX_AUTO_WORKERS, http_workers, listen_sockets
from tests.conftest import _postgres_database
from tests.servers import free_port, process_gone, redis_database, stop_process, wait_until

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "armwheels.cli"]
REDIS_DB = 9
scratch_database = contextmanager(_postgres_database)


def test_worker_count_follows_the_setting_and_the_database() -> None:
    sqlite = load_settings(None, database={"url": "sqlite:///x.db"})
    postgres = load_settings(None, database={"url": "postgresql+psycopg://u@h/d"})
    assert http_workers(sqlite) == 1
    assert http_workers(postgres) == max(1, min(MAX_AUTO_WORKERS, os.cpu_count() or 1))
    postgres.master.http_workers = sqlite.master.http_workers = 3
    assert http_workers(postgres) == http_workers(sqlite) == 3


def _children(pid: int) -> set[int]:
    """The master's HTTP workers: spawned processes whose parent is `pid`."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == pid and b"spawn_main" in command:
            found.add(int(entry.name))
    return found


@dataclass
class Master:
    process: subprocess.Popen[bytes]
    url: str
    port: int
    log: Path

    def workers(self) -> set[int]:
        return _children(self.process.pid)

    def answers_all(self, requests: int = 40) -> bool:
        paths = ["/simple/", "/", "/api/v1/status", "/metrics"] * (requests // 4)
        with httpx.Client(base_url=self.url, timeout=30) as client, ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda path: client.get(path).status_code, paths))
        return codes == [200] * len(paths)


@contextmanager
def master(tmp_path: Path, workers: int) -> Iterator[Master]:
    port = free_port()
    config = tmp_path / "master.toml"
    config.write_text(
        f'[upstream]\nindex_url = "http://127.0.0.1:{free_port()}/simple/"\n'
        f'[master]\nport = {port}\ndata_dir = "{tmp_path / "data"}"\n'
        f"http_workers = {workers}\n"
    )
    log = tmp_path / "master.log"
    with redis_database(REDIS_DB), log.open("ab") as sink, scratch_database() as url:
        env = dict(
            os.environ,
            ARMWHEELS_DATABASE__URL=url,
            ARMWHEELS_BROKER__URL=f"redis://127.0.0.1:6379/{REDIS_DB}",
        )
        subprocess.run([*CLI, "db", "upgrade", "--config", str(config)], env=env, check=True)
        process = subprocess.Popen(
            [*CLI, "master", "--config", str(config)],
            env=env,
            cwd=ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        running = Master(process, f"http://127.0.0.1:{port}", port, log)
        spawned = workers if workers > 1 else 0
        try:
            wait_until(
                lambda: len(running.workers()) == spawned and _answers(running.url),
                60,
                f"{workers} http workers",
            )
            yield running
        finally:
            stop_process(process)


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/simple/", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.slow
def test_workers_share_the_port_a_dead_one_is_replaced_and_all_stop_with_the_master(
    tmp_path: Path,
) -> None:
    with master(tmp_path, workers=2) as running:
        first = running.workers()
        assert len(first) == 2
        assert running.answers_all()
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        wait_until(
            lambda: len(running.workers()) == 2 and victim not in running.workers(),
            30,
            "a worker in place of the killed one",
        )
        assert running.answers_all()
        workers = running.workers()
        running.process.send_signal(signal.SIGTERM)
        assert running.process.wait(60) == 0
        assert all(process_gone(pid) for pid in workers)
        assert _port_free(running.port)
    log = running.log.read_text()
    assert log.count('msg="http worker started"') == 3
    assert 'msg="http worker exited: starting another" worker=' in log
    assert f"pid={victim} exitcode=-9" in log


def _connections_by_worker(port: int, workers: set[int]) -> dict[int, int]:
    """How many established connections on `port` each worker holds (/proc/net/tcp)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        if local_port == port and fields[3] == "01":  # 01: ESTABLISHED
            inodes.add(f"socket:[{fields[9]}]")
    held = {}
    for pid in workers:
        fds = Path(f"/proc/{pid}/fd")
        held[pid] = sum(1 for fd in fds.iterdir() if str(fd.readlink()) in inodes)
    return held


@pytest.mark.slow
def test_a_burst_of_keep_alive_clients_is_spread_over_the_workers(tmp_path: Path) -> None:
    # One socket shared by the workers let the first to wake take a whole burst: 20
    # keep-alive clients on one worker, the other idle. Each worker has its own socket.
    with master(tmp_path, workers=2) as running:
        workers = running.workers()
        # The burst arrives while both workers are busy (stopped here): the kernel queues
        # the connections, and the workers find them when they next look.
        for pid in workers:
            os.kill(pid, signal.SIGSTOP)
        try:
            clients = [socket.create_connection(("127.0.0.1", running.port)) for _ in range(20)]
        finally:
            for pid in workers:
                os.kill(pid, signal.SIGCONT)
        try:
            request = b"GET /simple/ HTTP/1.1\r\nHost: farm\r\n\r\n"
            for client in clients:
                client.sendall(request)
            for client in clients:
                assert client.recv(65536).startswith(b"HTTP/1.1 200")
            held = _connections_by_worker(running.port, workers)
        finally:
            for client in clients:
                client.close()
    assert sum(held.values()) == 20
    # The kernel hashes each connection to a socket: both get some (a 1 in 26,000 chance
    # of fewer than 2 on one of them by luck alone).
    assert min(held.values()) >= 2, held


def test_a_port_in_use_is_refused_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit, match=rf"^cannot listen on 127.0.0.1:{port}: "):
            listen_sockets("127.0.0.1", port, 2)


def test_each_worker_gets_a_socket_of_its_own_on_the_port() -> None:
    port = free_port()
    sockets = listen_sockets("127.0.0.1", port, 3)
    try:
        assert len({s.fileno() for s in sockets}) == 3
        assert {s.getsockname() for s in sockets} == {("127.0.0.1", port)}
        assert all(s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) for s in sockets)
        # Connections queue even before a worker starts serving.
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    finally:
        for listener in sockets:
            listener.close()
    assert _port_free(port)


@pytest.mark.slow
def test_workers_do_not_outlive_a_killed_master(tmp_path: Path) -> None:
    with master(tmp_path, workers=2) as running:
        workers = running.workers()
        running.process.send_signal(signal.SIGKILL)
        running.process.wait(10)
        wait_until(lambda: all(process_gone(pid) for pid in workers), 15, "workers to stop")
        wait_until(lambda: _port_free(running.port), 15, "the port to be free")


def test_one_worker_serves_in_the_master_process(tmp_path: Path) -> None:
    with master(tmp_path, workers=1) as running:
        assert running.answers_all(8)
    assert "http worker started" not in running.log.read_text()

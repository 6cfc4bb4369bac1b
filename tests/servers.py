"""Real servers the end-to-end tests run on loopback: pypiserver and armwheels itself."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import uvicorn

from common.config import Settings

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float, what: str, step: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what}")


def process_gone(pid: int) -> bool:
    """No such process, or one that is dead and waits only to be reaped."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    return "\nState:\tZ" in status


def stop_process(process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def pypiserver(
    packages: Path, htpasswd: Path | None = None, port: int | None = None
) -> Iterator[str]:
    """pypiserver on a loopback port serving `packages`; yields its /simple/ URL. With
    `htpasswd`, uploads are allowed to its users (and only to them)."""
    port = port or free_port()
    auth = ["-a", "update", "-P", str(htpasswd)] if htpasswd else ["-a", ".", "-P", "."]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pypiserver",
            "run",
            "-p",
            str(port),
            "-i",
            "127.0.0.1",
            *auth,
            "--hash-algo",
            "sha256",
            "--disable-fallback",
            str(packages),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/simple/"
    try:
        wait_until(lambda: _answers(url), 30, "pypiserver")
        yield url
    finally:
        stop_process(process, 10)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


# `armwheels master`'s HTTP server without its feed loop: serve_http(config, workers).
_SERVE_MASTER = (
    "import sys\n"
    "from pathlib import Path\n"
    "from common.config import load_settings\n"
    "from common.logs import setup_logging\n"
    "from master.web.http_server import serve_http\n"
    "setup_logging()\n"
    "serve_http(load_settings(Path(sys.argv[1])), int(sys.argv[2]))\n"
)
# Connections opened at once to see every HTTP worker of a master answer.
_PROBES = 8


@contextmanager
def http_master(
    settings: Settings,
    tmp_path: Path,
    workers: int = 2,
    name: str = "race-master",
    master: Mapping[str, int | float | str] | None = None,
) -> Iterator[str]:
    """The master's HTTP server as `armwheels master` runs it (`workers` processes on one
    port), without its feed loop, on `settings`' database and data directory with the
    `[master]` settings given; yields its base URL. Its config and log are
    `tmp_path/<name>.toml` and `.log`. On leaving, fails the test if it logged an error
    (a 500 logs its traceback)."""
    port = free_port()
    config = tmp_path / f"{name}.toml"
    options = "".join(f"{key} = {value!r}\n" for key, value in (master or {}).items())
    config.write_text(
        f'[database]\nurl = "{settings.database.url}"\n'
        f'[master]\nport = {port}\ndata_dir = "{settings.master.data_dir}"\n{options}'
    )
    log = tmp_path / f"{name}.log"
    with log.open("ab") as sink:
        process = subprocess.Popen(
            [sys.executable, "-c", _SERVE_MASTER, str(config), str(workers)],
            cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        # Fresh connections are spread over the workers' sockets: when all of a burst are
        # answered, every worker serves.
        wait_until(lambda: _all_answer(url), 60, f"{workers} http workers", step=0.2)
        yield url
    finally:
        stop_process(process)
        errors = [
            _last_error(line) for line in log.read_text().splitlines() if "level=error" in line
        ]
        assert not errors, "\n".join(errors)


def _last_error(line: str) -> str:
    """The exception a log line's traceback ends with (or the message if none)."""
    found = re.findall(r"\\n(\w[\w.]*(?:Error|Exception)[^\\]*)", line)
    return found[-1][:300] if found else line[:300]


def _all_answer(url: str) -> bool:
    def one(_: int) -> bool:
        try:
            return httpx.get(f"{url}/api/v1/status", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    with ThreadPoolExecutor(_PROBES) as pool:
        return all(pool.map(one, range(_PROBES)))


# pip's options for a CPython 3.11 target other than this host (wheels only).
PIP_TARGET = [
    "--only-binary=:all:",
    "--python-version",
    "3.11",
    "--implementation",
    "cp",
    "--abi",
    "cp311",
]


def run_pip(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Real pip in a clean environment; fails the test, with pip's output, if pip fails."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", *args],
        env=clean_pip_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def clean_pip_env() -> dict[str, str]:
    """Environment for a pip that sees only the index we give it (no machine config)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(
        {"PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    )
    return env


@contextmanager
def redis_database(number: int) -> Iterator[redis.Redis]:
    """One Redis database of the machine's server, empty before and after the test."""
    client = redis.Redis(host="127.0.0.1", port=6379, db=number)
    try:
        client.ping()
    except redis.RedisError as exc:  # pragma: no cover - depends on the machine
        pytest.fail(f"Redis is not reachable on 127.0.0.1:6379: {exc}")
    client.flushdb()
    try:
        yield client
    finally:
        client.flushdb()
        client.close()


@contextmanager
def serve_app(app: Any, port: int | None = None) -> Iterator[str]:
    """An ASGI app under uvicorn in a thread on a loopback port (a free one unless given,
    e.g. to restart a master where builders expect it); yields its base URL."""
    port = port or free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, 15, "uvicorn", step=0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


def nginx_config(prefix: Path, servers: str) -> Path:
    """nginx's main configuration for a test: in the foreground, with its pid, error log
    and temporary files under `prefix`, serving `servers` (server blocks or includes)."""
    temp = prefix / "nginx-temp"
    temp.mkdir()
    config = prefix / "nginx.conf"
    config.write_text(
        f"""user root;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
events {{}}
http {{
    access_log off;
    default_type application/octet-stream;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
{servers}
}}
"""
    )
    return config

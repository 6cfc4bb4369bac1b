"""Real servers the end-to-end tests run on loopback: pypiserver and armwheels itself."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("ARMWHEELS_TEST_CACHE", Path.home() / ".cache" / "armwheels-tests"))


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


def stop_process(process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def pypi_sdist(project: str, version: str) -> Path:
    """A real sdist from PyPI (Simple API, through the machine's proxy), cached on disk."""
    CACHE.mkdir(parents=True, exist_ok=True)
    cached = [p for p in CACHE.glob(f"{project}-{version}.*") if p.suffix != ".sha256"]
    for path in cached:
        expected = path.with_name(path.name + ".sha256")
        if expected.exists() and hashlib.sha256(path.read_bytes()).hexdigest() == (
            expected.read_text().strip()
        ):
            return path
    page = httpx.get(
        f"https://pypi.org/simple/{project}/",
        headers={"Accept": "application/vnd.pypi.simple.v1+json"},
        timeout=60,
    ).json()
    [entry] = [
        f
        for f in page["files"]
        if f["filename"] in (f"{project}-{version}.tar.gz", f"{project}-{version}.zip")
    ]
    data = httpx.get(entry["url"], timeout=300, follow_redirects=True).content
    digest = hashlib.sha256(data).hexdigest()
    assert digest == entry["hashes"]["sha256"], f"{entry['filename']}: hash mismatch"
    target = CACHE / str(entry["filename"])
    target.write_bytes(data)
    target.with_name(target.name + ".sha256").write_text(digest)
    return target


@contextmanager
def pypiserver(packages: Path) -> Iterator[str]:
    """pypiserver on a free loopback port serving `packages`; yields its /simple/ URL."""
    port = free_port()
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
            "-a",
            ".",
            "-P",
            ".",
            "--hash-algo",
            "sha256",
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


def clean_pip_env() -> dict[str, str]:
    """Environment for a pip that sees only the index we give it (no machine config)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(
        {"PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    )
    return env

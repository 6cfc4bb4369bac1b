"""Dashboard latency with a large history: 1,000,000 builds in PostgreSQL.

Fills a scratch database (100,000 projects, 1,000,000 finished builds spread over two
years, one a minute, with one in ten failed, plus waiting and running jobs and builders), starts the
master in its own process (uvicorn), and loads the overview and project pages with
CLIENTS concurrent clients for SECONDS each. Printed figures per page: requests, p50,
p95 and p99 latency, and the p99 against the goal.
Goal (issue 6): under 100 ms at the 99th percentile with 20 concurrent clients.

Usage: .venv/bin/python -m benchmarks.dashboard [BUILDS] [CLIENTS] [SECONDS]
Needs PostgreSQL on 127.0.0.1:5432 (user postgres).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table
from sqlalchemy import text

from benchmarks.index import fill
from common.db import make_engine, upgrade
from tests.conftest import _postgres_database
from tests.servers import free_port, stop_process, wait_until

GOAL_P99_MS = 100.0
scratch_database = contextmanager(_postgres_database)

HISTORY = [
    # Two years of finished builds (one a minute, ~10,000 in the last week), one in ten
    # failed, with build times.
    "UPDATE build_jobs SET finished_at = now() - id * interval '1 minute',"
    " started_at = now() - id * interval '1 minute' - interval '5 minutes',"
    " build_seconds = 60 + id % 600,"
    " state = CASE WHEN id % 10 = 0 THEN 'failed' ELSE 'built' END,"
    " failure_reason = CASE WHEN id % 10 = 0 THEN 'compile-error' END,"
    " summary = CASE WHEN id % 10 = 0 THEN 'error: implicit declaration of x' END",
    # Some waiting and running work (the newest release of 2,000 projects).
    "UPDATE build_jobs SET state = 'pending', finished_at = NULL, started_at = NULL"
    " WHERE id > (SELECT max(id) - 2000 FROM build_jobs)",
    "INSERT INTO tokens (id, name, role, token_hash, created_at)"
    " SELECT g, 'builder-' || g, 'builder', md5(g::text) || md5((g + 1)::text), now()"
    " FROM generate_series(1, 20) g",
    "INSERT INTO builders (id, name, token_id, arch, backend, python_tags, version,"
    " registered_at, last_seen_at)"
    " SELECT g, 'builder-' || g, g, 'aarch64', 'docker', '[\"cp311\"]', '0.1', now(),"
    " now() - (g % 3) * interval '4 minutes' FROM generate_series(1, 20) g",
    "ANALYZE",
]


def serve(url: str, data_dir: str, port: int) -> None:
    """The master's HTTP app alone, as `armwheels master` serves it."""
    import uvicorn

    from common.config import load_settings
    from common.db import make_sessionmaker
    from master.app import create_app

    settings = load_settings(
        None,
        database={"url": url},
        master={"data_dir": Path(data_dir), "port": port},
        index={"static": False},
    )
    engine = make_engine(url)
    app = create_app(settings, make_sessionmaker(engine))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


async def load(base: str, path: str, clients: int, seconds: float) -> list[float]:
    """`clients` clients asking for `path` back to back; latencies in ms."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:

        async def one_client() -> None:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                answer = await client.get(path)
                latencies.append((time.perf_counter() - started) * 1000)
                if answer.status_code != 200:
                    raise RuntimeError(f"{path}: HTTP {answer.status_code}")

        await asyncio.gather(*(one_client() for _ in range(clients)))
    return latencies


def main() -> None:
    builds = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    clients = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 20.0
    console = Console()
    with scratch_database() as url, tempfile.TemporaryDirectory() as data:
        engine = make_engine(url)
        upgrade(engine)
        console.print(f"filling {builds:,} builds")
        started = time.perf_counter()
        fill(engine, max(1, builds // 10), 10, console)
        with engine.begin() as connection:
            for statement in HISTORY:
                connection.execute(text(statement))
        engine.dispose()
        console.print(f"filled in {time.perf_counter() - started:.1f} s")
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.dashboard", "--serve", url, data, str(port)],
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        )
        base = f"http://127.0.0.1:{port}"
        pages = {"overview": "/", "project page": "/projects/project-4242"}
        results: dict[str, list[float]] = {}
        try:

            def ready() -> bool:
                try:
                    return httpx.get(base + "/", timeout=5).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_until(ready, 60, "master")
            for label, path in pages.items():
                asyncio.run(load(base, path, clients, 3))  # warm-up
                results[label] = asyncio.run(load(base, path, clients, seconds))
        finally:
            stop_process(server, 10)

    table = Table(title=f"{builds:,} builds in PostgreSQL, {clients} concurrent clients")
    for column in ("page", "requests", "p50 ms", "p95 ms", "p99 ms", "p99 / goal"):
        table.add_column(column)
    for label, latencies in results.items():
        cuts = statistics.quantiles(latencies, n=100)
        table.add_row(
            label,
            f"{len(latencies):,}",
            f"{cuts[49]:.1f}",
            f"{cuts[94]:.1f}",
            f"{cuts[98]:.1f}",
            f"{cuts[98] / GOAL_P99_MS:.2f}",
        )
    console.print(table)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--serve":
        serve(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        main()

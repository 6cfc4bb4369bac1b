"""Dashboard latency with a large history: 1,000,000 builds in PostgreSQL.

Fills a scratch database (100,000 projects, 1,000,000 finished builds spread over two
years, one a minute, with one in ten failed, plus waiting and running jobs and builders),
starts the master's HTTP server as `armwheels master` runs it (master/web/http_server.py,
`master.http_workers` processes: one per core here), and loads each page with wrk, a
C load generator (Debian's package; scripts/setup installs it), from CLIENTS
connections for SECONDS each, every client asking again as soon as it has its answer.
Pages: the overview, its live part (what open dashboards refresh), one popular project's
page, and a different project's page on every request (100,000 projects: nearly every one
rendered afresh). Printed figures per page: requests, requests per second, p50, p95 and
p99 latency, and the p99 against the goal.
Goal (issue 6): under 100 ms at the 99th percentile with 20 concurrent clients.

Usage: .venv/bin/python -m benchmarks.dashboard [BUILDS] [CLIENTS] [SECONDS] [WORKERS]
Needs PostgreSQL on 127.0.0.1:5432 (user postgres) and wrk.
"""

from __future__ import annotations

import os
import random
import shutil
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
from common.config import load_settings
from common.db import make_engine, make_sessionmaker, upgrade
from master.web import dashboard
from master.web.page_cache import PageCache
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


def serve(url: str, data_dir: str, port: int, workers: int) -> None:
    """The master's HTTP server alone, as `armwheels master` serves it."""
    from common.logs import setup_logging
    from master.web.http_server import http_workers, serve_http

    setup_logging()
    settings = load_settings(
        None,
        database={"url": url},
        master={"data_dir": Path(data_dir), "port": port, "http_workers": workers},
        index={"static": False},
    )
    serve_http(settings, http_workers(settings))


# One load-generating thread: the other core(s) stay with the master.
WRK = ["wrk", "-t1", "--timeout", "30s"]
SERVE = [sys.executable, "-m", "benchmarks.dashboard", "--serve"]

# wrk's report, in microseconds, read back by load().
REPORT = r"""
local first, last = %d, %d
request = function()
  if first == 0 then return wrk.request() end
  return wrk.format(nil, "/projects/project-" .. math.random(first, last))
end
done = function(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format("requests %%d\n", summary.requests))
  io.write(string.format("seconds %%f\n", summary.duration / 1e6))
  io.write(string.format("bad %%d\n", errors.status + errors.connect + errors.read
    + errors.write + errors.timeout))
  for _, p in ipairs({50, 95, 99}) do
    io.write(string.format("p%%d %%d\n", p, latency:percentile(p)))
  end
end
"""


def load(base: str, path: str, clients: int, seconds: float, projects: int = 0) -> dict[str, float]:
    """wrk on `path` (or, with `projects`, a random project's page per request)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(REPORT % ((1, projects) if projects else (0, 0)))
        script.flush()
        finished = subprocess.run(
            [*WRK, f"-c{clients}", f"-d{max(1, round(seconds))}s", "-s", script.name, base + path],
            capture_output=True,
            text=True,
        )
    if finished.returncode:
        raise RuntimeError(f"wrk failed: {finished.stderr.strip() or finished.stdout.strip()}")
    figures = {}
    for line in finished.stdout.splitlines():
        key, _, value = line.partition(" ")
        if key in ("requests", "seconds", "bad", "p50", "p95", "p99"):
            figures[key] = float(value)
    if figures.get("bad"):
        raise RuntimeError(f"{path}: {figures['bad']:.0f} failed requests")
    return figures


def fresh_renders(
    url: str, data_dir: str, projects: int, count: int = 50
) -> dict[str, list[float]]:
    """Each page rendered afresh, one at a time, in this process: the work a cache miss
    costs, which the load figures above hide for the overview (kept for a second)."""
    settings = load_settings(
        None, database={"url": url}, master={"data_dir": Path(data_dir)}, index={"static": False}
    )
    engine = make_engine(url)
    factory = make_sessionmaker(engine)

    def overview() -> None:
        with dashboard.read_session(factory) as db:
            dashboard.overview_body(db, settings, PageCache())

    def project() -> None:
        with dashboard.read_session(factory) as db:
            dashboard.project_body(db, settings, f"project-{random.randint(1, projects)}")

    timings: dict[str, list[float]] = {}
    try:
        for label, render in (("overview", overview), ("a project page", project)):
            render()  # warm-up
            timings[label] = []
            for _ in range(count):
                started = time.perf_counter()
                render()
                timings[label].append(time.perf_counter() - started)
    finally:
        engine.dispose()
    return timings


def main() -> None:
    builds = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    clients = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 20.0
    workers = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install wrk (scripts/setup does)")
    console = Console()
    projects = max(1, builds // 10)
    with scratch_database() as url, tempfile.TemporaryDirectory() as data:
        engine = make_engine(url)
        upgrade(engine)
        console.print(f"filling {builds:,} builds")
        started = time.perf_counter()
        fill(engine, projects, 10, console)
        with engine.begin() as connection:
            for statement in HISTORY:
                connection.execute(text(statement))
        engine.dispose()
        console.print(f"filled in {time.perf_counter() - started:.1f} s")
        port = free_port()
        server = subprocess.Popen(
            [*SERVE, url, data, str(port), str(workers)],
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        )
        base = f"http://127.0.0.1:{port}"
        popular = f"/projects/project-{min(4242, projects)}"
        pages = {
            "overview": ("/", 0),
            "overview, live part": ("/fragments/overview", 0),
            "a popular project page": (popular, 0),
            "a different project page each request": ("/projects/", projects),
        }
        results: dict[str, dict[str, float]] = {}
        try:

            def ready() -> bool:
                try:
                    return httpx.get(base + "/", timeout=5).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_until(ready, 60, "master")
            for label, (path, spread) in pages.items():
                load(base, path, clients, 3, spread)  # warm-up
                results[label] = load(base, path, clients, seconds, spread)
                console.print(f"{label}: {results[label]['requests']:,.0f} requests")
        finally:
            stop_process(server, 10)
        renders = fresh_renders(url, data, projects)

    title = (
        f"{builds:,} builds in PostgreSQL, {clients} concurrent clients (wrk),"
        f" http_workers={workers or 'auto'} on {os.cpu_count()} cores"
    )
    table = Table(title=title)
    for column in ("page", "requests", "per s", "p50 ms", "p95 ms", "p99 ms", "p99 / goal"):
        table.add_column(column)
    for label, figures in results.items():
        table.add_row(
            label,
            f"{figures['requests']:,.0f}",
            f"{figures['requests'] / figures['seconds']:,.0f}",
            f"{figures['p50'] / 1000:.1f}",
            f"{figures['p95'] / 1000:.1f}",
            f"{figures['p99'] / 1000:.1f}",
            f"{figures['p99'] / 1000 / GOAL_P99_MS:.2f}",
        )
    console.print(table)
    for label, timings in renders.items():
        timings.sort()
        console.print(
            f"{label} rendered afresh (no cache, one at a time): median"
            f" {timings[len(timings) // 2] * 1000:.1f} ms, max {timings[-1] * 1000:.1f} ms"
        )


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--serve":
        serve(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    else:
        main()

"""Wheel verification: time to verify real wheels, and what a zip bomb costs the master.

  verify                 common.wheels.read_contents on each WHEEL given (real wheels:
                         `pip download --only-binary=:all: --platform manylinux_2_28_aarch64
                         --python-version 3.11 --no-deps lxml==5.3.0` gives a 4.8 MB one)
  bomb upload            a 1 MiB wheel inflating to 1 GiB (valid RECORD) posted as a
                         builder's result to a master (real app, SQLite) in a fresh
                         process: the request's time, and the process's resident memory
                         before it and at its peak

Usage: .venv/bin/python -m benchmarks.wheels [WHEEL...]
The bomb part runs any checkout's master (ARMWHEELS_CHECKOUT, default this one), so the
same figures can be taken before and after a change; it only uses what every version has.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOOD = "demo-1.0-cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64.whl"
MIB = 1024 * 1024


def verify(paths: list[Path]) -> None:
    from common.wheels import read_contents

    for path in paths:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
        inflated = sum(info.file_size for info in infos)
        started = time.perf_counter()
        read_contents(path)
        took = time.perf_counter() - started
        print(
            f"verify {path.name}: {path.stat().st_size / 1e6:.1f} MB, {len(infos)} entries, "
            f"{inflated / 1e6:.1f} MB inflated: {took:.2f} s ({inflated / 1e6 / took:.0f} MB/s)"
        )


def make_bomb(path: Path, inflated: int = 1024 * MIB) -> None:
    from tests.wheels import bomb_wheel

    bomb_wheel(path, GOOD, inflated)


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def upload_child(bomb: Path, data_dir: Path) -> None:
    """In a fresh process: a master app with one building job; post the bomb as its
    result. Prints JSON figures."""
    from fastapi.testclient import TestClient

    from common.config import load_settings
    from common.db import make_engine, make_sessionmaker, transaction, upgrade
    from common.states import TokenRole
    from master.auth import create_token
    from master.web.app import create_app
    from tests.seed import add_release

    settings = load_settings(
        None,
        database={"url": f"sqlite:///{data_dir / 'db.sqlite'}"},
        master={"data_dir": data_dir / "data"},
    )
    engine = make_engine(settings.database.url)
    upgrade(engine)
    factory = make_sessionmaker(engine)
    with transaction(factory) as session:
        _, _, [job] = add_release(session, settings)
        token = create_token(session, "b1", TokenRole.BUILDER)
        job_id = job.id
    auth = {"Authorization": f"Bearer {token}"}
    body = bomb.read_bytes()
    with TestClient(create_app(settings, factory)) as client:
        client.post(
            "/api/v1/builders/register",
            headers=auth,
            json={"arch": "aarch64", "backend": "docker", "python_tags": ["cp311"]},
        ).raise_for_status()
        client.post(f"/api/v1/jobs/{job_id}/claim", headers=auth).raise_for_status()
        before = _rss_mb()
        started = time.perf_counter()
        answer = client.post(
            f"/api/v1/jobs/{job_id}/result",
            headers=auth,
            data={
                "outcome": "built",
                "wheel_sha256": hashlib.sha256(body).hexdigest(),
            },
            files={"log": ("build.log", b"log\n"), "wheel": (GOOD, body)},
        )
        took = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "status": answer.status_code,
                "answer": answer.text[:200],
                "seconds": round(took, 2),
                "rss_before_mb": round(before),
                "peak_mb": round(peak),
            }
        )
    )


def bomb_upload(checkout: Path) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        bomb = Path(scratch) / GOOD
        make_bomb(bomb)
        print(f"bomb: {bomb.stat().st_size / MIB:.2f} MiB inflating to 1024 MiB")
        env = {**os.environ, "PYTHONPATH": f"{checkout}{os.pathsep}{ROOT}"}
        # This file runs as a script so that the checkout's packages come first.
        done = subprocess.run(
            [sys.executable, __file__, "--child", str(bomb), scratch],
            env=env,
            cwd=checkout,
            capture_output=True,
            text=True,
            check=False,
        )
        figures = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr
        print(f"bomb upload to the master of {checkout}: {figures}")


def main(argv: list[str]) -> None:
    if argv[:1] == ["--child"]:
        upload_child(Path(argv[1]), Path(argv[2]))
        return
    verify([Path(arg) for arg in argv])
    bomb_upload(Path(os.environ.get("ARMWHEELS_CHECKOUT", ROOT)))


if __name__ == "__main__":
    main(sys.argv[1:])

"""The fault suite: a real farm (its own redis-server and PostgreSQL cluster, a master
and two native builders as processes, each builder behind a proxy) takes one fault after
another while its jobs build: kill -9 of a builder mid-build and mid-upload and of the
master mid-upload and mid-static-index write, Redis flushed and restarted, PostgreSQL
restarted mid-dispatch, the builder-master link stalled and dropped, two builders
claiming one job at once, the master's data disk and the builders' work disk full. After
each, every job of that fault ended as in an undisturbed run, no wheel was published
twice or in part, and the database, the files and the static index agree
(`armwheels fsck`; tests/faults/scenarios.py).

Written for an x86_64 host running as root (the native backend's sandbox), as CI is.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.faults.check import format_table, fsck_findings, problems
from tests.faults.farm import running_farm
from tests.faults.scenarios import run_scenarios
from tests.test_native_backend import ARCH, IS_ROOT

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(ARCH != "x86_64", reason="written for an x86_64 host"),
    pytest.mark.skipif(not IS_ROOT, reason="the native backend runs only as root"),
    pytest.mark.skipif(
        not (shutil.which("redis-server") and shutil.which("initdb")),
        reason="needs redis-server and PostgreSQL's initdb",
    ),
]


def test_no_fault_loses_a_job_or_publishes_a_wheel_twice_or_in_part(tmp_path: Path) -> None:
    with running_farm(tmp_path) as farm:
        results = run_scenarios(farm)
        assert farm.factory is not None
        whole_farm = problems(fsck_findings(farm.factory, farm.data_dir))
    table = format_table(results)
    print(f"\n{table}")
    assert [r for r in results if not r.survived and not r.skipped] == [], table
    assert whole_farm == []

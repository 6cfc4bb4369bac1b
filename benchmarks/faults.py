"""The fault suite's scenarios (tests/faults), run once, printed as the fault table:
fault, times injected, survived, jobs lost, duplicate or partial wheels; then the whole
farm's `armwheels fsck` (tests/faults/check.fsck_findings) and the time the run took.

Usage: .venv/bin/python -m benchmarks.faults
Needs what tests/faults/test_faults.py needs: an x86_64 host, root, redis-server and
PostgreSQL's initdb (each run starts its own), and mount for the disk faults.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tests.faults.check import COLUMNS, fsck_findings, problems, table_rows
from tests.faults.farm import running_farm
from tests.faults.scenarios import run_scenarios


def main() -> int:
    console = Console()
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="armwheels-faults-") as folder,
        running_farm(Path(folder)) as farm,
    ):
        results = run_scenarios(farm)
        assert farm.factory is not None
        whole_farm = problems(fsck_findings(farm.factory, farm.data_dir))
    table = Table(title="Faults injected with work in flight")
    for column in COLUMNS:
        table.add_column(column)
    for row in table_rows(results):
        table.add_row(*row)
    console.print(table)
    for result in results:
        for problem in result.problems:
            console.print(f"{result.fault}: {problem}")
    agree = "database, files, hashes and static index agree"
    console.print(f"whole farm check: {'; '.join(whole_farm) or agree}")
    console.print(f"{time.monotonic() - started:.0f} s")
    survived = all(r.survived or r.skipped for r in results) and not whole_farm
    return 0 if survived else 1


if __name__ == "__main__":
    sys.exit(main())

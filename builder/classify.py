"""Maps how a build ended (script exit code, log text) to a failure class and a summary."""

from __future__ import annotations

import re

from common.states import FailureReason

EXIT_CODES: dict[int, tuple[FailureReason, str]] = {
    10: (FailureReason.NO_INTERPRETER, "the build image has no interpreter for this tag"),
    11: (FailureReason.COMPILE_ERROR, "building the wheel failed"),
    12: (FailureReason.PURE_PYTHON, "the build produced a pure-Python wheel, not an ARM one"),
    13: (FailureReason.AUDITWHEEL_REJECTED, "auditwheel could not repair the wheel"),
    14: (FailureReason.BUILDER_ERROR, "the build environment is broken"),
    15: (FailureReason.SMOKE_TEST_FAILED, "the repaired wheel did not install or import"),
}

_MISSING_HEADER = re.compile(rb"fatal error: ([\w./+-]+\.h): No such file or directory")
_MISSING_LIBRARY = re.compile(rb"cannot find -l([\w.+-]+)")


def classify(exit_code: int, log_tail: bytes) -> tuple[FailureReason, str]:
    reason, summary = EXIT_CODES.get(
        exit_code, (FailureReason.BUILDER_ERROR, f"build script exited with {exit_code}")
    )
    if reason is FailureReason.COMPILE_ERROR:
        if match := _MISSING_HEADER.search(log_tail):
            summary = f"missing header {match.group(1).decode()}"
        elif match := _MISSING_LIBRARY.search(log_tail):
            summary = f"missing library lib{match.group(1).decode()}"
    return reason, summary

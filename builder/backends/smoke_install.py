"""The smoke test's install step for container builds, run on the builder's host.

The repaired wheel has passed the master's own verification by then (no name leaves its
root, no links, RECORD complete), so unpacking it is handling data: the builder's pip
does it natively, for the target (its interpreter, ABI and platform tags), into a folder
the target's container then only imports from. Under QEMU the same pip run cost 5-10 s
of every job; here it takes under a second. Nothing of the wheel runs on the host.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import BinaryIO

from builder.backends import note
from builder.wheelhouse import isolated_pip_environment, run_logged, target_arguments

# pip unpacking one wheel and its requirements from a local folder.
INSTALL_TIMEOUT = 300


def install_for_import(
    wheel: Path,
    dest: Path,
    python_tag: str,
    platforms: list[str],
    links: Path | None,
    log: BinaryIO,
) -> bool:
    """Unpack `wheel` into `dest` for the target: with its runtime requirements from the
    wheel folder `links` when given (an extension importing numpy needs numpy), else or
    when they do not all install, alone. False when the wheel itself does not install."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-input",
        "--no-cache-dir",
        "--no-index",
        "--quiet",
        "--only-binary=:all:",
        "--target",
        str(dest),
        *target_arguments(python_tag, platforms),
    ]
    # The host's pip configuration (its indexes, its options) has no say here.
    env = isolated_pip_environment()
    tries = [["--no-deps"]]
    if links is not None:
        tries.insert(0, ["--find-links", str(links)])
    for options in tries:
        code = run_logged([*command, *options, str(wheel)], log, env, INSTALL_TIMEOUT)
        if code is None:
            note(log, f"smoke test: installing the wheel took over {INSTALL_TIMEOUT} s")
            return False
        if code == 0:
            alone = options == ["--no-deps"]
            note(log, f"smoke test: installed {'alone' if alone else 'with its requirements'}")
            return True
    note(log, "smoke test: the wheel does not install for the target")
    return False

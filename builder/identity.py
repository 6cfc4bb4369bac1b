"""Who a builder is on its host: a name for people, an instance id for what it leaves.

Several builders may share one Docker host (two farms started by `armwheels up`, or two
builders of one farm). Each marks its build containers with its own instance id and, at
start-up, removes only containers marked with that id: what its own previous run left.
The id is kept in a slot of the builder's work directory, locked while the builder runs,
so two builders sharing a work directory get two ids, and a slot (with its leftovers) is
taken over only once the builder that held it is gone.
"""

from __future__ import annotations

import fcntl
import platform
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

# Builders of one target that may share a work directory at once.
SLOTS = 64


class NoIdentity(RuntimeError):
    """Every slot of the work directory is held by a running builder."""


@dataclass
class BuilderIdentity:
    """`name` is shown to people (logs, container labels, the Celery hostname);
    `instance` alone decides which containers are this builder's."""

    name: str
    instance: str
    _lock: IO[str] | None = field(default=None, repr=False)

    def release(self) -> None:
        """Let another builder take this slot (the process ending does it too)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def default_name(target: str, instance: str) -> str:
    """Unique per host and work directory, and the same across restarts of one builder."""
    return f"{platform.node()}-{target}-{instance[:8]}"


def take_identity(work_dir: Path, target: str, name: str = "") -> BuilderIdentity:
    """The first free slot of `work_dir` for `target` (a target named after its arch keeps
    the files its arch had), locked for this process's life, with its instance id (made on
    first use); `name` when given, else default_name()."""
    folder = work_dir / "identity"
    folder.mkdir(parents=True, exist_ok=True)
    for slot in range(SLOTS):
        handle = (folder / f"{target}-{slot}.lock").open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        instance = _instance_id(folder / f"{target}-{slot}.id")
        return BuilderIdentity(name or default_name(target, instance), instance, handle)
    raise NoIdentity(
        f"{SLOTS} {target} builders already run with the work directory {work_dir};"
        " give this one a builder.work_dir of its own"
    )


def _instance_id(path: Path) -> str:
    """The slot's id; only its lock holder writes it, so making it cannot race."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        text = ""
    if len(text) == 32 and all(c in "0123456789abcdef" for c in text):
        return text
    instance = uuid.uuid4().hex
    partial = path.with_name(path.name + ".new")
    partial.write_text(instance + "\n")
    partial.replace(path)
    return instance

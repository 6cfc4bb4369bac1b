"""A cap on the size of a build's work directory, for both backends.

Neither a bind mount nor a plain directory on a board can be given a quota without
root-only filesystem features, so the builder measures the tree itself while the build
runs and kills the build when it passes the cap: a hostile or runaway sdist cannot fill
the builder's disk and take the other jobs down with it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)

CHECK_SECONDS = 2.0


def tree_size(root: Path) -> int:
    """Bytes allocated under root (hard links once), without following symlinks."""
    total = 0
    seen: set[tuple[int, int]] = set()
    stack = [str(root)]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            try:
                status = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
            key = (status.st_dev, status.st_ino)
            if status.st_nlink > 1:
                if key in seen:
                    continue
                seen.add(key)
            # Blocks, not st_size: a sparse file of 1 TB costs nothing, and must not count.
            total += status.st_blocks * 512
    return total


class WorkdirGuard:
    """Runs `kill` once when the tree under `root` grows past `limit` bytes."""

    def __init__(
        self, root: Path, limit: int, kill: Callable[[], None], job_id: int | None = None
    ) -> None:
        self.root = root
        self.limit = limit
        self.kill = kill
        self.job_id = job_id
        self.exceeded = False
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="workdir-guard", daemon=True)

    def __enter__(self) -> WorkdirGuard:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _watch(self) -> None:
        while not self._stop.wait(CHECK_SECONDS):
            size = tree_size(self.root)
            self.peak = max(self.peak, size)
            if size > self.limit:
                self.exceeded = True
                log.warning(
                    "build killed: work directory over its limit",
                    extra={"job_id": self.job_id, "bytes": size, "limit": self.limit},
                )
                self.kill()
                return

"""The Docker engine as the builder sees it: what it raises when it fails, and a wait
that tells a container's own time limit apart from such a failure.

The engine answers /containers/{id}/wait's headers at once, so a wait's timeout usually
strikes while the body is read; requests reports that as a ConnectionError wrapping
urllib3's ReadTimeoutError, not as a ReadTimeout. Read as an engine failure it would turn
a build past its time limit into the farm's fault.
"""

from __future__ import annotations

import docker.errors
import requests.exceptions
import urllib3.exceptions
from docker.models.containers import Container

# What the engine, or the builder's connection to it, raises when it fails.
ENGINE_ERRORS = (docker.errors.DockerException, requests.exceptions.ConnectionError)


def _timed_out(exc: requests.exceptions.RequestException) -> bool:
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return True
    return any(isinstance(arg, urllib3.exceptions.ReadTimeoutError) for arg in exc.args)


def wait_for_exit(container: Container, timeout: float) -> int | None:
    """The container's exit code, or None when it still runs after `timeout` seconds.
    An engine failure raises one of ENGINE_ERRORS."""
    try:
        status = container.wait(timeout=timeout)
    except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError) as exc:
        if _timed_out(exc):
            return None
        raise
    return int(status.get("StatusCode", 1))

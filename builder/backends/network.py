"""What a build may reach, the same for every backend: nothing by default, its build
dependencies from the builder's wheelhouse in rounds, and for a recipe with `egress` the
outside through the builder's filtering proxy (builder/egress.py).

A build starts offline (PIP_NO_INDEX): what a build backend asks for only at build time
(setup_requires, get_requires_for_build_wheel) makes pip say "No matching distribution";
the builder then fetches that wheel itself, the same safe way it filled the wheelhouse,
and builds again, a bounded number of rounds within the one time limit.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from builder.backends import StepExit, log_offset, log_since, note
from builder.classify import (
    EXIT_BUILD_FAILED,
    missing_requirement,
    offline_failure,
    offline_network_failure,
)
from builder.egress import SOCKET_NAME, EgressProxy, upstream_from_environment
from builder.wheelhouse import Wheelhouse
from common.config import BuilderSettings
from common.job_spec import JobSpec

PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy")
# The in-sandbox forwarder's port on the build's own loopback (build.sh starts it).
EGRESS_PORT = 3128


def wants_egress(spec: JobSpec) -> bool:
    return spec.recipe is not None and spec.recipe.egress


@contextlib.contextmanager
def egress_proxy(
    spec: JobSpec, settings: BuilderSettings, log_sink: BinaryIO
) -> Iterator[EgressProxy | None]:
    """The job's filtering proxy while the build runs (None: the build stays offline)."""
    if not wants_egress(spec):
        yield None
        return
    # The socket's path must stay short (unix sockets: 108 bytes at most).
    folder = Path(tempfile.mkdtemp(prefix="armwheels-egress-"))
    proxy = EgressProxy(
        folder,
        spec.job_id,
        ports=settings.egress_ports,
        refused_hosts=settings.egress_refused_hosts,
        allowed_networks=settings.egress_allowed_networks,
        upstream=upstream_from_environment(settings.pass_env),
        log_sink=log_sink,
    )
    try:
        proxy.start()
        yield proxy
    finally:
        proxy.stop()
        shutil.rmtree(folder, ignore_errors=True)


def network_environment(
    settings: BuilderSettings, socket_folder: str | None, log_sink: BinaryIO, network: str
) -> dict[str, str]:
    """The build's variables for its network: offline (no index) when `socket_folder` is
    None, else the proxy variables of an egress build, `socket_folder` being where the
    build sees the proxy's socket folder (`network`: the sandbox's own, for the log)."""
    if socket_folder is None:
        # pip answers "not found" at once instead of retrying a network it does not have.
        note(log_sink, f"offline build: network {network!r}, no package index")
        return {"PIP_NO_INDEX": "1"}
    url = f"http://127.0.0.1:{EGRESS_PORT}"
    ports = ", ".join(map(str, settings.egress_ports))
    note(log_sink, f"egress build: the outside only, through the builder's proxy (ports {ports})")
    return {
        **dict.fromkeys(PROXY_VARIABLES, url),
        "NO_PROXY": "",
        "no_proxy": "",
        "ARMWHEELS_EGRESS_SOCKET": f"{socket_folder}/{SOCKET_NAME}",
        "ARMWHEELS_EGRESS_PORT": str(EGRESS_PORT),
    }


def without_builder_proxies(env: dict[str, str]) -> dict[str, str]:
    """`env` less the proxy variables passed through from the builder's host."""
    dropped = {*PROXY_VARIABLES, "NO_PROXY", "no_proxy"}
    return {name: value for name, value in env.items() if name not in dropped}


def build_in_rounds(
    run_once: Callable[[float], StepExit],
    start_afresh: Callable[[], None],
    *,
    spec: JobSpec,
    arch: str,
    settings: BuilderSettings,
    wheelhouse: Wheelhouse | None,
    egress: bool,
    platforms: list[str],
    constraints: Path | None,
    log_sink: BinaryIO,
) -> StepExit:
    """Run the build (`run_once(seconds left)`); while an offline build fails for want of
    a requirement the wheelhouse lacks, fetch that wheel and run it again (after
    `start_afresh()`), at most `builder.offline_rounds` more times, all within the build's
    time limit. An egress build fetches what it needs itself: one round."""
    if egress:
        wheelhouse = None
    rounds = 0 if wheelhouse is None else settings.offline_rounds
    deadline = time.monotonic() + settings.build_timeout
    fetched: set[str] = set()
    for round_number in range(rounds + 1):
        start = log_offset(log_sink)
        step = run_once(max(1.0, deadline - time.monotonic()))
        if step.code != EXIT_BUILD_FAILED or wheelhouse is None:
            return step
        written = log_since(log_sink, start)
        requirement = missing_requirement(written)
        if requirement is None:
            if tried := offline_network_failure(written):
                note(log_sink, tried)
            return step
        if requirement in fetched or round_number == rounds:
            why = f"is still missing after {round_number + 1} rounds"
            note(log_sink, offline_failure(requirement, why))
            return step
        if not wheelhouse.fetch_missing(
            requirement, spec.python_tag, platforms, constraints, log_sink
        ):
            note(
                log_sink, offline_failure(requirement, f"has no wheel for {arch} {spec.python_tag}")
            )
            return step
        fetched.add(requirement)
        note(log_sink, f"offline build: round {round_number + 2} with {requirement}")
        start_afresh()
    return step

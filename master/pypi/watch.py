"""What a farm follows when its operator chose nothing: PyPI's changelog where it answers
at start-up, else a small watch list through the Simple API.

One definition for `armwheels up` (which makes the choice and says so in its first log
lines), the master's start-up line and the dashboard's empty state. After start-up the
choice stands: an outage of the changelog is the feed's own backoff's business.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from common.config import UpstreamSettings
from master.pypi.changelog import (
    PROBE_SECONDS,
    ChangelogError,
    TransientChangelogError,
    probe_last_serial,
)

# Watched through the Simple API when the changelog cannot be reached: popular projects
# with compiled code that publish sdists. The farm still builds only what ARM users lack:
# a target PyPI already serves a wheel for is skipped, with the reason.
DEFAULT_WATCH_LIST: tuple[str, ...] = (
    "markupsafe",
    "msgpack",
    "psutil",
    "pyyaml",
    "simplejson",
    "ujson",
    "wrapt",
    "zstandard",
)

# Settings by which an operator chose what to follow: with either, nothing is chosen here.
_CHOSEN_BY_OPERATOR = frozenset({"feed", "projects"})


def is_embedded_default(upstream: UpstreamSettings) -> bool:
    """Neither the feed nor the projects were configured (by a file or the environment):
    the farm chooses what to follow (`choose_upstream`)."""
    return _CHOSEN_BY_OPERATOR.isdisjoint(upstream.model_fields_set)


@dataclass(frozen=True)
class UpstreamChoice:
    """What the farm follows, and why."""

    upstream: UpstreamSettings
    # PyPI's serial at start-up, when the changelog answered.
    serial: int | None
    # Why the changelog is not followed (the probe's error); None when it is.
    fallback: str | None

    def environment(self) -> dict[str, str]:
        """The choice as ARMWHEELS_UPSTREAM__* variables, for the master's process."""
        upstream = self.upstream
        env = {
            "ARMWHEELS_UPSTREAM__FEED": upstream.feed,
            "ARMWHEELS_UPSTREAM__PROJECTS": json.dumps(upstream.projects),
        }
        if upstream.changelog_start is not None:
            env["ARMWHEELS_UPSTREAM__CHANGELOG_START"] = str(upstream.changelog_start)
        return env


def choose_upstream(upstream: UpstreamSettings, timeout: float = PROBE_SECONDS) -> UpstreamChoice:
    """Every project through PyPI's changelog when `changelog_last_serial` answers within
    `timeout` seconds (a new cursor starts at that serial, so what the farm says it
    follows is what it follows), else DEFAULT_WATCH_LIST through the Simple API."""
    try:
        serial = probe_last_serial(upstream.xmlrpc_url, timeout)
    except (ChangelogError, TransientChangelogError) as exc:
        chosen = upstream.model_copy(
            update={"feed": "simple", "projects": list(DEFAULT_WATCH_LIST)}
        )
        return UpstreamChoice(chosen, None, " ".join(str(exc).split()))
    start = upstream.changelog_start if upstream.changelog_start is not None else serial
    chosen = upstream.model_copy(
        update={"feed": "changelog", "projects": "all", "changelog_start": start}
    )
    return UpstreamChoice(chosen, serial, None)


def watching(upstream: UpstreamSettings, serial: int | None = None) -> str:
    """What the farm follows, as a phrase: `serial` is the changelog cursor where there is
    one (else the configured start, else PyPI's serial when the feed first runs)."""
    if upstream.feed == "changelog":
        if serial is None:
            serial = upstream.changelog_start
        since = f"from serial {serial}" if serial is not None else "from PyPI's current serial"
        if upstream.projects == "all":
            return f"every project on PyPI through its changelog, {since}"
        names = ", ".join(upstream.projects) or "none"
        return f"{len(upstream.projects)} projects through PyPI's changelog, {since}: {names}"
    if upstream.projects == "all" or not upstream.projects:
        return "no project (upstream.projects is empty)"
    names = ", ".join(upstream.projects)
    return (
        f"{len(upstream.projects)} projects through the Simple API at {upstream.index_url}: {names}"
    )


def how_to_add(upstream: UpstreamSettings) -> str:
    """How an operator adds a project to what the farm builds."""
    backfill = (
        "`armwheels import NAME` builds the releases a project already has"
        " (the newest; --all-releases for every one)"
    )
    if upstream.feed == "changelog" and upstream.projects == "all":
        return f"new releases of every project are followed already; {backfill}"
    return (
        f"{backfill}; to follow its new releases too, list it in upstream.projects"
        " (in a config file given with --config, see docs/example.toml, or"
        " ARMWHEELS_UPSTREAM__PROJECTS='[\"NAME\", ...]')"
    )

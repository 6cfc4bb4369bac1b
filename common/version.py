"""The armwheels release this code is, for every component that states it (the master's
API, a builder's registration, the command line).

It is read from the installed package's metadata, whose source is `pyproject.toml`, so
the number is written in one place. A source tree used without being installed states
`0+unknown` rather than a number it cannot know.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "armwheels"
UNKNOWN = "0+unknown"


def installed_version(distribution: str = DISTRIBUTION) -> str:
    """The version of `distribution` as installed, UNKNOWN when it is not installed."""
    try:
        return version(distribution)
    except PackageNotFoundError:
        return UNKNOWN


VERSION = installed_version()

"""The `armwheels` command: ties master and builder nodes together for operators."""

from common.version import VERSION as __version__

__all__ = ["__version__"]

"""The `armwheels` command: ties master and builder nodes together for operators."""

__version__ = "0.1.0"

"""Project-name and version handling, delegated to `packaging` so every part agrees."""

from __future__ import annotations

from packaging.utils import InvalidName, canonicalize_name
from packaging.version import InvalidVersion, Version


class BadName(ValueError):
    """An untrusted project name or version that cannot be used."""


def normalize_project(name: str) -> str:
    """PEP 503 normal form of a project name; rejects names PEP 508 does not allow."""
    if not isinstance(name, str) or not name or len(name) > 200:
        raise BadName(f"invalid project name: {name!r}")
    try:
        return str(canonicalize_name(name, validate=True))
    except InvalidName as exc:
        raise BadName(f"invalid project name: {name!r}") from exc


def parse_version(text: str) -> Version:
    """A PEP 440 version, or BadName for anything else."""
    if not isinstance(text, str) or len(text) > 100:
        raise BadName(f"invalid version: {text!r}")
    try:
        return Version(text)
    except InvalidVersion as exc:
        raise BadName(f"invalid version: {text!r}") from exc


def python_version_of_tag(tag: str) -> str:
    """'cp311' -> '3.11', used to test a release's Requires-Python against a target."""
    digits = tag[2:] if tag[:2] in ("cp", "py", "pp") else ""
    if len(digits) < 2 or not digits.isdigit():
        raise BadName(f"invalid python tag: {tag!r}")
    return f"{digits[0]}.{digits[1:]}"

"""The pips of the client matrix (tests/clients.py): one per series since 20.3, each the
newest of its series, Debian's among them, pinned by hash."""

from __future__ import annotations

from packaging.version import Version

from tests.clients import (
    DEBIAN_PIP,
    OLDEST_PIP,
    PIP_VERSIONS,
    PIP_WHEELS,
    newest_pip_per_series,
    pypi_pip_releases,
)


def test_the_pip_list_is_one_release_per_series_from_20_3_with_debian_s() -> None:
    versions = [Version(v) for v in PIP_VERSIONS]
    assert versions == sorted(versions) and versions[0].release[:2] == OLDEST_PIP.release
    series = [v.release[:2] for v in versions]
    assert len(series) == len(set(series))
    assert set(DEBIAN_PIP.values()) <= set(PIP_VERSIONS)


def test_the_pinned_pip_wheels_are_pypi_s_newest_of_each_series() -> None:
    releases = pypi_pip_releases()
    on_pypi = {Version(v).release[:2]: Version(v) for v in newest_pip_per_series(releases)}
    pinned = {Version(v).release[:2]: Version(v) for v in PIP_VERSIONS}
    # Every series up to the newest pinned one, each pinned at its newest patch (a
    # series or a patch released later is for the list to catch up with).
    assert {series for series in on_pypi if series <= max(pinned)} == set(pinned)
    assert all(on_pypi[series] >= version for series, version in pinned.items())
    for version, (filename, sha256) in PIP_WHEELS.items():
        [entry] = [f for f in releases[version] if f["filename"] == filename]
        assert entry["digests"]["sha256"] == sha256

"""Real sdists for the tests: small projects built here, and real ones from PyPI (cached)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import httpx

CACHE = Path(os.environ.get("ARMWHEELS_TEST_CACHE", Path.home() / ".cache" / "armwheels-tests"))
BUILD_SDIST = (
    "import sys\nfrom setuptools import build_meta\nprint(build_meta.build_sdist(sys.argv[1]))\n"
)


def make_sdist(
    workdir: Path,
    dest: Path,
    name: str,
    version: str,
    files: dict[str, str],
    requires_python: str | None = None,
) -> Path:
    """Build a real sdist with setuptools (offline: no build isolation needed here).

    `files` maps paths in the source tree to their text; a `setup.py` among them can
    declare C extensions.
    """
    source = workdir / f"src-{name}-{version}"
    for path, text in files.items():
        (source / path).parent.mkdir(parents=True, exist_ok=True)
        (source / path).write_text(text)
    pyproject = [
        "[build-system]",
        'requires = ["setuptools"]',
        'build-backend = "setuptools.build_meta"',
        "",
        "[project]",
        f'name = "{name}"',
        f'version = "{version}"',
    ]
    if requires_python:
        pyproject.append(f'requires-python = "{requires_python}"')
    (source / "pyproject.toml").write_text("\n".join(pyproject) + "\n")
    dest.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [sys.executable, "-c", BUILD_SDIST, str(dest)],
        cwd=source,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return dest / result.stdout.strip().splitlines()[-1]


def pypi_sdist(project: str, version: str) -> Path:
    """A real sdist from PyPI (Simple API, through the machine's proxy), cached on disk."""
    CACHE.mkdir(parents=True, exist_ok=True)
    for path in CACHE.glob(f"{project}-{version}.*"):
        expected = path.with_name(path.name + ".sha256")
        if (
            path.suffix != ".sha256"
            and expected.exists()
            and hashlib.sha256(path.read_bytes()).hexdigest() == expected.read_text().strip()
        ):
            return path
    page = httpx.get(
        f"https://pypi.org/simple/{project}/",
        headers={"Accept": "application/vnd.pypi.simple.v1+json"},
        timeout=60,
    ).json()
    [entry] = [
        f
        for f in page["files"]
        if f["filename"] in (f"{project}-{version}.tar.gz", f"{project}-{version}.zip")
    ]
    data = httpx.get(entry["url"], timeout=300, follow_redirects=True).content
    digest = hashlib.sha256(data).hexdigest()
    assert digest == entry["hashes"]["sha256"], f"{entry['filename']}: hash mismatch"
    target = CACHE / str(entry["filename"])
    target.write_bytes(data)
    target.with_name(target.name + ".sha256").write_text(digest)
    return target

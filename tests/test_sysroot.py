"""The cross path's sysroot (builder/sysroot.py): the target image's headers, libraries
and sysconfig data copied out without running the image, every link resolving inside
the copy, once per image id, and pruned when the image is gone."""

from __future__ import annotations

import os
from pathlib import Path

import docker
import pytest

from builder.sysroot import COMPLETE, image_key, prune_sysroots, target_sysroot
from common.config import load_settings

pytestmark = [pytest.mark.docker]

LABELS = {"armwheels.test": "sysroot"}


@pytest.fixture(scope="module")
def client() -> docker.DockerClient:
    return docker.from_env(timeout=120)


def test_the_target_image_is_copied_out_with_every_link_inside(
    client: docker.DockerClient, tmp_path: Path
) -> None:
    image = load_settings(None).targets["aarch64"].image
    root = target_sysroot(client, image, tmp_path, LABELS)
    assert root == tmp_path / image_key(client, image)
    assert (root / COMPLETE).is_file()
    assert (root / "usr/include/python3.11/Python.h").is_file()
    assert (root / "usr/include/aarch64-linux-gnu/python3.11/pyconfig.h").is_file()
    assert list((root / "usr/lib/python3.11").glob("_sysconfigdata_*aarch64-linux-gnu.py"))
    assert (root / "usr/lib/aarch64-linux-gnu/crt1.o").is_file()
    assert not (root / "usr/lib/gcc").exists()  # the native compiler's files stay out
    resolved_root = root.resolve()
    links = 0
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            if path.is_symlink():
                links += 1
                target = str(path.readlink())
                assert not target.startswith("/"), f"{path} -> {target}"
                assert path.resolve().is_relative_to(resolved_root), f"{path} -> {target}"
    assert links > 100
    # Nothing of the image ran, and nothing of it is left behind.
    assert client.containers.list(all=True, filters={"label": "armwheels.test=sysroot"}) == []
    # The second call finds it.
    assert target_sysroot(client, image, tmp_path, LABELS) == root

    stale = tmp_path / "0123456789abcdef"
    (stale / "usr").mkdir(parents=True)
    partial = tmp_path / ".fedcba9876543210.42.partial"
    partial.mkdir()
    assert prune_sysroots(client, tmp_path) == ["0123456789abcdef"]
    assert not stale.exists() and root.is_dir() and partial.is_dir()

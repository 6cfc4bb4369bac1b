"""Hostile wheels posted as a builder's result to a real master (SQLite and PostgreSQL):
each is refused with 400 and its reason, the job fails upload-rejected with the builder's
log kept, nothing is served, and the build page and /metrics show the refusal."""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from common.models import OutputFile
from common.states import FailureReason, JobState
from tests.hostile_wheels import build, listed
from tests.test_api import GOOD, Farm, farm  # noqa: F401  (farm: the fixture)
from tests.wheels import (
    bomb_wheel,
    dist_info_of,
    elf_header,
    record_of,
    wheel_files,
    zip_entries,
)

MIB = 1024 * 1024
BOMB_BYTES = 1024 * MIB


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel valid in every other way (its RECORD hashes the 1 GiB it holds) that
    inflates ~1 MiB to 1 GiB: written streaming, never held in memory."""
    path = bomb_wheel(tmp_path_factory.mktemp("bomb") / GOOD, GOOD, BOMB_BYTES)
    assert path.stat().st_size < 2 * MIB
    return path


def _other_project() -> bytes:
    """A wheel named for the job whose METADATA (and so its served .metadata) says it
    is requests."""
    files = wheel_files(GOOD)
    dist_info = dist_info_of(GOOD)
    files[f"{dist_info}/METADATA"] = b"Metadata-Version: 2.1\nName: requests\nVersion: 1.0\n"
    return zip_entries([*files.items(), (f"{dist_info}/RECORD", record_of(files, dist_info))])


def _symlink() -> bytes:
    return listed("demo/passwd", b"/etc/passwd", stat.S_IFLNK | 0o777)


UPLOADS: dict[str, tuple[str, str]] = {
    # name: (check, words of the reason)
    "other-project": ("metadata", "METADATA Name is 'requests', the job is for demo"),
    "symlink": ("file-mode", "entry 'demo/passwd' is a symbolic link"),
    "bomb": ("limits", "demo/zeros.bin inflates"),
}


@pytest.mark.parametrize("kind", list(UPLOADS))
def test_a_hostile_wheel_is_refused_and_nothing_is_served(
    farm: Farm,  # noqa: F811
    request: pytest.FixtureRequest,
    kind: str,
) -> None:
    makers: dict[str, Callable[[], bytes]] = {
        "other-project": _other_project,
        "symlink": _symlink,
        "bomb": lambda: request.getfixturevalue("bomb").read_bytes(),
    }
    check, words = UPLOADS[kind]
    answer = farm.upload(body=makers[kind]())
    assert answer.status_code == 400, answer.text
    assert words in answer.json()["error"]

    job = farm.job()
    assert job.state == JobState.FAILED
    assert job.failure_reason == FailureReason.UPLOAD_REJECTED
    assert words in (job.summary or "")
    assert job.rejected_by == check
    assert "compiling" in farm.client.get(f"/logs/{farm.job_id}").text  # the log is kept
    with farm.factory() as session:
        assert session.scalar(select(OutputFile)) is None
    data_dir = farm.settings.master.data_dir
    assert [p for p in (data_dir / "files").rglob("*") if p.is_file()] == []
    assert list((data_dir / "tmp").glob("*.part")) == []
    assert farm.client.get(f"/files/demo/{GOOD}").status_code == 404
    assert farm.client.get(f"/files/demo/{GOOD}.metadata").status_code == 404
    simple = farm.client.get("/simple/demo/")
    assert GOOD not in simple.text

    page = farm.client.get(f"/builds/{farm.job_id}")
    assert page.status_code == 200
    assert f"refused by the {check} check" in page.text
    assert "upload-rejected" in page.text
    metrics = farm.client.get("/metrics").text
    rejections = {
        sample.labels["check"]: sample.value
        for family in text_string_to_metric_families(metrics)
        if family.name == "armwheels_upload_rejections"
        for sample in family.samples
    }
    assert rejections[check] == 1
    assert sum(rejections.values()) == 1


def test_a_wheel_named_for_the_job_but_built_for_another_arch_is_refused(
    farm: Farm,  # noqa: F811
) -> None:
    body = build(filename=GOOD, extra={"demo/_x.so": elf_header("aarch64", machine=62)})
    answer = farm.upload(body=body)
    assert answer.status_code == 400, answer.text
    assert "demo/_x.so is not 64-bit little-endian AArch64 code" in answer.json()["error"]
    assert farm.job().rejected_by == "elf"


NEWER = "demo-1.0-cp311-cp311-manylinux_2_28_aarch64.whl"
PROMISELESS = "demo-1.0-cp311-cp311-linux_aarch64.whl"


@pytest.mark.parametrize(
    ("filename", "newer_policy", "refusal"),
    [
        (NEWER, "publish", None),
        (NEWER, "fail", "needs a newer system than manylinux2014_aarch64, and targets.aarch64"),
        (PROMISELESS, "publish", "promises no glibc: not a manylinux wheel"),
    ],
)
def test_a_wheel_of_a_newer_policy_is_published_or_refused_as_its_target_says(
    farm: Farm,  # noqa: F811
    filename: str,
    newer_policy: str,
    refusal: str | None,
) -> None:
    """The master applies the target's newer_policy to every upload, whatever builder
    sent it; a `linux_*` wheel never enters the manylinux index."""
    farm.settings.targets["aarch64"].newer_policy = newer_policy  # type: ignore[assignment]
    answer = farm.upload(filename)
    if refusal is None:
        assert answer.status_code == 200, answer.text
        assert filename in farm.client.get("/simple/demo/").text
        return
    assert answer.status_code == 400, answer.text
    assert refusal in answer.json()["error"]
    assert farm.job().rejected_by == "policy"
    assert filename not in farm.client.get("/simple/demo/").text

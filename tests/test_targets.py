"""Several named targets of one arch: configuration, jobs, queues and who may claim what."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from common.config import ConfigError, Settings, load_settings
from common.db import make_engine, make_sessionmaker, transaction, upgrade
from common.messages import configured_queues, queue_name
from common.models import Builder, BuildJob
from common.states import JobState, TokenRole
from master.auth import create_token
from master.builds.rebuild import request_rebuild
from master.web.app import create_app
from tests.seed import add_release

TWO_AARCH64 = {
    "aarch64": {"image": "img-2014", "policy": "manylinux2014_aarch64"},
    "aarch64-2-28": {
        "arch": "aarch64",
        "image": "img-2-28",
        "policy": "manylinux_2_28_aarch64",
        "python_tags": ["cp311", "cp312"],
        "newer_policy": "fail",
    },
    "armv7l": {"image": "img-armhf", "policy": "manylinux_2_31_armv7l", "enabled": False},
}


@pytest.fixture
def two_targets(database_url: str, tmp_path: Path) -> Settings:
    return load_settings(
        None,
        database={"url": database_url},
        master={"data_dir": tmp_path / "data"},
        targets=TWO_AARCH64,
    )


@pytest.fixture
def two_factory(two_targets: Settings) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(two_targets.database.url)
    upgrade(engine)
    yield make_sessionmaker(engine)
    engine.dispose()


def test_a_target_named_after_its_arch_needs_no_arch(two_targets: Settings) -> None:
    assert two_targets.targets["aarch64"].arch == "aarch64"
    assert two_targets.targets_of("aarch64") == ["aarch64", "aarch64-2-28"]
    assert two_targets.targets_of("armv7l") == []
    assert two_targets.targets_of("armv7l", enabled=False) == ["armv7l"]
    assert two_targets.newer_policy("aarch64-2-28") == "fail"
    assert two_targets.newer_policy("aarch64") == "publish"
    assert two_targets.newer_policy("gone") == "fail"


def test_a_builder_builds_exactly_one_target(two_targets: Settings) -> None:
    assert two_targets.builder_target(None, "aarch64-2-28") == "aarch64-2-28"
    assert two_targets.builder_target("aarch64", "aarch64") == "aarch64"
    with pytest.raises(ConfigError, match=r"several targets \(aarch64, aarch64-2-28\)"):
        two_targets.builder_target("aarch64", None)
    with pytest.raises(ConfigError, match="no enabled target for armv7l"):
        two_targets.builder_target("armv7l", None)
    with pytest.raises(ConfigError, match="no enabled target armv7l"):
        two_targets.builder_target(None, "armv7l")
    with pytest.raises(ConfigError, match="is for aarch64, not armv7l"):
        two_targets.builder_target("armv7l", "aarch64-2-28")
    with pytest.raises(ConfigError, match="no enabled target nope"):
        two_targets.builder_target(None, "nope")


def test_each_target_has_its_queues(two_targets: Settings) -> None:
    assert configured_queues(two_targets) == [
        "build.aarch64.cp311",
        "build.aarch64-2-28.cp311",
        "build.aarch64-2-28.cp312",
        "build.armv7l.cp311",
    ]
    assert queue_name("aarch64-2-28", "cp312") == "build.aarch64-2-28.cp312"


def test_every_release_gets_a_job_per_target_and_tag(
    two_targets: Settings, two_factory: sessionmaker[Session]
) -> None:
    with transaction(two_factory) as session:
        _, release, jobs = add_release(session, two_targets)
        release_id = release.id
    got = sorted((j.target, j.arch, j.python_tag, j.policy) for j in jobs)
    assert got == [
        ("aarch64", "aarch64", "cp311", "manylinux2014_aarch64"),
        ("aarch64-2-28", "aarch64", "cp311", "manylinux_2_28_aarch64"),
        ("aarch64-2-28", "aarch64", "cp312", "manylinux_2_28_aarch64"),
    ]
    # A rebuild for one target touches only its jobs; for an arch, all of the arch's.
    with transaction(two_factory) as session:
        for job in session.scalars(select(BuildJob)):
            job.state = JobState.FAILED
    with transaction(two_factory) as session:
        one = request_rebuild(
            session, two_targets, "demo", "1.0", requested_by="op", target="aarch64-2-28"
        )
        assert sorted(j.python_tag for j in one.created) == ["cp311", "cp312"]
        assert {j.target for j in one.created} == {"aarch64-2-28"}
    with transaction(two_factory) as session:
        both = request_rebuild(
            session, two_targets, "demo", "1.0", requested_by="op", arch="aarch64"
        )
        waiting = session.scalars(
            select(BuildJob.target).where(
                BuildJob.release_id == release_id, BuildJob.state == JobState.PENDING
            )
        ).all()
        assert sorted(waiting) == ["aarch64", "aarch64-2-28", "aarch64-2-28"]
        # The target just rebuilt already waits: only the other one gets a new job.
        assert [j.target for j in both.created] == ["aarch64"]
        assert sorted(j.python_tag for j in both.existing) == ["cp311", "cp312"]


def test_a_builder_claims_only_its_targets_jobs(
    two_targets: Settings, two_factory: sessionmaker[Session]
) -> None:
    with transaction(two_factory) as session:
        _, _, jobs = add_release(session, two_targets)
        by_target = {(j.target, j.python_tag): j.id for j in jobs}
        secret = create_token(session, "b1", TokenRole.BUILDER)
    auth = {"Authorization": f"Bearer {secret}"}
    with TestClient(create_app(two_targets, two_factory)) as client:
        wrong_arch = client.post(
            "/api/v1/builders/register",
            headers=auth,
            json={"arch": "armv7l", "target": "aarch64-2-28", "backend": "docker"},
        )
        assert wrong_arch.status_code == 400
        assert wrong_arch.json() == {
            "error": "target aarch64-2-28 is for aarch64, the builder builds armv7l"
        }
        registered = client.post(
            "/api/v1/builders/register",
            headers=auth,
            json={
                "arch": "aarch64",
                "target": "aarch64-2-28",
                "backend": "docker",
                "python_tags": ["cp311", "cp312"],
            },
        )
        assert registered.status_code == 200, registered.text
        other = by_target[("aarch64", "cp311")]
        refused = client.post(f"/api/v1/jobs/{other}/claim", headers=auth)
        assert refused.status_code == 409
        assert refused.json()["error"] == (
            f"job {other} is for target aarch64, builder builds aarch64-2-28"
        )
        mine = by_target[("aarch64-2-28", "cp312")]
        claimed = client.post(f"/api/v1/jobs/{mine}/claim", headers=auth)
        assert claimed.status_code == 200, claimed.text
        spec = claimed.json()
        assert (spec["target"], spec["arch"], spec["policy"], spec["newer_policy"]) == (
            "aarch64-2-28",
            "aarch64",
            "manylinux_2_28_aarch64",
            "fail",
        )
        # A registration without a target is of the target named after its arch.
        plain = client.post(
            "/api/v1/builders/register",
            headers=auth,
            json={"arch": "aarch64", "backend": "docker"},
        )
        assert plain.status_code == 200
    with two_factory() as session:
        builder = session.scalar(select(Builder))
        assert builder is not None and builder.target == "aarch64"


ARMEL = {"arch": "armv7l", "kind": "distribution", "float_abi": "soft", "image": "img-armel"}


def test_a_distribution_targets_platform_tag_names_its_machines() -> None:
    settings = load_settings(
        None,
        targets={
            "aarch64": {"image": "i", "policy": "manylinux2014_aarch64"},
            "debian-bookworm-armel": ARMEL,
            "debian-bookworm-armhf": {"arch": "armv7l", "kind": "distribution", "image": "h"},
            "raspios-bookworm-armhf": {
                "arch": "armv7l",
                "kind": "distribution",
                "image": "r",
                "machines": ["armv7l", "armv6l", "armv8l"],
            },
            "debian-bookworm-arm64": {"arch": "aarch64", "kind": "distribution", "image": "a"},
        },
    )
    policies = {name: t.policy for name, t in settings.targets.items()}
    assert policies == {
        "aarch64": "manylinux2014_aarch64",
        "debian-bookworm-armel": "linux_armv5tel.linux_armv6l.linux_armv7l.linux_armv8l",
        "debian-bookworm-armhf": "linux_armv7l.linux_armv8l",
        "raspios-bookworm-armhf": "linux_armv6l.linux_armv7l.linux_armv8l",
        "debian-bookworm-arm64": "linux_aarch64",
    }


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        (
            {"armel": {**ARMEL, "kind": "manylinux", "policy": "manylinux_2_31_armv7l"}},
            "hard-float",
        ),
        ({"a": {**ARMEL, "arch": "aarch64"}}, "float_abi is for 32-bit ARM"),
        ({"a": {**ARMEL, "machines": ["aarch64"]}}, "are not armv7l"),
        ({"a": {**ARMEL, "policy": "linux_armv7l"}}, "policy is its machines' platform tag"),
        ({"simple": ARMEL}, "is a path of the master's own"),
        ({"a": ARMEL, "b": {**ARMEL, "image": "other"}}, "would publish wheels of the same names"),
        ({"a": {"arch": "aarch64", "image": "i"}}, "policy is required"),
        ({"a": {"arch": "aarch64", "image": "i", "policy": "linux_aarch64"}}, "not a manylinux"),
        (
            {
                "a": {
                    "arch": "aarch64",
                    "image": "i",
                    "policy": "manylinux2014_aarch64",
                    "machines": ["aarch64"],
                }
            },
            "machines are for",
        ),
    ],
)
def test_bad_distribution_targets_are_refused(targets: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_settings(None, targets=targets)


FALLBACK = {
    "aarch64": {"image": "img-2014", "policy": "manylinux2014_aarch64", "newer_policy": "fail"},
    "aarch64-2-28": {
        "arch": "aarch64",
        "image": "img-2-28",
        "policy": "manylinux_2_28_aarch64",
        "fallback_for": "aarch64",
    },
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"aarch64": {**FALLBACK["aarch64"], "newer_policy": "publish"}}, "set its newer_policy"),
        ({"aarch64-2-28": {**FALLBACK["aarch64-2-28"], "fallback_for": "x"}}, "is not another"),
        (
            {"aarch64-2-28": {**FALLBACK["aarch64-2-28"], "fallback_for": "aarch64-2-28"}},
            "is not another",
        ),
    ],
)
def test_a_fallback_needs_a_primary_that_fails_newer_wheels(
    change: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(None, targets={**FALLBACK, **change})


@pytest.mark.parametrize(
    ("reason", "falls_back"),
    [("auditwheel-rejected", True), ("compile-error", False)],
)
def test_a_wheel_needing_a_newer_glibc_is_built_again_by_the_fallback_target(
    database_url: str, tmp_path: Path, reason: str, falls_back: bool
) -> None:
    """Only the primary target is planned; its job failing for a too-new glibc hands the
    release to the manylinux_2_28 target, once; any other failure does not."""
    settings = load_settings(
        None,
        database={"url": database_url},
        master={"data_dir": tmp_path / "data"},
        targets=FALLBACK,
    )
    assert list(settings.planned_targets()) == ["aarch64"]
    assert list(settings.fallbacks_of("aarch64")) == ["aarch64-2-28"]
    engine = make_engine(database_url)
    upgrade(engine)
    factory = make_sessionmaker(engine)
    with transaction(factory) as session:
        _, _, [job] = add_release(session, settings)
        secret = create_token(session, "b1", TokenRole.BUILDER)
    auth = {"Authorization": f"Bearer {secret}"}
    summary = "the wheel needs manylinux_2_34_aarch64 (libc.so.6 GLIBC_2.34)"
    with TestClient(create_app(settings, factory)) as client:
        registration = {"arch": "aarch64", "backend": "docker", "python_tags": ["cp311"]}
        assert client.post("/api/v1/builders/register", headers=auth, json=registration).is_success
        assert client.post(f"/api/v1/jobs/{job.id}/claim", headers=auth).is_success
        failed = client.post(
            f"/api/v1/jobs/{job.id}/result",
            headers=auth,
            data={"outcome": "failed", "reason": reason, "summary": summary},
            files={"log": ("build.log", b"auditwheel: cannot repair\n")},
        )
        assert failed.status_code == 200, failed.text
    with factory() as session:
        rows = session.execute(
            select(BuildJob.target, BuildJob.state, BuildJob.policy).order_by(BuildJob.id)
        ).all()
    expected = [("aarch64", JobState.FAILED, "manylinux2014_aarch64")]
    if falls_back:
        expected.append(("aarch64-2-28", JobState.PENDING, "manylinux_2_28_aarch64"))
    assert [tuple(row) for row in rows] == expected
    engine.dispose()

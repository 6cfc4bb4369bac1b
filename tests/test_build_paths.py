"""The master's record of how each job was built (master/builds/build_paths.py): the path
a builder reports is kept per job and shown (build page, status, /metrics); a project
whose cross build fell back while emulation built it is sent to emulation next time,
until an operator resets it; a recipe's `emulate = true` does the same from the start."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from common.config import Settings
from common.db import transaction
from common.models import AuditEvent, BuildJob, Project
from master import operations
from master.builds.build_paths import RECIPE_SAYS_EMULATE
from master.web.status import collect
from tests.api_farm import ApiFarm, api_farm, settings_with_recipes
from tests.conftest import make_wheel
from tests.seed import add_release


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return settings_with_recipes(
        database_url, tmp_path, "[recipes.helper-runner]\nemulate = true\n"
    )


@pytest.fixture
def farm(settings: Settings, factory: sessionmaker[Session]) -> Iterator[ApiFarm]:
    with api_farm(settings, factory, "x86-builder", backend="cross") as made:
        yield made


def _job(farm: ApiFarm, settings: Settings, project: str, version: str) -> int:
    with transaction(farm.factory) as session:
        _, _, [job] = add_release(session, settings, project, version)
        return job.id


def _report(farm: ApiFarm, job_id: int, project: str, version: str, path: str, built: bool) -> None:
    data = {"outcome": "built" if built else "failed", "summary": "x", "build_path": path}
    files: dict[str, tuple[str, bytes, str]] = {"log": ("build.log", b"log\n", "text/plain")}
    if built:
        name = f"{project}-{version}-cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64.whl"
        wheel = make_wheel(name, modules=(project.replace("-", "_"),))
        data["wheel_sha256"] = hashlib.sha256(wheel).hexdigest()
        files["wheel"] = (name, wheel, "application/octet-stream")
    else:
        data["reason"] = "compile-error"
    answer = farm.client.post(
        f"/api/v1/jobs/{job_id}/result", headers=farm.auth, data=data, files=files
    )
    assert answer.status_code == 200, answer.text


def _claim(farm: ApiFarm, job_id: int) -> dict[str, object]:
    answer = farm.client.post(f"/api/v1/jobs/{job_id}/claim", headers=farm.auth)
    assert answer.status_code == 200, answer.text
    spec: dict[str, object] = answer.json()
    return spec


def test_a_fallback_sends_the_project_to_emulation_until_an_operator_resets_it(
    farm: ApiFarm, settings: Settings
) -> None:
    first = _job(farm, settings, "probed", "1.0")
    assert _claim(farm, first)["emulate_because"] is None
    _report(farm, first, "probed", "1.0", "emulated-after-cross", built=True)
    with farm.factory() as session:
        job = session.get(BuildJob, first)
        assert job is not None and job.build_path == "emulated-after-cross"
        recent = collect(session, settings.master.builder_timeout)["recent"]
        assert recent[0]["build_path"] == "emulated-after-cross"

    page = farm.client.get(f"/builds/{first}")
    assert "emulated-after-cross" in page.text
    metrics = farm.client.get("/metrics").text
    assert 'armwheels_build_paths_total{outcome="built",path="emulated-after-cross"} 1.0' in (
        metrics
    )
    assert 'armwheels_build_paths_total{outcome="built",path="cross"} 0.0' in metrics

    second = _job(farm, settings, "probed", "1.1")
    why = _claim(farm, second)["emulate_because"]
    assert isinstance(why, str) and "probed 1.0 fell back" in why and f"job {first}" in why

    with transaction(farm.factory) as session:
        assert operations.reset_cross(session, "Probed", "cli:ops", "operator") == "probed"
    with farm.factory() as session:
        project = session.scalars(select(Project).where(Project.name == "probed")).one()
        assert project.emulate_because is None
        event = session.scalars(select(AuditEvent).where(AuditEvent.action == "cross-reset")).one()
        assert event.subject == "probed" and event.actor == "cli:ops"
    # The job claimed before the reset keeps its answer; the next one may cross.
    _report(farm, second, "probed", "1.1", "emulated", built=True)
    third = _job(farm, settings, "probed", "1.2")
    assert _claim(farm, third)["emulate_because"] is None

    with transaction(farm.factory) as session, pytest.raises(operations.Refused) as refused:
        operations.reset_cross(session, "probed", "cli:ops", "operator")
    assert refused.value.status == 409
    with transaction(farm.factory) as session, pytest.raises(operations.Refused) as unknown:
        operations.reset_cross(session, "nobody-knows", "cli:ops", "operator")
    assert unknown.value.status == 404


def test_a_fallback_where_emulation_failed_too_teaches_nothing(
    farm: ApiFarm, settings: Settings
) -> None:
    """Both paths failed: the sdist is at fault, not the cross path."""
    first = _job(farm, settings, "broken", "1.0")
    _claim(farm, first)
    _report(farm, first, "broken", "1.0", "emulated-after-cross", built=False)
    with farm.factory() as session:
        job = session.get(BuildJob, first)
        assert job is not None and job.build_path == "emulated-after-cross"
    second = _job(farm, settings, "broken", "1.1")
    assert _claim(farm, second)["emulate_because"] is None


def test_a_recipe_asks_for_emulation_and_the_recipe_on_the_wire_leaves_it_out(
    farm: ApiFarm, settings: Settings
) -> None:
    job = _job(farm, settings, "helper-runner", "2.0")
    spec = _claim(farm, job)
    assert spec["emulate_because"] == RECIPE_SAYS_EMULATE
    # Builders of the previous release refuse a recipe field they do not know.
    recipe = spec["recipe"]
    assert isinstance(recipe, dict) and "emulate" not in recipe

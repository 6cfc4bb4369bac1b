"""System packages the farm adds by itself: the builder's policy (builder/auto_packages.py)
and what the master learns and sends with a project's next jobs. The real build that
installs a package and grafts its library is in tests/test_sdist_matrix.py."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from armwheels.cli import main
from builder.auto_packages import build_with_auto_packages, plan
from builder.backends import BuildOutcome
from builder.classify import diagnose
from common.config import AutoPackagesSettings, Settings
from common.db import transaction
from common.job_spec import JobSpec
from common.models import BuildJob, Project
from common.states import FailureReason
from tests.api_farm import ApiFarm, api_farm, settings_with_recipes
from tests.conftest import make_wheel
from tests.seed import add_release

FFI_LOG = b"c/_cffi_backend.c:15:10: fatal error: ffi.h: No such file or directory\n"
COMPILE_LOG = b"demo.c:3:5: error: 'x' undeclared (first use in this function)\n"


def _failed(log: bytes) -> BuildOutcome:
    diagnosis = diagnose(11, log)
    return BuildOutcome(
        False, reason=diagnosis.reason, summary=diagnosis.summary, diagnosis=diagnosis
    )


# --- the builder's policy ------------------------------------------------------------


def test_a_missing_header_names_the_package_to_add() -> None:
    step = plan(_failed(FFI_LOG), "apt-get", AutoPackagesSettings(), [])
    assert step.add == ["libffi-dev"] and "ffi.h" in step.why
    assert plan(_failed(FFI_LOG), "yum", AutoPackagesSettings(), []).add == ["libffi-devel"]


@pytest.mark.parametrize(
    ("settings", "installed", "why"),
    [
        (AutoPackagesSettings(deny=["libffi-dev"]), [], "libffi-dev is on builder.auto_packages"),
        (AutoPackagesSettings(enabled=False), [], "builder.auto_packages is off"),
        (AutoPackagesSettings(), ["libffi-dev"], "libffi-dev was installed and the build still"),
    ],
)
def test_nothing_is_added_against_the_policy_or_twice(
    settings: AutoPackagesSettings, installed: list[str], why: str
) -> None:
    step = plan(_failed(FFI_LOG), "apt-get", settings, installed)
    assert step.add == [] and why in step.why


def test_other_failures_and_unknown_managers_add_nothing() -> None:
    assert plan(_failed(COMPILE_LOG), "apt-get", AutoPackagesSettings(), []).add == []
    assert plan(_failed(FFI_LOG), None, AutoPackagesSettings(), []).add == []
    assert plan(BuildOutcome(True), "apt-get", AutoPackagesSettings(), []).add == []


def test_the_build_runs_again_with_the_package_and_records_it() -> None:
    rounds: list[list[str]] = []

    def build(added: list[str]) -> BuildOutcome:
        rounds.append(list(added))
        return BuildOutcome(True) if added else _failed(FFI_LOG)

    log = io.BytesIO()
    outcome = build_with_auto_packages(
        build, "apt-get", AutoPackagesSettings(), ["liblzo2-dev"], log, 7
    )
    assert rounds == [[], ["libffi-dev"]]
    assert outcome.built and outcome.auto_packages == ["libffi-dev"]
    assert outcome.build_packages == ["libffi-dev", "liblzo2-dev"]
    assert outcome.package_manager == "apt-get"
    assert b"auto packages: the build needs libffi-dev (missing ffi.h)" in log.getvalue()


def test_a_package_that_does_not_install_reports_the_first_failure() -> None:
    def build(added: list[str]) -> BuildOutcome:
        if added:
            return BuildOutcome(False, reason=FailureReason.RECIPE_FAILED, summary="apt failed")
        return _failed(FFI_LOG)

    outcome = build_with_auto_packages(
        build, "apt-get", AutoPackagesSettings(), [], io.BytesIO(), 7
    )
    assert outcome.reason is FailureReason.MISSING_SYSTEM_LIBRARY
    assert "ffi.h" in outcome.summary and "installing libffi-dev failed" in outcome.summary
    assert outcome.auto_packages is None


def test_rounds_stop_at_the_limit() -> None:
    logs = [FFI_LOG, b"x.c:1:10: fatal error: zlib.h: No such file or directory\n", FFI_LOG]

    def build(added: list[str]) -> BuildOutcome:
        return _failed(logs[min(len(added), 2)]) if len(added) < 2 else _failed(COMPILE_LOG)

    outcome = build_with_auto_packages(
        build, "apt-get", AutoPackagesSettings(rounds=1), [], io.BytesIO(), 7
    )
    assert outcome.auto_packages == ["libffi-dev"]
    assert outcome.reason is FailureReason.MISSING_SYSTEM_LIBRARY and "zlib" in outcome.summary


def test_deny_entries_are_checked_as_package_names() -> None:
    with pytest.raises(ValueError, match="not a package name"):
        AutoPackagesSettings(deny=["libfoo; rm -rf /"])


# --- what the master learns ----------------------------------------------------------


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return settings_with_recipes(
        database_url, tmp_path, '[recipes.needs-ffi]\nenv = { CFLAGS = "-O1" }\n'
    )


@pytest.fixture
def farm(settings: Settings, factory: sessionmaker[Session]) -> Iterator[ApiFarm]:
    with api_farm(settings, factory, "auto-builder") as made:
        yield made


def _job(farm: ApiFarm, settings: Settings, version: str, project: str = "needs-ffi") -> int:
    with transaction(farm.factory) as session:
        _, _, [job] = add_release(session, settings, project, version)
        return job.id


def _claim(farm: ApiFarm, job_id: int) -> JobSpec:
    answer = farm.client.post(f"/api/v1/jobs/{job_id}/claim", headers=farm.auth)
    assert answer.status_code == 200, answer.text
    return JobSpec.from_json(answer.json())


def _report(
    farm: ApiFarm, job_id: int, version: str, built: bool, **fields: str
) -> dict[str, object]:
    data = {"outcome": "built" if built else "failed", "summary": "x", **fields}
    files: dict[str, tuple[str, bytes, str]] = {"log": ("build.log", b"log\n", "text/plain")}
    if built:
        name = f"needs_ffi-{version}-cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64.whl"
        wheel = make_wheel(name, modules=("needs_ffi",))
        data["wheel_sha256"] = hashlib.sha256(wheel).hexdigest()
        files["wheel"] = (name, wheel, "application/octet-stream")
    else:
        data["reason"] = "compile-error"
    answer = farm.client.post(
        f"/api/v1/jobs/{job_id}/result", headers=farm.auth, data=data, files=files
    )
    body: dict[str, object] = {"status": answer.status_code, **answer.json()}
    return body


def test_packages_a_build_needed_are_learned_for_the_next_release(
    farm: ApiFarm, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    first = _job(farm, settings, "1.0")
    assert _claim(farm, first).recipe is not None  # the operator's, without packages
    added = {"build_packages": "libffi-dev", "auto_packages": "libffi-dev"}
    answer = _report(farm, first, "1.0", True, package_manager="apt-get", **added)
    assert answer["status"] == 200, answer
    with farm.factory() as session:
        job = session.get(BuildJob, first)
        assert job is not None and job.auto_packages == ["libffi-dev"]
        assert job.build_packages == ["libffi-dev"] and job.package_manager == "apt-get"
        project = session.scalars(select(Project).where(Project.name == "needs-ffi")).one()
        assert project.learned_packages == {"apt-get": ["libffi-dev"]}

    # The next release starts with the learned package, beside the operator's recipe.
    second = _job(farm, settings, "1.1")
    recipe = _claim(farm, second).recipe
    assert recipe is not None and recipe.apt == ["libffi-dev"] and recipe.yum == []
    assert recipe.env == {"CFLAGS": "-O1"}

    page = farm.client.get("/projects/needs-ffi")
    assert "libffi-dev" in page.text and "added by the farm" in page.text
    assert "libffi-dev" in farm.client.get(f"/builds/{first}").text

    database = ["--config", str(_config(settings))]
    assert main(["recipe", "suggest", "Needs_FFI", *database]) == 0
    out = capsys.readouterr().out
    assert '[recipes."needs-ffi"]\napt = ["libffi-dev"]\n' in out
    assert main(["recipe", "suggest", "nobody-knows", *database]) == 2
    assert "unknown project nobody-knows" in capsys.readouterr().err


def test_a_failed_build_teaches_nothing_and_bad_names_are_refused(
    farm: ApiFarm, settings: Settings
) -> None:
    first = _job(farm, settings, "2.0")
    _claim(farm, first)
    bad = _report(farm, first, "2.0", False, auto_packages="libffi-dev; reboot")
    assert bad["status"] == 422
    answer = _report(
        farm, first, "2.0", False, auto_packages="libffi-dev", package_manager="apt-get"
    )
    assert answer["status"] == 200, answer
    with farm.factory() as session:
        project = session.scalars(select(Project).where(Project.name == "needs-ffi")).one()
        assert project.learned_packages is None
    second = _job(farm, settings, "2.1")
    recipe = _claim(farm, second).recipe
    assert recipe is not None and recipe.apt == []


def _config(settings: Settings) -> Path:
    path = settings.master.data_dir.parent / "armwheels.toml"
    path.write_text(
        f'[database]\nurl = "{settings.database.url}"\n'
        f'[master]\ndata_dir = "{settings.master.data_dir}"\n'
    )
    return path

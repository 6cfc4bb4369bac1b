"""Wheel verification (common/wheels.py): every hostile wheel of tests/hostile_wheels.py
is refused by its check with a specific reason, real layouts pass, and what the smoke
test imports comes from what a wheel installs, not from top_level.txt."""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging.utils import canonicalize_name
from packaging.version import Version

from builder.backends import run_recipe
from common.states import FailureReason
from common.wheels import BadWheel, Check, Expected, WheelLimits, read_contents
from tests.conftest import make_wheel
from tests.hostile_wheels import AARCH64, ARMV7L, CASES, EXT, GOOD_WHEEL, Case, build
from tests.wheels import elf_header, record_hash, record_of, wheel_files, zip_entries

EXT_311 = "cpython-311-aarch64-linux-gnu.so"


def _write(tmp_path: Path, filename: str, data: bytes) -> Path:
    path = tmp_path / filename
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_a_hostile_wheel_is_refused_by_its_check(tmp_path: Path, case: Case) -> None:
    path = _write(tmp_path, case.filename, case.build())
    with pytest.raises(BadWheel) as refused:
        read_contents(path, limits=WheelLimits(**case.limits))
    assert refused.value.check == Check(case.check), str(refused.value)
    assert case.words in str(refused.value)


def test_a_valid_wheel_gives_what_the_index_and_smoke_test_need(tmp_path: Path) -> None:
    contents = read_contents(_write(tmp_path, AARCH64, GOOD_WHEEL.build()))
    assert contents.metadata.startswith(b"Metadata-Version: 2.1\nName: demo\n")
    assert contents.requires_python == ">=3.8"
    assert contents.modules == ["pkg", "pkg._x"]
    grafted = build(extra={"demo.libs/libffi-abc.so.8": elf_header("aarch64")})
    assert read_contents(_write(tmp_path, AARCH64, grafted)).grafted_libraries == [
        "libffi-abc.so.8"
    ]


def test_the_smoke_test_installs_the_requirements_that_are_not_for_an_extra(
    tmp_path: Path,
) -> None:
    files = wheel_files(AARCH64, modules=("pkg",))
    metadata_name = next(name for name in files if name.endswith("/METADATA"))
    files[metadata_name] += (
        b"Requires-Dist: numpy>=1.22\n"
        b'Requires-Dist: typing-extensions; python_version < "3.12"\n'
        b'Requires-Dist: pytest; extra == "test"\n'
        b"Provides-Extra: test\n"
    )
    dist_info = metadata_name.split("/")[0]
    files[f"{dist_info}/RECORD"] = record_of(files, dist_info)
    contents = read_contents(_write(tmp_path, AARCH64, zip_entries(list(files.items()))))
    assert contents.requires_dist == ["numpy>=1.22", 'typing-extensions; python_version < "3.12"']


def test_an_armv7l_hard_float_wheel_passes(tmp_path: Path) -> None:
    wheel = build(filename=ARMV7L, extra={"pkg/_x.so": elf_header("armv7l") + b"code"})
    assert read_contents(_write(tmp_path, ARMV7L, wheel)).modules == ["pkg", "pkg._x"]


def test_what_real_build_tools_write_passes(tmp_path: Path) -> None:
    """Directory entries, a stronger hash, an unhashed signature, a dist-info directory
    named with the unnormalised name and version, a pure wheel with Root-Is-Purelib."""
    dist_info = "Demo-1.0.0.dist-info"
    files = {
        name.replace("demo-1.0.dist-info", dist_info): data
        for name, data in wheel_files(AARCH64, modules=("pkg",)).items()
    }
    data = b"print('hi')\n"
    record = record_of(files, dist_info).decode()
    record += f"pkg/tool.py,{record_hash(data, 'sha512')},{len(data)}\n"
    record += f"{dist_info}/RECORD.jws,,\n"
    wheel = zip_entries(
        [
            ("pkg/", b""),
            *files.items(),
            ("pkg/tool.py", data),
            (f"{dist_info}/RECORD.jws", b"{}"),
            (f"{dist_info}/RECORD", record.encode()),
        ]
    )
    assert read_contents(_write(tmp_path, AARCH64, wheel)).modules == ["pkg"]
    pure = "demo-1.0-py3-none-any.whl"
    assert read_contents(_write(tmp_path, pure, make_wheel(pure))).modules == ["demo"]


def test_the_job_decides_what_the_wheel_must_be(tmp_path: Path) -> None:
    """The master passes the job's project, version and arch, whatever the name says."""
    path = _write(tmp_path, "upload.whl", GOOD_WHEEL.build())
    job = Expected(canonicalize_name("demo"), Version("1.0"), "aarch64")
    assert read_contents(path, AARCH64, expected=job).modules == ["pkg", "pkg._x"]
    other = Expected(canonicalize_name("requests"), Version("1.0"), "aarch64")
    with pytest.raises(BadWheel, match=r"demo-1.0.dist-info is not the job's \(requests 1.0\)"):
        read_contents(path, AARCH64, expected=other)
    armv7l = Expected(canonicalize_name("demo"), Version("1.0"), "armv7l")
    with pytest.raises(BadWheel, match=f"{EXT} is not 32-bit little-endian ARM"):
        read_contents(path, AARCH64, expected=armv7l)


def _modules(tmp_path: Path, extra: dict[str, bytes], modules: tuple[str, ...] = ()) -> list[str]:
    wheel = tmp_path / "demo-1.0-cp311-cp311-manylinux2014_aarch64.whl"
    wheel.write_bytes(make_wheel(wheel.name, modules=modules, extra=extra))
    return read_contents(wheel).modules


def test_a_stale_top_level_txt_is_ignored(tmp_path: Path) -> None:
    # setuptools wrote `_ext` (an extension named without its ext_package); the
    # extension really lives at pkg._ext.
    found = _modules(
        tmp_path,
        {
            "demo-1.0.dist-info/top_level.txt": b"_ext\n",
            "pkg/__init__.py": b"",
            f"pkg/_ext.{EXT_311}": elf_header("aarch64"),
        },
    )
    assert found == ["pkg", "pkg._ext"]


def test_every_extension_module_is_imported_by_its_dotted_name(tmp_path: Path) -> None:
    found = _modules(
        tmp_path,
        {
            "pkg/__init__.py": b"",
            "pkg/sub/__init__.py": b"",
            f"pkg/sub/_speedups.{EXT_311}": b"",
            "pkg/_abi3.abi3.so": b"",
            "pkg/__pycache__/x.cpython-311.pyc": b"",
            f"_cffi_like.{EXT_311}": b"",
            "single.py": b"",
            "nspkg/plugin.py": b"",  # a namespace package, no __init__.py
            "demo.libs/libz-1234.so.1": b"",  # grafted by auditwheel, not a module
            "data-files/readme.txt": b"",
            "not-a-module.py": b"",
            "demo.pth": b"",
        },
    )
    assert found == [
        "_cffi_like",
        "nspkg",
        "pkg",
        "single",
        "pkg._abi3",
        "pkg.sub._speedups",
    ]


def test_purelib_and_platlib_data_install_at_the_root(tmp_path: Path) -> None:
    found = _modules(
        tmp_path,
        {
            f"demo-1.0.data/platlib/fast.{EXT_311}": b"",
            "demo-1.0.data/purelib/helper/__init__.py": b"",
            "demo-1.0.data/scripts/tool.py": b"",
            "demo-1.0.data/headers/demo.h": b"",
        },
    )
    assert found == ["fast", "helper"]


def test_packages_without_extensions_are_imported_once(tmp_path: Path) -> None:
    assert _modules(tmp_path, {}, modules=("demo", "extra")) == ["demo", "extra"]


def test_the_builder_fails_a_repaired_wheel_the_master_would_refuse(tmp_path: Path) -> None:
    """The builder verifies its own wheel before uploading it: a clear failure, no smoke
    test, nothing uploaded."""
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    case = next(case for case in CASES if case.id == "elf-x86_64")
    (wheelhouse / case.filename).write_bytes(case.build())
    smoked: list[Path] = []

    def smoke(wheel: Path, modules: list[str], requirements: list[str]) -> int:
        smoked.append(wheel)
        return 0

    with (tmp_path / "build.log").open("w+b") as log:
        outcome = run_recipe(tmp_path, log, 60, lambda: 0, smoke)
        log.seek(0)
        said = log.read().decode()
    assert not outcome.built and outcome.wheel is None
    assert outcome.reason == FailureReason.UPLOAD_REJECTED
    assert outcome.summary.startswith("the repaired wheel would be refused (elf): ")
    assert f"{EXT} is not 64-bit little-endian AArch64 code" in outcome.summary
    assert "fails verification" in said
    assert smoked == []

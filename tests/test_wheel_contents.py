"""What the smoke test imports comes from what a wheel installs, not from top_level.txt."""

from __future__ import annotations

from pathlib import Path

from common.wheels import read_contents
from tests.conftest import make_wheel

EXT = "cpython-311-aarch64-linux-gnu.so"


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
            f"pkg/_ext.{EXT}": b"\x7fELF",
        },
    )
    assert found == ["pkg", "pkg._ext"]


def test_every_extension_module_is_imported_by_its_dotted_name(tmp_path: Path) -> None:
    found = _modules(
        tmp_path,
        {
            "pkg/__init__.py": b"",
            "pkg/sub/__init__.py": b"",
            f"pkg/sub/_speedups.{EXT}": b"",
            "pkg/_abi3.abi3.so": b"",
            "pkg/__pycache__/x.cpython-311.pyc": b"",
            f"_cffi_like.{EXT}": b"",
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
            f"demo-1.0.data/platlib/fast.{EXT}": b"",
            "demo-1.0.data/purelib/helper/__init__.py": b"",
            "demo-1.0.data/scripts/tool.py": b"",
            "demo-1.0.data/headers/demo.h": b"",
        },
    )
    assert found == ["fast", "helper"]


def test_packages_without_extensions_are_imported_once(tmp_path: Path) -> None:
    assert _modules(tmp_path, {}, modules=("demo", "extra")) == ["demo", "extra"]

"""armwheels doctor (common/doctor.py): reading a device, and why pip there takes or
refuses each wheel, in words a user can act on. The device runs of the doctor are in
tests/test_client_matrix.py (real distributions under QEMU, against a running master)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from common.config import Settings
from common.doctor import read_elf, why_not
from master.web.app import create_app
from tests.wheels import elf_header


def _tags(python: str, arch: str, glibc_minors: range, legacy: bool = True) -> list[str]:
    """The tags a pip on such a device accepts, newest first, as packaging lists them."""
    platforms = [f"manylinux_2_{m}_{arch}" for m in reversed(glibc_minors)]
    if legacy:
        platforms.append(f"manylinux2014_{arch}")
    platforms.append(f"linux_{arch}")
    tags = [f"{python}-{abi}-{p}" for abi in (python, "abi3", "none") for p in platforms]
    # abi3 wheels of every earlier CPython 3, as packaging lists them.
    tags += [f"cp3{m}-abi3-{p}" for m in range(int(python[3:]) - 1, 1, -1) for p in platforms]
    return tags + [f"py3-none-{p}" for p in platforms]


def _device(
    arch: str = "armv7l",
    python: str = "3.9.2",
    glibc: str | None = "2.31",
    pip: str = "20.3.4",
    float_abi: str | None = "hard",
    tags: list[str] | None = None,
) -> dict[str, Any]:
    tag = "cp" + "".join(python.split(".")[:2])
    minor = int(glibc.split(".")[1]) if glibc else 16
    return {
        "machine": arch,
        "implementation": "CPython",
        "python": python,
        "libc": "glibc" if glibc else "musl",
        "glibc": glibc,
        "pip": pip,
        "float_abi": float_abi,
        "tags": tags if tags is not None else _tags(tag, arch, range(17, minor + 1)),
    }


ABI3_ARMV7 = "demo-1.0-cp36-abi3-manylinux_2_17_armv7l.manylinux2014_armv7l.whl"


@pytest.mark.parametrize(
    ("filename", "device", "reason"),
    [
        (ABI3_ARMV7, _device(), None),
        ("demo-1.0-cp39-cp39-manylinux_2_31_armv7l.whl", _device(), None),
        (
            "demo-1.0-cp39-cp39-manylinux_2_35_armv7l.whl",
            _device(),
            "needs glibc 2.35, this system has 2.31",
        ),
        ("demo-1.0-cp311-cp311-manylinux_2_17_armv7l.whl", _device(), "built for cp311"),
        ("demo-1.0-cp311-abi3-manylinux_2_17_armv7l.whl", _device(), "built for cp311"),
        (
            "demo-1.0-cp39-cp39-manylinux_2_17_aarch64.manylinux2014_aarch64.whl",
            _device(),
            "aarch64 wheel, this device takes armv7l",
        ),
        (
            ABI3_ARMV7,
            # armel: pip there offers no manylinux tag at all, and its linux tag is v5.
            _device(
                float_abi="soft", tags=["cp39-cp39-linux_armv5tel", "cp36-abi3-linux_armv5tel"]
            ),
            "armhf (hard-float) wheel, this system is armel (soft-float)",
        ),
        (
            "demo-1.0-cp39-cp39-manylinux_2_31_armv7l.whl",
            # pip 20.2's packaging knows manylinux2014 but not manylinux_x_y tags.
            _device(pip="20.2.4", tags=_tags("cp39", "armv7l", range(0), legacy=True)),
            "pip 20.2.4 cannot read manylinux_2_31_armv7l tags: upgrade pip",
        ),
        (
            "demo-1.0-cp39-cp39-manylinux_2_17_armv7l.whl",
            _device(glibc=None, tags=["cp39-cp39-linux_armv7l"]),
            "needs glibc 2.17, this system has musl",
        ),
    ],
)
def test_each_refusal_is_explained(
    filename: str, device: dict[str, Any], reason: str | None
) -> None:
    found = why_not(filename, device)
    if reason is None:
        assert found is None
    else:
        assert found is not None and reason in found, found


@pytest.mark.parametrize(
    ("arch", "flags", "expected"),
    [
        ("aarch64", None, {"bits": 64, "machine": "aarch64", "float_abi": None}),
        ("armv7l", 0x05000400, {"bits": 32, "machine": "arm", "float_abi": "hard"}),
        ("armv7l", 0x05000200, {"bits": 32, "machine": "arm", "float_abi": "soft"}),
        ("armv7l", 0x05000000, {"bits": 32, "machine": "arm", "float_abi": "soft"}),
    ],
)
def test_the_interpreter_s_elf_header_says_its_float_abi(
    tmp_path: Path, arch: str, flags: int | None, expected: dict[str, Any]
) -> None:
    binary = tmp_path / "python3"
    binary.write_bytes(elf_header(arch, flags=flags) + bytes(64))
    assert read_elf(str(binary)) == expected


def test_the_master_serves_the_doctor_with_its_own_address(
    settings: Settings, factory: sessionmaker[Session], tmp_path: Path
) -> None:
    with TestClient(create_app(settings, factory)) as client:
        answer = client.get("/doctor")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/x-python")
    assert f"FARM = {json.dumps(settings.master.public_url)}\n" in answer.text
    script = tmp_path / "doctor.py"
    script.write_text(answer.text)
    # Run as a device would (no armwheels there): it reads this host and exits 0.
    done = subprocess.run(
        [sys.executable, "-I", str(script), "--json"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    facts = json.loads(done.stdout)["device"]
    assert facts["glibc"] and facts["tags"] and facts["pip"]
    # Bad input: one line and exit 2.
    for bad in (["not a name!"], ["demo==1.0", "--farm", "ftp://x"], ["demo==x y"]):
        done = subprocess.run(
            [sys.executable, "-I", str(script), *bad], capture_output=True, text=True, check=False
        )
        assert done.returncode == 2, (bad, done.stdout, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr

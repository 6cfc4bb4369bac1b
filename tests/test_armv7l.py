"""The 32-bit ARM target: a real sdist built by the docker backend in the local armhf image
under QEMU, repaired to manylinux2014_armv7l, smoke-tested, and really ARM code inside.

Needs the local image (`armwheels image build --arch armv7l`); scripts/test makes it.
The armv7l target is off by default, so the test names its own TargetSettings.
"""

from __future__ import annotations

import struct
import uuid
import zipfile
from pathlib import Path

import docker
import pytest
from packaging.utils import parse_wheel_filename

from builder.backends.docker import LABEL, DockerBackend
from common.config import TargetSettings, load_settings
from common.job_spec import JobSpec
from tests.sdists import pypi_sdist

pytestmark = [pytest.mark.slow, pytest.mark.docker]

IMAGE = "armwheels/build-armv7l:bookworm"
POLICY = "manylinux2014_armv7l"
TAG = "cp311"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
EM_ARM = 40  # ELF e_machine of 32-bit ARM
EF_ARM_ABI_FLOAT_HARD = 0x400  # e_flags bit of the armhf (hard-float) ABI


def _elf_header(data: bytes) -> tuple[int, int, int]:
    """ELF class (1 = 32-bit), e_machine and e_flags of a little-endian ELF file."""
    assert data[:4] == b"\x7fELF", "not an ELF file"
    assert data[5] == 1, "not little-endian"
    elf_class = data[4]
    (machine,) = struct.unpack_from("<H", data, 18)
    # e_flags follows e_entry, e_phoff and e_shoff: 4-byte fields in ELF32.
    (flags,) = struct.unpack_from("<I", data, 36 if elf_class == 1 else 48)
    return elf_class, machine, flags


def test_msgpack_builds_as_a_manylinux2014_armv7l_wheel(tmp_path: Path) -> None:
    ca = {"ca_bundle": CA_BUNDLE} if CA_BUNDLE.exists() else {}
    settings = load_settings(None, builder={"work_dir": tmp_path / "work", **ca})
    target = TargetSettings(image=IMAGE, python_tags=[TAG], policy=POLICY)
    name = f"armv7l-test-{uuid.uuid4().hex[:8]}"
    backend = DockerBackend(settings.builder, "armv7l", target, name)
    try:
        assert backend.python_tags() == [TAG]
        sdist = pypi_sdist("msgpack", "1.1.0")
        spec = JobSpec(1, "msgpack", "1.1.0", "armv7l", TAG, POLICY, sdist.name, "", "", None, 1)
        workdir = tmp_path / "job"
        workdir.mkdir()
        log_path = tmp_path / "build.log"
        with log_path.open("wb") as log:
            outcome = backend.build(spec, sdist, workdir, log)
        text = log_path.read_text(errors="replace")
        assert outcome.built, (outcome.reason, outcome.summary, text[-3000:])
        wheel = outcome.wheel
        assert wheel is not None
        project, version, _, tags = parse_wheel_filename(wheel.name)
        assert (project, str(version)) == ("msgpack", "1.1.0")
        assert {(t.interpreter, t.abi) for t in tags} == {(TAG, TAG)}
        assert POLICY in {t.platform for t in tags}, wheel.name
        assert "on armv7l" in text, "build.sh ran on an armv7l (emulated) machine"
        assert "import msgpack" in text and "smoke test passed" in text
        with zipfile.ZipFile(wheel) as archive:
            libraries = [n for n in archive.namelist() if n.endswith(".so")]
            assert libraries, archive.namelist()
            for library in libraries:
                elf_class, machine, flags = _elf_header(archive.read(library)[:64])
                assert (elf_class, machine) == (1, EM_ARM), library
                assert flags & EF_ARM_ABI_FLOAT_HARD, f"{library}: not hard-float"
    finally:
        backend.close()
    client = docker.from_env()
    try:
        assert client.containers.list(all=True, filters={"label": f"{LABEL}={name}"}) == []
    finally:
        client.close()

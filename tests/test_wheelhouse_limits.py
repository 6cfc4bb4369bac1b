"""The builder reads an sdist's pyproject.toml on its own host, outside any sandbox: a
hostile archive may cost it only a bounded amount of work, never minutes of CPU."""

from __future__ import annotations

import gzip
import io
import resource
import tarfile
from pathlib import Path

import pytest

from builder.wheelhouse import (
    MAX_SCANNED_BYTES,
    NoBuildRequirements,
    Wheelhouse,
    build_requirements,
)

ZEROS = 4 * 1024**3
BLOCK = 1024**2
PYPROJECT = b'[build-system]\nrequires = ["setuptools", "cython>=3"]\n'


def _member(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    return info.tobuf(format=tarfile.GNU_FORMAT)


def _zeros_bomb(path: Path) -> Path:
    """bomb-1.0/zeros (4 GiB of zeros), then bomb-1.0/pyproject.toml, as one .tar.gz
    written by streaming: a gzip member per MiB of zeros (compressed once, repeated),
    which every gzip reader decompresses as one stream. A few MB on disk."""
    zero_block = gzip.compress(b"\0" * BLOCK, compresslevel=9, mtime=0)
    tail = _member("bomb-1.0/pyproject.toml", len(PYPROJECT)) + PYPROJECT
    tail += b"\0" * (-len(tail) % 512) + b"\0" * 1024
    with path.open("wb") as out:
        out.write(gzip.compress(_member("bomb-1.0/zeros", ZEROS), mtime=0))
        for _ in range(ZEROS // BLOCK):
            out.write(zero_block)
        out.write(gzip.compress(tail, mtime=0))
    return path


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _zeros_bomb(tmp_path_factory.mktemp("bomb") / "bomb-1.0.tar.gz")


def test_the_bomb_is_what_it_claims(bomb: Path) -> None:
    """Small on disk, and its first member really announces 4 GiB."""
    assert bomb.stat().st_size < 8 * 1024**2
    with gzip.open(bomb) as stream:
        header = tarfile.TarInfo.frombuf(stream.read(512), "utf-8", "surrogateescape")
        assert (header.name, header.size) == ("bomb-1.0/zeros", ZEROS)
        assert stream.read(BLOCK) == b"\0" * BLOCK


def test_gigabytes_of_zeros_before_pyproject_are_cut_off(
    bomb: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _cpu()
    with pytest.raises(NoBuildRequirements, match=r"no pyproject\.toml in the first 64 MiB"):
        build_requirements(bomb)
    spent = _cpu() - before
    with capsys.disabled():
        print(f"\n4 GiB-of-zeros sdist: refused after {spent:.2f} s of host CPU")


def test_the_wheelhouse_step_is_skipped_with_a_note(bomb: Path, tmp_path: Path) -> None:
    wheelhouse = Wheelhouse(tmp_path / "wheelhouse", 1024**2)
    log = io.BytesIO()
    offered = wheelhouse.fill_for(bomb, "cp311", ["manylinux_2_17_aarch64"], None, log)
    assert not offered
    assert log.getvalue().startswith(b"::armwheels:: wheelhouse step skipped: no pyproject")
    assert wheelhouse.wheels() == []


def test_a_pyproject_after_a_few_mib_is_still_read(tmp_path: Path) -> None:
    """The caps only cut off what no real sdist needs."""
    path = tmp_path / "fine-1.0.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        data = b"x" * (MAX_SCANNED_BYTES // 4)
        info = tarfile.TarInfo("fine-1.0/data.bin")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("fine-1.0/pyproject.toml")
        info.size = len(PYPROJECT)
        archive.addfile(info, io.BytesIO(PYPROJECT))
    assert [str(r) for r in build_requirements(path)] == ["setuptools", "cython>=3"]


def test_too_many_members_before_pyproject_are_cut_off(tmp_path: Path) -> None:
    path = tmp_path / "many-1.0.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        for number in range(10_001):
            archive.addfile(tarfile.TarInfo(f"many-1.0/f{number}"), io.BytesIO(b""))
    with pytest.raises(NoBuildRequirements, match="first 10000 members"):
        build_requirements(path)


def test_an_oversized_pyproject_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big-1.0.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        info = tarfile.TarInfo("big-1.0/pyproject.toml")
        info.size = 2 * 1024**2
        archive.addfile(info, io.BytesIO(b"#" * info.size))
    with pytest.raises(NoBuildRequirements, match="too large"):
        build_requirements(path)

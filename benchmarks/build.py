"""The farm's build benchmark: real sdists of different kinds, each built three ways.

Per sdist it prints:
  native     `pip wheel` of the sdist with this x86_64 host's Python (the floor)
  emulated   the builder's whole aarch64 job through the docker backend: every step under
             QEMU (wheelhouse, build, auditwheel, smoke test)
  cross      the same job through the cross backend: compiled on the host's CPU in the
             cross container, repaired on the host's CPU, smoke-tested under QEMU, and
             built again under emulation when the cross path fails (its time included)
then the ratios emulated/cross and cross/native, the path that published, and the farm's
overhead on each path: the share of the job not spent in its compile step (the build
backend's build_wheel on the cross path; pip wheel, its isolated environment included,
on the emulated one), as the build log reports it. Medians close the table.

Each job runs with a warm wheelhouse (one untimed job per path fills it first), as a
farm's builders do after their first builds.

Usage: .venv/bin/python -m benchmarks.build [PROJECT==VERSION ...]   (default: the set)
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from uuid import uuid4

from rich.console import Console
from rich.table import Table

from builder.backends import BuildOutcome
from builder.backends.cross import CrossBackend
from builder.backends.docker import DockerBackend
from builder.identity import BuilderIdentity
from common.config import load_settings
from common.job_spec import JobSpec
from common.recipes import Recipe
from tests.sdists import pypi_sdist
from tests.servers import clean_pip_env

CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
ARCH = "aarch64"
COMPILE_STEP = re.compile(rb"::armwheels:: compile step: ([0-9.]+) s")


@dataclass(frozen=True)
class Case:
    kind: str
    project: str
    version: str
    recipe: Recipe | None = None


SET = [
    Case("plain C", "msgpack", "1.1.0"),
    Case("Cython", "frozenlist", "1.5.0"),
    Case("C++", "kiwisolver", "1.4.7"),
    Case("system library (recipe)", "python-lzo", "1.15", Recipe(apt=["liblzo2-dev"])),
    Case("numpy C API", "bottleneck", "1.4.2"),
    Case("setup.py only", "crc16", "0.1.1"),
    Case("bundled C library", "lz4", "4.3.3"),
    Case("optional C speedups", "markupsafe", "3.0.2"),
]


@dataclass
class Job:
    seconds: float
    compile_seconds: float | None
    outcome: BuildOutcome

    @property
    def overhead(self) -> float | None:
        if self.compile_seconds is None:
            return None
        return max(0.0, self.seconds - self.compile_seconds) / self.seconds


def native_build(sdist: Path, scratch: Path) -> float | None:
    """None when the host cannot build it (a system library the host lacks)."""
    venv = scratch / "native-venv"
    if not venv.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    started = time.perf_counter()
    done = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(scratch / "native"),
            str(sdist),
        ],
        check=False,
        capture_output=True,
        env={**clean_pip_env(), "PIP_CERT": str(CA_BUNDLE)},
    )
    return time.perf_counter() - started if done.returncode == 0 else None


def farm_job(backend: DockerBackend, case: Case, sdist: Path, scratch: Path, label: str) -> Job:
    target = backend.target
    spec = JobSpec(
        0, case.project, case.version, ARCH, "cp311", target.policy, sdist.name, "", "", None,
        1, case.recipe,
    )  # fmt: skip
    log_path = scratch / f"{case.project}-{label}.log"
    started = time.perf_counter()
    with log_path.open("wb") as log:
        outcome = backend.build(spec, sdist, scratch / f"{case.project}-{label}", log)
    elapsed = time.perf_counter() - started
    steps = [float(match) for match in COMPILE_STEP.findall(log_path.read_bytes())]
    return Job(elapsed, sum(steps) if steps else None, outcome)


def _fmt(value: float | None, spec: str = ".1f", suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def main() -> None:
    cases = SET
    if len(sys.argv) > 1:
        cases = []
        for arg in sys.argv[1:]:
            project, _, version = arg.partition("==")
            cases.append(Case("given", project, version))
    console = Console()
    settings = load_settings(None, builder={"ca_bundle": CA_BUNDLE})
    target = settings.targets[ARCH]
    rows = []
    with tempfile.TemporaryDirectory(prefix="armwheels-bench-") as tmp:
        scratch = Path(tmp)
        builder = settings.builder.model_copy(update={"work_dir": scratch / "work"})
        identity = BuilderIdentity("benchmark", uuid4().hex)
        emulated = DockerBackend(builder, ARCH, target, identity)
        cross = CrossBackend(builder, ARCH, target, identity)
        try:
            for number, case in enumerate(cases, 1):
                sdist = pypi_sdist(case.project, case.version)
                console.log(f"[{number}/{len(cases)}] {case.project} {case.version}: native")
                native = native_build(sdist, scratch)
                console.log(f"[{number}/{len(cases)}] warming the wheelhouses")
                farm_job(cross, case, sdist, scratch, "warm-cross")
                farm_job(emulated, case, sdist, scratch, "warm-emulated")
                console.log(f"[{number}/{len(cases)}] emulated farm job")
                slow = farm_job(emulated, case, sdist, scratch, "emulated")
                console.log(f"[{number}/{len(cases)}] cross farm job")
                fast = farm_job(cross, case, sdist, scratch, "cross")
                rows.append((case, native, slow, fast))
                console.log(
                    f"{case.project}: native {_fmt(native)} s, emulated {slow.seconds:.1f} s,"
                    f" cross {fast.seconds:.1f} s ({fast.outcome.build_path})"
                )
        finally:
            emulated.close()
            cross.close()
    table = Table(title=f"Farm build benchmark, {ARCH} jobs on this host (seconds)")
    for column in (
        "sdist",
        "kind",
        "native",
        "emulated job",
        "cross job",
        "emulated/cross",
        "cross/native",
        "published by",
        "overhead emulated",
        "overhead cross",
    ):
        table.add_column(column)
    for case, native, slow, fast in rows:
        path = fast.outcome.build_path.value if fast.outcome.build_path else "—"
        if not fast.outcome.built:
            path = f"nothing ({fast.outcome.reason})"
        table.add_row(
            f"{case.project} {case.version}",
            case.kind,
            _fmt(native),
            f"{slow.seconds:.1f}" + ("" if slow.outcome.built else " (failed)"),
            f"{fast.seconds:.1f}",
            f"{slow.seconds / fast.seconds:.1f}",
            _fmt(None if native is None else fast.seconds / native),
            path,
            _fmt(None if slow.overhead is None else slow.overhead * 100, ".0f", "%"),
            _fmt(None if fast.overhead is None else fast.overhead * 100, ".0f", "%"),
        )
    console.print(table)
    speedups = [slow.seconds / fast.seconds for _, _, slow, fast in rows]
    to_native = [fast.seconds / native for _, native, _, fast in rows if native is not None]
    overheads = [fast.overhead for _, _, _, fast in rows if fast.overhead is not None]
    fell_back = [case.project for case, _, _, fast in rows if fast.outcome.build_path and
                 fast.outcome.build_path.value == "emulated-after-cross"]  # fmt: skip
    console.print(f"median emulated/cross: {statistics.median(speedups):.1f}x")
    console.print(f"median cross/native: {statistics.median(to_native):.1f}x")
    if overheads:
        console.print(f"median cross overhead: {statistics.median(overheads):.0%} of the job")
    console.print(
        f"fallback rate: {len(fell_back)}/{len(rows)}"
        + (f" ({', '.join(fell_back)})" if fell_back else "")
    )


if __name__ == "__main__":
    main()

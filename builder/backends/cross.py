"""Cross backend: x86_64 builder hosts compile at native speed, and emulate only the
smoke test, or the whole build when the cross path cannot make it.

The compile runs in a throw-away container of the cross image (the host's arch: Debian's
GCC cross compilers and the same CPython version as the target's), sandboxed exactly as
an emulated build is (builder/backends/docker.py: unprivileged uid, no capabilities,
read-only root, limits, time limit, capped work directory, offline by default). The
target's view comes from its own image: its headers, libraries and sysconfig data are
copied out once per image (builder/sysroot.py) and mounted read-only, so a cross-built
wheel links against what the emulated build would. Build requirements come from a host
wheelhouse (they run here), with the target wheel's headers and static libraries laid
over those of a compiled one (cross_build.py).

Every cross-built wheel then passes the checks of every other path: auditwheel for the
target policy (run on the host's CPU), the builder's verification (common.wheels: every
ELF file of the target's machine and class) and the import smoke test in the target's
image under QEMU. When any of that fails, the same job is built again on the emulated
path in the same attempt, and the outcome says which path published and why.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import docker.errors

from builder import auto_packages
from builder.backends import (
    BuildOutcome,
    StepExit,
    note,
    recipe_environment,
    repair_environment,
    run_recipe,
    write_constraints,
)
from builder.backends.docker import (
    CONSTRAINTS,
    INTERPRETER_PROBE,
    REPAIR_TIMEOUT,
    WHEELHOUSE,
    WORK,
    DockerBackend,
    DockerUnavailable,
)
from builder.backends.network import build_in_rounds, network_environment, wants_egress
from builder.classify import NEWER_SYMBOLS
from builder.engine import ENGINE_ERRORS
from builder.identity import BuilderIdentity
from builder.image import CROSS_TRIPLETS
from builder.sysroot import SysrootError, prune_sysroots, target_sysroot
from builder.wheelhouse import DEFAULT_INDEX_URL, Wheelhouse, platform_tags
from common.config import BuilderSettings, TargetSettings
from common.job_spec import JobSpec
from common.states import BuildPath, FailureReason
from common.tags import is_distribution_policy

log = logging.getLogger(__name__)

HOST_ARCH = "x86_64"
SYSROOT = "/armwheels/sysroot"
TARGET_WHEELHOUSE = "/armwheels/target-wheelhouse"


class HostWheelhouse(Wheelhouse):
    """The cross build's wheelhouse of host wheels. A requirement fetched for an offline
    round (one a build backend asks for at build time) is fetched for the target too:
    a compiled one's headers and libraries must be the target's (cross_build.py)."""

    target: Wheelhouse | None = None
    target_platforms: list[str] | None = None

    def fetch_missing(
        self,
        requirement: str,
        python_tag: str,
        platforms: list[str],
        constraints: Path | None,
        log_sink: BinaryIO,
    ) -> bool:
        fetched = super().fetch_missing(requirement, python_tag, platforms, constraints, log_sink)
        if fetched and self.target is not None and self.target_platforms is not None:
            # Also what a cross build asks for when the host has the requirement and the
            # target does not (cross_build.py): a round without it stops at the same place.
            self.target.fetch_missing(
                requirement, python_tag, self.target_platforms, constraints, log_sink
            )
        return fetched


def _refused_by_newer_policy(spec: JobSpec, outcome: BuildOutcome) -> bool:
    """The target fails a wheel that meets only a newer policy, and auditwheel found this
    one's symbols too recent: the emulated build would link the same C library of the
    same image (the sysroot is that image's tree) and meet the same verdict."""
    return (
        spec.newer_policy == "fail"
        and outcome.reason is FailureReason.AUDITWHEEL_REJECTED
        and NEWER_SYMBOLS in outcome.summary
    )


class CrossUnavailable(RuntimeError):
    """The cross image is missing: the builder uses the emulated path alone."""


class CrossBackend(DockerBackend):
    name = "cross"

    def __init__(
        self,
        settings: BuilderSettings,
        arch: str,
        target: TargetSettings,
        identity: BuilderIdentity,
        index_url: str = DEFAULT_INDEX_URL,
        farm_index_url: str | None = None,
    ) -> None:
        super().__init__(settings, arch, target, identity, index_url, farm_index_url)
        self.cross_image = settings.cross_image
        self.triplet = CROSS_TRIPLETS[arch]
        try:
            self.client.images.get(self.cross_image)
        except docker.errors.ImageNotFound as exc:
            self.close()
            raise CrossUnavailable(f"cross image {self.cross_image} is missing") from exc
        self.host_interpreters = self._probe_cross_image()
        prune_sysroots(self.client, settings.work_dir / "sysroots")
        self.host_wheelhouse = (
            HostWheelhouse(
                settings.work_dir / "wheelhouse" / f"{HOST_ARCH}-for-cross",
                settings.wheelhouse_limit,
                settings.ca_bundle,
                label=f"host wheelhouse ({HOST_ARCH})",
                index_url=index_url,
            )
            if settings.wheelhouse
            else None
        )
        log.info(
            "cross path ready",
            extra={
                "arch": arch,
                "cross_image": self.cross_image,
                "python_tags": ",".join(self.host_interpreters),
            },
        )

    def _probe_cross_image(self) -> list[str]:
        try:
            output = self.client.containers.run(
                self.cross_image,
                ["/bin/sh", "-c", INTERPRETER_PROBE],
                network_mode="none",
                labels=self._labels(),
                remove=True,
                stdout=True,
                stderr=False,
            )
        except docker.errors.DockerException as exc:
            raise DockerUnavailable(f"cannot start the cross image: {exc}") from exc
        text = output.decode("utf-8", "replace") if isinstance(output, bytes) else ""
        return sorted({line.strip() for line in text.splitlines() if line.startswith("cp3")})

    def why_emulated(self, spec: JobSpec) -> str | None:
        """Why this job goes straight to the emulated path, or None to try the cross one."""
        recipe = spec.recipe
        if spec.emulate_because:
            return spec.emulate_because
        if recipe is not None and recipe.build_command:
            return "its recipe has its own build command"
        if wants_egress(spec):
            return "its recipe builds with egress"
        if is_distribution_policy(spec.policy):
            return "a distribution target builds in its own image"
        if spec.python_tag not in self.host_interpreters:
            return f"the cross image has no {spec.python_tag} interpreter"
        return None

    def build_paths(
        self, spec: JobSpec, sdist: Path, workdir: Path, log_sink: BinaryIO
    ) -> BuildOutcome:
        """One build of the job, its archive already checked: cross first, emulated when
        the cross path cannot build it."""
        why = self.why_emulated(spec)
        if why is not None:
            note(log_sink, f"build path: emulated, since {why}")
            outcome = self.build_emulated(spec, sdist, workdir, log_sink)
            outcome.build_path = BuildPath.EMULATED
            return outcome
        note(log_sink, f"build path: cross ({self.cross_image} for {self.arch})")
        outcome = self._cross(spec, sdist, workdir / "cross", log_sink)
        if outcome.built or self._cancelled.is_set():
            outcome.build_path = BuildPath.CROSS
            return outcome
        if outcome.waiting_for is not None:
            note(
                log_sink,
                f"the target has no wheel of {outcome.waiting_for}, which the emulated build"
                " would lack too: not built again on the emulated path",
            )
            outcome.build_path = BuildPath.CROSS
            return outcome
        installed = [*self.recipe_packages(spec), *self.added_packages]
        policy = self.settings.auto_packages
        if auto_packages.plan(outcome, self.package_manager, policy, installed).add:
            note(
                log_sink,
                "the cross build lacks a system package that the emulated build would lack"
                " too: not built again on the emulated path",
            )
            outcome.build_path = BuildPath.CROSS
            return outcome
        if _refused_by_newer_policy(spec, outcome):
            note(
                log_sink,
                "the target fails a wheel of a newer policy, and the emulated build would link"
                " the same C library of the same image: not built again",
            )
            outcome.build_path = BuildPath.CROSS
            return outcome
        note(
            log_sink,
            f"cross build abandoned ({outcome.reason}: {outcome.summary});"
            " building again on the emulated path",
        )
        shutil.rmtree(workdir / "cross", ignore_errors=True)
        outcome = self.build_emulated(spec, sdist, workdir, log_sink)
        outcome.build_path = BuildPath.EMULATED_AFTER_CROSS
        if outcome.built:
            note(log_sink, "published from the emulated path, after the cross path failed")
        return outcome

    def _repair_elsewhere(
        self, spec: JobSpec, image: str, sandbox: Path, log_sink: BinaryIO
    ) -> Callable[[], StepExit] | None:
        """An emulated build's wheel is repaired natively, in the cross image with the
        sysroot of the image it was built in (auditwheel under QEMU cost 5-8 s of every
        job), and in that image after all when that fails: the emulated path stays the
        last resort it is. A distribution target's wheel is tagged where it was built:
        the packages it links are the image's."""
        if is_distribution_policy(spec.policy):
            return None

        def repair() -> StepExit:
            started = time.monotonic()
            try:
                sysroot = self._sysroot(image, log_sink)
            except SysrootError as exc:
                note(log_sink, f"{exc}: repairing in the build image")
                return self._repair_in_image(spec, image, sandbox, log_sink)
            done = self._run(
                self.cross_image,
                [
                    "/bin/bash",
                    "/armwheels/scripts/repair_wheel.sh",
                    spec.policy,
                    self.arch,
                    self.triplet,
                ],
                {
                    str(sandbox): {"bind": WORK, "mode": "rw"},
                    str(sysroot): {"bind": SYSROOT, "mode": "ro"},
                },
                "none",
                spec.job_id,
                log_sink,
                REPAIR_TIMEOUT,
                {"ARMWHEELS_SYSROOT": SYSROOT, **repair_environment(spec)},
                guard_root=sandbox,
            )
            if done.code == 0:
                note(log_sink, f"repair on the builder's host: {time.monotonic() - started:.1f} s")
                return done
            if done.killed_for is not None:
                return done
            note(log_sink, "the repair on the builder's host failed: repairing in the build image")
            shutil.rmtree(sandbox / "out" / "wheelhouse", ignore_errors=True)
            return self._repair_in_image(spec, image, sandbox, log_sink)

        return repair

    def _sysroot(self, image: str, log_sink: BinaryIO) -> Path:
        note(log_sink, f"sysroot of {image}")
        try:
            return target_sysroot(
                self.client, image, self.settings.work_dir / "sysroots", self._labels()
            )
        except ENGINE_ERRORS as exc:
            raise SysrootError(f"the Docker engine failed: {exc}") from exc

    def _cross(self, spec: JobSpec, sdist: Path, workdir: Path, log_sink: BinaryIO) -> BuildOutcome:
        image = self._build_image(spec, log_sink)
        if isinstance(image, BuildOutcome):
            return image
        try:
            sysroot = self._sysroot(image, log_sink)
        except SysrootError as exc:
            note(log_sink, str(exc))
            return BuildOutcome(False, summary=str(exc))
        sandbox = workdir / "sandbox"
        self._prepare_sandbox(sandbox)
        out = sandbox / "out"
        sdist_in = f"/armwheels/sdist/{sdist.name}"
        constraints = write_constraints(spec.recipe, workdir / "recipe")
        env = recipe_environment(spec.recipe, CONSTRAINTS if constraints else None)
        env["ARMWHEELS_SYSROOT"] = SYSROOT
        env.update(repair_environment(spec))
        volumes = {
            str(sdist): {"bind": sdist_in, "mode": "ro"},
            str(sandbox): {"bind": WORK, "mode": "rw"},
            str(sysroot): {"bind": SYSROOT, "mode": "ro"},
        }
        if constraints is not None:
            volumes[str(constraints)] = {"bind": CONSTRAINTS, "mode": "ro"}
        host_platforms = platform_tags(HOST_ARCH, self.glibc_minor)
        if self.host_wheelhouse is not None:
            self.host_wheelhouse.fill_for(
                sdist, spec.python_tag, host_platforms, constraints, log_sink
            )
            volumes[str(self.host_wheelhouse.root)] = {"bind": WHEELHOUSE, "mode": "ro"}
            env["PIP_FIND_LINKS"] = WHEELHOUSE
        if self.wheelhouse is not None:
            # The target's wheels of the same requirements: their headers and static
            # libraries are what a compiled requirement's users link against.
            platforms = platform_tags(self.arch, self.glibc_minor)
            self.wheelhouse.fill_for(sdist, spec.python_tag, platforms, constraints, log_sink)
            if self.host_wheelhouse is not None:
                self.host_wheelhouse.target = self.wheelhouse
                self.host_wheelhouse.target_platforms = platforms
            volumes[str(self.wheelhouse.root)] = {"bind": TARGET_WHEELHOUSE, "mode": "ro"}
            env["ARMWHEELS_TARGET_WHEELHOUSE"] = TARGET_WHEELHOUSE
        env.update(network_environment(self.settings, None, log_sink, "none"))
        command = [
            "/bin/bash",
            "/armwheels/scripts/cross_build.sh",
            sdist_in,
            spec.python_tag,
            spec.policy,
            self.arch,
            self.triplet,
        ]

        def run_once(seconds_left: float) -> StepExit:
            return self._run(
                self.cross_image,
                command,
                dict(volumes),
                "none",
                spec.job_id,
                log_sink,
                seconds_left,
                env,
                guard_root=sandbox,
            )

        def start_afresh() -> None:
            shutil.rmtree(sandbox, ignore_errors=True)
            self._prepare_sandbox(sandbox)

        def run_build() -> StepExit:
            return build_in_rounds(
                run_once,
                start_afresh,
                spec=spec,
                arch=HOST_ARCH,
                settings=self.settings,
                wheelhouse=self.host_wheelhouse,
                egress=False,
                platforms=host_platforms,
                constraints=constraints,
                log_sink=log_sink,
            )

        return run_recipe(
            out,
            log_sink,
            self.settings.build_timeout,
            run_build,
            self._smoke_step(spec, log_sink),
        )

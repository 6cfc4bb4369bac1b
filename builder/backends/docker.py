"""Docker backend: each build and each smoke test in its own throw-away container.

The container is the sandbox for the sdist's code: an unprivileged uid, no capabilities,
a read-only root filesystem with a small tmpfs /tmp, memory (without swap), CPU and
process limits, a wall-clock limit and a cap on the work directory, the sdist and every
cache mounted read-only, and nothing of the builder's (token, master URL, config) inside.
No network either: build dependencies come from the wheelhouse, filled beforehand and
between rounds; a recipe's egress goes through the builder's filtering proxy
(builder/egress.py) over a mounted unix socket, never to the builder host or the farm.
Containers carry the builder's instance id (builder/identity.py) so that a restarted
builder removes what its own previous run left and never another builder's, and they are
removed in every case, including timeouts. The engine failing (an API error, a container
removed from under the builder) is the farm's fault, not the sdist's: FarmFault.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import docker
import docker.errors
import requests.exceptions
from docker.models.containers import Container

from builder.auto_packages import build_with_auto_packages
from builder.backends import (
    SCRIPTS,
    BuildOutcome,
    FarmFault,
    RunSmoke,
    StepExit,
    note,
    note_log_capped,
    offer_runtime_requirements,
    passthrough_environment,
    recipe_environment,
    refuse_unsafe_archive,
    repair_environment,
    run_recipe,
    write_constraints,
)
from builder.backends.guard import WorkdirGuard
from builder.backends.network import (
    build_in_rounds,
    egress_proxy,
    network_environment,
    without_builder_proxies,
)
from builder.backends.recipe_image import (
    RecipeImageError,
    ensure_recipe_image,
    installer_prefix,
)
from builder.backends.smoke_install import install_for_import
from builder.egress import EgressProxy
from builder.engine import ENGINE_ERRORS, wait_for_exit
from builder.identity import BuilderIdentity
from builder.wheelhouse import DEFAULT_INDEX_URL, Wheelhouse, platform_tags
from common.config import BuilderSettings, TargetSettings
from common.job_spec import JobSpec
from common.log_cap import CappedWriter, head_tail
from common.states import BuildPath, FailureReason

log = logging.getLogger(__name__)

# The builder's name, for people; INSTANCE, the id that makes a container this builder's.
LABEL = "armwheels.builder"
INSTANCE = "armwheels.instance"
CA_PATH = "/armwheels/ca-bundle.crt"
# The build's writable tree inside the container: a host folder the builder measures.
WORK = "/armwheels/work"
# Paths inside the throw-away container, not on the host.
CONTAINER_TMP = ["/tmp", "/var/tmp"]  # noqa: S108
# The smoke test's wheel, installed on the host, as the target's container sees it.
SMOKE_SITE = "/armwheels/smoke-site"
WHEELHOUSE = "/armwheels/wheelhouse"
CONSTRAINTS = "/armwheels/recipe/constraints.txt"
SMOKE_TIMEOUT = 600.0
# auditwheel repair of one wheel in a container of its own.
REPAIR_TIMEOUT = 600.0
# An egress build's proxy: where the container sees the host's socket folder.
EGRESS = "/armwheels/egress"


# Prints one tag (cp311) per interpreter found; errors and non-CPython ones print nothing.
INTERPRETER_PROBE = """
for py in /opt/python/*/bin/python /usr/bin/python3 /usr/bin/python3.* /usr/local/bin/python3.*; do
    case "$py" in *-config|*m) continue ;; esac
    [ -x "$py" ] || continue
    "$py" -c "import platform, sys
if platform.python_implementation() == 'CPython': print('cp%d%d' % sys.version_info[:2])" \
        2>/dev/null
done
for manager in apt-get dnf yum; do
    if command -v "$manager" >/dev/null; then echo "manager:$manager"; break; fi
done
echo "glibc:$(getconf GNU_LIBC_VERSION 2>/dev/null)"
true
"""
_TAG = re.compile(r"^cp3\d{1,2}$")
_GLIBC = re.compile(r"^glibc:glibc 2\.(\d+)$")


class DockerUnavailable(RuntimeError):
    """No Docker engine answers, or the build image is missing."""


def remove_left_behind(client: docker.DockerClient, instance: str) -> list[str]:
    """Remove the containers that this builder instance left (a build or an installer
    under way when it was killed), and no other's; returns their names."""
    removed = []
    for container in client.containers.list(all=True, filters={"label": f"{INSTANCE}={instance}"}):
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)
            removed.append(str(container.name))
    # Installers are named, not labelled: their names carry the instance id.
    prefix = installer_prefix(instance)
    for container in client.containers.list(all=True, filters={"name": prefix}):
        if str(container.name).startswith(prefix):
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
                removed.append(str(container.name))
    return removed


VANISHED = "removed from under the builder"


def _remove(container: Container) -> bool:
    """Remove a step's container; True when another hand removed it first (it is gone,
    or its removal is under way: Docker answers 409), so that the step's exit code is
    that of the kill. Another error leaves a container, which this builder's next start
    removes."""
    try:
        container.remove(force=True)
    except docker.errors.NotFound:
        return True
    except docker.errors.APIError as exc:
        if exc.status_code == 409 and "already in progress" in str(exc):
            return True
        log.warning("build container not removed: %s", exc, extra={"container": container.name})
    except requests.exceptions.ConnectionError as exc:
        log.warning("build container not removed: %s", exc, extra={"container": container.name})
    return False


class DockerBackend:
    name = "docker"

    def __init__(
        self,
        settings: BuilderSettings,
        arch: str,
        target: TargetSettings,
        identity: BuilderIdentity,
        index_url: str = DEFAULT_INDEX_URL,
        farm_index_url: str | None = None,
    ) -> None:
        self.settings = settings
        # The farm's upstream index (upstream.index_url), where build requirements come from.
        self.index_url = index_url
        self.arch = arch
        self.target = target
        self.builder_name = identity.name
        self.instance = identity.instance
        try:
            self.client = docker.from_env(timeout=120)
            self.client.ping()
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise DockerUnavailable(f"no Docker engine answers: {exc}") from exc
        try:
            self.client.images.get(target.image)
        except docker.errors.ImageNotFound as exc:
            raise DockerUnavailable(f"build image {target.image} is missing") from exc
        for name in remove_left_behind(self.client, self.instance):
            log.warning(
                "container left by this builder's last run removed", extra={"container": name}
            )
        self.package_manager: str | None = None
        self.glibc_minor = 17
        self.interpreters = self.discover_interpreters()
        self._current: Container | None = None
        self._cancelled = threading.Event()
        # The system packages the farm adds to the job under way's build image, besides
        # its recipe's (builder/auto_packages.py).
        self.added_packages: list[str] = []
        self.wheelhouse = (
            Wheelhouse(
                settings.work_dir / "wheelhouse" / arch,
                settings.wheelhouse_limit,
                settings.ca_bundle,
                index_url=index_url,
                farm_index_url=farm_index_url,
            )
            if settings.wheelhouse
            else None
        )

    def close(self) -> None:
        self.client.close()

    def discover_interpreters(self) -> list[str]:
        """The CPython tags the build image has: manylinux images keep theirs under
        /opt/python/, Debian images have /usr/bin/python3.X. Asked once, at start."""
        try:
            output = self.client.containers.run(
                self.target.image,
                ["/bin/sh", "-c", INTERPRETER_PROBE],
                network_mode="none",
                labels=self._labels(),
                remove=True,
                stdout=True,
                stderr=False,
            )
        except docker.errors.DockerException as exc:
            message = f"cannot start the build image {self.target.image}: {exc}"
            raise DockerUnavailable(message) from exc
        text = output.decode("utf-8", "replace") if isinstance(output, bytes) else ""
        lines = [line.strip() for line in text.splitlines()]
        found = sorted({line for line in lines if _TAG.match(line)})
        for line in lines:
            if line.startswith("manager:"):
                self.package_manager = line.partition(":")[2]
            elif match := _GLIBC.match(line):
                self.glibc_minor = int(match.group(1))
        log.info(
            "interpreters in build image",
            extra={
                "image": self.target.image,
                "python_tags": ",".join(found),
                "package_manager": self.package_manager,
                "glibc": f"2.{self.glibc_minor}",
            },
        )
        return found

    def python_tags(self) -> list[str]:
        """The configured tags this image can build (the master sends only these)."""
        return [tag for tag in self.target.python_tags if tag in self.interpreters]

    def _labels(self, job_id: int | None = None) -> dict[str, str]:
        labels = {LABEL: self.builder_name, INSTANCE: self.instance}
        if job_id is not None:
            labels["armwheels.job"] = str(job_id)
        return labels

    def _user(self) -> str:
        """Never root: the configured build uid, or the builder's own when it is not root."""
        uid = os.getuid()
        if uid == 0:
            return f"{self.settings.build_uid}:{self.settings.build_uid}"
        return f"{uid}:{os.getgid()}"

    def _environment(self, extra: dict[str, str]) -> dict[str, str]:
        ca_path = CA_PATH if self.settings.ca_bundle is not None else None
        # The builder's own proxies are of no use in a container without network; an
        # egress build gets the builder's filtering proxy instead.
        env = without_builder_proxies(passthrough_environment(self.settings, ca_path))
        env.update({"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONDONTWRITEBYTECODE": "1"})
        env.update(extra)
        env.update({"HOME": f"{WORK}/home", "TMPDIR": f"{WORK}/temp"})
        return env

    def _prepare_sandbox(self, folder: Path) -> None:
        """The build's writable folder, owned by the uid the build runs as."""
        folder.mkdir(parents=True, exist_ok=True)
        if os.getuid() == 0:
            os.chown(folder, self.settings.build_uid, self.settings.build_uid)
        folder.chmod(0o755)

    def _run(
        self,
        image: str,
        command: list[str],
        volumes: dict[str, dict[str, str]],
        network: str,
        job_id: int,
        log_sink: BinaryIO,
        timeout: float,
        env: dict[str, str],
        guard_root: Path | None = None,
    ) -> StepExit:
        """Run a container to completion, killed at the time limit or the work-dir cap.
        Raises FarmFault when the engine fails or the container is removed from under
        the builder: the step's result is then unknown, not the sdist's."""
        try:
            return self._run_container(
                image, command, volumes, network, job_id, log_sink, timeout, env, guard_root
            )
        except FarmFault:
            raise
        except ENGINE_ERRORS as exc:
            note(log_sink, f"the Docker engine failed: {exc}")
            raise FarmFault(f"Docker engine error: {exc}"[:300]) from exc

    def _run_container(
        self,
        image: str,
        command: list[str],
        volumes: dict[str, dict[str, str]],
        network: str,
        job_id: int,
        log_sink: BinaryIO,
        timeout: float,
        env: dict[str, str],
        guard_root: Path | None,
    ) -> StepExit:
        if self.settings.ca_bundle is not None:
            volumes[str(self.settings.ca_bundle)] = {"bind": CA_PATH, "mode": "ro"}
        volumes[str(SCRIPTS)] = {"bind": "/armwheels/scripts", "mode": "ro"}
        tmpfs_options = f"size={self.settings.tmp_size},mode=1777,nosuid,nodev"
        cpus = self.settings.cpus
        container: Container = self.client.containers.create(
            image,
            command,
            labels=self._labels(job_id),
            volumes=volumes,
            network_mode=network,
            environment=self._environment(env),
            user=self._user(),
            read_only=True,
            tmpfs=dict.fromkeys(CONTAINER_TMP, tmpfs_options),
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            mem_limit=self.settings.memory_limit,
            memswap_limit=self.settings.memory_limit,
            nano_cpus=int(cpus * 1e9) if cpus else None,
            pids_limit=self.settings.pids_limit,
            working_dir=f"{WORK}",
            detach=True,
        )
        self._current = container
        try:
            result = self._follow(container, job_id, log_sink, timeout, guard_root)
        finally:
            self._current = None
            taken = _remove(container)
        if taken:
            # Its exit code is then the kill's, not the build's (137 would read as out of
            # memory): nothing is known of how the step ended.
            note(log_sink, f"the build container was {VANISHED}")
            raise FarmFault(f"the build container was {VANISHED}")
        return result

    def _follow(
        self,
        container: Container,
        job_id: int,
        log_sink: BinaryIO,
        timeout: float,
        guard_root: Path | None,
    ) -> StepExit:
        """Start the container, stream its output and wait for its end or a limit."""
        # However much the build prints, the log keeps its first and last halves.
        capped = CappedWriter(log_sink, *head_tail(self.settings.max_log_bytes))
        pump = threading.Thread(target=self._pump, args=(container, capped, log_sink), daemon=True)

        def drain(seconds: float) -> None:
            pump.join(timeout=seconds)
            capped.finish()
            log_sink.flush()
            if capped.left_out:
                note_log_capped(log_sink, capped.left_out, self.settings.max_log_bytes)

        guard = (
            WorkdirGuard(guard_root, self.settings.work_dir_limit, self._kill, job_id)
            if guard_root is not None
            else None
        )
        if self._cancelled.is_set():
            return StepExit(None, killed_for="cancelled")
        container.start()
        if self._cancelled.is_set():
            self._kill()  # cancel() came between the check and the start
        pump.start()
        with guard or contextlib.nullcontext():
            code = wait_for_exit(container, timeout)
            if code is None:
                with contextlib.suppress(docker.errors.NotFound):
                    container.kill()
                drain(10)
                note(log_sink, f"killed after the time limit of {timeout:.0f} s")
                return StepExit(None, killed_for="timeout")
        drain(30)
        if self._cancelled.is_set():
            note(log_sink, "killed: the build was cancelled")
            return StepExit(None, killed_for="cancelled")
        if guard is not None and guard.exceeded:
            detail = f"work directory passed its limit of {self.settings.work_dir_limit} bytes"
            note(log_sink, f"killed: {detail}")
            return StepExit(None, killed_for="work-dir", detail=detail)
        with contextlib.suppress(docker.errors.NotFound):  # then _remove() says it is gone
            container.reload()
        oom = bool(container.attrs.get("State", {}).get("OOMKilled"))
        if oom:
            note(log_sink, f"the kernel killed the build at its {self.settings.memory_limit}")
        return StepExit(code, oom_killed=oom)

    def _kill(self) -> None:
        container = self._current
        if container is not None:
            with contextlib.suppress(docker.errors.APIError):
                container.kill()

    def cancel(self) -> None:
        """Kill the container under way and refuse the next steps of this build; reset()
        lets the next job build."""
        self._cancelled.set()
        self._kill()

    def reset(self) -> None:
        self._cancelled.clear()

    @staticmethod
    def _pump(container: Container, capped: CappedWriter, log_sink: BinaryIO) -> None:
        try:
            for chunk in container.logs(stream=True, follow=True):
                capped.write(chunk)
                log_sink.flush()
        except (docker.errors.APIError, requests.exceptions.RequestException, ValueError):
            pass

    def recipe_packages(self, spec: JobSpec) -> list[str]:
        """The recipe's system packages for this image's package manager."""
        if spec.recipe is None:
            return []
        return spec.recipe.system_packages(self.package_manager or "")

    def _build_image(self, spec: JobSpec, log_sink: BinaryIO) -> str | BuildOutcome:
        """The target's image, or its derivative with the recipe's system packages and
        those the farm added (added_packages)."""
        recipe = spec.recipe
        wants_packages = recipe is not None and bool(recipe.apt or recipe.yum)
        if not wants_packages and not self.added_packages:
            return self.target.image
        manager = self.package_manager
        packages = sorted({*self.recipe_packages(spec), *self.added_packages})
        if not packages:
            note(log_sink, f"recipe has no packages for {manager or 'this image'}")
            return self.target.image
        if manager is None:
            summary = (
                f"recipe needs {' '.join(packages)}; {self.target.image} has no package manager"
            )
            return BuildOutcome(False, reason=FailureReason.RECIPE_FAILED, summary=summary)
        ca = str(self.settings.ca_bundle) if self.settings.ca_bundle is not None else None
        try:
            return ensure_recipe_image(
                self.client,
                self.target.image,
                manager,
                packages,
                network=self.settings.recipe_network,
                environment=passthrough_environment(self.settings, None),
                ca_bundle=ca,
                log_sink=log_sink,
                owner=self.instance,
            )
        except RecipeImageError as exc:
            return BuildOutcome(False, reason=FailureReason.RECIPE_FAILED, summary=str(exc))
        except ENGINE_ERRORS as exc:
            note(log_sink, f"the Docker engine failed: {exc}")
            raise FarmFault(f"Docker engine error: {exc}"[:300]) from exc

    def build(self, spec: JobSpec, sdist: Path, workdir: Path, log_sink: BinaryIO) -> BuildOutcome:
        if refused := refuse_unsafe_archive(sdist, self.settings, log_sink):
            return refused

        def build_with(added: list[str]) -> BuildOutcome:
            self.added_packages = list(added)
            for folder in ("sandbox", "cross"):  # a new round starts from the sdist
                shutil.rmtree(workdir / folder, ignore_errors=True)
            return self.build_paths(spec, sdist, workdir, log_sink)

        try:
            return build_with_auto_packages(
                build_with,
                self.package_manager,
                self.settings.auto_packages,
                self.recipe_packages(spec),
                log_sink,
                spec.job_id,
            )
        finally:
            self.added_packages = []

    def build_paths(
        self, spec: JobSpec, sdist: Path, workdir: Path, log_sink: BinaryIO
    ) -> BuildOutcome:
        """One build of the job, its archive already checked: here, emulated."""
        note(log_sink, f"build path: emulated ({self.target.image} for {self.arch})")
        outcome = self.build_emulated(spec, sdist, workdir, log_sink)
        outcome.build_path = BuildPath.EMULATED
        return outcome

    def build_emulated(
        self, spec: JobSpec, sdist: Path, workdir: Path, log_sink: BinaryIO
    ) -> BuildOutcome:
        """The build in the target's image under QEMU, its archive already checked."""
        with egress_proxy(spec, self.settings, log_sink) as proxy:
            return self._build(spec, sdist, workdir, log_sink, proxy)

    def _build(
        self,
        spec: JobSpec,
        sdist: Path,
        workdir: Path,
        log_sink: BinaryIO,
        proxy: EgressProxy | None,
    ) -> BuildOutcome:
        sandbox = workdir / "sandbox"
        self._prepare_sandbox(sandbox)
        out = sandbox / "out"
        sdist_in = f"/armwheels/sdist/{sdist.name}"
        image = self._build_image(spec, log_sink)
        if isinstance(image, BuildOutcome):
            return image
        note(
            log_sink,
            f"build container from {image} for job {spec.job_id} as uid {self._user()}",
        )
        timeout = self.settings.build_timeout
        constraints = write_constraints(spec.recipe, workdir / "recipe")
        env = recipe_environment(spec.recipe, CONSTRAINTS if constraints else None)
        env.update(repair_environment(spec))
        volumes = {
            str(sdist): {"bind": sdist_in, "mode": "ro"},
            str(sandbox): {"bind": WORK, "mode": "rw"},
        }
        if constraints is not None:
            volumes[str(constraints)] = {"bind": CONSTRAINTS, "mode": "ro"}
        platforms = platform_tags(self.arch, self.glibc_minor, spec.policy)
        if self.wheelhouse is not None:
            self.wheelhouse.fill_for(sdist, spec.python_tag, platforms, constraints, log_sink)
            # Offered even when the sdist's requirements could not be read: an offline
            # build then asks for what it lacks, one round at a time.
            volumes[str(self.wheelhouse.root)] = {"bind": WHEELHOUSE, "mode": "ro"}
            env["PIP_FIND_LINKS"] = WHEELHOUSE
        if proxy is not None:
            volumes[str(proxy.folder)] = {"bind": EGRESS, "mode": "ro"}
        env.update(
            network_environment(
                self.settings, EGRESS if proxy else None, log_sink, self.settings.network
            )
        )
        repair = self._repair_elsewhere(spec, image, sandbox, log_sink)
        if repair is not None:
            env["ARMWHEELS_REPAIR"] = "elsewhere"

        def run_once(seconds_left: float) -> StepExit:
            command = [
                "/bin/bash",
                "/armwheels/scripts/build.sh",
                sdist_in,
                spec.python_tag,
                spec.policy,
            ]
            return self._run(
                image,
                command,
                dict(volumes),
                self.settings.network,
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
            built = build_in_rounds(
                run_once,
                start_afresh,
                spec=spec,
                arch=self.arch,
                settings=self.settings,
                wheelhouse=self.wheelhouse,
                egress=proxy is not None,
                platforms=platforms,
                constraints=constraints,
                log_sink=log_sink,
            )
            if repair is None or built.code != 0 or built.killed_for is not None:
                return built
            return repair()

        return run_recipe(out, log_sink, timeout, run_build, self._smoke_step(spec, log_sink))

    def _repair_elsewhere(
        self, spec: JobSpec, image: str, sandbox: Path, log_sink: BinaryIO
    ) -> Callable[[], StepExit] | None:
        """The step that repairs the built wheel outside its build container, or None:
        build.sh repairs it where it was built (here, in the target's image)."""
        return None

    def _repair_in_image(
        self, spec: JobSpec, image: str, sandbox: Path, log_sink: BinaryIO
    ) -> StepExit:
        """auditwheel in the target's own image, on the wheel a build left in `sandbox`."""
        return self._run(
            image,
            ["/bin/bash", "/armwheels/scripts/repair_wheel.sh", spec.policy],
            {str(sandbox): {"bind": WORK, "mode": "rw"}},
            "none",
            spec.job_id,
            log_sink,
            REPAIR_TIMEOUT,
            repair_environment(spec),
            guard_root=sandbox,
        )

    def _smoke_step(self, spec: JobSpec, log_sink: BinaryIO) -> RunSmoke:
        """The smoke test of a repaired wheel, on any path: a fresh container of the
        target's own image (emulated), without the recipe's packages: the wheel must carry
        the libraries it needs."""

        def run_smoke(wheel: Path, modules: list[str], requirements: list[str]) -> StepExit:
            # Installed natively on the host (builder/backends/smoke_install.py), imported
            # in the target's container: only the import is emulated.
            site = wheel.parent.parent / "smoke-site"
            shutil.rmtree(site, ignore_errors=True)
            platforms = platform_tags(self.arch, self.glibc_minor, spec.policy)
            links = None
            if offer_runtime_requirements(
                self.wheelhouse, requirements, spec.python_tag, platforms, log_sink
            ):
                assert self.wheelhouse is not None
                links = self.wheelhouse.root
            started = time.monotonic()
            if not install_for_import(wheel, site, spec.python_tag, platforms, links, log_sink):
                return StepExit(15)
            note(log_sink, f"smoke install on the host: {time.monotonic() - started:.1f} s")
            command = [
                "/bin/bash",
                "/armwheels/scripts/smoke.sh",
                wheel.name,
                spec.python_tag,
                *modules,
            ]
            volumes = {str(site): {"bind": SMOKE_SITE, "mode": "ro"}}
            env = {"ARMWHEELS_SMOKE_SITE": SMOKE_SITE}
            return self._run(
                self.target.image,
                command,
                volumes,
                "none",
                spec.job_id,
                log_sink,
                SMOKE_TIMEOUT,
                env,
            )

        return run_smoke

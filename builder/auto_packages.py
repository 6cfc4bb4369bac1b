"""A build that fails for a missing system library is built again with it installed.

The diagnosis (builder/classify.py) names the distribution package that provides a
missing header, library, pkg-config module or CMake package. Where the operator's policy
(builder.auto_packages) allows it, the backend installs that package into a derived
image (builder/backends/recipe_image.py: the cached images recipes use too) and builds
again, within the same attempt; the result tells the master which packages the build
needed, and the master starts the project's next builds with them (a learned recipe,
master/builds/learned_packages.py). Packages come only from the build image's own
package sources: the derived image is made by the image's own package manager.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from builder.backends import BuildOutcome, note
from builder.classify import system_packages_for
from common.config import AutoPackagesSettings
from common.states import FailureReason

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AutoPlan:
    """What to install before building again (`add`, empty: build no more), and why;
    `for_summary`: the why belongs in the failure's summary (a named package was not
    installed), not only in the log."""

    add: list[str]
    why: str
    for_summary: bool = True


def plan(
    outcome: BuildOutcome,
    manager: str | None,
    settings: AutoPackagesSettings,
    installed: Sequence[str],
) -> AutoPlan:
    """Whether `outcome` is a build that a package of the image's archive would fix."""
    diagnosis = outcome.diagnosis
    if outcome.built or diagnosis is None:
        return AutoPlan([], "")
    if outcome.reason is not FailureReason.MISSING_SYSTEM_LIBRARY:
        return AutoPlan([], "")
    wanted = system_packages_for(diagnosis, manager or "")
    if not wanted:
        return AutoPlan([], "no package of this image is known to provide it", False)
    new = [package for package in wanted if package not in installed]
    if not new:
        return AutoPlan([], f"{' '.join(wanted)} was installed and the build still fails")
    if denied := [package for package in new if package in settings.deny]:
        return AutoPlan([], f"{' '.join(denied)} is on builder.auto_packages.deny")
    if not settings.enabled:
        return AutoPlan([], "builder.auto_packages is off")
    missing = diagnosis.missing or diagnosis.summary
    return AutoPlan(new, f"the build needs {' '.join(new)} (missing {missing})")


def build_with_auto_packages(
    build: Callable[[list[str]], BuildOutcome],
    manager: str | None,
    settings: AutoPackagesSettings,
    recipe_packages: Sequence[str],
    log_sink: BinaryIO,
    job_id: int,
) -> BuildOutcome:
    """Run `build(added)` (added: the packages the farm installs besides the recipe's),
    and again with what each failure names, up to settings.rounds more times."""
    added: list[str] = []
    outcome = build(added)
    for _ in range(settings.rounds):
        step = plan(outcome, manager, settings, [*recipe_packages, *added])
        if not step.add:
            if step.why:
                note(log_sink, f"auto packages: not building again: {step.why}")
            if step.why and step.for_summary:
                outcome.summary = f"{outcome.summary} (not installed: {step.why})"
            break
        note(log_sink, f"auto packages: {step.why}: installing it and building again")
        log.info(
            "building again with system packages",
            extra={"job_id": job_id, "packages": " ".join(step.add), "manager": manager},
        )
        before = outcome
        added += step.add
        outcome = build(added)
        if outcome.reason is FailureReason.RECIPE_FAILED:
            # The package would not install (not in the archive, a conflict): the first
            # failure is the one to report, with what was tried.
            note(log_sink, f"auto packages: installing {' '.join(step.add)} failed")
            before.summary = f"{before.summary} (installing {' '.join(step.add)} failed)"
            added = added[: -len(step.add)]
            outcome = before
            break
    outcome.auto_packages = added or None
    outcome.package_manager = manager
    outcome.build_packages = sorted({*recipe_packages, *added}) or None
    return outcome

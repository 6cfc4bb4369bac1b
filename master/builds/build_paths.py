"""How each job was built (common.states.BuildPath), and what the master learns from it.

A builder on an x86_64 host tries the cross path first and falls back to emulation in
the same attempt. A project whose cross build fell back while the emulated one built
its wheel has shown that the cross path cannot build it (its build runs code it
compiled, or the like): its next jobs go straight to emulation instead of paying for a
cross build that would fail again, until an operator clears the mark (`armwheels cross
reset`), for instance once the cross toolchain learned what that project needs. When
both paths failed, the sdist is at fault, not the cross path, and nothing is learned.
"""

from __future__ import annotations

import logging

from common.models import BuildJob, Project
from common.recipes import Recipe
from common.states import BuildPath

log = logging.getLogger(__name__)

RECIPE_SAYS_EMULATE = "its recipe says emulate = true"


def record(job: BuildJob, build_path: BuildPath | None, built: bool) -> None:
    """The path of the attempt the builder just reported (None from older builders)."""
    job.build_path = build_path.value if build_path is not None else None
    if build_path is not BuildPath.EMULATED_AFTER_CROSS or not built:
        return
    project = job.release.project
    why = (
        f"the cross build of {project.name} {job.release.version} fell back to emulation"
        f" (job {job.id})"
    )
    if project.emulate_because != why:
        project.emulate_because = why
        log.info(
            "project marked for emulation",
            extra={"project": project.name, "job_id": job.id, "why": why},
        )


def emulate_because(project: Project, recipe: Recipe | None) -> str | None:
    """Why this project's jobs are to be emulated, not cross-compiled; None: no reason."""
    if recipe is not None and recipe.emulate:
        return RECIPE_SAYS_EMULATE
    return project.emulate_because


def clear(project: Project) -> str | None:
    """Let the cross path try the project again; returns the mark cleared (None: none)."""
    was, project.emulate_because = project.emulate_because, None
    return was

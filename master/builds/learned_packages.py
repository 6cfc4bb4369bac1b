"""The system packages a project's builds needed, learned from its builders' results.

A builder whose build failed for a missing system library installs the package the
diagnosis names and builds again (builder/auto_packages.py); its result says which
packages it added. When that build made the wheel, the project keeps those packages, by
package manager, and every later job of the project is sent a recipe with them (the
operator's recipe, if any, plus these): its next release builds on the first try. An
operator pins them with `armwheels recipe suggest PROJECT`, which prints them as a recipe.
"""

from __future__ import annotations

import logging

from common.models import BuildJob, Project
from common.protocol import ResultForm
from common.recipes import RECIPE_FIELD_OF_MANAGER, Recipe

log = logging.getLogger(__name__)


def record(job: BuildJob, form: ResultForm, built: bool) -> None:
    """Keep what the job's build needed; learn the builder's additions when it built."""
    job.build_packages = (form.build_packages or "").split() or None
    job.auto_packages = (form.auto_packages or "").split() or None
    job.package_manager = form.package_manager if job.build_packages else None
    if not built or not job.auto_packages or form.package_manager is None:
        return
    project = job.release.project
    learned = dict(project.learned_packages or {})
    known = learned.get(form.package_manager, [])
    merged = sorted({*known, *job.auto_packages})
    if merged == known:
        return
    learned[form.package_manager] = merged
    project.learned_packages = learned
    log.info(
        "system packages learned",
        extra={
            "project": project.name,
            "job_id": job.id,
            "manager": form.package_manager,
            "packages": " ".join(job.auto_packages),
        },
    )


def with_learned(recipe: Recipe | None, project: Project) -> Recipe | None:
    """The recipe a job of `project` is sent: the operator's with the learned packages."""
    if not project.learned_packages:
        return recipe
    return (recipe or Recipe()).with_packages(project.learned_packages)


def suggest(project: Project) -> str:
    """The learned packages as a recipe file's entry, for an operator to pin; empty when
    nothing was learned."""
    learned = project.learned_packages or {}
    fields: dict[str, list[str]] = {}
    for manager, packages in sorted(learned.items()):
        field = RECIPE_FIELD_OF_MANAGER.get(manager)
        if field is not None:
            fields[field] = sorted({*fields.get(field, []), *packages})
    if not fields:
        return ""
    lines = [f'[recipes."{project.name}"]']
    for field, packages in sorted(fields.items()):
        quoted = ", ".join(f'"{package}"' for package in packages)
        lines.append(f"{field} = [{quoted}]")
    return "\n".join(lines) + "\n"

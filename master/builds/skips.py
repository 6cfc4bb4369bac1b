"""The operator's skip list: projects or single releases the farm must not build."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.models import Project, Release, SkipRule
from common.names import BadName, normalize_project, parse_version
from common.states import SkipReason
from master.builds.jobs import skip_releases


class SkipRuleError(ValueError):
    """A rule that names nothing valid, or that exists already / does not exist."""


def _key(project: str, version: str | None) -> tuple[str, str | None]:
    try:
        name = normalize_project(project)
        normal = str(parse_version(version)) if version is not None else None
    except BadName as exc:
        raise SkipRuleError(str(exc)) from exc
    return name, normal


def _find(session: Session, name: str, version: str | None) -> SkipRule | None:
    condition = SkipRule.version.is_(None) if version is None else SkipRule.version == version
    return session.scalar(select(SkipRule).where(SkipRule.project == name, condition))


def add_rule(
    session: Session, project: str, version: str | None, reason: str, created_by: str
) -> tuple[SkipRule, int]:
    """Add a rule and end the waiting jobs it covers; returns the rule and that count."""
    name, normal = _key(project, version)
    reason = reason.strip()
    if not reason or len(reason) > 500:
        raise SkipRuleError("a reason of 1 to 500 characters is required")
    if _find(session, name, normal) is not None:
        raise SkipRuleError(f"{name} {normal or '(all releases)'} is already on the skip list")
    rule = SkipRule(project=name, version=normal, reason=reason, created_by=created_by)
    session.add(rule)
    query = select(Release).join(Project).where(Project.name == name)
    if normal is not None:
        query = query.where(Release.version == normal)
    releases = list(session.scalars(query))
    for release in releases:
        if release.skip_reason is None:
            release.skip_reason = SkipReason.SKIP_LIST
    settled = skip_releases(session, [r.id for r in releases], SkipReason.SKIP_LIST)
    session.flush()
    return rule, settled


def remove_rule(session: Session, project: str, version: str | None) -> None:
    """Drop a rule; releases it stopped are built again when a feed next names them."""
    name, normal = _key(project, version)
    rule = _find(session, name, normal)
    if rule is None:
        raise SkipRuleError(f"{name} {normal or '(all releases)'} is not on the skip list")
    session.delete(rule)
    query = (
        select(Release)
        .join(Project)
        .where(Project.name == name, Release.skip_reason == SkipReason.SKIP_LIST)
    )
    if normal is not None:
        query = query.where(Release.version == normal)
    for release in session.scalars(query):
        release.skip_reason = None
    session.flush()


def list_rules(session: Session) -> list[SkipRule]:
    # A project's whole-project rule first, then its releases.
    order = (SkipRule.project, SkipRule.version.is_not(None), SkipRule.version)
    return list(session.scalars(select(SkipRule).order_by(*order)))

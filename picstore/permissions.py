"""The permission rule as pure functions: which grants allow what, on which project.

A grant names a permission and either one project or the whole team (project None). `team:admin` passes
every check within its scope. A few permissions imply `project:read`, so whoever may write a project's
objects may also read them back (Pic Store had no hierarchy at all, which made `image:create` keys unable
to read the image they had just uploaded).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Literal, get_args

Permission = Literal[
    "team:admin",
    "team:write",
    "project:create",
    "project:write",
    "project:read",
    "image:edit",
    "image:create",
    "conversion_profile:write",
    "storage_location:write",
]
ALL: tuple[str, ...] = get_args(Permission)
ADMIN = "team:admin"

IMPLIES: dict[str, frozenset[str]] = {
    "project:write": frozenset({"project:read"}),
    "image:create": frozenset({"project:read"}),
    "image:edit": frozenset({"project:read"}),
    "conversion_profile:write": frozenset({"project:read"}),
    "storage_location:write": frozenset({"project:read"}),
}


@dataclass(frozen=True, slots=True)
class Grant:
    permission: str
    project_id: uuid.UUID | None  # None: team-wide


@dataclass(frozen=True, slots=True)
class Scope:
    """Where a permission holds: everywhere in the team, or in these projects only."""

    everywhere: bool
    projects: frozenset[uuid.UUID]

    @property
    def empty(self) -> bool:
        return not self.everywhere and not self.projects


def _grants_permission(grant: Grant, permission: str) -> bool:
    held = grant.permission
    return held in (permission, ADMIN) or permission in IMPLIES.get(held, frozenset())


def allows(grants: tuple[Grant, ...], permission: str, project_id: uuid.UUID | None) -> bool:
    """project_id None means a team-level action or a team-global object: only team-wide grants count."""
    return any(
        _grants_permission(g, permission) and (g.project_id is None or g.project_id == project_id)
        for g in grants
    )


def scope(grants: tuple[Grant, ...], permission: str) -> Scope:
    matching = [g for g in grants if _grants_permission(g, permission)]
    return Scope(
        everywhere=any(g.project_id is None for g in matching),
        projects=frozenset(g.project_id for g in matching if g.project_id is not None),
    )


def covers(holder: tuple[Grant, ...], wanted: Grant) -> bool:
    """Whether `holder` may hand out `wanted` (an API key never gets more than its creator has)."""
    if wanted.project_id is None:
        return allows(holder, wanted.permission, None)
    return allows(holder, wanted.permission, wanted.project_id)

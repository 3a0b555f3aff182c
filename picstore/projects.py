"""Projects: the team's containers for upload profiles and images. Functions never commit."""

from __future__ import annotations

import uuid

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from picstore import db, errors, ids, models, paths, schemas
from picstore.auth import Caller


def out(project: models.Project) -> schemas.ProjectOut:
    return schemas.ProjectOut(
        id=ids.format_id(ids.PROJECT, project.id),
        name=project.name,
        base_location=project.base_location,
        updated=project.updated,
    )


async def list_projects(session: AsyncSession, caller: Caller) -> list[models.Project]:
    query = (
        select(models.Project)
        .where(db.live(models.Project, caller), db.allowed_in(models.Project.id, caller, "project:read"))
        .order_by(models.Project.id)
    )
    return list((await session.scalars(query)).all())


async def get(
    session: AsyncSession, caller: Caller, project_id: uuid.UUID, permission: str
) -> models.Project:
    query = select(models.Project).where(models.Project.id == project_id, db.live(models.Project, caller))
    project: models.Project = await db.get_allowed(
        session, query, models.Project.id, caller, permission, "project"
    )
    return project


async def require_live(session: AsyncSession, caller: Caller, project_id: uuid.UUID) -> None:
    """404 unless the project exists in the caller's team (used where the path names a project)."""
    found = await session.scalar(
        select(func.count()).where(models.Project.id == project_id, db.live(models.Project, caller))
    )
    if not found:
        raise errors.NotFound("project")


async def create(session: AsyncSession, caller: Caller, data: schemas.ProjectIn) -> models.Project:
    caller.require("project:create", None)
    project = models.Project(
        id=ids.new_uuid(),
        team_id=caller.team_id,
        name=data.name,
        base_location=paths.clean_segment(data.base_location, "base_location"),
    )
    session.add(project)
    await session.flush()
    await session.refresh(project)
    return project


async def update(
    session: AsyncSession, caller: Caller, project_id: uuid.UUID, data: schemas.ProjectIn
) -> models.Project:
    project = await get(session, caller, project_id, "project:write")
    project.name = data.name
    project.base_location = paths.clean_segment(data.base_location, "base_location")
    await session.flush()
    await session.refresh(project)
    return project


async def delete(session: AsyncSession, caller: Caller, project_id: uuid.UUID) -> None:
    project = await get(session, caller, project_id, "project:write")
    project.deleted = func.now()
    await session.flush()

"""A team's users, roles and API keys. Functions never commit.

Nobody hands out more than they hold: a role's grants and an API key's grants must be covered by the
caller's grants, so `team:write` cannot mint a `team:admin` role. Nobody changes what holds more than
they do either: editing or deleting a role or a user needs every grant it holds, so `team:write` cannot
strip the Admin role or lock out an admin.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime

import anyio.to_thread
from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from picstore import auth, db, errors, ids, models, permissions, schemas
from picstore.auth import Caller
from picstore.models import NIL_UUID

TEAM_PERMISSION = "team:write"


def _grant_out(permission: str, project_id: uuid.UUID) -> schemas.GrantOut:
    return schemas.GrantOut(
        permission=permission,
        project_id=None if project_id == NIL_UUID else ids.format_id(ids.PROJECT, project_id),
    )


def _require_covers(caller: Caller, grants: Iterable[permissions.Grant]) -> None:
    for grant in grants:
        if not permissions.covers(caller.grants, grant):
            raise errors.MissingPermission(grant.permission)


async def _grants_in(
    session: AsyncSession, caller: Caller, grants: list[schemas.GrantIn]
) -> list[permissions.Grant]:
    """Parse grants, check their projects exist in the team and that the caller may give them."""
    parsed = []
    for g in grants:
        project_id = None if g.project_id is None else db.parse_ref(ids.PROJECT, g.project_id, "project_id")
        if project_id is not None:
            live = await session.scalar(
                select(func.count()).where(models.Project.id == project_id, db.live(models.Project, caller))
            )
            if not live:
                raise errors.Invalid(f"project_id: {g.project_id!r} does not exist in this team")
        parsed.append(permissions.Grant(g.permission, project_id))
    _require_covers(caller, parsed)
    return list(dict.fromkeys(parsed))


# Roles


async def role_out(session: AsyncSession, role: models.Role) -> schemas.RoleOut:
    rows = await session.execute(
        select(models.RolePermission.permission, models.RolePermission.project_id)
        .where(models.RolePermission.role_id == role.id)
        .order_by(models.RolePermission.permission)
    )
    return schemas.RoleOut(
        id=ids.format_id(ids.ROLE, role.id),
        name=role.name,
        permissions=[_grant_out(p, pid) for p, pid in rows],
    )


async def list_roles(session: AsyncSession, caller: Caller) -> list[models.Role]:
    caller.require(TEAM_PERMISSION, None)
    query = select(models.Role).where(models.Role.team_id == caller.team_id).order_by(models.Role.id)
    return list((await session.scalars(query)).all())


async def _role(session: AsyncSession, caller: Caller, role_id: uuid.UUID) -> models.Role:
    role = await session.scalar(
        select(models.Role).where(models.Role.id == role_id, models.Role.team_id == caller.team_id)
    )
    if role is None:
        raise errors.NotFound("role")
    return role


async def _role_grants(session: AsyncSession, role_id: uuid.UUID) -> list[permissions.Grant]:
    rows = await session.execute(
        select(models.RolePermission.permission, models.RolePermission.project_id).where(
            models.RolePermission.role_id == role_id
        )
    )
    return [permissions.Grant(p, None if pid == NIL_UUID else pid) for p, pid in rows]


async def _role_for_change(session: AsyncSession, caller: Caller, role_id: uuid.UUID) -> models.Role:
    caller.require(TEAM_PERMISSION, None)
    role = await _role(session, caller, role_id)
    _require_covers(caller, await _role_grants(session, role.id))
    return role


async def _set_role_grants(
    session: AsyncSession, caller: Caller, role: models.Role, grants: list[schemas.GrantIn]
) -> None:
    parsed = await _grants_in(session, caller, grants)
    await session.execute(delete(models.RolePermission).where(models.RolePermission.role_id == role.id))
    session.add_all(
        models.RolePermission(
            role_id=role.id,
            team_id=caller.team_id,
            permission=g.permission,
            project_id=g.project_id or NIL_UUID,
        )
        for g in parsed
    )
    await session.flush()


async def create_role(session: AsyncSession, caller: Caller, data: schemas.RoleIn) -> models.Role:
    caller.require(TEAM_PERMISSION, None)
    role = models.Role(id=ids.new_uuid(), team_id=caller.team_id, name=data.name)
    session.add(role)
    await session.flush()
    await _set_role_grants(session, caller, role, data.permissions)
    return role


async def set_role_permissions(
    session: AsyncSession, caller: Caller, role_id: uuid.UUID, data: schemas.RolePermissionsIn
) -> models.Role:
    role = await _role_for_change(session, caller, role_id)
    await _set_role_grants(session, caller, role, data.permissions)
    return role


async def delete_role(session: AsyncSession, caller: Caller, role_id: uuid.UUID) -> None:
    role = await _role_for_change(session, caller, role_id)
    await session.delete(role)
    await session.flush()


# Users


async def user_out(session: AsyncSession, user: models.User) -> schemas.UserOut:
    role_ids = await session.scalars(
        select(models.UserRole.role_id)
        .where(models.UserRole.user_id == user.id)
        .order_by(models.UserRole.role_id)
    )
    return schemas.UserOut(
        id=ids.format_id(ids.USER, user.id),
        email=user.email,
        name=user.name,
        has_password=user.password_hash is not None,
        role_ids=[ids.format_id(ids.ROLE, r) for r in role_ids],
        default_upload_profile_id=None
        if user.default_upload_profile_id is None
        else ids.format_id(ids.UPLOAD_PROFILE, user.default_upload_profile_id),
        updated=user.updated,
    )


async def list_users(session: AsyncSession, caller: Caller) -> list[models.User]:
    caller.require(TEAM_PERMISSION, None)
    query = select(models.User).where(db.live(models.User, caller)).order_by(models.User.id)
    return list((await session.scalars(query)).all())


async def get_user(session: AsyncSession, caller: Caller, user_id: uuid.UUID) -> models.User:
    if user_id != caller.user_id:
        caller.require(TEAM_PERMISSION, None)
    user = await session.scalar(
        select(models.User).where(models.User.id == user_id, db.live(models.User, caller))
    )
    if user is None:
        raise errors.NotFound("user")
    return user


async def _user_for_change(session: AsyncSession, caller: Caller, user_id: uuid.UUID) -> models.User:
    user = await get_user(session, caller, user_id)
    _require_covers(caller, await auth.user_grants(session, user.id, caller.team_id))
    return user


async def _upload_profile_ref(session: AsyncSession, caller: Caller, text: str | None) -> uuid.UUID | None:
    if text is None:
        return None
    profile_id = db.parse_ref(ids.UPLOAD_PROFILE, text, "default_upload_profile_id")
    found = await session.scalar(
        select(func.count()).where(
            models.UploadProfile.id == profile_id, db.live(models.UploadProfile, caller)
        )
    )
    if not found:
        raise errors.Invalid(f"default_upload_profile_id: {text!r} does not exist in this team")
    return profile_id


async def _password_hash(password: str | None) -> str | None:
    if password is None:
        return None
    return await anyio.to_thread.run_sync(auth.hash_password, password)


async def create_user(session: AsyncSession, caller: Caller, data: schemas.UserIn) -> models.User:
    caller.require(TEAM_PERMISSION, None)
    user = models.User(
        id=ids.new_uuid(),
        team_id=caller.team_id,
        email=data.email,
        name=data.name,
        password_hash=await _password_hash(data.password),
        default_upload_profile_id=await _upload_profile_ref(session, caller, data.default_upload_profile_id),
    )
    session.add(user)
    await session.flush()
    await _set_user_roles(session, caller, user, data.role_ids)
    await session.refresh(user)
    return user


async def update_user(
    session: AsyncSession, caller: Caller, user_id: uuid.UUID, data: schemas.UserUpdate
) -> models.User:
    user = await _user_for_change(session, caller, user_id)
    if data.email is not None:
        user.email = data.email
    if data.name is not None:
        user.name = data.name
    if data.password is not None:
        user.password_hash = await _password_hash(data.password)
    if data.default_upload_profile_id is not None:
        user.default_upload_profile_id = await _upload_profile_ref(
            session, caller, data.default_upload_profile_id
        )
    await session.flush()
    await session.refresh(user)
    return user


async def delete_user(session: AsyncSession, caller: Caller, user_id: uuid.UUID) -> None:
    caller.require(TEAM_PERMISSION, None)
    user = await _user_for_change(session, caller, user_id)
    user.deleted = func.now()
    await session.execute(
        update(models.ApiKey).where(models.ApiKey.user_id == user.id).values(revoked=func.now())
    )
    await session.flush()


async def _set_user_roles(
    session: AsyncSession, caller: Caller, user: models.User, role_texts: list[str]
) -> None:
    role_ids = list(dict.fromkeys(db.parse_ref(ids.ROLE, r, "role_ids") for r in role_texts))
    for role_id in role_ids:
        role = await session.scalar(
            select(models.Role).where(models.Role.id == role_id, models.Role.team_id == caller.team_id)
        )
        if role is None:
            raise errors.Invalid(f"role_ids: {ids.format_id(ids.ROLE, role_id)} does not exist in this team")
        _require_covers(caller, await _role_grants(session, role_id))
    await session.execute(delete(models.UserRole).where(models.UserRole.user_id == user.id))
    session.add_all(models.UserRole(user_id=user.id, role_id=r) for r in role_ids)
    await session.flush()


async def set_user_roles(
    session: AsyncSession, caller: Caller, user_id: uuid.UUID, data: schemas.UserRolesIn
) -> models.User:
    caller.require(TEAM_PERMISSION, None)
    user = await _user_for_change(session, caller, user_id)
    await _set_user_roles(session, caller, user, data.role_ids)
    return user


# API keys


async def key_out(session: AsyncSession, key: models.ApiKey) -> schemas.ApiKeyOut:
    rows = await session.execute(
        select(models.ApiKeyPermission.permission, models.ApiKeyPermission.project_id).where(
            models.ApiKeyPermission.api_key_id == key.id
        )
    )
    return schemas.ApiKeyOut(
        id=ids.format_id(ids.API_KEY, key.id),
        user_id=ids.format_id(ids.USER, key.user_id),
        name=key.name,
        prefix=key.prefix,
        inherits_user_permissions=key.inherits_user_permissions,
        permissions=[_grant_out(p, pid) for p, pid in rows],
        created=key.created,
        expires=key.expires,
        last_used=key.last_used,
        revoked=key.revoked,
    )


async def list_keys(session: AsyncSession, caller: Caller) -> list[models.ApiKey]:
    query = select(models.ApiKey).where(models.ApiKey.team_id == caller.team_id).order_by(models.ApiKey.id)
    if not caller.allows(permissions.ADMIN, None):
        query = query.where(models.ApiKey.user_id == caller.user_id)
    return list((await session.scalars(query)).all())


async def insert_key(
    session: AsyncSession,
    key: str,
    team_id: uuid.UUID,
    user_id: uuid.UUID,
    name: str = "",
    expires: datetime | None = None,
    inherits: bool = True,
    grants: list[permissions.Grant] | None = None,
    default_upload_profile_id: uuid.UUID | None = None,
) -> models.ApiKey:
    """Store a key string (generated, or given by bootstrap) as its digest."""
    parsed = auth.parse_key(key)
    row = models.ApiKey(
        id=parsed.id,
        team_id=team_id,
        user_id=user_id,
        name=name,
        prefix=parsed.prefix,
        digest=parsed.digest,
        inherits_user_permissions=inherits,
        expires=expires,
        default_upload_profile_id=default_upload_profile_id,
    )
    session.add(row)
    await session.flush()
    session.add_all(
        models.ApiKeyPermission(
            api_key_id=row.id, permission=g.permission, project_id=g.project_id or NIL_UUID
        )
        for g in grants or []
    )
    await session.flush()
    await session.refresh(row)
    return row


async def create_key(
    session: AsyncSession, caller: Caller, data: schemas.ApiKeyIn
) -> tuple[str, models.ApiKey]:
    user_id = caller.user_id
    if data.user_id is not None:
        user_id = db.parse_ref(ids.USER, data.user_id, "user_id")
        if user_id != caller.user_id:
            caller.require(permissions.ADMIN, None)
            await get_user(session, caller, user_id)
    if data.expires is not None and data.expires.tzinfo is None:
        raise errors.BadRequest("expires: give a time zone, e.g. 2030-01-01T00:00:00Z")
    if data.expires is not None and data.expires <= datetime.now(UTC):
        raise errors.Invalid("expires: must be in the future")
    if data.inherits_user_permissions and data.permissions:
        raise errors.Invalid(
            "permissions: only keys that do not inherit their user's permissions carry their own"
        )
    if data.inherits_user_permissions:
        # Such a key holds all of its user's grants: a restricted key must not mint one for itself.
        _require_covers(caller, await auth.user_grants(session, user_id, caller.team_id))
    grants = await _grants_in(session, caller, data.permissions)
    key = auth.new_key()
    row = await insert_key(
        session,
        key,
        caller.team_id,
        user_id,
        name=data.name,
        expires=data.expires,
        inherits=data.inherits_user_permissions,
        grants=grants,
        default_upload_profile_id=await _upload_profile_ref(session, caller, data.default_upload_profile_id),
    )
    return key, row


async def revoke_key(session: AsyncSession, caller: Caller, key_id: uuid.UUID) -> None:
    key = await session.scalar(
        select(models.ApiKey).where(models.ApiKey.id == key_id, models.ApiKey.team_id == caller.team_id)
    )
    if key is None:
        raise errors.NotFound("API key")
    if key.user_id != caller.user_id:
        caller.require(permissions.ADMIN, None)
    key.revoked = key.revoked or datetime.now(UTC)
    await session.flush()

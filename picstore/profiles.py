"""Storage locations, conversion profiles and upload profiles: team-scoped CRUD. Functions never commit.

Storage and conversion profiles live in a project or team-wide (project None, the `/global` paths).
Secrets are write-only: sealed with the server key on write, reported only as `has_secret_key`.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from picstore import conversion, db, errors, ids, models, paths, projects, schemas, sealing
from picstore.auth import Caller

PROFILE_PERMISSION = "conversion_profile:write"
STORAGE_PERMISSION = "storage_location:write"


def _pid(project_id: uuid.UUID | None) -> str | None:
    return None if project_id is None else ids.format_id(ids.PROJECT, project_id)


def _in_scope(model: Any, project_id: uuid.UUID | None, include_global: bool) -> Any:
    if project_id is None:
        return model.project_id.is_(None)
    if include_global:
        return or_(model.project_id == project_id, model.project_id.is_(None))
    return model.project_id == project_id


async def _check_project(session: AsyncSession, caller: Caller, project_id: uuid.UUID | None) -> None:
    if project_id is not None:
        await projects.require_live(session, caller, project_id)


async def _one(
    session: AsyncSession,
    caller: Caller,
    model: Any,
    object_id: uuid.UUID,
    project_id: uuid.UUID | None,
    include_global: bool,
    what: str,
) -> Any:
    query = select(model).where(
        model.id == object_id, db.live(model, caller), _in_scope(model, project_id, include_global)
    )
    found = await session.scalar(query)
    if found is None:
        raise errors.NotFound(what)
    return found


async def _list(session: AsyncSession, caller: Caller, model: Any, project_id: uuid.UUID | None) -> list[Any]:
    query = (
        select(model)
        .where(db.live(model, caller), _in_scope(model, project_id, include_global=True))
        .order_by(model.id)
    )
    return list((await session.scalars(query)).all())


# Storage locations


def storage_out(location: models.StorageLocation) -> schemas.StorageLocationOut:
    provider: schemas.LocalProviderOut | schemas.S3ProviderOut
    if location.provider.get("type") == "s3":
        p = location.provider
        provider = schemas.S3ProviderOut(
            endpoint=p.get("endpoint"),
            region=p.get("region"),
            access_key_id=p.get("access_key_id"),
            virtual_host_style=p.get("virtual_host_style"),
            has_secret_key=location.secret_sealed is not None,
        )
    else:
        provider = schemas.LocalProviderOut()
    return schemas.StorageLocationOut(
        id=ids.format_id(ids.STORAGE_LOCATION, location.id),
        project_id=_pid(location.project_id),
        name=location.name,
        provider=provider,
        base_location=location.base_location,
        public_url_base=location.public_url_base,
        updated=location.updated,
    )


def local_root_for(base_location: str, roots: tuple[str, ...]) -> str:
    """The absolute directory of a local location; it must lie inside one of the configured roots."""
    if not roots:
        raise errors.Invalid("local storage is disabled: PICSTORE_LOCAL_STORAGE_ROOTS is empty")
    if "\x00" in base_location:
        # os.path refuses NUL with a ValueError; it is the client's mistake, not a server error.
        raise errors.Invalid("base_location: must not contain a NUL character")
    candidate = os.path.realpath(os.path.join(roots[0], base_location))
    for root in roots:
        real_root = os.path.realpath(root)
        if candidate == real_root or candidate.startswith(real_root + os.sep):
            return candidate
    raise errors.Invalid(
        f"base_location: {base_location[:200]!r} is outside the local storage roots allowed on this server"
    )


def check_storage(data: schemas.StorageLocationIn, roots: tuple[str, ...]) -> None:
    if not data.public_url_base.startswith(("http://", "https://", "/")):
        raise errors.Invalid("public_url_base: must be an http(s) URL or an absolute path")
    if isinstance(data.provider, schemas.LocalProvider):
        local_root_for(data.base_location, roots)
        return
    bucket = data.base_location.strip("/").split("/", 1)[0]
    if not bucket:
        raise errors.Invalid("base_location: an S3 location needs 'bucket' or 'bucket/prefix'")
    paths.clean_segment(data.base_location, "base_location")
    endpoint = data.provider.endpoint
    if endpoint and not endpoint.startswith(("http://", "https://")) and "/" in endpoint:
        raise errors.Invalid("provider.endpoint: must be a host or an http(s) URL")


def apply_storage(location: models.StorageLocation, data: schemas.StorageLocationIn, server_key: str) -> None:
    location.name = data.name
    location.base_location = (
        data.base_location.strip("/") if isinstance(data.provider, schemas.S3Provider) else data.base_location
    )
    location.public_url_base = data.public_url_base
    if isinstance(data.provider, schemas.LocalProvider):
        location.provider = {"type": "local"}
        location.secret_sealed = None
        return
    p = data.provider
    old_key_id = (location.provider or {}).get("access_key_id")
    location.provider = {
        "type": "s3",
        "endpoint": p.endpoint,
        "region": p.region,
        "access_key_id": p.access_key_id,
        "virtual_host_style": p.virtual_host_style,
    }
    if p.secret_key is not None:
        location.secret_sealed = sealing.seal(server_key, p.secret_key)
    elif p.access_key_id != old_key_id:
        # A different access key with no new secret: the old secret can't belong to it.
        location.secret_sealed = None
    if (p.access_key_id is None) != (location.secret_sealed is None):
        raise errors.Invalid("provider: access_key_id and secret_key must be given together (or neither)")


async def list_storage(
    session: AsyncSession, caller: Caller, project_id: uuid.UUID | None
) -> list[models.StorageLocation]:
    await _check_project(session, caller, project_id)
    caller.require("project:read", project_id)
    return await _list(session, caller, models.StorageLocation, project_id)


async def get_storage(
    session: AsyncSession, caller: Caller, project_id: uuid.UUID | None, location_id: uuid.UUID
) -> models.StorageLocation:
    await _check_project(session, caller, project_id)
    caller.require("project:read", project_id)
    location: models.StorageLocation = await _one(
        session, caller, models.StorageLocation, location_id, project_id, True, "storage location"
    )
    return location


async def create_storage(
    session: AsyncSession,
    caller: Caller,
    project_id: uuid.UUID | None,
    data: schemas.StorageLocationIn,
    server_key: str,
    roots: tuple[str, ...],
) -> models.StorageLocation:
    await _check_project(session, caller, project_id)
    caller.require(STORAGE_PERMISSION, project_id)
    check_storage(data, roots)
    location = models.StorageLocation(
        id=ids.new_uuid(), team_id=caller.team_id, project_id=project_id, provider={}, secret_sealed=None
    )
    apply_storage(location, data, server_key)
    session.add(location)
    await session.flush()
    await session.refresh(location)
    return location


async def update_storage(
    session: AsyncSession,
    caller: Caller,
    project_id: uuid.UUID | None,
    location_id: uuid.UUID,
    data: schemas.StorageLocationIn,
    server_key: str,
    roots: tuple[str, ...],
) -> models.StorageLocation:
    await _check_project(session, caller, project_id)
    caller.require(STORAGE_PERMISSION, project_id)
    check_storage(data, roots)
    location: models.StorageLocation = await _one(
        session, caller, models.StorageLocation, location_id, project_id, False, "storage location"
    )
    apply_storage(location, data, server_key)
    await session.flush()
    await session.refresh(location)
    return location


async def delete_storage(
    session: AsyncSession, caller: Caller, project_id: uuid.UUID | None, location_id: uuid.UUID
) -> None:
    await _check_project(session, caller, project_id)
    caller.require(STORAGE_PERMISSION, project_id)
    location = await _one(
        session, caller, models.StorageLocation, location_id, project_id, False, "storage location"
    )
    users = await _live_upload_profiles(
        session,
        or_(
            models.UploadProfile.base_storage_location_id == location_id,
            models.UploadProfile.output_storage_location_id == location_id,
        ),
    )
    if users:
        raise errors.Conflict(f"storage location is used by upload profile(s) {', '.join(users)}")
    location.deleted = func.now()
    await session.flush()


# Conversion profiles


def conversion_out(profile: models.ConversionProfile) -> schemas.ConversionProfileOut:
    return schemas.ConversionProfileOut(
        id=ids.format_id(ids.CONVERSION_PROFILE, profile.id),
        project_id=_pid(profile.project_id),
        name=profile.name,
        output=profile.output,
        updated=profile.updated,
    )


def checked_output(output: dict[str, Any]) -> dict[str, Any]:
    try:
        profile = conversion.decode_profile(output)
        conversion.validate_profile(profile)
    except conversion.ProfileError as exc:
        raise errors.Invalid(f"output: {exc}") from None
    return conversion.encode_profile(profile)


async def list_conversion(
    session: AsyncSession, caller: Caller, project_id: uuid.UUID | None
) -> list[models.ConversionProfile]:
    await _check_project(session, caller, project_id)
    caller.require("project:read", project_id)
    return await _list(session, caller, models.ConversionProfile, project_id)


async def get_conversion(
    session: AsyncSession, caller: Caller, project_id: uuid.UUID | None, profile_id: uuid.UUID
) -> models.ConversionProfile:
    await _check_project(session, caller, project_id)
    caller.require("project:read", project_id)
    profile: models.ConversionProfile = await _one(
        session, caller, models.ConversionProfile, profile_id, project_id, True, "conversion profile"
    )
    return profile


async def create_conversion(
    session: AsyncSession, caller: Caller, project_id: uuid.UUID | None, data: schemas.ConversionProfileIn
) -> models.ConversionProfile:
    await _check_project(session, caller, project_id)
    caller.require(PROFILE_PERMISSION, project_id)
    profile = models.ConversionProfile(
        id=ids.new_uuid(),
        team_id=caller.team_id,
        project_id=project_id,
        name=data.name,
        output=checked_output(data.output),
    )
    session.add(profile)
    await session.flush()
    await session.refresh(profile)
    return profile


async def update_conversion(
    session: AsyncSession,
    caller: Caller,
    project_id: uuid.UUID | None,
    profile_id: uuid.UUID,
    data: schemas.ConversionProfileIn,
) -> models.ConversionProfile:
    await _check_project(session, caller, project_id)
    caller.require(PROFILE_PERMISSION, project_id)
    profile: models.ConversionProfile = await _one(
        session, caller, models.ConversionProfile, profile_id, project_id, False, "conversion profile"
    )
    profile.name = data.name
    profile.output = checked_output(data.output)
    await session.flush()
    await session.refresh(profile)
    return profile


async def delete_conversion(
    session: AsyncSession, caller: Caller, project_id: uuid.UUID | None, profile_id: uuid.UUID
) -> None:
    await _check_project(session, caller, project_id)
    caller.require(PROFILE_PERMISSION, project_id)
    profile = await _one(
        session, caller, models.ConversionProfile, profile_id, project_id, False, "conversion profile"
    )
    users = await _live_upload_profiles(session, models.UploadProfile.conversion_profile_id == profile_id)
    if users:
        raise errors.Conflict(f"conversion profile is used by upload profile(s) {', '.join(users)}")
    profile.deleted = func.now()
    await session.flush()


async def _live_upload_profiles(session: AsyncSession, condition: Any) -> list[str]:
    found = await session.scalars(
        select(models.UploadProfile.id).where(condition, models.UploadProfile.deleted.is_(None)).limit(5)
    )
    return [ids.format_id(ids.UPLOAD_PROFILE, i) for i in found]


# Upload profiles


def upload_out(profile: models.UploadProfile) -> schemas.UploadProfileOut:
    return schemas.UploadProfileOut(
        id=ids.format_id(ids.UPLOAD_PROFILE, profile.id),
        project_id=ids.format_id(ids.PROJECT, profile.project_id),
        name=profile.name,
        short_id=profile.short_id,
        base_storage_location_id=ids.format_id(ids.STORAGE_LOCATION, profile.base_storage_location_id),
        base_storage_location_path=profile.base_storage_location_path,
        output_storage_location_id=ids.format_id(ids.STORAGE_LOCATION, profile.output_storage_location_id),
        output_storage_location_path=profile.output_storage_location_path,
        conversion_profile_id=ids.format_id(ids.CONVERSION_PROFILE, profile.conversion_profile_id),
        max_bytes=profile.max_bytes,
        max_pixels=profile.max_pixels,
        allowed_formats=list(profile.allowed_formats),
        obsolete_retention_seconds=profile.obsolete_retention_seconds,
        updated=profile.updated,
    )


async def _reference(
    session: AsyncSession,
    caller: Caller,
    model: Any,
    prefix: str,
    text: str,
    project_id: uuid.UUID,
    what: str,
) -> uuid.UUID:
    """A referenced object must be live, in the caller's team, and global or in the same project, else 422."""
    object_id = db.parse_ref(prefix, text, what)
    found = await session.scalar(
        select(func.count()).where(
            model.id == object_id, db.live(model, caller), _in_scope(model, project_id, include_global=True)
        )
    )
    if not found:
        raise errors.Invalid(f"{what}: {text[:64]!r} does not exist in this team and project")
    return object_id


async def _apply_upload(
    session: AsyncSession, caller: Caller, profile: models.UploadProfile, data: schemas.UploadProfileIn
) -> None:
    project_id = profile.project_id
    profile.base_storage_location_id = await _reference(
        session,
        caller,
        models.StorageLocation,
        ids.STORAGE_LOCATION,
        data.base_storage_location_id,
        project_id,
        "base_storage_location_id",
    )
    profile.output_storage_location_id = await _reference(
        session,
        caller,
        models.StorageLocation,
        ids.STORAGE_LOCATION,
        data.output_storage_location_id,
        project_id,
        "output_storage_location_id",
    )
    profile.conversion_profile_id = await _reference(
        session,
        caller,
        models.ConversionProfile,
        ids.CONVERSION_PROFILE,
        data.conversion_profile_id,
        project_id,
        "conversion_profile_id",
    )
    # short_id only after the lookups above: their autoflush would hit the unique index outside
    # _flush_unique and answer a vague 409 instead of naming the short_id.
    profile.name = data.name
    profile.short_id = data.short_id
    profile.base_storage_location_path = (
        paths.clean_segment(data.base_storage_location_path, "base_storage_location_path") or None
    )
    profile.output_storage_location_path = (
        paths.clean_segment(data.output_storage_location_path, "output_storage_location_path") or None
    )
    profile.max_bytes = data.max_bytes
    profile.max_pixels = data.max_pixels
    profile.allowed_formats = sorted(set(data.allowed_formats))
    profile.obsolete_retention_seconds = data.obsolete_retention_seconds


async def _flush_unique(session: AsyncSession, short_id: str | None) -> None:
    try:
        async with session.begin_nested():
            await session.flush()
    except IntegrityError:
        raise errors.Conflict(f"short_id {short_id!r} is already used by another upload profile") from None


async def list_upload(
    session: AsyncSession, caller: Caller, project_id: uuid.UUID
) -> list[models.UploadProfile]:
    await _check_project(session, caller, project_id)
    caller.require("project:read", project_id)
    query = (
        select(models.UploadProfile)
        .where(db.live(models.UploadProfile, caller), models.UploadProfile.project_id == project_id)
        .order_by(models.UploadProfile.id)
    )
    return list((await session.scalars(query)).all())


async def get_upload(
    session: AsyncSession, caller: Caller, project_id: uuid.UUID, profile_id: uuid.UUID
) -> models.UploadProfile:
    await _check_project(session, caller, project_id)
    caller.require("project:read", project_id)
    profile: models.UploadProfile = await _one(
        session, caller, models.UploadProfile, profile_id, project_id, False, "upload profile"
    )
    return profile


async def create_upload(
    session: AsyncSession, caller: Caller, project_id: uuid.UUID, data: schemas.UploadProfileIn
) -> models.UploadProfile:
    await _check_project(session, caller, project_id)
    caller.require("project:write", project_id)
    profile = models.UploadProfile(id=ids.new_uuid(), team_id=caller.team_id, project_id=project_id)
    await _apply_upload(session, caller, profile, data)
    session.add(profile)
    await _flush_unique(session, data.short_id)
    await session.refresh(profile)
    return profile


async def update_upload(
    session: AsyncSession,
    caller: Caller,
    project_id: uuid.UUID,
    profile_id: uuid.UUID,
    data: schemas.UploadProfileIn,
) -> models.UploadProfile:
    await _check_project(session, caller, project_id)
    caller.require("project:write", project_id)
    profile = await get_upload(session, caller, project_id, profile_id)
    await _apply_upload(session, caller, profile, data)
    await _flush_unique(session, data.short_id)
    await session.refresh(profile)
    return profile


async def delete_upload(
    session: AsyncSession, caller: Caller, project_id: uuid.UUID, profile_id: uuid.UUID
) -> None:
    await _check_project(session, caller, project_id)
    caller.require("project:write", project_id)
    profile = await get_upload(session, caller, project_id, profile_id)
    profile.deleted = func.now()
    await session.flush()

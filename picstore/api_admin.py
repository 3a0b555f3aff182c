"""HTTP handlers for the admin API: projects, storage locations, profiles, users, roles, API keys.

Handlers translate: parse ids, open the transaction, call one function, shape the response.
"""

from __future__ import annotations

import uuid

from litestar import Router, delete, get, post, put
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from sqlalchemy.ext.asyncio import AsyncSession

from picstore import errors, ids, profiles, projects, schemas, storage, team
from picstore.auth import Caller
from picstore.settings import Settings

Db = NamedDependency[AsyncSession]
Who = NamedDependency[Caller]
Conf = NamedDependency[Settings]
EMPTY = schemas.Empty()


def path_id(prefix: str, text: str, what: str) -> uuid.UUID:
    try:
        return ids.parse_id(prefix, text)
    except ids.InvalidId:
        raise errors.NotFound(what) from None


def project_or_global(text: str) -> uuid.UUID | None:
    return None if text == "global" else path_id(ids.PROJECT, text, "project")


# Projects


@get("/projects")
async def list_projects(db: Db, caller: Who) -> list[schemas.ProjectOut]:
    async with db.begin():
        return [projects.out(p) for p in await projects.list_projects(db, caller)]


@post("/projects")
async def create_project(db: Db, caller: Who, data: JSONBody[schemas.ProjectIn]) -> schemas.ProjectOut:
    async with db.begin():
        return projects.out(await projects.create(db, caller, data))


@get("/projects/{project_id:str}")
async def get_project(db: Db, caller: Who, project_id: FromPath[str]) -> schemas.ProjectOut:
    async with db.begin():
        return projects.out(
            await projects.get(db, caller, path_id(ids.PROJECT, project_id, "project"), "project:read")
        )


@put("/projects/{project_id:str}")
async def update_project(
    db: Db, caller: Who, project_id: FromPath[str], data: JSONBody[schemas.ProjectIn]
) -> schemas.ProjectOut:
    async with db.begin():
        pid = path_id(ids.PROJECT, project_id, "project")
        return projects.out(await projects.update(db, caller, pid, data))


@delete("/projects/{project_id:str}", status_code=200)
async def delete_project(db: Db, caller: Who, project_id: FromPath[str]) -> schemas.Empty:
    async with db.begin():
        await projects.delete(db, caller, path_id(ids.PROJECT, project_id, "project"))
    return EMPTY


# Storage locations

STORAGE = "/projects/{project_id:str}/storage_locations"


def _location_id(text: str) -> uuid.UUID:
    return path_id(ids.STORAGE_LOCATION, text, "storage location")


@get(STORAGE)
async def list_storage(db: Db, caller: Who, project_id: FromPath[str]) -> list[schemas.StorageLocationOut]:
    async with db.begin():
        found = await profiles.list_storage(db, caller, project_or_global(project_id))
        return [profiles.storage_out(s) for s in found]


@post(STORAGE)
async def create_storage(
    db: Db, caller: Who, settings: Conf, project_id: FromPath[str], data: JSONBody[schemas.StorageLocationIn]
) -> schemas.StorageLocationOut:
    async with db.begin():
        location = await profiles.create_storage(
            db, caller, project_or_global(project_id), data, settings.secret_key, settings.local_storage_roots
        )
        return profiles.storage_out(location)


@get(STORAGE + "/{location_id:str}")
async def get_storage(
    db: Db, caller: Who, project_id: FromPath[str], location_id: FromPath[str]
) -> schemas.StorageLocationOut:
    async with db.begin():
        location = await profiles.get_storage(
            db, caller, project_or_global(project_id), _location_id(location_id)
        )
        return profiles.storage_out(location)


@put(STORAGE + "/{location_id:str}")
async def update_storage(
    db: Db,
    caller: Who,
    settings: Conf,
    project_id: FromPath[str],
    location_id: FromPath[str],
    data: JSONBody[schemas.StorageLocationIn],
) -> schemas.StorageLocationOut:
    async with db.begin():
        location = await profiles.update_storage(
            db,
            caller,
            project_or_global(project_id),
            _location_id(location_id),
            data,
            settings.secret_key,
            settings.local_storage_roots,
        )
        return profiles.storage_out(location)


@delete(STORAGE + "/{location_id:str}", status_code=200)
async def delete_storage(
    db: Db, caller: Who, project_id: FromPath[str], location_id: FromPath[str]
) -> schemas.Empty:
    async with db.begin():
        await profiles.delete_storage(db, caller, project_or_global(project_id), _location_id(location_id))
    return EMPTY


@post(STORAGE + "/{location_id:str}/test", status_code=200)
async def test_storage(
    db: Db, caller: Who, state: State, project_id: FromPath[str], location_id: FromPath[str]
) -> schemas.ProbeOut:
    pid = project_or_global(project_id)
    async with db.begin():
        location = await profiles.get_storage(db, caller, pid, _location_id(location_id))
        # The probe writes into the location: a team-global one needs the permission team-wide, even when
        # reached through a project's path.
        caller.require(profiles.STORAGE_PERMISSION, location.project_id)
    store = await state.stores.for_location(location)
    steps = await storage.probe(store)
    return schemas.ProbeOut(
        ok=all(s.ok for s in steps),
        steps=[schemas.ProbeStepOut(step=s.step, ok=s.ok, ms=round(s.ms, 1), error=s.error) for s in steps],
    )


# Conversion profiles

CONVERSION = "/projects/{project_id:str}/conversion_profiles"


def _conversion_id(text: str) -> uuid.UUID:
    return path_id(ids.CONVERSION_PROFILE, text, "conversion profile")


@get(CONVERSION)
async def list_conversion(
    db: Db, caller: Who, project_id: FromPath[str]
) -> list[schemas.ConversionProfileOut]:
    async with db.begin():
        found = await profiles.list_conversion(db, caller, project_or_global(project_id))
        return [profiles.conversion_out(p) for p in found]


@post(CONVERSION)
async def create_conversion(
    db: Db, caller: Who, project_id: FromPath[str], data: JSONBody[schemas.ConversionProfileIn]
) -> schemas.ConversionProfileOut:
    async with db.begin():
        profile = await profiles.create_conversion(db, caller, project_or_global(project_id), data)
        return profiles.conversion_out(profile)


@get(CONVERSION + "/{profile_id:str}")
async def get_conversion(
    db: Db, caller: Who, project_id: FromPath[str], profile_id: FromPath[str]
) -> schemas.ConversionProfileOut:
    async with db.begin():
        profile = await profiles.get_conversion(
            db, caller, project_or_global(project_id), _conversion_id(profile_id)
        )
        return profiles.conversion_out(profile)


@put(CONVERSION + "/{profile_id:str}")
async def update_conversion(
    db: Db,
    caller: Who,
    project_id: FromPath[str],
    profile_id: FromPath[str],
    data: JSONBody[schemas.ConversionProfileIn],
) -> schemas.ConversionProfileOut:
    async with db.begin():
        profile = await profiles.update_conversion(
            db, caller, project_or_global(project_id), _conversion_id(profile_id), data
        )
        return profiles.conversion_out(profile)


@delete(CONVERSION + "/{profile_id:str}", status_code=200)
async def delete_conversion(
    db: Db, caller: Who, project_id: FromPath[str], profile_id: FromPath[str]
) -> schemas.Empty:
    async with db.begin():
        await profiles.delete_conversion(
            db, caller, project_or_global(project_id), _conversion_id(profile_id)
        )
    return EMPTY


# Upload profiles

UPLOAD = "/projects/{project_id:str}/upload_profiles"


def _upload_id(text: str) -> uuid.UUID:
    return path_id(ids.UPLOAD_PROFILE, text, "upload profile")


def _project(text: str) -> uuid.UUID:
    return path_id(ids.PROJECT, text, "project")


@get(UPLOAD)
async def list_upload(db: Db, caller: Who, project_id: FromPath[str]) -> list[schemas.UploadProfileOut]:
    async with db.begin():
        return [profiles.upload_out(p) for p in await profiles.list_upload(db, caller, _project(project_id))]


@post(UPLOAD)
async def create_upload(
    db: Db, caller: Who, project_id: FromPath[str], data: JSONBody[schemas.UploadProfileIn]
) -> schemas.UploadProfileOut:
    async with db.begin():
        return profiles.upload_out(await profiles.create_upload(db, caller, _project(project_id), data))


@get(UPLOAD + "/{profile_id:str}")
async def get_upload(
    db: Db, caller: Who, project_id: FromPath[str], profile_id: FromPath[str]
) -> schemas.UploadProfileOut:
    async with db.begin():
        profile = await profiles.get_upload(db, caller, _project(project_id), _upload_id(profile_id))
        return profiles.upload_out(profile)


@put(UPLOAD + "/{profile_id:str}")
async def update_upload(
    db: Db,
    caller: Who,
    project_id: FromPath[str],
    profile_id: FromPath[str],
    data: JSONBody[schemas.UploadProfileIn],
) -> schemas.UploadProfileOut:
    async with db.begin():
        profile = await profiles.update_upload(db, caller, _project(project_id), _upload_id(profile_id), data)
        return profiles.upload_out(profile)


@delete(UPLOAD + "/{profile_id:str}", status_code=200)
async def delete_upload(
    db: Db, caller: Who, project_id: FromPath[str], profile_id: FromPath[str]
) -> schemas.Empty:
    async with db.begin():
        await profiles.delete_upload(db, caller, _project(project_id), _upload_id(profile_id))
    return EMPTY


# Users and roles


def _user_id(text: str) -> uuid.UUID:
    return path_id(ids.USER, text, "user")


def _role_id(text: str) -> uuid.UUID:
    return path_id(ids.ROLE, text, "role")


@get("/users")
async def list_users(db: Db, caller: Who) -> list[schemas.UserOut]:
    async with db.begin():
        return [await team.user_out(db, u) for u in await team.list_users(db, caller)]


@post("/users")
async def create_user(db: Db, caller: Who, data: JSONBody[schemas.UserIn]) -> schemas.UserOut:
    async with db.begin():
        return await team.user_out(db, await team.create_user(db, caller, data))


@get("/users/{user_id:str}")
async def get_user(db: Db, caller: Who, user_id: FromPath[str]) -> schemas.UserOut:
    async with db.begin():
        return await team.user_out(db, await team.get_user(db, caller, _user_id(user_id)))


@put("/users/{user_id:str}")
async def update_user(
    db: Db, caller: Who, user_id: FromPath[str], data: JSONBody[schemas.UserUpdate]
) -> schemas.UserOut:
    async with db.begin():
        return await team.user_out(db, await team.update_user(db, caller, _user_id(user_id), data))


@put("/users/{user_id:str}/roles")
async def set_user_roles(
    db: Db, caller: Who, user_id: FromPath[str], data: JSONBody[schemas.UserRolesIn]
) -> schemas.UserOut:
    async with db.begin():
        return await team.user_out(db, await team.set_user_roles(db, caller, _user_id(user_id), data))


@delete("/users/{user_id:str}", status_code=200)
async def delete_user(db: Db, caller: Who, user_id: FromPath[str]) -> schemas.Empty:
    async with db.begin():
        await team.delete_user(db, caller, _user_id(user_id))
    return EMPTY


@get("/roles")
async def list_roles(db: Db, caller: Who) -> list[schemas.RoleOut]:
    async with db.begin():
        return [await team.role_out(db, r) for r in await team.list_roles(db, caller)]


@post("/roles")
async def create_role(db: Db, caller: Who, data: JSONBody[schemas.RoleIn]) -> schemas.RoleOut:
    async with db.begin():
        return await team.role_out(db, await team.create_role(db, caller, data))


@put("/roles/{role_id:str}/permissions")
async def set_role_permissions(
    db: Db, caller: Who, role_id: FromPath[str], data: JSONBody[schemas.RolePermissionsIn]
) -> schemas.RoleOut:
    async with db.begin():
        return await team.role_out(db, await team.set_role_permissions(db, caller, _role_id(role_id), data))


@delete("/roles/{role_id:str}", status_code=200)
async def delete_role(db: Db, caller: Who, role_id: FromPath[str]) -> schemas.Empty:
    async with db.begin():
        await team.delete_role(db, caller, _role_id(role_id))
    return EMPTY


# API keys


@get("/api_keys")
async def list_keys(db: Db, caller: Who) -> list[schemas.ApiKeyOut]:
    async with db.begin():
        return [await team.key_out(db, k) for k in await team.list_keys(db, caller)]


@post("/api_keys")
async def create_key(db: Db, caller: Who, data: JSONBody[schemas.ApiKeyIn]) -> schemas.ApiKeyCreated:
    async with db.begin():
        key, row = await team.create_key(db, caller, data)
        return schemas.ApiKeyCreated(key=key, api_key=await team.key_out(db, row))


@delete("/api_keys/{key_id:str}", status_code=200)
async def revoke_key(db: Db, caller: Who, key_id: FromPath[str]) -> schemas.Empty:
    async with db.begin():
        await team.revoke_key(db, caller, path_id(ids.API_KEY, key_id, "API key"))
    return EMPTY


router = Router(
    path="/",
    route_handlers=[
        list_projects,
        create_project,
        get_project,
        update_project,
        delete_project,
        list_storage,
        create_storage,
        get_storage,
        update_storage,
        delete_storage,
        test_storage,
        list_conversion,
        create_conversion,
        get_conversion,
        update_conversion,
        delete_conversion,
        list_upload,
        create_upload,
        get_upload,
        update_upload,
        delete_upload,
        list_users,
        create_user,
        get_user,
        update_user,
        set_user_roles,
        delete_user,
        list_roles,
        create_role,
        set_role_permissions,
        delete_role,
        list_keys,
        create_key,
        revoke_key,
    ],
)

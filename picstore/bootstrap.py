"""Bootstrap: load teams, users, roles, projects, storage, profiles and API keys from JSON in one transaction.

Pic Store's format: a folder of `*.json` files whose type is the second-to-last dot-separated part of
the name (`team.json`, `x.upload_profiles.json`), each holding an object or an array of objects; or one
JSON file holding `{"<type>": [objects...], ...}`. `${ENV_VAR}` is replaced by the variable's value
(JSON-escaped); an unset variable is an error. Nothing is written unless every object is valid.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from picstore import errors, ids, models, paths, permissions, profiles, schemas
from picstore.models import NIL_UUID
from picstore.settings import Settings
from picstore.team import insert_key


class BootstrapError(Exception):
    """The bootstrap data is invalid; nothing was written."""


class _Obj(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class TeamObj(_Obj):
    id: str
    name: str


class UserObj(_Obj):
    id: str
    team_id: str
    email: str
    name: str
    password_hash: str | None = None
    default_upload_profile_id: str | None = None


class RoleObj(_Obj):
    id: str
    team_id: str
    name: str


class UserRoleObj(_Obj):
    user_id: str
    role_id: str


class RolePermissionObj(_Obj):
    team_id: str
    role_id: str
    permission: permissions.Permission
    project_id: str | None = None


class ProjectObj(_Obj):
    id: str
    team_id: str
    name: str
    base_location: str = ""


class StorageLocationObj(_Obj):
    id: str
    team_id: str
    name: str
    provider: dict[str, Any]
    base_location: str
    public_url_base: str
    project_id: str | None = None


class ConversionProfileObj(_Obj):
    id: str
    team_id: str
    name: str
    output: dict[str, Any]
    project_id: str | None = None


class UploadProfileObj(_Obj):
    """The API's limits apply here too, so bootstrap cannot store a profile the API would refuse."""

    id: str
    team_id: str
    project_id: str
    name: schemas.Name
    base_storage_location_id: str
    output_storage_location_id: str
    conversion_profile_id: str
    short_id: schemas.ShortId | None = None
    base_storage_location_path: schemas.PathSegment | None = None
    output_storage_location_path: schemas.PathSegment | None = None
    max_bytes: schemas.MaxBytes = 50 * 1024 * 1024
    max_pixels: schemas.MaxPixels = 100_000_000
    allowed_formats: list[schemas.InputFormat] = msgspec.field(
        default_factory=lambda: ["jpg", "png", "gif", "webp", "avif", "heic", "tiff"]
    )
    obsolete_retention_seconds: schemas.RetentionSeconds | None = 7 * 86400


class ApiKeyObj(_Obj):
    key: str
    team_id: str
    user_id: str
    name: str = ""
    inherits_user_permissions: bool = True
    expires: datetime | None = None
    default_upload_profile_id: str | None = None


# Insertion order satisfies every foreign key without deferring constraints.
TYPES: dict[str, type[_Obj]] = {
    "team": TeamObj,
    "project": ProjectObj,
    "storage_location": StorageLocationObj,
    "conversion_profile": ConversionProfileObj,
    "upload_profile": UploadProfileObj,
    "user": UserObj,
    "role": RoleObj,
    "user_role": UserRoleObj,
    "role_permission": RolePermissionObj,
    "api_key": ApiKeyObj,
}

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def substitute(text: str, environ: Mapping[str, str], source: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in environ:
            raise BootstrapError(f"{source}: environment variable {name} is not set")
        return json.dumps(environ[name])[1:-1]

    return _VAR.sub(value, text)


def _type_name(raw: str, source: str) -> str:
    name = raw[:-1] if raw.endswith("s") and raw[:-1] in TYPES else raw
    if name not in TYPES:
        raise BootstrapError(f"{source}: unknown object type {raw!r} (known: {', '.join(TYPES)})")
    return name


def read(path: Path, environ: Mapping[str, str]) -> dict[str, list[Any]]:
    """Raw objects by type, from one file or a folder of files."""
    found: dict[str, list[Any]] = {t: [] for t in TYPES}
    files = sorted(path.rglob("*.json")) if path.is_dir() else [path]
    if not files:
        raise BootstrapError(f"{path}: no .json files")
    for file in files:
        try:
            data = json.loads(substitute(file.read_text(), environ, str(file)))
        except (OSError, json.JSONDecodeError) as exc:
            raise BootstrapError(f"{file}: {exc}") from None
        parts = file.name.split(".")
        if len(parts) >= 2 and not path.is_file():
            items = data if isinstance(data, list) else [data]
            found[_type_name(parts[-2], str(file))].extend(items)
        elif isinstance(data, dict):
            for raw_type, items in data.items():
                found[_type_name(raw_type, str(file))].extend(items if isinstance(items, list) else [items])
        else:
            raise BootstrapError(f"{file}: expected an object of types to arrays of objects")
    return found


def decode(found: Mapping[str, list[Any]]) -> list[_Obj]:
    objects: list[_Obj] = []
    for type_name, cls in TYPES.items():
        for index, raw in enumerate(found.get(type_name, [])):
            try:
                objects.append(msgspec.convert(raw, cls))
            except msgspec.ValidationError as exc:
                raise BootstrapError(f"{type_name}[{index}]: {exc}") from None
    return objects


def _id(prefix: str, text: str | None, where: str) -> uuid.UUID | None:
    if text is None:
        return None
    try:
        return ids.parse_id(prefix, text)
    except ids.InvalidId as exc:
        raise BootstrapError(f"{where}: {exc}") from None


class _Loader:
    """Turns objects into rows, checking that every reference stays inside its team."""

    def __init__(self, session: AsyncSession, settings: Settings) -> None:
        self.session = session
        self.settings = settings
        self.teams: dict[tuple[str, uuid.UUID], uuid.UUID] = {}

    async def _team_of(self, model: Any, kind: str, object_id: uuid.UUID) -> uuid.UUID | None:
        if (kind, object_id) in self.teams:
            return self.teams[(kind, object_id)]
        # A team is its own team; every other row names its team in team_id.
        column = model.id if model is models.Team else model.team_id
        return await self.session.scalar(select(column).where(model.id == object_id))

    async def _same_team(
        self, model: Any, kind: str, object_id: uuid.UUID | None, team: uuid.UUID, where: str
    ) -> None:
        if object_id is not None and await self._team_of(model, kind, object_id) != team:
            raise BootstrapError(f"{where}: {kind} {object_id} does not exist in team {team}")

    def _remember(self, kind: str, object_id: uuid.UUID, team: uuid.UUID) -> None:
        self.teams[(kind, object_id)] = team

    async def add(self, obj: _Obj, where: str) -> None:
        handler = getattr(self, "_" + type(obj).__name__.removesuffix("Obj").lower())
        try:
            await handler(obj, where)
        except errors.PicstoreError as exc:
            raise BootstrapError(f"{where}: {exc.message}") from None

    async def _team(self, o: TeamObj, where: str) -> None:
        team = _id(ids.TEAM, o.id, where)
        assert team is not None
        self.session.add(models.Team(id=team, name=o.name))
        self._remember("team", team, team)

    async def _project(self, o: ProjectObj, where: str) -> None:
        pid, team = _id(ids.PROJECT, o.id, where), _id(ids.TEAM, o.team_id, where)
        assert pid and team
        await self._same_team(models.Team, "team", team, team, where)
        self.session.add(
            models.Project(
                id=pid,
                team_id=team,
                name=o.name,
                base_location=paths.clean_segment(o.base_location, "base_location"),
            )
        )
        self._remember("project", pid, team)

    async def _storagelocation(self, o: StorageLocationObj, where: str) -> None:
        sid, team = _id(ids.STORAGE_LOCATION, o.id, where), _id(ids.TEAM, o.team_id, where)
        project = _id(ids.PROJECT, o.project_id, where)
        assert sid and team
        await self._same_team(models.Project, "project", project, team, where)
        try:
            data = msgspec.convert(
                {
                    "name": o.name,
                    "provider": o.provider,
                    "base_location": o.base_location,
                    "public_url_base": o.public_url_base,
                },
                schemas.StorageLocationIn,
            )
        except msgspec.ValidationError as exc:
            raise BootstrapError(f"{where}: {exc}") from None
        profiles.check_storage(data, self.settings.local_storage_roots)
        row = models.StorageLocation(
            id=sid, team_id=team, project_id=project, provider={}, secret_sealed=None
        )
        profiles.apply_storage(row, data, self.settings.secret_key)
        self.session.add(row)
        self._remember("storage location", sid, team)

    async def _conversionprofile(self, o: ConversionProfileObj, where: str) -> None:
        cid, team = _id(ids.CONVERSION_PROFILE, o.id, where), _id(ids.TEAM, o.team_id, where)
        project = _id(ids.PROJECT, o.project_id, where)
        assert cid and team
        await self._same_team(models.Project, "project", project, team, where)
        self.session.add(
            models.ConversionProfile(
                id=cid,
                team_id=team,
                project_id=project,
                name=o.name,
                output=profiles.checked_output(o.output),
            )
        )
        self._remember("conversion profile", cid, team)

    async def _uploadprofile(self, o: UploadProfileObj, where: str) -> None:
        uid, team, project = (
            _id(ids.UPLOAD_PROFILE, o.id, where),
            _id(ids.TEAM, o.team_id, where),
            _id(ids.PROJECT, o.project_id, where),
        )
        assert uid and team and project
        base = _id(ids.STORAGE_LOCATION, o.base_storage_location_id, where)
        output = _id(ids.STORAGE_LOCATION, o.output_storage_location_id, where)
        conv = _id(ids.CONVERSION_PROFILE, o.conversion_profile_id, where)
        await self._same_team(models.Project, "project", project, team, where)
        await self._same_team(models.StorageLocation, "storage location", base, team, where)
        await self._same_team(models.StorageLocation, "storage location", output, team, where)
        await self._same_team(models.ConversionProfile, "conversion profile", conv, team, where)
        assert base and output and conv
        self.session.add(
            models.UploadProfile(
                id=uid,
                team_id=team,
                project_id=project,
                name=o.name,
                short_id=o.short_id,
                base_storage_location_id=base,
                output_storage_location_id=output,
                conversion_profile_id=conv,
                base_storage_location_path=paths.clean_segment(
                    o.base_storage_location_path, "base_storage_location_path"
                )
                or None,
                output_storage_location_path=paths.clean_segment(
                    o.output_storage_location_path, "output_storage_location_path"
                )
                or None,
                max_bytes=o.max_bytes,
                max_pixels=o.max_pixels,
                allowed_formats=sorted(set(o.allowed_formats)),
                obsolete_retention_seconds=o.obsolete_retention_seconds,
            )
        )
        self._remember("upload profile", uid, team)

    async def _user(self, o: UserObj, where: str) -> None:
        uid, team = _id(ids.USER, o.id, where), _id(ids.TEAM, o.team_id, where)
        default = _id(ids.UPLOAD_PROFILE, o.default_upload_profile_id, where)
        assert uid and team
        await self._same_team(models.Team, "team", team, team, where)
        await self._same_team(models.UploadProfile, "upload profile", default, team, where)
        self.session.add(
            models.User(
                id=uid,
                team_id=team,
                email=o.email,
                name=o.name,
                password_hash=o.password_hash,
                default_upload_profile_id=default,
            )
        )
        self._remember("user", uid, team)

    async def _role(self, o: RoleObj, where: str) -> None:
        rid, team = _id(ids.ROLE, o.id, where), _id(ids.TEAM, o.team_id, where)
        assert rid and team
        await self._same_team(models.Team, "team", team, team, where)
        self.session.add(models.Role(id=rid, team_id=team, name=o.name))
        self._remember("role", rid, team)

    async def _userrole(self, o: UserRoleObj, where: str) -> None:
        user, role = _id(ids.USER, o.user_id, where), _id(ids.ROLE, o.role_id, where)
        assert user and role
        team = await self._team_of(models.User, "user", user)
        if team is None:
            raise BootstrapError(f"{where}: user {o.user_id} does not exist")
        await self._same_team(models.Role, "role", role, team, where)
        self.session.add(models.UserRole(user_id=user, role_id=role))

    async def _rolepermission(self, o: RolePermissionObj, where: str) -> None:
        team, role = _id(ids.TEAM, o.team_id, where), _id(ids.ROLE, o.role_id, where)
        project = _id(ids.PROJECT, o.project_id, where)
        assert team and role
        await self._same_team(models.Role, "role", role, team, where)
        await self._same_team(models.Project, "project", project, team, where)
        self.session.add(
            models.RolePermission(
                role_id=role, team_id=team, permission=o.permission, project_id=project or NIL_UUID
            )
        )

    async def _apikey(self, o: ApiKeyObj, where: str) -> None:
        team, user = _id(ids.TEAM, o.team_id, where), _id(ids.USER, o.user_id, where)
        default = _id(ids.UPLOAD_PROFILE, o.default_upload_profile_id, where)
        assert team and user
        await self._same_team(models.User, "user", user, team, where)
        await self._same_team(models.UploadProfile, "upload profile", default, team, where)
        await insert_key(
            self.session,
            o.key,
            team,
            user,
            o.name,
            o.expires,
            o.inherits_user_permissions,
            default_upload_profile_id=default,
        )


async def load(session: AsyncSession, settings: Settings, found: Mapping[str, list[Any]]) -> int:
    """Insert every object; the caller owns the transaction. Returns the number of objects."""
    objects = decode(found)
    loader = _Loader(session, settings)
    counters: dict[str, int] = {}
    for obj in objects:
        name = type(obj).__name__
        where = f"{name.removesuffix('Obj')}[{counters.get(name, 0)}]"
        counters[name] = counters.get(name, 0) + 1
        try:
            await loader.add(obj, where)
            await session.flush()
        except IntegrityError as exc:
            raise BootstrapError(f"{where}: conflicts with existing data ({exc.orig})") from None
    return len(objects)

"""The admin API on the real database: the permission matrix of every route, tenancy, secrets, validation,
and the Pic Store behaviours we keep or fix (reference/pic-store.md §4-5, §12)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from conftest import Tenant
from sqlalchemy import select

from picstore import ids, models, sealing
from picstore.permissions import ALL

World = dict[str, str]

# Permissions whose holders may also read the project (picstore's one implication, permissions.IMPLIES).
READERS = {
    "project:write",
    "image:create",
    "image:edit",
    "conversion_profile:write",
    "storage_location:write",
}
PROFILE = {"type": "cross", "formats": [{"format": "webp"}], "sizes": [{"width": 200}]}
# Pic Store's default profile as shipped in its bootstrap_data (pic-store.md §7.1), with its optional keys.
PIC_STORE_DEFAULT = {
    "type": "cross",
    "formats": [
        {"format": "avif"},
        {"format": "webp", "quality": 80.5},
        {"format": "jpg", "condition": {"type": "must", "formats": ["jpg"]}},
        {"format": "png", "condition": {"type": "must", "formats": ["png"]}},
    ],
    "sizes": [{"width": 200, "height": None}, {"width": 400, "preserve_aspect_ratio": True}],
}


def local(name: str = "Local") -> dict[str, Any]:
    return {
        "name": name,
        "provider": {"type": "local"},
        "base_location": f"t/{uuid.uuid4().hex}",
        "public_url_base": "https://cdn.example.com/files",
    }


def s3(secret: str | None, name: str = "S3") -> dict[str, Any]:
    provider: dict[str, Any] = {
        "type": "s3",
        "endpoint": "https://s3.example.com",
        "region": "eu-west-1",
        "access_key_id": "AKIAEXAMPLE",
    }
    if secret is not None:
        provider["secret_key"] = secret
    return {
        "name": name,
        "provider": provider,
        "base_location": "bucket/prefix",
        "public_url_base": "https://cdn.example.com",
    }


def conversion(name: str = "Web", output: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "output": output or PROFILE}


def upload(w: World, **extra: Any) -> dict[str, Any]:
    return {
        "name": "Uploads",
        "base_storage_location_id": w["storage"],
        "output_storage_location_id": w["storage"],
        "conversion_profile_id": w["conversion"],
        **extra,
    }


async def send(
    client: httpx.AsyncClient, method: str, path: str, key: str | None, body: Any = None
) -> httpx.Response:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    return await client.request(method, path, headers=headers, json=body)


async def created(client: httpx.AsyncClient, key: str, path: str, body: Any) -> str:
    r = await send(client, "POST", path, key, body)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def error(r: httpx.Response, status: int, kind: str) -> str:
    """Assert the one error shape and return its message."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"kind", "message"}, body
    assert body["error"]["kind"] == kind, body
    return str(body["error"]["message"])


async def build_world(client: httpx.AsyncClient, t: Tenant, only: set[str] | None = None) -> World:
    """One of everything (or what `only` names) in the tenant's team, made through the API by its admin."""
    key, p = t.admin_key, t.project
    w: World = {"project": p}
    wanted = set(WORLD) if only is None else {d for name in only for d in DEPENDS.get(name, {name})}
    for name in (n for n in WORLD if n in wanted):
        path, body = WORLD[name]
        r = await send(client, "POST", path.format(**w), key, body(w))
        assert r.status_code == 201, r.text
        w[name] = r.json()["api_key"]["id"] if name == "key" else r.json()["id"]
    return w


# World entries in creation order: the collection to POST to and the body.
WORLD: dict[str, tuple[str, Callable[[World], Any]]] = {
    "storage": ("/api/projects/{project}/storage_locations", lambda w: local()),
    "storage_free": ("/api/projects/{project}/storage_locations", lambda w: local()),
    "global_storage": ("/api/projects/global/storage_locations", lambda w: local()),
    "conversion": ("/api/projects/{project}/conversion_profiles", lambda w: conversion()),
    "conversion_free": ("/api/projects/{project}/conversion_profiles", lambda w: conversion()),
    "global_conversion": ("/api/projects/global/conversion_profiles", lambda w: conversion()),
    "upload": ("/api/projects/{project}/upload_profiles", upload),
    "role": ("/api/roles", lambda w: {"name": "Writers", "permissions": [{"permission": "team:write"}]}),
    "user": ("/api/users", lambda w: {"email": "someone@example.com", "name": "Someone"}),
    "key": ("/api/api_keys", lambda w: {"user_id": w["user"], "name": "theirs"}),
}
DEPENDS = {"upload": {"storage", "conversion", "upload"}, "key": {"user", "key"}, "project": set()}


def needed(ep: Endpoint) -> set[str]:
    """The World entries an endpoint's path, body and hidden id refer to."""

    class Recorder(dict[str, str]):
        def __missing__(self, name: str) -> str:
            self[name] = name
            return name

    seen = Recorder()
    (ep.path + (ep.hidden or "")).format_map(seen)
    if ep.body:
        ep.body(seen)
    return set(seen)


# The permission matrix


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # str.format template over a World
    permission: str
    body: Callable[[World], Any] | None = None
    status: int = 200
    team_wide: bool = False  # the permission must be held team-wide (a team action or a team-global object)
    foreign: bool = True  # the path names an object of the team, so another team must get 404
    hidden: str | None = None  # a list that filters by permission instead of refusing: this id stays hidden

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


def _profile_routes(scope: str) -> list[Endpoint]:
    """Storage location and conversion profile routes under a project or under `global`."""
    team_wide = scope == "global"
    prefix = "/api/projects/" + ("global" if team_wide else "{project}")
    own = "global_" if team_wide else ""
    routes = []
    for kind, write, body in (
        ("storage", "storage_location:write", lambda w: local("Renamed")),
        ("conversion", "conversion_profile:write", lambda w: conversion("Renamed")),
    ):
        base = prefix + ("/storage_locations" if kind == "storage" else "/conversion_profiles")
        item = base + "/{" + own + kind + "}"
        free = base + "/{" + (own + kind if team_wide else kind + "_free") + "}"
        routes += [
            Endpoint("GET", base, "project:read", team_wide=team_wide, foreign=not team_wide),
            Endpoint("POST", base, write, body, 201, team_wide=team_wide, foreign=not team_wide),
            Endpoint("GET", item, "project:read", team_wide=team_wide),
            Endpoint("PUT", item, write, body, team_wide=team_wide),
            Endpoint("DELETE", free, write, team_wide=team_wide),
        ]
        if kind == "storage":
            routes.append(Endpoint("POST", item + "/test", write, team_wide=team_wide))
    return routes


UPLOADS = "/api/projects/{project}/upload_profiles"
ENDPOINTS = [
    Endpoint("GET", "/api/projects", "project:read", foreign=False, hidden="{project}"),
    Endpoint(
        "POST",
        "/api/projects",
        "project:create",
        lambda w: {"name": "New"},
        201,
        team_wide=True,
        foreign=False,
    ),
    Endpoint("GET", "/api/projects/{project}", "project:read"),
    Endpoint(
        "PUT",
        "/api/projects/{project}",
        "project:write",
        lambda w: {"name": "Renamed", "base_location": "site"},
    ),
    Endpoint("DELETE", "/api/projects/{project}", "project:write"),
    *_profile_routes("project"),
    *_profile_routes("global"),
    Endpoint("GET", UPLOADS, "project:read"),
    Endpoint("POST", UPLOADS, "project:write", lambda w: upload(w, short_id="new"), 201),
    Endpoint("GET", UPLOADS + "/{upload}", "project:read"),
    Endpoint(
        "PUT",
        UPLOADS + "/{upload}",
        "project:write",
        lambda w: upload(w, conversion_profile_id=w["conversion_free"]),
    ),
    Endpoint("DELETE", UPLOADS + "/{upload}", "project:write"),
    Endpoint("GET", "/api/users", "team:write", team_wide=True, foreign=False),
    Endpoint(
        "POST",
        "/api/users",
        "team:write",
        lambda w: {"email": "new@example.com", "name": "New"},
        201,
        team_wide=True,
        foreign=False,
    ),
    Endpoint("GET", "/api/users/{user}", "team:write", team_wide=True),
    Endpoint("PUT", "/api/users/{user}", "team:write", lambda w: {"name": "Renamed"}, team_wide=True),
    Endpoint(
        "PUT", "/api/users/{user}/roles", "team:write", lambda w: {"role_ids": [w["role"]]}, team_wide=True
    ),
    Endpoint("DELETE", "/api/users/{user}", "team:write", team_wide=True),
    Endpoint("GET", "/api/roles", "team:write", team_wide=True, foreign=False),
    Endpoint(
        "POST",
        "/api/roles",
        "team:write",
        lambda w: {"name": "Role", "permissions": [{"permission": "team:write"}]},
        201,
        team_wide=True,
        foreign=False,
    ),
    Endpoint(
        "PUT", "/api/roles/{role}/permissions", "team:write", lambda w: {"permissions": []}, team_wide=True
    ),
    Endpoint("DELETE", "/api/roles/{role}", "team:write", team_wide=True),
    # Keys of other users: anyone may manage their own keys, team:admin everybody's.
    Endpoint("GET", "/api/api_keys", "team:admin", team_wide=True, foreign=False, hidden="{key}"),
    Endpoint("POST", "/api/api_keys", "team:admin", lambda w: {"user_id": w["user"]}, 201, team_wide=True),
    Endpoint("DELETE", "/api/api_keys/{key}", "team:admin", team_wide=True),
]


def test_matrix_covers_every_admin_route() -> None:
    from picstore import api_admin

    routes = {
        (method, route.path)
        for route in api_admin.router.routes
        for method in route.methods
        if method not in ("HEAD", "OPTIONS")
    }
    # Path parameters are typed in the router ({project_id:str}) and named by World keys here.
    tested = {(e.method, _shape(e.path)) for e in ENDPOINTS}
    assert {(m, _shape("/api" + p)) for m, p in routes} == tested


def _shape(path: str) -> str:
    parts = path.strip("/").split("/")
    return "/".join("*" if p.startswith("{") or p == "global" else p for p in parts)


def lacking(permission: str) -> list[tuple[str, None]]:
    """Every permission team-wide except the one needed and those that imply it."""
    givers = {permission, "team:admin"} | (READERS if permission == "project:read" else set())
    return [(p, None) for p in ALL if p not in givers]


def listed(r: httpx.Response) -> list[str]:
    assert r.status_code == 200, r.text
    return [item["id"] for item in r.json()]


@pytest.mark.parametrize("ep", ENDPOINTS, ids=str)
async def test_permission_matrix(
    client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant, ep: Endpoint
) -> None:
    w = await build_world(client, tenant, needed(ep))
    path = ep.path.format(**w)
    body = ep.body(w) if ep.body else None

    revoked = (await send(client, "POST", "/api/api_keys", tenant.admin_key, {"name": "soon revoked"})).json()
    assert (await send(client, "GET", "/api/projects", revoked["key"])).status_code == 200
    r = await send(client, "DELETE", f"/api/api_keys/{revoked['api_key']['id']}", tenant.admin_key)
    assert r.status_code == 200, r.text
    expired = await tenant.key_with(("team:admin", None), expires=datetime.now(UTC) - timedelta(seconds=1))
    for key in (None, "ps1.malformed", "x" * 49, expired, revoked["key"]):
        error(await send(client, ep.method, path, key, body), 401, "authn")

    if ep.foreign:
        assert "not found" in error(
            await send(client, ep.method, path, other_tenant.admin_key, body), 404, "not_found"
        )

    without = await tenant.key_with(*lacking(ep.permission))
    r = await send(client, ep.method, path, without, body)
    if ep.hidden:
        assert ep.hidden.format(**w) not in listed(r)
    else:
        assert r.status_code == 403, r.text
        assert r.json() == {
            "error": {"kind": "missing_permission", "message": f"Missing permission {ep.permission}"}
        }

    allowed = await tenant.key_with((ep.permission, None if ep.team_wide else tenant.project_id))
    r = await send(client, ep.method, path, allowed, body)
    assert r.status_code == ep.status, r.text
    if ep.hidden:
        assert ep.hidden.format(**w) in listed(r)


# Grants are scoped


async def test_project_grant_reaches_only_its_project(client: httpx.AsyncClient, tenant: Tenant) -> None:
    other_project = await created(client, tenant.admin_key, "/api/projects", {"name": "B"})
    reader = await tenant.key_with(("project:read", tenant.project_id), inherits=False)

    assert (await send(client, "GET", f"/api/projects/{tenant.project}", reader)).status_code == 200
    assert listed(await send(client, "GET", "/api/projects", reader)) == [tenant.project]
    for path in (
        f"/api/projects/{other_project}",
        f"/api/projects/{other_project}/storage_locations",
        f"/api/projects/{other_project}/upload_profiles",
        "/api/projects/global/conversion_profiles",
    ):
        r = await send(client, "GET", path, reader)
        assert error(r, 403, "missing_permission") == "Missing permission project:read"
    r = await send(client, "PUT", f"/api/projects/{tenant.project}", reader, {"name": "no"})
    assert error(r, 403, "missing_permission") == "Missing permission project:write"


async def test_image_create_key_reads_but_cannot_write_the_project(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    uploader = await tenant.key_with(("image:create", tenant.project_id), inherits=False)
    assert (await send(client, "GET", f"/api/projects/{tenant.project}", uploader)).status_code == 200
    r = await send(client, "PUT", f"/api/projects/{tenant.project}", uploader, {"name": "no"})
    assert error(r, 403, "missing_permission") == "Missing permission project:write"
    r = await send(
        client,
        "POST",
        f"/api/projects/{tenant.project}/upload_profiles",
        uploader,
        {
            "name": "x",
            "base_storage_location_id": "slc",
            "output_storage_location_id": "slc",
            "conversion_profile_id": "cpr",
        },
    )
    assert error(r, 403, "missing_permission") == "Missing permission project:write"


# Secrets are write-only


async def test_storage_secret_is_never_returned_and_is_sealed(
    client: httpx.AsyncClient, tenant: Tenant, sessions: Any, settings: Any
) -> None:
    secret, newer = "s3cr3t-" + uuid.uuid4().hex, "n3w3r-" + uuid.uuid4().hex
    key, base = tenant.admin_key, f"/api/projects/{tenant.project}/storage_locations"
    responses = [await send(client, "POST", base, key, s3(secret))]
    location = responses[0].json()["id"]
    responses.append(
        await send(client, "POST", "/api/projects/global/storage_locations", key, s3(secret, "Global"))
    )
    item = f"{base}/{location}"
    responses += [
        await send(client, "GET", item, key),
        await send(client, "GET", base, key),
        await send(client, "GET", "/api/projects/global/storage_locations", key),
        await send(client, "PUT", item, key, s3(None, "Kept secret")),
    ]
    responses.append(await send(client, "PUT", item, key, s3(newer, "New secret")))
    responses.append(await send(client, "GET", base, key))
    for r in responses:
        assert r.status_code in (200, 201), r.text
        assert secret not in r.text and newer not in r.text and '"secret_key"' not in r.text
    for found in (responses[0].json(), responses[2].json(), responses[5].json(), responses[6].json()):
        assert found["provider"]["has_secret_key"] is True
        assert found["provider"]["access_key_id"] == "AKIAEXAMPLE"

    async with sessions() as session:
        row = await session.get(models.StorageLocation, ids.parse_id(ids.STORAGE_LOCATION, location))
    assert row is not None and row.secret_sealed is not None
    assert newer.encode() not in row.secret_sealed and secret.encode() not in row.secret_sealed
    assert newer not in json.dumps(row.provider)
    assert sealing.unseal(settings.secret_key, row.secret_sealed) == newer


async def test_new_access_key_without_secret_is_refused(client: httpx.AsyncClient, tenant: Tenant) -> None:
    base = f"/api/projects/{tenant.project}/storage_locations"
    location = await created(client, tenant.admin_key, base, s3("first"))
    body = s3(None)
    body["provider"]["access_key_id"] = "AKIAOTHER"
    r = await send(client, "PUT", f"{base}/{location}", tenant.admin_key, body)
    assert "access_key_id and secret_key" in error(r, 422, "invalid")


# Tenancy


async def test_lists_never_show_another_teams_rows(
    client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    mine = await build_world(client, tenant)
    theirs = await build_world(client, other_tenant)
    key, p = tenant.admin_key, tenant.project
    for kind in ("storage_locations", "conversion_profiles"):
        single = "storage" if kind == "storage_locations" else "conversion"
        for scope in ("global", p):
            seen = listed(await send(client, "GET", f"/api/projects/{scope}/{kind}", key))
            assert mine["global_" + single] in seen
            assert not {theirs[single], theirs[single + "_free"], theirs["global_" + single]} & set(seen)
            r = await send(client, "GET", f"/api/projects/{scope}/{kind}/{theirs['global_' + single]}", key)
            error(r, 404, "not_found")
    for path, own, foreign in (
        ("/api/projects", mine["project"], theirs["project"]),
        ("/api/users", mine["user"], theirs["user"]),
        ("/api/roles", mine["role"], theirs["role"]),
        ("/api/api_keys", mine["key"], theirs["key"]),
        (f"/api/projects/{p}/upload_profiles", mine["upload"], theirs["upload"]),
    ):
        seen = listed(await send(client, "GET", path, key))
        assert own in seen and foreign not in seen, path


async def test_upload_profile_refuses_references_outside_team_and_project(
    client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    w = await build_world(client, tenant)
    theirs = await build_world(client, other_tenant)
    sibling = await created(client, tenant.admin_key, "/api/projects", {"name": "Sibling"})
    sibling_storage = await created(
        client, tenant.admin_key, f"/api/projects/{sibling}/storage_locations", local()
    )
    path = f"/api/projects/{tenant.project}/upload_profiles"
    cases = [
        ("base_storage_location_id", theirs["global_storage"]),
        ("output_storage_location_id", theirs["storage"]),
        ("conversion_profile_id", theirs["global_conversion"]),
        ("base_storage_location_id", sibling_storage),  # same team, another project
        ("conversion_profile_id", ids.format_id(ids.CONVERSION_PROFILE, ids.new_uuid())),
        ("conversion_profile_id", w["storage"]),  # an id of the wrong type
        ("output_storage_location_id", "garbage"),
    ]
    for field, value in cases:
        for method, target in (("POST", path), ("PUT", f"{path}/{w['upload']}")):
            r = await send(client, method, target, tenant.admin_key, upload(w, **{field: value}))
            assert error(r, 422, "invalid").startswith(field), (method, field, value)
    # A team-global object of the own team is fine.
    body = upload(
        w, base_storage_location_id=w["global_storage"], conversion_profile_id=w["global_conversion"]
    )
    assert (await send(client, "POST", path, tenant.admin_key, body)).status_code == 201


# Validation


BAD_BODIES = [
    ("POST", "/api/projects", {}, 400, "name"),
    ("POST", "/api/projects", {"name": 5}, 400, "name"),
    ("POST", "/api/projects", {"name": ""}, 400, "name"),
    ("POST", "/api/projects", {"name": "x", "zzz": 1}, 400, "zzz"),
    ("POST", "/api/projects", ["name"], 400, "object"),
    ("POST", "/api/projects", {"name": "x", "base_location": "../up"}, 422, "base_location"),
    (
        "POST",
        "/api/projects/{project}/storage_locations",
        {**local(), "provider": {"type": "ftp"}},
        400,
        "provider",
    ),
    (
        "POST",
        "/api/projects/{project}/storage_locations",
        {**local(), "public_url_base": "ftp://x"},
        422,
        "public_url_base",
    ),
    (
        "POST",
        "/api/projects/{project}/storage_locations",
        {**s3("x"), "base_location": "bucket/../other"},
        422,
        "base_location",
    ),
    ("POST", "/api/projects/{project}/conversion_profiles", {"name": "x"}, 400, "output"),
    ("POST", "/api/projects/{project}/upload_profiles", {"name": "x"}, 400, "base_storage_location_id"),
    ("POST", "/api/projects/{project}/upload_profiles", {"max_bytes": -1}, 400, "max_bytes"),
    ("POST", "/api/users", {"email": "not an email", "name": "x"}, 400, "email"),
    ("POST", "/api/users", {"email": "a@b.c", "name": "x", "password": "short"}, 400, "password"),
    ("POST", "/api/roles", {"name": "r", "permissions": [{"permission": "team:root"}]}, 400, "permission"),
    ("POST", "/api/api_keys", {"expires": "2030-01-01T00:00:00"}, 400, "time zone"),
    ("POST", "/api/api_keys", {"expires": "2020-01-01T00:00:00Z"}, 422, "future"),
    ("POST", "/api/api_keys", {"permissions": [{"permission": "project:read"}]}, 422, "permissions"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "mentions"), BAD_BODIES)
async def test_invalid_bodies(
    client: httpx.AsyncClient, tenant: Tenant, method: str, path: str, body: Any, status: int, mentions: str
) -> None:
    r = await send(client, method, path.format(project=tenant.project), tenant.admin_key, body)
    assert mentions in error(r, status, "bad_request" if status == 400 else "invalid")


@pytest.mark.parametrize("content", [b"not json", b'{"name": ', b"", b"\xff\xfe", b'{"name": "a\\ud800"}'])
async def test_not_json_is_400(client: httpx.AsyncClient, tenant: Tenant, content: bytes) -> None:
    headers = {**tenant.headers(), "Content-Type": "application/json"}
    error(await client.post("/api/projects", content=content, headers=headers), 400, "bad_request")


async def test_oversized_json_body_is_413(client: httpx.AsyncClient, tenant: Tenant) -> None:
    body = json.dumps({"name": "x" * (1024 * 1024 + 1)}).encode()
    r = await client.post(
        "/api/projects", content=body, headers={**tenant.headers(), "Content-Type": "application/json"}
    )
    error(r, 413, "payload_too_large")
    # Just under the limit is parsed (and refused for its content, not its size).
    body = json.dumps({"name": "x" * (1024 * 1024 - 100)}).encode()
    r = await client.post(
        "/api/projects", content=body, headers={**tenant.headers(), "Content-Type": "application/json"}
    )
    error(r, 400, "bad_request")


@pytest.mark.parametrize(
    ("output", "mentions"),
    [
        ({"type": "cross", "formats": [{"format": "bmp"}], "sizes": [{"width": 100}]}, "formats[0].format"),
        (
            {"type": "cross", "formats": [{"format": "webp"}, {"format": "webp"}], "sizes": [{"width": 200}]},
            "formats[0] and formats[1] are both webp",
        ),
        (
            {"type": "cross", "formats": [{"format": "webp"}], "sizes": [{"width": 200}, {"width": 200}]},
            "sizes[0] and sizes[1]",
        ),
        ({"type": "grid", "formats": [], "sizes": []}, "type"),
        (
            {"type": "cross", "formats": [{"format": "jpg", "quality": 101}], "sizes": [{"width": 1}]},
            "quality",
        ),
        ({"type": "cross", "formats": [{"format": "jpg"}], "sizes": [{"width": -5}]}, "width"),
        ({"type": "cross", "formats": [], "sizes": [{"width": 5}]}, "formats"),
    ],
)
async def test_invalid_conversion_profile_is_422_saying_why(
    client: httpx.AsyncClient, tenant: Tenant, output: dict[str, Any], mentions: str
) -> None:
    base = f"/api/projects/{tenant.project}/conversion_profiles"
    message = error(
        await send(client, "POST", base, tenant.admin_key, conversion(output=output)), 422, "invalid"
    )
    assert message.startswith("output: ") and mentions in message, message
    profile = await created(client, tenant.admin_key, base, conversion())
    r = await send(client, "PUT", f"{base}/{profile}", tenant.admin_key, conversion(output=output))
    assert mentions in error(r, 422, "invalid")


@pytest.mark.parametrize("base_location", ["../../etc", "/etc", "a/../../..", "a\x00b"])
async def test_local_storage_must_stay_under_the_root(
    client: httpx.AsyncClient, tenant: Tenant, base_location: str
) -> None:
    body = {**local(), "base_location": base_location}
    for scope in (tenant.project, "global"):
        r = await send(client, "POST", f"/api/projects/{scope}/storage_locations", tenant.admin_key, body)
        assert error(r, 422, "invalid").startswith("base_location")


async def test_local_storage_under_the_root_is_accepted_and_probed(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    base = f"/api/projects/{tenant.project}/storage_locations"
    location = await created(client, tenant.admin_key, base, {**local(), "base_location": "a/./b/../c"})
    r = await send(client, "POST", f"{base}/{location}/test", tenant.admin_key)
    assert r.status_code == 200, r.text
    assert r.json()["ok"] is True, r.text


async def test_short_id_is_unique_per_team(
    client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    w = await build_world(client, tenant)
    theirs = await build_world(client, other_tenant)
    path = f"/api/projects/{tenant.project}/upload_profiles"
    first = await created(client, tenant.admin_key, path, upload(w, short_id="hero"))
    assert "hero" in error(
        await send(client, "POST", path, tenant.admin_key, upload(w, short_id="hero")), 409, "conflict"
    )
    # Unique across the team's projects, not per project.
    sibling = await created(client, tenant.admin_key, "/api/projects", {"name": "Sibling"})
    sibling_body = upload(
        w,
        short_id="hero",
        base_storage_location_id=w["global_storage"],
        output_storage_location_id=w["global_storage"],
        conversion_profile_id=w["global_conversion"],
    )
    r = await send(client, "POST", f"/api/projects/{sibling}/upload_profiles", tenant.admin_key, sibling_body)
    error(r, 409, "conflict")
    # Renaming another profile onto it conflicts too; the failed attempt leaves it unchanged.
    r = await send(
        client, "PUT", f"{path}/{w['upload']}", tenant.admin_key, upload(w, short_id="hero", name="Changed")
    )
    assert "hero" in error(r, 409, "conflict")
    r = await send(client, "GET", f"{path}/{w['upload']}", tenant.admin_key)
    assert r.json()["short_id"] is None and r.json()["name"] == "Uploads"
    # Another team may use it; profiles without a short_id never conflict (Pic Store bug §12 #11).
    their_path = f"/api/projects/{other_tenant.project}/upload_profiles"
    assert (
        await send(client, "POST", their_path, other_tenant.admin_key, upload(theirs, short_id="hero"))
    ).status_code == 201
    for _ in range(2):
        r = await send(client, "POST", path, tenant.admin_key, upload(w))
        assert r.status_code == 201 and r.json()["short_id"] is None, r.text
    # A deleted profile frees its short_id.
    assert (await send(client, "DELETE", f"{path}/{first}", tenant.admin_key)).status_code == 200
    await created(client, tenant.admin_key, path, upload(w, short_id="hero"))


async def test_objects_in_use_cannot_be_deleted(client: httpx.AsyncClient, tenant: Tenant) -> None:
    w = await build_world(client, tenant)
    key, p = tenant.admin_key, tenant.project
    r = await send(client, "DELETE", f"/api/projects/{p}/conversion_profiles/{w['conversion']}", key)
    assert w["upload"] in error(r, 409, "conflict")
    r = await send(client, "DELETE", f"/api/projects/{p}/storage_locations/{w['storage']}", key)
    assert w["upload"] in error(r, 409, "conflict")
    assert (
        await send(client, "DELETE", f"/api/projects/{p}/upload_profiles/{w['upload']}", key)
    ).status_code == 200
    assert (
        await send(client, "DELETE", f"/api/projects/{p}/conversion_profiles/{w['conversion']}", key)
    ).status_code == 200
    assert (
        await send(client, "DELETE", f"/api/projects/{p}/storage_locations/{w['storage']}", key)
    ).status_code == 200


def _unknown_ids() -> list[str]:
    return [
        ids.format_id(ids.PROJECT, ids.new_uuid()),
        str(uuid.uuid4()),
        "nonsense",
        "prj" + "!" * 22,
        "%00",
        ids.format_id(ids.USER, ids.new_uuid()),  # another type's id
    ]


async def test_unknown_and_malformed_ids_are_404(client: httpx.AsyncClient, tenant: Tenant) -> None:
    w = await build_world(client, tenant)
    checked = 0
    for ep in ENDPOINTS:
        body = ep.body(w) if ep.body else None
        for name in (n for n in w if "{" + n + "}" in ep.path):
            for bogus in _unknown_ids():
                r = await send(
                    client, ep.method, ep.path.format(**{**w, name: bogus}), tenant.admin_key, body
                )
                assert r.status_code == 404, (str(ep), bogus, r.text)
                error(r, 404, "not_found")
                checked += 1
    assert checked > 200


async def test_upload_profiles_have_no_global_scope_and_stay_in_their_project(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    w = await build_world(client, tenant)
    sibling = await created(client, tenant.admin_key, "/api/projects", {"name": "Sibling"})
    error(
        await send(client, "GET", "/api/projects/global/upload_profiles", tenant.admin_key), 404, "not_found"
    )
    r = await send(client, "GET", f"/api/projects/{sibling}/upload_profiles/{w['upload']}", tenant.admin_key)
    error(r, 404, "not_found")
    r = await send(
        client, "PUT", f"/api/projects/global/storage_locations/{w['storage']}", tenant.admin_key, local()
    )
    error(r, 404, "not_found")


def _poisoned(value: Any, poison: Any) -> Any:
    if isinstance(value, dict):
        return {k: _poisoned(v, poison) for k, v in value.items()}
    if isinstance(value, list):
        return [_poisoned(v, poison) for v in value]
    return poison if isinstance(value, str) and value not in ("local", "s3", "cross", "webp") else value


async def test_nothing_a_client_sends_is_a_server_error(client: httpx.AsyncClient, tenant: Tenant) -> None:
    w = await build_world(client, tenant)
    generic: list[Any] = [None, [], "x", {}, {"name": {"nested": [1]}}, {"name": 10**30}]
    for ep in (e for e in ENDPOINTS if e.body is not None):
        good = ep.body(w)
        bodies = generic + [_poisoned(good, p) for p in ("a\x00b", "\u202e" * 3000, 2**63, None)]
        bodies += [{**good, k: v} for k in good for v in (None, "a\x00", {"k": "v"})]
        for body in bodies:
            r = await send(client, ep.method, ep.path.format(**w), tenant.admin_key, body)
            assert r.status_code < 500, (str(ep), body, r.text)
            if r.status_code >= 400:
                error(r, r.status_code, r.json()["error"]["kind"])


# Pic Store compatibility (reference/pic-store.md §5, §7.1, §12)


async def test_pic_store_default_profile_is_accepted(client: httpx.AsyncClient, tenant: Tenant) -> None:
    for scope in (tenant.project, "global"):
        base = f"/api/projects/{scope}/conversion_profiles"
        r = await send(client, "POST", base, tenant.admin_key, conversion("Default", PIC_STORE_DEFAULT))
        assert r.status_code == 201, r.text
        out = r.json()["output"]
        assert [f["format"] for f in out["formats"]] == ["avif", "webp", "jpg", "png"]
        assert out["formats"][1]["quality"] == 80.5
        assert out["formats"][2]["condition"] == {"type": "must", "formats": ["jpg"]}
        assert [s["width"] for s in out["sizes"]] == [200, 400]
        r = await send(client, "GET", f"{base}/{r.json()['id']}", tenant.admin_key)
        assert r.json()["output"] == out


async def test_global_objects_can_be_updated_and_deleted(client: httpx.AsyncClient, tenant: Tenant) -> None:
    key = tenant.admin_key
    for kind, body in (("storage_locations", local), ("conversion_profiles", conversion)):
        base = f"/api/projects/global/{kind}"
        object_id = await created(client, key, base, body())
        r = await send(client, "PUT", f"{base}/{object_id}", key, body("Renamed"))
        assert r.status_code == 200 and r.json()["name"] == "Renamed" and r.json()["project_id"] is None, (
            r.text
        )
        r = await send(client, "GET", f"{base}/{object_id}", key)
        assert r.json()["name"] == "Renamed"
        # A global object is visible (read-only) through a project's path too.
        r = await send(client, "GET", f"/api/projects/{tenant.project}/{kind}/{object_id}", key)
        assert r.status_code == 200, r.text
        assert (await send(client, "DELETE", f"{base}/{object_id}", key)).status_code == 200
        error(await send(client, "GET", f"{base}/{object_id}", key), 404, "not_found")
        assert object_id not in listed(await send(client, "GET", base, key))
        # Deleting what is gone is a 404, not Pic Store's 200.
        error(await send(client, "DELETE", f"{base}/{object_id}", key), 404, "not_found")


async def test_global_objects_can_be_read_by_a_team_wide_reader(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    # Pic Store (§4.2) let only team:admin GET a global object that everyone saw in lists.
    w = await build_world(client, tenant)
    reader = await tenant.key_with(("project:read", None))
    for path in (
        f"/api/projects/global/storage_locations/{w['global_storage']}",
        f"/api/projects/global/conversion_profiles/{w['global_conversion']}",
    ):
        assert (await send(client, "GET", path, reader)).status_code == 200


async def test_put_upload_profile_changes_every_field(client: httpx.AsyncClient, tenant: Tenant) -> None:
    w = await build_world(client, tenant)
    path = f"/api/projects/{tenant.project}/upload_profiles/{w['upload']}"
    body = {
        "name": "Changed",
        "short_id": "changed",
        "base_storage_location_id": w["storage_free"],
        "base_storage_location_path": "/originals/",
        "output_storage_location_id": w["global_storage"],
        "output_storage_location_path": "out",
        "conversion_profile_id": w["conversion_free"],
        "max_bytes": 1000,
        "max_pixels": 2000,
        "allowed_formats": ["png", "jpg", "png"],
        "obsolete_retention_seconds": None,
    }
    r = await send(client, "PUT", path, tenant.admin_key, body)
    assert r.status_code == 200, r.text
    got = (await send(client, "GET", path, tenant.admin_key)).json()
    assert got["conversion_profile_id"] == w["conversion_free"]  # Pic Store bug §12 #10
    assert got["base_storage_location_id"] == w["storage_free"]
    assert got["output_storage_location_id"] == w["global_storage"]
    assert got["base_storage_location_path"] == "originals"
    assert (got["name"], got["short_id"], got["max_bytes"], got["max_pixels"]) == (
        "Changed",
        "changed",
        1000,
        2000,
    )
    assert got["allowed_formats"] == ["jpg", "png"]
    assert got["obsolete_retention_seconds"] is None


@pytest.mark.parametrize(
    "path",
    [
        "/api/projects/{project}/storage_locations/{missing_storage}",
        "/api/projects/global/conversion_profiles/{missing_conversion}",
        "/api/projects/{project}/upload_profiles/{missing_upload}",
        "/api/projects/{missing_project}",
        "/api/users/{missing_user}",
        "/api/roles/{missing_role}",
        "/api/api_keys/{missing_key}",
    ],
)
async def test_delete_of_missing_object_is_404(client: httpx.AsyncClient, tenant: Tenant, path: str) -> None:
    missing = {
        "missing_storage": ids.format_id(ids.STORAGE_LOCATION, ids.new_uuid()),
        "missing_conversion": ids.format_id(ids.CONVERSION_PROFILE, ids.new_uuid()),
        "missing_upload": ids.format_id(ids.UPLOAD_PROFILE, ids.new_uuid()),
        "missing_project": ids.format_id(ids.PROJECT, ids.new_uuid()),
        "missing_user": ids.format_id(ids.USER, ids.new_uuid()),
        "missing_role": ids.format_id(ids.ROLE, ids.new_uuid()),
        "missing_key": ids.format_id(ids.API_KEY, ids.new_uuid()),
    }
    error(
        await send(client, "DELETE", path.format(project=tenant.project, **missing), tenant.admin_key),
        404,
        "not_found",
    )


# API keys


async def test_api_key_is_shown_once_and_tracks_use(client: httpx.AsyncClient, tenant: Tenant) -> None:
    r = await send(client, "POST", "/api/api_keys", tenant.admin_key, {"name": "ci"})
    assert r.status_code == 201, r.text
    key, out = r.json()["key"], r.json()["api_key"]
    assert out["prefix"] == key[:16] and out["last_used"] is None and out["revoked"] is None
    secret_part = key.split(".")[2]
    r = await send(client, "GET", "/api/api_keys", tenant.admin_key)
    assert out["id"] in listed(r)
    assert key not in r.text and secret_part not in r.text and "digest" not in r.text
    assert all(set(k) == set(out) for k in r.json())

    assert (await send(client, "GET", "/api/projects", key)).status_code == 200
    mine = {k["id"]: k for k in (await send(client, "GET", "/api/api_keys", tenant.admin_key)).json()}
    assert mine[out["id"]]["last_used"] is not None

    assert (
        await send(client, "DELETE", f"/api/api_keys/{out['id']}", key)
    ).status_code == 200  # a key may revoke itself
    error(await send(client, "GET", "/api/projects", key), 401, "authn")
    mine = {k["id"]: k for k in (await send(client, "GET", "/api/api_keys", tenant.admin_key)).json()}
    assert mine[out["id"]]["revoked"] is not None


async def test_restricted_key_carries_only_its_grants(client: httpx.AsyncClient, tenant: Tenant) -> None:
    grants = [{"permission": "project:read", "project_id": tenant.project}]
    body = {"inherits_user_permissions": False, "permissions": grants}
    r = await send(client, "POST", "/api/api_keys", tenant.admin_key, body)
    assert r.status_code == 201, r.text
    assert r.json()["api_key"]["permissions"] == grants
    key = r.json()["key"]
    assert (await send(client, "GET", f"/api/projects/{tenant.project}", key)).status_code == 200
    error(await send(client, "POST", "/api/projects", key, {"name": "x"}), 403, "missing_permission")
    # It cannot mint a key with its user's (admin) permissions either.
    r = await send(client, "POST", "/api/api_keys", key, {})
    error(r, 403, "missing_permission")
    r = await send(client, "POST", "/api/api_keys", key, body)
    assert r.status_code == 201, r.text


async def test_team_writer_cannot_hand_out_more_than_it_holds(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    w = await build_world(client, tenant)
    writer = await tenant.key_with(("team:write", None))
    admin_role = await _admin_role(client, tenant)
    refusals = [
        ("POST", "/api/roles", {"name": "Boss", "permissions": [{"permission": "team:admin"}]}, "team:admin"),
        (
            "POST",
            "/api/roles",
            {"name": "R", "permissions": [{"permission": "project:read"}]},
            "project:read",
        ),
        (
            "PUT",
            f"/api/roles/{w['role']}/permissions",
            {"permissions": [{"permission": "team:admin"}]},
            "team:admin",
        ),
        (
            "POST",
            "/api/api_keys",
            {"inherits_user_permissions": False, "permissions": [{"permission": "project:create"}]},
            "project:create",
        ),
        ("POST", "/api/api_keys", {"user_id": w["user"]}, "team:admin"),
        ("POST", "/api/users", {"email": "a@b.c", "name": "x", "role_ids": [admin_role]}, "team:admin"),
        ("PUT", f"/api/users/{w['user']}/roles", {"role_ids": [admin_role]}, "team:admin"),
        # Nor take away what it does not hold: the Admin role and the admin user are out of its reach.
        ("PUT", f"/api/roles/{admin_role}/permissions", {"permissions": []}, "team:admin"),
        ("DELETE", f"/api/roles/{admin_role}", None, "team:admin"),
        (
            "PUT",
            f"/api/users/{ids.format_id(ids.USER, tenant.admin_user_id)}/roles",
            {"role_ids": []},
            "team:admin",
        ),
        (
            "PUT",
            f"/api/users/{ids.format_id(ids.USER, tenant.admin_user_id)}",
            {"email": "me@evil.example"},
            "team:admin",
        ),
        ("DELETE", f"/api/users/{ids.format_id(ids.USER, tenant.admin_user_id)}", None, "team:admin"),
    ]
    for method, path, body, permission in refusals:
        r = await send(client, method, path, writer, body)
        assert error(r, 403, "missing_permission") == f"Missing permission {permission}", (method, path)
    # The admin's key still works and the Admin role is intact.
    assert (await send(client, "GET", "/api/roles", tenant.admin_key)).status_code == 200
    assert await _admin_role(client, tenant) == admin_role
    # What it does hold, it may give.
    r = await send(
        client, "POST", "/api/roles", writer, {"name": "W", "permissions": [{"permission": "team:write"}]}
    )
    assert r.status_code == 201, r.text
    r = await send(client, "PUT", f"/api/users/{w['user']}/roles", writer, {"role_ids": [r.json()["id"]]})
    assert r.status_code == 200, r.text


async def _admin_role(client: httpx.AsyncClient, tenant: Tenant) -> str:
    roles = (await send(client, "GET", "/api/roles", tenant.admin_key)).json()
    return next(
        r["id"] for r in roles if {"permission": "team:admin", "project_id": None} in r["permissions"]
    )


async def test_deleted_user_keys_stop_working(client: httpx.AsyncClient, tenant: Tenant) -> None:
    w = await build_world(client, tenant)
    r = await send(client, "POST", "/api/api_keys", tenant.admin_key, {"user_id": w["user"]})
    key = r.json()["key"]
    assert (await send(client, "GET", "/api/projects", key)).status_code == 200
    assert (await send(client, "DELETE", f"/api/users/{w['user']}", tenant.admin_key)).status_code == 200
    error(await send(client, "GET", "/api/projects", key), 401, "authn")


async def test_users_may_read_and_update_themselves(
    client: httpx.AsyncClient, tenant: Tenant, sessions: Any
) -> None:
    nobody = await tenant.key_with()
    me = (await send(client, "GET", "/api/api_keys", nobody)).json()[0]["user_id"]
    r = await send(client, "GET", f"/api/users/{me}", nobody)
    assert r.status_code == 200 and r.json()["id"] == me, r.text
    r = await send(client, "PUT", f"/api/users/{me}", nobody, {"name": "Me", "password": "long enough pw"})
    assert r.status_code == 200 and r.json()["has_password"] is True, r.text
    async with sessions() as session:
        user = await session.scalar(select(models.User).where(models.User.id == ids.parse_id(ids.USER, me)))
    assert user is not None and user.password_hash is not None and user.password_hash.startswith("$argon2id$")
    assert "long enough pw" not in r.text


# OpenAPI


async def test_openapi_lists_the_admin_routes(client: httpx.AsyncClient) -> None:
    r = await client.get("/schema/openapi.json")
    assert r.status_code == 200, r.text
    found = r.json()["paths"]
    assert "/api/projects" in found
    assert any(p.startswith("/api/projects/{project_id}/upload_profiles") for p in found)


async def test_probing_a_global_location_needs_the_permission_team_wide(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    w = await build_world(client, tenant, {"storage", "global_storage"})
    project_writer = await tenant.key_with(("storage_location:write", tenant.project_id))
    base = f"/api/projects/{tenant.project}/storage_locations"
    assert (await send(client, "POST", f"{base}/{w['storage']}/test", project_writer)).status_code == 200
    r = await send(client, "POST", f"{base}/{w['global_storage']}/test", project_writer)
    assert error(r, 403, "missing_permission") == "Missing permission storage_location:write"
    team_writer = await tenant.key_with(("storage_location:write", None))
    assert (await send(client, "POST", f"{base}/{w['global_storage']}/test", team_writer)).status_code == 200

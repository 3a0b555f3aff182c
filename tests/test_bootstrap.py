"""The `picstore` command as operators run it (a subprocess): bootstrap, init-local, keys, settings."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from conftest import Tenant
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from picstore import auth, ids, models, sealing
from picstore.settings import Settings

SAMPLE = Path(__file__).parent / "data" / "bootstrap"
TEAM, USER, PROJECT = "temAaIBOjTyfWya6-RccAV9dQ", "usrAaIBOjTyccusqoYRSdGlgA", "prjAaIBOjTydcer5jQxva0v5A"
S3_LOCATION, LOCAL_UPLOAD = "slcAaIBOjTycN2l_Lyvfzb2Gg", "uplAaIBOjTydXyCfHtL0UH_7A"
KEY = "ps1.of_rXjZpSLmY_UGsc6--vA.pii9pX255ty4fUBFQjgD_g"
ID = re.compile(r'"((?:tem|usr|rol|prj|slc|cpr|upl)[A-Za-z0-9_-]{22})"')
API_KEY = re.compile(r"ps1\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{22}")

Sessions = async_sessionmaker[AsyncSession]


async def picstore(env: dict[str, str], *args: str, cwd: Path | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "picstore",
        *args,
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def count(sessions: Sessions, model: Any, object_id: str | None = None) -> int:
    query = select(func.count()).select_from(model)
    if object_id is not None:
        query = query.where(model.id == ids.parse_id(object_id[:3], object_id))
    async with sessions() as session:
        return int(await session.scalar(query) or 0)


async def test_bootstrap_sample_folder(
    client: httpx.AsyncClient, env: dict[str, str], sessions: Sessions, settings: Settings
) -> None:
    secret = "boot-secret-" + uuid.uuid4().hex
    code, out, err = await picstore({**env, "S3_SECRET": secret}, "bootstrap", str(SAMPLE))
    assert code == 0, err
    assert out.strip() == "bootstrap: loaded 12 objects"

    r = await client.get("/api/projects", headers=bearer(KEY))
    assert r.status_code == 200, r.text
    assert [p["id"] for p in r.json()] == [PROJECT]
    r = await client.get(f"/api/projects/{PROJECT}/upload_profiles", headers=bearer(KEY))
    assert sorted(p["short_id"] for p in r.json()) == ["boot-local", "boot-s3"]
    r = await client.get(f"/api/users/{USER}", headers=bearer(KEY))
    assert r.json()["default_upload_profile_id"] == LOCAL_UPLOAD and r.json()["has_password"] is True
    r = await client.get(f"/api/projects/{PROJECT}/storage_locations/{S3_LOCATION}", headers=bearer(KEY))
    assert r.status_code == 200 and r.json()["provider"]["has_secret_key"] is True, r.text
    assert secret not in r.text

    async with sessions() as session:
        row = await session.get(models.StorageLocation, ids.parse_id(ids.STORAGE_LOCATION, S3_LOCATION))
    assert row is not None and row.secret_sealed is not None
    assert secret.encode() not in row.secret_sealed and secret not in json.dumps(row.provider)
    assert sealing.unseal(settings.secret_key, row.secret_sealed) == secret


def fresh_copy(dest: Path) -> dict[str, str]:
    """The sample with new ids and a new key (so it could load next to the sample); returns old → new."""
    mapping: dict[str, str] = {}

    def new_id(match: re.Match[str]) -> str:
        old = match[1]
        return '"' + mapping.setdefault(old, ids.format_id(old[:3], ids.new_uuid())) + '"'

    dest.mkdir()
    for file in SAMPLE.glob("*.json"):
        text = API_KEY.sub(
            lambda m: mapping.setdefault(m[0], auth.new_key()), ID.sub(new_id, file.read_text())
        )
        (dest / file.name).write_text(text)
    return mapping


def edit(folder: Path, name: str, change: Callable[[Any], None]) -> None:
    data = json.loads((folder / name).read_text())
    change(data)
    (folder / name).write_text(json.dumps(data))


async def test_invalid_bootstrap_writes_nothing(
    tmp_path: Path, env: dict[str, str], sessions: Sessions, other_tenant: Tenant, client: httpx.AsyncClient
) -> None:
    r = await client.post(
        "/api/projects/global/storage_locations",
        headers=other_tenant.headers(),
        json={
            "name": "Theirs",
            "provider": {"type": "local"},
            "base_location": "theirs",
            "public_url_base": "https://cdn.example.com",
        },
    )
    foreign_storage = r.json()["id"]
    stranger = ids.format_id(ids.TEAM, ids.new_uuid())
    cases: dict[str, tuple[Callable[[Path], None], str]] = {
        "foreign storage": (
            lambda f: edit(
                f, "upload_profiles.json", lambda d: d[0].update(base_storage_location_id=foreign_storage)
            ),
            "does not exist in team",
        ),
        "unknown type": (lambda f: (f / "widgets.json").write_text("[{}]"), "unknown object type 'widgets'"),
        "missing env var": (lambda f: None, "environment variable S3_SECRET is not set"),
        "bad upload format": (
            lambda f: edit(f, "upload_profiles.json", lambda d: d[1].update(allowed_formats=["jpg", "bmp"])),
            "upload_profile[1]",
        ),
        "escaping local storage": (
            lambda f: edit(f, "storage_locations.json", lambda d: d[0].update(base_location="../../etc")),
            "outside the local storage roots",
        ),
        "unknown team": (
            lambda f: edit(f, "projects.json", lambda d: d[0].update(team_id=stranger)),
            f"team {ids.parse_id(ids.TEAM, stranger)} does not exist",
        ),
    }
    folders = {}
    for name, (change, _) in cases.items():
        folder = tmp_path / name.replace(" ", "-")
        folders[name] = (folder, fresh_copy(folder))
        change(folder)
    teams_before = await count(sessions, models.Team)

    def run(name: str) -> Any:
        case_env = {k: v for k, v in env.items() if k != "S3_SECRET"}
        if name != "missing env var":
            case_env["S3_SECRET"] = "x"
        return picstore(case_env, "bootstrap", str(folders[name][0]))

    results = await asyncio.gather(*(run(name) for name in cases))
    for (name, (_, expected)), (code, out, err) in zip(cases.items(), results, strict=True):
        message = err.strip()
        assert code != 0 and out == "", (name, out, err)
        assert "\n" not in message and "Traceback" not in message, (name, err)
        assert message.startswith("picstore bootstrap: ") and message.endswith("; nothing was written"), (
            name,
            err,
        )
        assert expected in message, (name, message)
        mapping = folders[name][1]
        assert await count(sessions, models.Team, mapping[TEAM]) == 0, name
        assert await count(sessions, models.Project, mapping[PROJECT]) == 0, name
    assert await count(sessions, models.Team) == teams_before


async def test_hash_password_prints_argon2id() -> None:
    code, out, err = await picstore(_plain_env(), "hash-password", "pw")
    assert code == 0, err
    hashed = out.strip()
    assert hashed.startswith("$argon2id$") and "\n" not in hashed
    assert auth.verify_password(hashed, "pw") and not auth.verify_password(hashed, "pw2")


async def test_add_api_key_prints_a_working_key(
    client: httpx.AsyncClient, env: dict[str, str], tenant: Tenant
) -> None:
    user = ids.format_id(ids.USER, tenant.admin_user_id)
    code, out, err = await picstore(env, "add-api-key", "--user", user, "--name", "cli")
    assert code == 0, err
    key = out.strip()
    auth.parse_key(key)
    r = await client.get("/api/projects", headers=bearer(key))
    assert r.status_code == 200 and [p["id"] for p in r.json()] == [tenant.project], r.text
    r = await client.get("/api/api_keys", headers=bearer(key))
    assert {k["name"] for k in r.json()} >= {"cli"}

    missing = ids.format_id(ids.USER, ids.new_uuid())
    refusals = [
        (["--user", missing], missing),
        (["--user", "nonsense"], "nonsense"),
        (["--user", user, "--expires", "2030-01-01T00:00:00"], "time zone"),
    ]
    results = await asyncio.gather(*(picstore(env, "add-api-key", *argv) for argv, _ in refusals))
    for (argv, mentions), (code, out, err) in zip(refusals, results, strict=True):
        assert code != 0 and out == "", (argv, err)
        assert err.strip().startswith("picstore: ") and "\n" not in err.strip() and mentions in err, (
            argv,
            err,
        )
    r = await client.get("/api/api_keys", headers=tenant.headers())
    assert len(r.json()) == 2  # the fixture's key and "cli": the refusals stored nothing


async def test_migrate_on_a_migrated_database(env: dict[str, str]) -> None:
    code, _, err = await picstore(env, "migrate")
    assert code == 0, err


def _plain_env() -> dict[str, str]:
    """The environment without any PICSTORE_ setting."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PICSTORE_")}


async def test_serve_and_worker_name_the_missing_database_url(tmp_path: Path, env: dict[str, str]) -> None:
    without = {k: v for k, v in env.items() if k != "PICSTORE_DATABASE_URL"}
    results = await asyncio.gather(*(picstore(without, cmd, cwd=tmp_path) for cmd in ("serve", "worker")))
    for code, out, err in results:
        assert code != 0 and out == ""
        assert err.strip() == "picstore: PICSTORE_DATABASE_URL is not set"


async def test_init_local_is_idempotent(
    tmp_path: Path, client: httpx.AsyncClient, env: dict[str, str], sessions: Sessions
) -> None:
    before = await count(sessions, models.Team)
    keys = []
    for _ in range(2):
        code, out, err = await picstore(env, "init-local", str(tmp_path / "data"), cwd=tmp_path)
        assert code == 0, err
        keys.append(set(API_KEY.findall(out)))
    assert len(keys[0]) == 1 and keys[0] == keys[1]
    assert await count(sessions, models.Team) == before + 1
    key = keys[0].pop()
    r = await client.get("/api/projects", headers=bearer(key))
    assert r.status_code == 200 and len(r.json()) == 1, r.text
    project = r.json()[0]["id"]
    assert project in out
    r = await client.get(f"/api/projects/{project}/upload_profiles", headers=bearer(key))
    assert [p["short_id"] for p in r.json()] == ["default"]

"""Shared fixtures: a fresh migrated PostgreSQL database per run, the app in-process, tenants.

The database comes from PICSTORE_TEST_DATABASE_URL, else the server on 127.0.0.1:5432 if one answers,
else an embedded one (pgserver). Tests isolate by tenant: every test makes its own team(s), which is also
what the product guarantees, so committed data (which real workers need) never leaks between tests.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from s3server import S3Server, start_seaweedfs
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from picstore import auth, cli, db, ids, models, team
from picstore.app import create_app
from picstore.models import NIL_UUID
from picstore.permissions import Grant
from picstore.settings import Settings, database_url

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus"


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, port)) == 0


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """A PostgreSQL server URL (its maintenance database)."""
    if url := os.environ.get("PICSTORE_TEST_DATABASE_URL"):
        yield url
    elif _port_open("127.0.0.1", 5432):
        yield "postgresql://postgres@127.0.0.1:5432/postgres"
    else:
        import pgserver

        server = pgserver.get_server(tempfile.mkdtemp(prefix="picstore-pg-"), cleanup_mode="delete")
        yield server.get_uri()


def _with_database(url: str, name: str) -> str:
    base, _, query = url.partition("?")
    return base.rsplit("/", 1)[0] + "/" + name + (("?" + query) if query else "")


async def _admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(database_url(url).replace("postgresql+asyncpg", "postgresql"))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def run_sync(fn: Any, *args: Any) -> Any:
    """Run blocking code that calls asyncio.run (alembic) outside the test loop."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args).result()


@pytest.fixture(scope="session")
def database(server_url: str) -> Iterator[str]:
    """A fresh database for this run, migrated to head; dropped afterwards."""
    name = f"picstore_test_{uuid.uuid4().hex[:12]}"
    run_sync(asyncio.run, _admin(server_url, f"CREATE DATABASE {name}"))
    url = database_url(_with_database(server_url, name))
    run_sync(cli.migrate, url)
    yield url
    run_sync(asyncio.run, _admin(server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture(scope="session")
def storage_root() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="picstore-files-") as root:
        yield Path(root)


@pytest.fixture(scope="session")
def settings(database: str, storage_root: Path) -> Settings:
    return Settings(
        database_url=database,
        secret_key="test-server-secret",
        local_storage_roots=(str(storage_root),),
        public_url="http://picstore.test",
    )


@pytest.fixture(scope="session")
def env(settings: Settings) -> dict[str, str]:
    """Environment for subprocesses (worker, CLI) pointing at the test database and storage."""
    return {
        **os.environ,
        "PICSTORE_DATABASE_URL": settings.database_url,
        "PICSTORE_SECRET_KEY": settings.secret_key,
        "PICSTORE_LOCAL_STORAGE_ROOTS": os.pathsep.join(settings.local_storage_roots),
        "PICSTORE_PUBLIC_URL": settings.public_url,
        # Webhook receivers in tests listen on loopback, and retries must come within seconds.
        "PICSTORE_WEBHOOK_ALLOW_PRIVATE_ADDRESSES": "true",
        "PICSTORE_WEBHOOK_RETRY_BASE_SECONDS": "0.1",
        "PICSTORE_WEBHOOK_RETRY_WINDOW_SECONDS": "120",
        "PICSTORE_WEBHOOK_TIMEOUT_SECONDS": "2",
    }


@pytest.fixture(scope="session")
async def sessions(settings: Settings) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = db.make_engine(settings.database_url, 5)
    yield db.make_sessionmaker(engine)
    await engine.dispose()


@pytest.fixture(scope="session")
async def app(settings: Settings) -> AsyncIterator[Any]:
    application = create_app(settings)
    started, stop = asyncio.Event(), asyncio.Event()

    async def run() -> None:
        # The lifespan's cancel scopes must be entered and exited in the same task.
        async with application.lifespan():
            started.set()
            await stop.wait()

    task = asyncio.create_task(run())
    await started.wait()
    yield application
    stop.set()
    await task


@pytest.fixture(scope="session")
async def client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://picstore.test") as c:
        yield c


@dataclass
class Tenant:
    """A team with an admin key and one project; `key_with` makes users holding exactly some grants."""

    sessions: async_sessionmaker[AsyncSession]
    team_id: uuid.UUID
    admin_key: str
    project_id: uuid.UUID
    admin_user_id: uuid.UUID
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def project(self) -> str:
        return ids.format_id(ids.PROJECT, self.project_id)

    def headers(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.admin_key}"}

    async def key_with(
        self,
        *grants: tuple[str, uuid.UUID | None],
        expires: datetime | None = None,
        inherits: bool = True,
    ) -> str:
        """A new user with one role holding `grants`, and a key for that user.

        With inherits=False the grants go on the key itself and the user gets no role.
        """
        key = auth.new_key()
        async with self.sessions() as session, session.begin():
            user = models.User(id=ids.new_uuid(), team_id=self.team_id, email="u@example.com", name="user")
            session.add(user)
            await session.flush()
            if inherits:
                role = models.Role(id=ids.new_uuid(), team_id=self.team_id, name="role")
                session.add(role)
                await session.flush()
                session.add(models.UserRole(user_id=user.id, role_id=role.id))
                for permission, project in grants:
                    session.add(
                        models.RolePermission(
                            role_id=role.id,
                            team_id=self.team_id,
                            permission=permission,
                            project_id=project or NIL_UUID,
                        )
                    )
            await team.insert_key(
                session,
                key,
                self.team_id,
                user.id,
                expires=expires,
                inherits=inherits,
                grants=[] if inherits else [Grant(p, proj) for p, proj in grants],
            )
        return key


async def make_tenant(sessions: async_sessionmaker[AsyncSession], name: str = "team") -> Tenant:
    key = auth.new_key()
    async with sessions() as session, session.begin():
        team_row = models.Team(id=ids.new_uuid(), name=name)
        session.add(team_row)
        await session.flush()
        user = models.User(id=ids.new_uuid(), team_id=team_row.id, email="admin@example.com", name="admin")
        role = models.Role(id=ids.new_uuid(), team_id=team_row.id, name="Admin")
        project = models.Project(id=ids.new_uuid(), team_id=team_row.id, name="Project")
        session.add_all([user, role, project])
        await session.flush()
        session.add(models.UserRole(user_id=user.id, role_id=role.id))
        session.add(models.RolePermission(role_id=role.id, team_id=team_row.id, permission="team:admin"))
        await team.insert_key(session, key, team_row.id, user.id, name="admin")
    return Tenant(sessions, team_row.id, key, project.id, user.id)


@pytest.fixture
async def tenant(sessions: async_sessionmaker[AsyncSession]) -> Tenant:
    return await make_tenant(sessions, "tenant")


@pytest.fixture
async def other_tenant(sessions: async_sessionmaker[AsyncSession]) -> Tenant:
    return await make_tenant(sessions, "other")


@pytest.fixture(scope="session")
def worker(env: dict[str, str]) -> Iterator[Any]:
    """A real `picstore worker` process on the test database, stopped with SIGTERM at the end."""
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "picstore", "worker", "--concurrency", "2"], env=env, cwd=ROOT
    )
    yield proc
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


TEST_PROFILE = {
    "type": "cross",
    "formats": [
        {"format": "avif", "quality": 50, "effort": 0},
        {"format": "webp", "quality": 70, "effort": 0},
        {"format": "jpg", "condition": {"type": "must", "formats": ["jpg", "heic", "tiff"]}},
        {"format": "png", "condition": {"type": "must", "formats": ["png"]}},
    ],
    "sizes": [{"width": 64}, {"width": 160}],
}
# (format, width) of every output TEST_PROFILE makes of a JPEG, sorted.
TEST_PROFILE_JPEG_OUTPUTS = [
    ("avif", 64),
    ("avif", 160),
    ("jpg", 64),
    ("jpg", 160),
    ("webp", 64),
    ("webp", 160),
]


async def make_pipeline(
    client: httpx.AsyncClient,
    tenant: Tenant,
    profile: dict[str, Any] | None = None,
    files_url: str = "http://picstore.test/files",
    **limits: Any,
) -> dict[str, Any]:
    """Local storage + conversion profile + upload profile for the tenant's project, through the API.

    `files_url` is where the api serves the local storage root (a live server's own /files route)."""
    h, p = tenant.headers(), tenant.project
    name = uuid.uuid4().hex[:8]
    r = await client.post(
        f"/api/projects/{p}/storage_locations",
        json={
            "name": "local",
            "provider": {"type": "local"},
            "base_location": f"t-{name}",
            "public_url_base": f"{files_url}/t-{name}",
        },
        headers=h,
    )
    assert r.status_code == 201, r.text
    storage_id = r.json()["id"]
    r = await client.post(
        f"/api/projects/{p}/conversion_profiles",
        json={"name": "test", "output": profile or TEST_PROFILE},
        headers=h,
    )
    assert r.status_code == 201, r.text
    body = {
        "name": "test",
        "short_id": f"s{name}",
        "base_storage_location_id": storage_id,
        "output_storage_location_id": storage_id,
        "conversion_profile_id": r.json()["id"],
        "base_storage_location_path": "orig",
        "output_storage_location_path": "out",
        **limits,
    }
    r = await client.post(f"/api/projects/{p}/upload_profiles", json=body, headers=h)
    assert r.status_code == 201, r.text
    return {
        "storage_id": storage_id,
        "upload_profile": r.json()["id"],
        "short_id": body["short_id"],
        "storage_dir": f"t-{name}",
    }


async def wait_settled(
    client: httpx.AsyncClient, tenant: Tenant, image_id: str, timeout: float = 60
) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        r = await client.get(f"/api/images/{image_id}", headers=tenant.headers())
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        if body["status"] in ("ready", "failed"):
            return body
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"image {image_id} still {body['status']} after {timeout} s: {body}")
        await asyncio.sleep(0.2)


S3_BUCKET = "picstore-test"


@pytest.fixture(scope="module")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3-compatible server (SeaweedFS) for one test module, with a public-read bucket S3_BUCKET."""
    server = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    try:
        server.create_bucket(S3_BUCKET)
        server.make_public_read(S3_BUCKET)
        yield server
    finally:
        server.stop()

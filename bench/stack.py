"""A picstore deployment for one benchmark section, made the way the tests make theirs.

A fresh database on the PostgreSQL server (PICSTORE_BENCH_DATABASE_URL, else 127.0.0.1:5432, else an
embedded pgserver), migrated with `picstore.cli.migrate`; the objects `picstore init-local` creates plus a
second upload profile with a raised pixel limit; the API as a real `python -m picstore serve` process and
workers as `python -m picstore worker` processes, all configured through environment variables.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench.inputs import ROOT
from picstore import auth, bootstrap, cli, db, ids
from picstore.settings import Settings, database_url

HUGE_MAX_PIXELS = 300_000_000
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 90.0


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, port)) == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """The URL of a PostgreSQL server's maintenance database, for the whole run."""
    if url := os.environ.get("PICSTORE_BENCH_DATABASE_URL"):
        yield url
    elif _port_open("127.0.0.1", 5432):
        yield "postgresql://postgres@127.0.0.1:5432/postgres"
    else:
        import pgserver

        folder = tempfile.mkdtemp(prefix="picstore-bench-pg-")
        server = pgserver.get_server(folder, cleanup_mode="delete")
        yield server.get_uri()


def _with_database(url: str, name: str) -> str:
    base, _, query = url.partition("?")
    return base.rsplit("/", 1)[0] + "/" + name + (("?" + query) if query else "")


def _libpq(url: str) -> str:
    return database_url(url).replace("postgresql+asyncpg://", "postgresql://", 1)


async def _admin(server: str, sql: str) -> None:
    conn = await asyncpg.connect(_libpq(server))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@dataclass(frozen=True)
class Tenant:
    """The bootstrapped team: its admin key, project and upload profiles (ids as the API shows them)."""

    key: str
    project: str
    upload_profile: str  # the default conversion profile, default limits (100 MP)
    huge_profile: str  # the same conversion profile with max_pixels raised to HUGE_MAX_PIXELS

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def _objects(settings: Settings, key: str) -> tuple[dict[str, list[dict[str, Any]]], str]:
    """init-local's objects plus a copy of its upload profile that admits HUGE_MAX_PIXELS."""
    objects = cli.local_objects(settings, key)
    huge = copy.deepcopy(objects["upload_profile"][0])
    huge.update(
        id=ids.format_id(ids.UPLOAD_PROFILE, ids.new_uuid()),
        name="Huge",
        short_id="huge",
        max_pixels=HUGE_MAX_PIXELS,
    )
    objects["upload_profile"].append(huge)
    return objects, huge["id"]


class Stack:
    """Database, storage folder and picstore processes; everything is removed on exit."""

    def __init__(self, server: str, logs: Path, label: str) -> None:
        self.server = server
        self.logs = logs
        self.label = label
        self.name = f"picstore_bench_{uuid.uuid4().hex[:10]}"
        self.url = database_url(_with_database(server, self.name))
        self.storage = Path(tempfile.mkdtemp(prefix="picstore-bench-files-"))
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.settings = Settings(
            database_url=self.url,
            secret_key=secrets.token_urlsafe(32),
            port=self.port,
            local_storage_roots=(str(self.storage),),
            public_url=self.base_url,
        )
        self.api: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self.tenant: Tenant | None = None

    async def __aenter__(self) -> Stack:
        await _admin(self.server, f"CREATE DATABASE {self.name}")
        await asyncio.to_thread(cli.migrate, self.url)
        self.tenant = await self._bootstrap()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop_workers()
        if self.api is not None:
            await stop(self.api)
        await _admin(self.server, f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")
        shutil.rmtree(self.storage, ignore_errors=True)

    async def _bootstrap(self) -> Tenant:
        key = auth.new_key()
        objects, huge = _objects(self.settings, key)
        engine = db.make_engine(self.url, 2)
        try:
            async with db.make_sessionmaker(engine)() as session, session.begin():
                await bootstrap.load(session, self.settings, objects)
        finally:
            await engine.dispose()
        return Tenant(key, objects["project"][0]["id"], objects["upload_profile"][0]["id"], huge)

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PICSTORE_DATABASE_URL": self.url,
            "PICSTORE_SECRET_KEY": self.settings.secret_key,
            "PICSTORE_LOCAL_STORAGE_ROOTS": str(self.storage),
            "PICSTORE_PUBLIC_URL": self.base_url,
            "PICSTORE_HOST": "127.0.0.1",
            "PICSTORE_PORT": str(self.port),
        }

    def _spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        self.logs.mkdir(parents=True, exist_ok=True)
        with (self.logs / f"{self.label}-{name}.log").open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "picstore", *args],
                env=self.env(),
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def start_api(self) -> subprocess.Popen[bytes]:
        """`picstore serve` (uvicorn, one process), once /api/health answers 200."""
        self.api = self._spawn("api", "serve")
        await wait_http(f"{self.base_url}/api/health", self.api)
        return self.api

    async def start_workers(self, count: int, concurrency: int) -> list[subprocess.Popen[bytes]]:
        """`picstore worker` processes, once each has registered in procrastinate_workers."""
        registered = await self._registered_workers()
        started = [
            self._spawn(f"worker{len(self.workers) + i}", "worker", "--concurrency", str(concurrency))
            for i in range(count)
        ]
        self.workers.extend(started)
        deadline = time.monotonic() + START_TIMEOUT_S
        while await self._registered_workers() < registered + count:
            if any(w.poll() is not None for w in started) or time.monotonic() > deadline:
                raise RuntimeError(f"{count} workers did not start; see {self.logs}")
            await asyncio.sleep(0.1)
        return started

    async def _registered_workers(self) -> int:
        rows = await self.fetch("SELECT count(*) FROM procrastinate_workers")
        count: int = rows[0][0]
        return count

    async def stop_workers(self) -> None:
        workers, self.workers = self.workers, []
        await asyncio.gather(*(stop(w) for w in workers))

    def client(self, timeout: float = 300) -> httpx.AsyncClient:
        assert self.tenant is not None
        return httpx.AsyncClient(base_url=self.base_url, headers=self.tenant.headers, timeout=timeout)

    async def fetch(self, sql: str, *args: object) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(_libpq(self.url))
        try:
            rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
            return rows
        finally:
            await conn.close()


async def wait_http(
    url: str, process: subprocess.Popen[bytes] | None = None, timeout: float = START_TIMEOUT_S
) -> None:
    """Until GET url answers 200; fails early when the process serving it has exited."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=5) as client:
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"{process.args} exited with {process.returncode} before {url} answered")
            try:
                if (await client.get(url)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


async def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (graceful: workers finish their jobs), SIGKILL after STOP_TIMEOUT_S."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(process.wait, STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait)

"""Crash safety and concurrency of the pipeline, on a database of its own.

Only the workers these tests start consume its jobs (the session `worker` fixture serves the shared test
database), so a test can kill its worker mid-conversion and know exactly who finishes the work.
Everything is asserted on end state: rows in the database and files in storage.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import pyvips
from conftest import CORPUS, ROOT, Tenant, _admin, _with_database, make_pipeline, make_tenant, run_sync
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from picstore import cli, db
from picstore.app import create_app
from picstore.settings import Settings, database_url
from picstore.storage import LocalStorage

# AVIF at effort 2 takes long enough (tenths of a second per output) to catch a worker mid-image.
CRASH_PROFILE = {
    "type": "cross",
    "formats": [
        {"format": "avif", "quality": 50, "effort": 2},
        {"format": "webp", "quality": 70, "effort": 2},
    ],
    "sizes": [{"width": 150}, {"width": 300}, {"width": 450}],
}
CRASH_FILES = [
    "Landscape_1.jpg",
    "Landscape_6.jpg",
    "Landscape_8.jpg",
    "Portrait_6.jpg",
    "Channel_digital_image_CMYK_color.jpg",
    "Flag_of_the_Netherlands-16bit.png",
    "flowers.jpeg",
    "2569067123_aca715a2ee_o.jpg",
]
QUICK_PROFILE = {
    "type": "cross",
    "formats": [{"format": "webp", "quality": 70, "effort": 0}],
    "sizes": [{"width": 32}],
}
# A killed worker's jobs wait STALLED_AFTER_SECONDS (30 s) for its heartbeat to age, then up to one
# reconcile period (15 s, tasks.RECONCILE_CRON); conversions come on top, slow on a loaded machine.
RECOVERY_TIMEOUT_S = 120


# ------------------------------------------------------------------------------- an isolated picstore


@pytest.fixture(scope="module")
def crash_settings(server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    name = f"picstore_crash_{uuid.uuid4().hex[:12]}"
    run_sync(asyncio.run, _admin(server_url, f"CREATE DATABASE {name}"))
    url = database_url(_with_database(server_url, name))
    try:
        run_sync(cli.migrate, url)
        yield Settings(
            database_url=url,
            secret_key="crash-test-secret",
            local_storage_roots=(str(tmp_path_factory.mktemp("crash-files")),),
            public_url="http://picstore.test",
        )
    finally:
        run_sync(asyncio.run, _admin(server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@asynccontextmanager
async def running(application: Any) -> AsyncIterator[None]:
    """The app's lifespan, entered and exited in one task as its cancel scopes require."""
    started, stop = asyncio.Event(), asyncio.Event()

    async def run() -> None:
        async with application.lifespan():
            started.set()
            await stop.wait()

    task = asyncio.create_task(run())
    await asyncio.wait([task, asyncio.create_task(started.wait())], return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()  # the lifespan failed: raise its error
    try:
        yield
    finally:
        stop.set()
        await task


@pytest.fixture(scope="module")
async def crash_client(crash_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    application = create_app(crash_settings)
    async with running(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://picstore.test", timeout=60) as c:
            yield c


@pytest.fixture(scope="module")
async def crash_sessions(crash_settings: Settings) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = db.make_engine(crash_settings.database_url, 2)
    yield db.make_sessionmaker(engine)
    await engine.dispose()


class Workers:
    """`picstore worker` processes on the isolated database; those still running are stopped at the end."""

    def __init__(self, settings: Settings, logs: Path) -> None:
        self.env = {
            **os.environ,
            "PICSTORE_DATABASE_URL": settings.database_url,
            "PICSTORE_SECRET_KEY": settings.secret_key,
            "PICSTORE_LOCAL_STORAGE_ROOTS": os.pathsep.join(settings.local_storage_roots),
            "PICSTORE_PUBLIC_URL": settings.public_url,
        }
        self.logs = logs
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        with (self.logs / f"worker-{len(self.procs)}.log").open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "picstore", "worker", "--concurrency", "2"],
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        return proc

    def log(self, index: int) -> str:
        return (self.logs / f"worker-{index}.log").read_text(errors="replace")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(
            f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
            for path in sorted(self.logs.glob("worker-*.log"))
        )

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def workers(crash_settings: Settings, tmp_path: Path) -> Iterator[Workers]:
    started = Workers(crash_settings, tmp_path)
    yield started
    started.stop_all()


# ------------------------------------------------------------------------------------------ helpers


async def quick_upload(
    client: httpx.AsyncClient, tenant: Tenant, short_id: str, data: bytes, filename: str
) -> httpx.Response:
    return await client.post(
        f"/api/projects/{tenant.project}/quick_upload",
        params={"upload_profile": short_id, "filename": filename},
        content=data,
        headers=tenant.headers(),
    )


async def image_statuses(sessions: async_sessionmaker[AsyncSession], tenant: Tenant) -> dict[uuid.UUID, str]:
    async with sessions() as session:
        rows = await session.execute(
            text("SELECT id, status FROM base_images WHERE team_id = :t"), {"t": tenant.team_id}
        )
        return dict(rows.all())


async def wait_all_ready(
    sessions: async_sessionmaker[AsyncSession], tenant: Tenant, count: int, timeout: float, workers: Workers
) -> float:
    """Seconds until `count` images of the tenant are ready; fails on a failed image or the timeout."""
    started = time.monotonic()
    while True:
        statuses = await image_statuses(sessions, tenant)
        assert "failed" not in statuses.values(), statuses
        if len(statuses) == count and set(statuses.values()) == {"ready"}:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not all ready after {timeout} s: {statuses}\n{workers.log_tail()}")
        await asyncio.sleep(0.25)


async def check_outputs_once(
    sessions: async_sessionmaker[AsyncSession], tenant: Tenant, storage_dir: Path, per_image: int
) -> int:
    """Every output row exactly once and ready, and the output folder holds exactly those files, of those
    sizes: nothing lost, nothing written twice under another name, no temp file left behind."""
    async with sessions() as session:
        rows = (
            await session.execute(
                text(
                    "SELECT o.base_image_id, o.location, o.status, o.file_size FROM output_images o "
                    "JOIN base_images b ON b.id = o.base_image_id WHERE b.team_id = :t"
                ),
                {"t": tenant.team_id},
            )
        ).all()
        images = await session.scalar(
            text("SELECT count(*) FROM base_images WHERE team_id = :t"), {"t": tenant.team_id}
        )
    keys = [(image_id, location) for image_id, location, _, _ in rows]
    assert len(keys) == len(set(keys)), "an output row exists twice"
    assert {status for _, _, status, _ in rows} == {"ready"}
    assert len(rows) == images * per_image
    ready = {location: size for _, location, _, size in rows}
    on_disk = {
        str(path.relative_to(storage_dir)): path.stat().st_size
        for path in storage_dir.rglob("*")
        if path.is_file() and "out" in path.relative_to(storage_dir).parts
    }
    assert on_disk == ready
    return len(rows)


async def output_mtimes(
    sessions: async_sessionmaker[AsyncSession], image_ids: list[uuid.UUID], storage_dir: Path
) -> dict[str, int]:
    async with sessions() as session:
        locations = (
            await session.scalars(
                text("SELECT location FROM output_images WHERE base_image_id = ANY(:ids)"), {"ids": image_ids}
            )
        ).all()
    return {location: (storage_dir / location).stat().st_mtime_ns for location in locations}


def originals_on_disk(storage_dir: Path) -> list[Path]:
    return sorted(
        p for p in storage_dir.rglob("*") if p.is_file() and "orig" in p.relative_to(storage_dir).parts
    )


async def job_counts(sessions: async_sessionmaker[AsyncSession]) -> dict[str, int]:
    async with sessions() as session:
        rows = await session.execute(
            text(
                "SELECT status::text, count(*) FROM procrastinate_jobs WHERE task_name = :t GROUP BY status"
            ),
            {"t": "picstore.tasks.convert_image"},
        )
        return dict(rows.all())


# ------------------------------------------------------------------------------------------- crash


async def test_sigkilled_worker_loses_and_duplicates_nothing(
    crash_client: httpx.AsyncClient,
    crash_sessions: async_sessionmaker[AsyncSession],
    crash_settings: Settings,
    workers: Workers,
) -> None:
    tenant = await make_tenant(crash_sessions, "crash")
    pipe = await make_pipeline(crash_client, tenant, CRASH_PROFILE)
    storage_dir = Path(crash_settings.local_storage_roots[0]) / pipe["storage_dir"]
    for name in CRASH_FILES:
        r = await quick_upload(crash_client, tenant, pipe["short_id"], (CORPUS / name).read_bytes(), name)
        assert r.status_code == 201, r.text
        assert len(r.json()["output"]) == 6, r.json()  # every size applies: nothing skipped
    # No worker yet: all eight wait.
    assert set((await image_statuses(crash_sessions, tenant)).values()) == {"queued"}

    first = workers.start()
    # Mid-stream: some images finished (they must not be redone), some converting (they must be resumed).
    deadline = time.monotonic() + 90
    while True:
        statuses = await image_statuses(crash_sessions, tenant)
        if {"ready", "converting"} <= set(statuses.values()):
            break
        assert first.poll() is None and time.monotonic() < deadline, workers.log_tail()
        await asyncio.sleep(0.02)
    first.kill()  # SIGKILL: no graceful shutdown, no cleanup
    first.wait()
    killed_at = time.monotonic()
    in_flight = [i for i, s in statuses.items() if s == "converting"]
    done_at_kill = [i for i, s in statuses.items() if s == "ready"]
    finished = await output_mtimes(crash_sessions, done_at_kill, storage_dir)
    assert (await job_counts(crash_sessions)).get("doing", 0) >= 1  # the dead worker's jobs stay `doing`

    workers.start()
    await wait_all_ready(crash_sessions, tenant, len(CRASH_FILES), RECOVERY_TIMEOUT_S, workers)
    recovered_s = time.monotonic() - killed_at
    outputs = await check_outputs_once(crash_sessions, tenant, storage_dir, per_image=6)
    # Finished images were not converted again: their files were never rewritten.
    assert await output_mtimes(crash_sessions, done_at_kill, storage_dir) == finished
    assert len(originals_on_disk(storage_dir)) == len(CRASH_FILES)
    jobs = await job_counts(crash_sessions)
    assert set(jobs) == {"succeeded"}, jobs
    # Recovered by the path under test: the dead worker's jobs were found stalled and retried.
    assert "retrying stalled job" in workers.log(1), workers.log_tail()
    print(
        f"\nSIGKILL with {len(in_flight)} image(s) converting and {len(done_at_kill)} ready; "
        f"all {len(CRASH_FILES)} ready ({outputs} outputs) {recovered_s:.1f} s after the kill"
    )


# --------------------------------------------------------------------------- local writes after a crash


async def test_local_write_reuses_what_a_killed_writer_left(tmp_path: Path) -> None:
    """A SIGKILLed writer leaves its temp file (the kernel drops only its lock); rewriting the same
    object, as a resumed conversion does, consumes it instead of leaving it in the folder."""
    store = LocalStorage(str(tmp_path))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / ".a-w150.webp.tmp").write_bytes(b"half of an earlier attempt")
    await store.put_bytes("out/a-w150.webp", b"webp bytes", "image/webp")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a-w150.webp"]
    assert (tmp_path / "out" / "a-w150.webp").read_bytes() == b"webp bytes"


async def test_concurrent_local_writes_of_one_key_never_mix(tmp_path: Path) -> None:
    """The temp file is per object, so writers of one key take turns on it: each replaces the object
    whole, none fails, and nothing is left over."""
    store = LocalStorage(str(tmp_path))
    bodies = [bytes([i]) * (1000 + 5000 * i) for i in range(20)]
    await asyncio.gather(*(store.put_bytes("out/same.png", body, "image/png") for body in bodies))
    assert (tmp_path / "out" / "same.png").read_bytes() in bodies
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["same.png"]


# ------------------------------------------------------------------------------------- concurrency


def tiny_png(index: int) -> bytes:
    """A 64x64 black PNG with one white pixel at `index`: distinct bytes for every index below 4096."""
    image = pyvips.Image.black(64, 64, bands=3).draw_rect([255, 255, 255], index % 64, index // 64, 1, 1)
    data: bytes = image.write_to_buffer(".png")
    return data


async def test_fifty_concurrent_quick_uploads(
    crash_client: httpx.AsyncClient,
    crash_sessions: async_sessionmaker[AsyncSession],
    crash_settings: Settings,
    workers: Workers,
) -> None:
    tenant = await make_tenant(crash_sessions, "fifty")
    pipe = await make_pipeline(crash_client, tenant, QUICK_PROFILE)
    storage_dir = Path(crash_settings.local_storage_roots[0]) / pipe["storage_dir"]
    workers.start()
    bodies = [tiny_png(i) for i in range(50)]
    assert len(set(bodies)) == 50
    short_id = pipe["short_id"]
    responses = await asyncio.gather(
        *(quick_upload(crash_client, tenant, short_id, b, f"p{i}.png") for i, b in enumerate(bodies))
    )
    refused = [r.text for r in responses if r.status_code != 201]
    assert not refused, refused
    image_ids = {r.json()["id"] for r in responses}
    assert len(image_ids) == 50
    await wait_all_ready(crash_sessions, tenant, 50, 120, workers)
    assert await check_outputs_once(crash_sessions, tenant, storage_dir, per_image=1) == 50
    assert len(originals_on_disk(storage_dir)) == 50


async def test_concurrent_identical_quick_uploads_make_one_image(
    crash_client: httpx.AsyncClient,
    crash_sessions: async_sessionmaker[AsyncSession],
    crash_settings: Settings,
    workers: Workers,
) -> None:
    tenant = await make_tenant(crash_sessions, "same")
    pipe = await make_pipeline(crash_client, tenant, QUICK_PROFILE)
    storage_dir = Path(crash_settings.local_storage_roots[0]) / pipe["storage_dir"]
    workers.start()
    body = tiny_png(4095)
    responses = await asyncio.gather(
        *(quick_upload(crash_client, tenant, pipe["short_id"], body, f"same{i}.png") for i in range(10))
    )
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 9 + [201], [r.text for r in responses]
    assert len({r.json()["id"] for r in responses}) == 1
    await wait_all_ready(crash_sessions, tenant, 1, 60, workers)
    assert await check_outputs_once(crash_sessions, tenant, storage_dir, per_image=1) == 1
    # The nine losers stored their own copy of the original before finding the winner; none is left.
    assert len(originals_on_disk(storage_dir)) == 1

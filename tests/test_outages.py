"""Outages and load: storage down during conversions, PostgreSQL restarted under a serving api, many
tenants uploading at once, and workers SIGKILLed mid-run.

The storage and load tests run on test_crash's isolated database (its fixtures are imported: only the
workers these tests start consume its jobs). The PostgreSQL test starts a private server of its own, since
the shared one must never be stopped.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import test_crash
from conftest import CORPUS, _admin, make_pipeline, make_tenant, run_sync
from liveserver import free_port, running_api
from s3server import S3Server, start_seaweedfs
from sqlalchemy import text
from test_crash import (
    Workers,
    check_outputs_once,
    image_statuses,
    originals_on_disk,
    quick_upload,
    tiny_png,
    wait_all_ready,
)
from test_s3_pipeline import BUCKET, s3_pipeline

from picstore import cli, db, ids, tasks
from picstore.settings import database_url

# test_crash's isolated database, in-process api and workers, as fixtures of this module (its own instance).
crash_settings = test_crash.crash_settings
crash_client = test_crash.crash_client
crash_sessions = test_crash.crash_sessions
workers = test_crash.workers

# ----------------------------------------------------------------------------------- storage outage

RETRY_BASE_S = 0.2  # the worker under test retries after 0.6, 1.0, 1.8 and 3.4 s
OUTAGE_FILES = ["Landscape_1.jpg", "with-alpha.png"]  # two: both jobs run at once on one worker


@pytest.fixture
def seaweed(tmp_path: Path) -> Iterator[S3Server]:
    server = start_seaweedfs(tmp_path / "seaweedfs")
    try:
        server.create_bucket(BUCKET)
        yield server
    finally:
        server.stop()


async def job_attempts(sessions: Any, image_id: str) -> list[tuple[str, int]]:
    async with sessions() as session:
        rows = await session.execute(
            text(
                "SELECT status::text, attempts FROM procrastinate_jobs WHERE task_name = :t "
                "AND args->>'image_id' = :i ORDER BY id"
            ),
            {"t": "picstore.tasks.convert_image", "i": str(uuid_of(image_id))},
        )
        return [(s, a) for s, a in rows.all()]


async def retry_waits(sessions: Any, image_id: str) -> list[float]:
    """Seconds between each retry of the image's conversion job and the time it was scheduled to run again
    (procrastinate records both as events)."""
    async with sessions() as session:
        rows = await session.execute(
            text(
                "SELECT e.type::text, e.at FROM procrastinate_events e "
                "JOIN procrastinate_jobs j ON j.id = e.job_id "
                "WHERE j.task_name = :t AND j.args->>'image_id' = :i ORDER BY e.id"
            ),
            {"t": "picstore.tasks.convert_image", "i": str(uuid_of(image_id))},
        )
        events = rows.all()
    retried = [at for kind, at in events if kind == "deferred_for_retry"]
    scheduled = [at for kind, at in events if kind == "scheduled"]
    return [(s - r).total_seconds() for r, s in zip(retried, scheduled, strict=True)]


def uuid_of(image_id: str) -> uuid.UUID:
    return ids.parse_id(ids.BASE_IMAGE, image_id)


async def wait_statuses(
    sessions: Any, tenant: Any, wanted: set[str], count: int, timeout: float, workers: Workers
) -> dict[uuid.UUID, str]:
    deadline = time.monotonic() + timeout
    while True:
        statuses = await image_statuses(sessions, tenant)
        if len(statuses) == count and set(statuses.values()) <= wanted:
            return statuses
        if time.monotonic() > deadline:
            raise AssertionError(f"not all in {wanted} after {timeout} s: {statuses}\n{workers.log_tail()}")
        await asyncio.sleep(0.2)


async def test_storage_outage_retries_with_backoff_then_fails_and_reconvert_recovers(
    crash_client, crash_sessions, workers, seaweed
):
    tenant = await make_tenant(crash_sessions, "s3-outage")
    pipe = await s3_pipeline(crash_client, tenant, seaweed)
    image_ids = []
    for name in OUTAGE_FILES:
        data = (CORPUS / name).read_bytes()
        r = await quick_upload(crash_client, tenant, pipe["upload_profile"], data, name)
        assert r.status_code == 201, r.text
        image_ids.append(r.json()["id"])

    seaweed.stop()  # the originals are stored; every job now meets a storage that does not answer
    workers.env["PICSTORE_JOB_RETRY_BASE_SECONDS"] = str(RETRY_BASE_S)
    started = time.monotonic()
    workers.start()
    await wait_statuses(crash_sessions, tenant, {"failed"}, len(image_ids), 60, workers)
    failed_after = time.monotonic() - started
    schedule = [RETRY_BASE_S * (1 + 2 ** (n + 1)) for n in range(tasks.RETRIES)]
    backoff = sum(schedule)
    for image_id in image_ids:
        r = await crash_client.get(f"/api/images/{image_id}", headers=tenant.headers())
        image = r.json()
        assert image["status"] == "failed", image
        assert image["error"].startswith(f"storage error after {tasks.RETRIES + 1} attempts:"), image["error"]
        assert "connect" in image["error"].lower(), image["error"]
        assert {o["status"] for o in image["output"]} == {"failed"}
        assert all(o["reason"] == image["error"] for o in image["output"])
        # One job, run RETRIES + 1 times with growing waits, then finished by failing the image.
        assert await job_attempts(crash_sessions, image_id) == [("succeeded", tasks.RETRIES + 1)]
        waits = await retry_waits(crash_sessions, image_id)
        assert waits == pytest.approx(schedule, abs=0.25), f"retried after {waits}, expected {schedule}"
    assert workers.procs[0].poll() is None

    seaweed.start()
    for image_id in image_ids:
        r = await crash_client.post(f"/api/images/{image_id}/reconvert", headers=tenant.headers())
        assert r.status_code == 200 and len(r.json()["images"]) == 6, r.text
    await wait_statuses(crash_sessions, tenant, {"ready"}, len(image_ids), 60, workers)
    for image_id in image_ids:
        image = (await crash_client.get(f"/api/images/{image_id}", headers=tenant.headers())).json()
        assert image["error"] is None and {o["status"] for o in image["output"]} == {"ready"}, image
    print(
        f"\nstorage down: {len(image_ids)} images failed after {failed_after:.1f} s "
        f"({tasks.RETRIES} retries, {backoff:.1f} s of backoff); all ready after reconvert"
    )


# ------------------------------------------------------------------------------- PostgreSQL restart

DB_TIMEOUT_S = 2.0  # PICSTORE_DB_TIMEOUT_SECONDS of the api under test
OUTAGE_ANSWER_S = DB_TIMEOUT_S + 4.0  # slack for a loaded machine
RECOVERY_S = 20.0


def _pg_bin() -> Path | None:
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "pg_ctl").exists() and (candidate / "initdb").exists():
            return candidate
    try:
        import pgserver

        bundled = Path(pgserver.__file__).parent / "pginstall" / "bin"
        return bundled if (bundled / "pg_ctl").exists() else None
    except ImportError:
        return None


class PrivatePostgres:
    """initdb + pg_ctl in a temp dir on a free port; run as a non-root user when we are root."""

    def __init__(self) -> None:
        binaries = _pg_bin()
        if binaries is None:
            pytest.skip("no initdb/pg_ctl found (neither /usr/lib/postgresql/*/bin nor pgserver)")
        self.bin = binaries
        self.base = Path(tempfile.mkdtemp(prefix="picstore-pg-outage-"))
        self.data = self.base / "data"
        self.port = free_port()
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            user = next((u for u in ("postgres", "pgserver", "pgtest") if _user_exists(u)), None)
            if user is None:
                subprocess.run(["useradd", "--system", "--no-create-home", "pgtest"], check=True)
                user = "pgtest"
            shutil.chown(self.base, user)
            self.prefix = ["runuser", "-u", user, "--"]
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        result = subprocess.run([*self.prefix, str(self.bin / tool), *args], capture_output=True, text=True)
        assert result.returncode == 0, f"{tool} {args}: {result.stdout}\n{result.stderr}"

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off"
        )
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.base / "log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def pids(self) -> list[int]:
        """The postmaster and its children (backends, checkpointer, ...): all processes this test started."""
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        children = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(postmaster)], capture_output=True, text=True, check=True
        )
        return [postmaster, *(int(pid) for pid in children.stdout.split())]

    def destroy(self) -> None:
        stop = [*self.prefix, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"]
        subprocess.run(stop, capture_output=True)
        shutil.rmtree(self.base, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    try:
        server.start()
        yield server
    finally:
        server.destroy()


async def timed(call: Any) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = await call
    return response, time.monotonic() - started


async def test_postgres_restart_under_a_serving_api(private_pg, env, tmp_path):
    await _admin(private_pg.url, "CREATE DATABASE picstore")
    url = database_url(private_pg.url.rsplit("/", 1)[0] + "/picstore")
    run_sync(cli.migrate, url)
    engine = db.make_engine(url, 2)
    tenant = await make_tenant(db.make_sessionmaker(engine), "outage")
    await engine.dispose()
    log = tmp_path / "api.log"
    api_env = {**env, "PICSTORE_DATABASE_URL": url, "PICSTORE_DB_TIMEOUT_SECONDS": str(DB_TIMEOUT_S)}
    with running_api(api_env, log=log) as base:
        async with httpx.AsyncClient(base_url=base, headers=tenant.headers(), timeout=60) as api:
            # Committed before the outage: a project, a pipeline, an uploaded image (no worker: stays queued).
            r = await api.post("/api/projects", json={"name": "before the outage"})
            assert r.status_code == 201, r.text
            project = r.json()
            pipe = await make_pipeline(api, tenant, files_url=f"{base}/files")
            r = await api.post(
                f"/api/projects/{tenant.project}/quick_upload",
                params={"upload_profile": pipe["short_id"], "filename": "a.jpg"},
                content=(CORPUS / "Landscape_1.jpg").read_bytes(),
            )
            assert r.status_code == 201, r.text
            image = r.json()
            # Fill the pool with connections that the restart will break.
            await asyncio.gather(*(api.get("/api/projects") for _ in range(12)))

            private_pg.stop("fast")
            during = {
                "list projects": api.get("/api/projects"),
                "get image": api.get(f"/api/images/{image['id']}"),
                "create project": api.post("/api/projects", json={"name": "during"}),
                "list images": api.get(f"/api/projects/{tenant.project}/images"),
                "quick_upload": api.post(
                    f"/api/projects/{tenant.project}/quick_upload",
                    params={"upload_profile": pipe["short_id"], "filename": "b.jpg"},
                    content=(CORPUS / "with-alpha.png").read_bytes(),
                ),
            }
            answers = {name: await timed(call) for name, call in during.items()}
            for name, (r, seconds) in answers.items():
                assert r.status_code == 503, f"{name}: {r.status_code} {r.text}"
                assert r.json()["error"]["kind"] == "unavailable", f"{name}: {r.text}"
                assert r.json()["error"]["message"], name
                assert seconds < OUTAGE_ANSWER_S, f"{name} took {seconds:.1f} s to answer"
            health = await api.get("/api/health")
            assert health.status_code in (200, 503) and health.json()["database"] is False, health.text

            private_pg.start()
            started = time.monotonic()
            while (r := await api.get("/api/projects")).status_code != 200:
                assert r.status_code == 503, r.text
                assert time.monotonic() - started < RECOVERY_S, "the api did not recover by itself"
                await asyncio.sleep(0.2)
            recovered_s = time.monotonic() - started
            # Everything committed before is still there, and every route works again, including those
            # that defer jobs (procrastinate's own connection pool must have recovered too).
            assert project["id"] in {p["id"] for p in r.json()}
            r = await api.get(f"/api/images/{image['id']}")
            assert r.status_code == 200 and r.json()["hash"] == image["hash"], r.text
            r = await api.post(f"/api/images/{image['id']}/reconvert")
            assert r.status_code == 200, r.text
            r = await api.post(
                f"/api/projects/{tenant.project}/quick_upload",
                params={"upload_profile": pipe["short_id"], "filename": "c.jpg"},
                content=(CORPUS / "with-alpha.png").read_bytes(),
            )
            assert r.status_code == 201, r.text
            assert (await api.get("/api/health")).json()["database"] is True

            # Frozen (as a network partition looks: connections open, nothing answers): 503 after the
            # timeout, not a hang on pooled connections until TCP gives up.
            await asyncio.gather(*(api.get("/api/projects") for _ in range(12)))
            frozen = private_pg.pids()
            for pid in frozen:
                os.kill(pid, signal.SIGSTOP)
            try:
                stalled = [await timed(api.get("/api/projects")) for _ in range(3)]
                stalled.append(await timed(api.get(f"/api/images/{image['id']}")))
            finally:
                for pid in frozen:
                    os.kill(pid, signal.SIGCONT)
            for r, seconds in stalled:
                assert r.status_code == 503 and r.json()["error"]["kind"] == "unavailable", r.text
                assert seconds < OUTAGE_ANSWER_S, f"a request to a frozen database took {seconds:.1f} s"
            started = time.monotonic()
            while (r := await api.get(f"/api/images/{image['id']}")).status_code != 200:
                assert r.status_code == 503, r.text
                assert time.monotonic() - started < RECOVERY_S, "the api did not recover from the freeze"
                await asyncio.sleep(0.2)
    errors = [line for line in log.read_text().splitlines() if "unhandled" in line or "Traceback" in line]
    assert not errors, "\n".join(errors[:5])
    print(
        f"\nPostgreSQL restarted: every request during the outage got 503 within "
        f"{max(s for _, s in answers.values()):.2f} s; recovered {recovered_s:.1f} s after the restart; "
        f"frozen: 503 within {max(s for _, s in stalled):.1f} s"
    )


# ------------------------------------------------------------------------------------------- load

TENANTS = 4
PER_TENANT = 50
QUICK = test_crash.QUICK_PROFILE


async def all_listed(client: httpx.AsyncClient, tenant: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    after = None
    while True:
        params = {"limit": "100", **({"after": after} if after else {})}
        r = await client.get(
            f"/api/projects/{tenant.project}/images", params=params, headers=tenant.headers()
        )
        assert r.status_code == 200, r.text
        found += r.json()["images"]
        if not (after := r.json()["next_after"]):
            return found


@pytest.mark.slow
async def test_200_concurrent_uploads_from_4_tenants(crash_client, crash_sessions, crash_settings, workers):
    tenants = [await make_tenant(crash_sessions, f"load-{n}") for n in range(TENANTS)]
    pipes = [await make_pipeline(crash_client, t, QUICK) for t in tenants]
    workers.start()
    workers.start()
    bodies = [tiny_png(i) for i in range(TENANTS * PER_TENANT)]
    started = time.monotonic()
    responses = await asyncio.gather(
        *(
            quick_upload(
                crash_client, tenants[i % TENANTS], pipes[i % TENANTS]["short_id"], body, f"p{i}.png"
            )
            for i, body in enumerate(bodies)
        )
    )
    uploaded_s = time.monotonic() - started
    refused = [r.text for r in responses if r.status_code != 201]
    assert not refused, refused[:3]
    owned: dict[int, set[str]] = {n: set() for n in range(TENANTS)}
    for i, r in enumerate(responses):
        owned[i % TENANTS].add(r.json()["id"])
    assert all(len(ids_) == PER_TENANT for ids_ in owned.values())

    for tenant in tenants:
        await wait_all_ready(crash_sessions, tenant, PER_TENANT, 240, workers)
    ready_s = time.monotonic() - started
    for n, (tenant, pipe) in enumerate(zip(tenants, pipes, strict=True)):
        listed = await all_listed(crash_client, tenant)
        assert {i["id"] for i in listed} == owned[n], "a tenant's list shows exactly its own images"
        assert {i["status"] for i in listed} == {"ready"}
        storage_dir = Path(crash_settings.local_storage_roots[0]) / pipe["storage_dir"]
        assert await check_outputs_once(crash_sessions, tenant, storage_dir, per_image=1) == PER_TENANT
        assert len(originals_on_disk(storage_dir)) == PER_TENANT

    # No cross-tenant reads: every other tenant's image, by id and by hash, is a 404 for this key.
    async def probe(reader: Any, image: dict[str, Any]) -> list[int]:
        by_id = await crash_client.get(f"/api/images/{image['id']}", headers=reader.headers())
        by_hash = await crash_client.get(f"/api/image_by_hash/{image['hash']}", headers=reader.headers())
        return [by_id.status_code, by_hash.status_code]

    images = {n: await all_listed(crash_client, t) for n, t in enumerate(tenants)}
    gate = asyncio.Semaphore(20)

    async def gated(reader: Any, image: dict[str, Any]) -> list[int]:
        async with gate:
            return await probe(reader, image)

    codes = await asyncio.gather(
        *(
            gated(reader, image)
            for r_n, reader in enumerate(tenants)
            for o_n in range(TENANTS)
            if o_n != r_n
            for image in images[o_n]
        )
    )
    assert len(codes) == TENANTS * (TENANTS - 1) * PER_TENANT
    assert {c for pair in codes for c in pair} == {404}
    print(
        f"\n{len(bodies)} concurrent uploads from {TENANTS} tenants: accepted in {uploaded_s:.1f} s, "
        f"all ready after {ready_s:.1f} s; {2 * len(codes)} cross-tenant reads, all 404"
    )


# ---------------------------------------------------------------------------------- killed workers

KILL_IMAGES = 100
KILLS = 3
KILL_EVERY_S = 5.0
# Heavy enough (AVIF effort 2 at three sizes) that each kill lands in the middle of conversions.
KILL_PROFILE = {
    "type": "cross",
    "formats": [
        {"format": "avif", "quality": 50, "effort": 2},
        {"format": "webp", "quality": 70, "effort": 2},
    ],
    "sizes": [{"width": 120}, {"width": 240}, {"width": 360}],
}


def distinct_photos(count: int) -> list[bytes]:
    """Landscape_1.jpg (600x450) with a white square at a different place in each: distinct bytes."""
    import pyvips

    base = pyvips.Image.new_from_file(str(CORPUS / "Landscape_1.jpg"))
    white = [255, 255, 255]
    marked = (base.draw_rect(white, (i * 7) % 590, (i * 13) % 440, 8, 8, fill=True) for i in range(count))
    return [image.write_to_buffer(".jpg[Q=85]") for image in marked]


@pytest.mark.slow
async def test_worker_sigkilled_repeatedly_during_a_run(
    crash_client, crash_sessions, crash_settings, workers
):
    tenant = await make_tenant(crash_sessions, "killed")
    pipe = await make_pipeline(crash_client, tenant, KILL_PROFILE)
    storage_dir = Path(crash_settings.local_storage_roots[0]) / pipe["storage_dir"]
    photos = distinct_photos(KILL_IMAGES)
    assert len(set(photos)) == KILL_IMAGES
    gate = asyncio.Semaphore(8)

    async def upload(i: int, body: bytes) -> httpx.Response:
        async with gate:
            return await quick_upload(crash_client, tenant, pipe["short_id"], body, f"photo{i}.jpg")

    responses = await asyncio.gather(*(upload(i, b) for i, b in enumerate(photos)))
    assert [r.status_code for r in responses] == [201] * KILL_IMAGES
    assert {len(r.json()["output"]) for r in responses} == {6}

    started = time.monotonic()
    in_flight_at_kills = []
    for _ in range(KILLS):
        worker = workers.start()
        await asyncio.sleep(KILL_EVERY_S)
        statuses = await image_statuses(crash_sessions, tenant)
        in_flight_at_kills.append(sum(s == "converting" for s in statuses.values()))
        assert worker.poll() is None, workers.log_tail()
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    ready_at_last_kill = sum(s == "ready" for s in (await image_statuses(crash_sessions, tenant)).values())
    assert ready_at_last_kill < KILL_IMAGES, "the run finished before the kills: nothing was tested"
    assert any(in_flight_at_kills), f"no kill caught an image converting: {in_flight_at_kills}"

    workers.start()
    await wait_all_ready(crash_sessions, tenant, KILL_IMAGES, 300, workers)
    total_s = time.monotonic() - started
    assert await check_outputs_once(crash_sessions, tenant, storage_dir, per_image=6) == KILL_IMAGES * 6
    assert len(originals_on_disk(storage_dir)) == KILL_IMAGES
    leftovers = [p for p in storage_dir.rglob("*") if p.is_file() and p.name.startswith(".")]
    assert not leftovers, f"temporary files left behind: {leftovers[:5]}"
    print(
        f"\n{KILLS} SIGKILLs every {KILL_EVERY_S:.0f} s with {in_flight_at_kills} image(s) converting, "
        f"{ready_at_last_kill}/{KILL_IMAGES} ready at the last kill; all ready after {total_s:.1f} s"
    )

"""6. Scale-out: 1, 2 and 4 `picstore worker` processes (one job at a time each) draining one queue.

Each batch gets a fresh deployment: 200 distinct 256x256 JPEGs are uploaded (default profile: AVIF, WebP
and JPEG at 256x256, the larger sizes clamp to the source and are skipped as duplicates) with no worker
running, then the workers start. Throughput is 200 images over the time from the first job's start to the
last job's success (procrastinate_events), so worker start-up is not counted. Afterwards the database
must show every job run exactly once and every output row and file exactly once.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from bench import client, inputs
from bench.context import Context
from bench.machine import cpu_seconds
from bench.report import Row, median
from bench.stack import Stack

WORKER_COUNTS = (1, 2, 4)
UPLOAD_CONCURRENCY = 8
OUTPUTS_PER_IMAGE = 3
DRAIN_TIMEOUT_S = 600
SECTION = "6 scale-out"
CONVERT = "picstore.tasks.convert_image"

# Queries about the convert jobs ($1 is the task name).
CHECKS = {
    "jobs": """
        SELECT status::text, count(*), count(DISTINCT args->>'image_id')
        FROM procrastinate_jobs WHERE task_name = $1 GROUP BY status""",
    "started_twice": """
        SELECT count(*) FROM (
            SELECT e.job_id FROM procrastinate_events e JOIN procrastinate_jobs j ON j.id = e.job_id
            WHERE j.task_name = $1 AND e.type = 'started' GROUP BY e.job_id HAVING count(*) <> 1) x""",
    "per_worker": """
        SELECT count(*) FROM procrastinate_jobs WHERE task_name = $1 GROUP BY worker_id ORDER BY 1 DESC""",
    "span": """
        SELECT extract(epoch FROM max(e.at) FILTER (WHERE e.type = 'succeeded')
                                - min(e.at) FILTER (WHERE e.type = 'started'))
        FROM procrastinate_events e JOIN procrastinate_jobs j ON j.id = e.job_id WHERE j.task_name = $1""",
}
OUTPUT_CHECKS = {
    "duplicate_outputs": """
        SELECT count(*) FROM (
            SELECT base_image_id, location FROM output_images GROUP BY 1, 2 HAVING count(*) > 1) x""",
    "ready_outputs": "SELECT count(*) FROM output_images WHERE status = 'ready'",
    "ready_images": "SELECT count(*) FROM base_images WHERE status = 'ready'",
}


async def upload_all(stack: Stack) -> None:
    assert stack.tenant is not None
    tenant = stack.tenant
    files = inputs.small_jpegs()
    gate = asyncio.Semaphore(UPLOAD_CONCURRENCY)
    async with stack.client() as http:

        async def one(index: int) -> None:
            async with gate:
                response = await client.quick_upload(
                    http, tenant.project, files[index].read_bytes(), files[index].name, tenant.upload_profile
                )
            if response.status_code != 201:
                raise RuntimeError(f"upload {index} answered {response.status_code}: {response.text}")

        await asyncio.gather(*(one(i) for i in range(len(files))))


async def drain(stack: Stack, images: int) -> None:
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    query = "SELECT count(*) FROM base_images WHERE status IN ('ready', 'failed')"
    while (await stack.fetch(query))[0][0] < images:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{images} images not converted within {DRAIN_TIMEOUT_S} s")
        await asyncio.sleep(0.1)


async def drained_cpu_share(stack: Stack, images: int, pids: list[int]) -> float:
    """Drain the queue; the workers' CPU time over the drain, as a share of every core's time."""
    before, started = sum(map(cpu_seconds, pids)), time.monotonic()
    await drain(stack, images)
    used = sum(map(cpu_seconds, pids)) - before
    return used / ((time.monotonic() - started) * (os.cpu_count() or 1))


async def batch(ctx: Context, workers: int, rep: int) -> dict[str, Any]:
    """One fresh deployment: upload, drain with `workers` processes, check exactly-once."""
    images = inputs.SMALL_COUNT
    async with ctx.stack(f"scale{workers}-{rep}") as stack:
        await stack.start_api()
        await upload_all(stack)
        started = await stack.start_workers(workers, concurrency=1)
        busy = await drained_cpu_share(stack, images, [w.pid for w in started])
        found = {name: await stack.fetch(sql, CONVERT) for name, sql in CHECKS.items()}
        found |= {name: await stack.fetch(sql) for name, sql in OUTPUT_CHECKS.items()}
        files = sum(1 for p in (stack.storage / "default" / "outputs").rglob("*") if p.is_file())
    jobs = {status: (count, distinct) for status, count, distinct in found["jobs"]}
    exact = (
        jobs == {"succeeded": (images, images)}
        and found["started_twice"][0][0] == 0
        and found["duplicate_outputs"][0][0] == 0
        and found["ready_outputs"][0][0] == files == images * OUTPUTS_PER_IMAGE
        and found["ready_images"][0][0] == images
    )
    return {
        "rate": images / float(found["span"][0][0]),
        "cpu_share": busy,
        "exact": exact,
        "jobs": jobs,
        "per_worker": [r[0] for r in found["per_worker"]],
        "output_rows": found["ready_outputs"][0][0],
        "output_files": files,
    }


async def run(ctx: Context) -> list[Row]:
    results: dict[int, list[dict[str, Any]]] = {n: [] for n in WORKER_COUNTS}
    for rep in range(ctx.repetitions(3)):
        for workers in WORKER_COUNTS:
            results[workers].append(await batch(ctx, workers, rep))
    single = median(r["rate"] for r in results[1])
    cores = os.cpu_count() or 1
    rows = []
    for workers, found in results.items():
        rate = median(r["rate"] for r in found)
        busy = median(r["cpu_share"] for r in found)
        rows.append(
            Row(
                SECTION,
                f"{workers} worker{'s' * (workers > 1)}, {inputs.SMALL_COUNT} small JPEGs: throughput",
                rate,
                "img/s",
                single if workers > 1 else None,
                rate / single if workers > 1 else None,
                "" if workers == 1 else "grows until the cores are busy, then flat",
                note=f"workers busy {busy:.0%} of {cores} cores; "
                f"jobs per worker {'/'.join(map(str, found[-1]['per_worker']))}",
                details={"rates": [r["rate"] for r in found], "batches": found},
            )
        )
    every = [r for found in results.values() for r in found]
    rows.append(
        Row(
            SECTION,
            "every job ran exactly once, every output row and file exactly once",
            f"{sum(r['exact'] for r in every)}/{len(every)} batches",
            target="all batches",
            ok=all(r["exact"] for r in every),
            note=f"per batch {inputs.SMALL_COUNT} jobs, {inputs.SMALL_COUNT * OUTPUTS_PER_IMAGE} outputs",
        )
    )
    return rows

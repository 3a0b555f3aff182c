"""4. Upload memory and throughput: 20 concurrent 20 MB direct uploads, no worker running.

picstore side: POST /api/images, then 20 concurrent POST /api/images/{id}/upload of a real 20 MB JPEG
to local storage; MB/s over the whole batch and the api process's peak RSS (VmHWM of /proc/<pid>/status,
a kernel-kept high-water mark, so no sample can miss the peak). Baseline: the same 20 files written
straight into the same storage folder by 20 threads with the same durability (write, fsync, rename).
"""

from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench import inputs
from bench.context import Context
from bench.machine import status_kib
from bench.report import Row, median
from bench.stack import Stack

CONCURRENCY = 20
RSS_TARGET_MIB = 300
SECTION = "4 uploads"


async def upload_batch(stack: Stack, data: bytes, rep: int) -> float:
    """Seconds for CONCURRENCY direct uploads of `data`, all started together."""
    assert stack.tenant is not None
    async with stack.client() as http:
        created = [
            await http.post(
                "/api/images",
                json={"filename": f"noisy-{rep}-{i}.jpg", "upload_profile_id": stack.tenant.upload_profile},
            )
            for i in range(CONCURRENCY)
        ]
        ids = [r.json()["id"] for r in created]
        started = time.perf_counter()
        answers = await asyncio.gather(*(http.post(f"/api/images/{i}/upload", content=data) for i in ids))
        seconds = time.perf_counter() - started
    failed = [a for a in answers if a.status_code != 200]
    if failed:
        raise RuntimeError(f"{len(failed)} uploads failed: {failed[0].status_code} {failed[0].text}")
    return seconds


def _write_durably(source: Path, target: Path) -> None:
    partial = target.with_name(target.name + ".partial")
    with source.open("rb") as src, partial.open("wb") as out:
        while chunk := src.read(1024 * 1024):
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    partial.rename(target)
    folder = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def copy_batch(source: Path, folder: Path, rep: int) -> float:
    """Seconds for CONCURRENCY threads each copying the file into the storage folder."""
    folder.mkdir(parents=True, exist_ok=True)
    targets = [folder / f"copy-{rep}-{i}.jpg" for i in range(CONCURRENCY)]
    started = time.perf_counter()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(lambda t: _write_durably(source, t), targets))
    return time.perf_counter() - started


async def run(ctx: Context) -> list[Row]:
    source = inputs.noisy_jpeg()
    data = source.read_bytes()
    megabytes = CONCURRENCY * len(data) / 1e6
    uploads, copies = [], []
    async with ctx.stack("upload") as stack:
        api = await stack.start_api()
        idle_mib = status_kib(api.pid, "VmRSS") / 1024
        for rep in range(ctx.repetitions(3)):
            uploads.append(await upload_batch(stack, data, rep))
            copies.append(await asyncio.to_thread(copy_batch, source, stack.storage / "baseline", rep))
        peak_mib = status_kib(api.pid, "VmHWM") / 1024
    ours, base = megabytes / median(uploads), megabytes / median(copies)
    size = f"{CONCURRENCY} x {len(data) / 1e6:.1f} MB JPEG"
    return [
        Row(
            SECTION,
            f"{size}: api peak RSS",
            peak_mib,
            "MiB",
            target=f"< {RSS_TARGET_MIB} MiB",
            ok=peak_mib < RSS_TARGET_MIB,
            note=f"{idle_mib:.0f} MiB idle",
        ),
        Row(
            SECTION,
            f"{size}: throughput vs plain durable copies",
            ours,
            "MB/s",
            base,
            ours / base,
            note="local storage",
            details={"upload_s": uploads, "copy_s": copies},
        ),
    ]

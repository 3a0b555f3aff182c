"""5. Huge images: worker memory for a 280 MP JPEG, and how fast decompression bombs are refused.

Conversion: giant-image.jpg (20000x14000 grey) through the upload profile whose max_pixels is raised to
300 M, each repetition on a fresh `picstore worker` so its VmHWM (peak RSS) belongs to that one job.
Refusals: giant-image.jpg and 65536-uint32-limit.png (65536x65536) through the default profile (100 MP
limit), timed on loopback from request start to the 422; the api's VmHWM before and after shows that
no pixels were decoded.
"""

from __future__ import annotations

import time
from pathlib import Path

from bench import client, inputs
from bench.context import Context
from bench.machine import status_kib
from bench.report import Row, median
from bench.stack import Stack

WORKER_TARGET_MIB = 1024
REFUSAL_TARGET_MS = 50.0
REFUSALS_PER_FILE = 20
SECTION = "5 huge images"


async def convert_giant(stack: Stack, rep: int) -> tuple[float, float, float]:
    """Peak RSS of a fresh worker converting the giant JPEG, its idle RSS, and the seconds to ready."""
    assert stack.tenant is not None
    (worker,) = await stack.start_workers(1, concurrency=2)
    async with stack.client() as http:
        idle = status_kib(worker.pid, "VmRSS") / 1024
        seconds, _ = await client.convert_through_api(
            http, stack.tenant.project, stack.tenant.huge_profile, inputs.GIANT_JPEG, f"giant-{rep}.jpg"
        )
        peak = status_kib(worker.pid, "VmHWM") / 1024
    await stack.stop_workers()
    return peak, idle, seconds


async def refusal_times(stack: Stack, path: Path) -> list[float]:
    """Milliseconds per refused upload (each must be a 422 naming the pixel limit)."""
    assert stack.tenant is not None
    data = path.read_bytes()
    times = []
    async with stack.client() as http:
        for i in range(REFUSALS_PER_FILE + 1):  # the first one warms the connection up
            started = time.perf_counter()
            response = await client.quick_upload(
                http, stack.tenant.project, data, f"bomb-{i}-{path.name}", stack.tenant.upload_profile
            )
            elapsed = (time.perf_counter() - started) * 1000
            if response.status_code != 422 or "pixels" not in response.text:
                raise RuntimeError(f"{path.name} was not refused: {response.status_code} {response.text}")
            if i:
                times.append(elapsed)
    return times


async def run(ctx: Context) -> list[Row]:
    async with ctx.stack("huge") as stack:
        api = await stack.start_api()
        runs = [await convert_giant(stack, rep) for rep in range(ctx.repetitions(3))]
        before = status_kib(api.pid, "VmHWM") / 1024
        refusals = {
            path.name: await refusal_times(stack, path) for path in (inputs.GIANT_JPEG, inputs.BOMB_PNG)
        }
        after = status_kib(api.pid, "VmHWM") / 1024
    peak = median(r[0] for r in runs)
    rows = [
        Row(
            SECTION,
            "giant-image.jpg 20000x14000 (280 MP), max_pixels 300 M: worker peak RSS",
            peak,
            "MiB",
            target=f"< {WORKER_TARGET_MIB} MiB",
            ok=max(r[0] for r in runs) < WORKER_TARGET_MIB,
            note=f"{median(r[1] for r in runs):.0f} MiB idle, ready in {median(r[2] for r in runs):.1f} s",
            details={"peaks_mib": [r[0] for r in runs], "seconds": [r[2] for r in runs]},
        )
    ]
    for name, times in refusals.items():
        rows.append(
            Row(
                SECTION,
                f"refusal of {name} (default 100 MP limit): latency",
                median(times),
                "ms",
                target=f"< {REFUSAL_TARGET_MS:.0f} ms",
                ok=median(times) < REFUSAL_TARGET_MS,
                note=f"max {max(times):.1f} ms; api VmHWM {before:.0f}→{after:.0f} MiB",
                details={"ms": times},
            )
        )
    return rows

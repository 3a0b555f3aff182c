"""3. API read endpoints against the framework's ceiling, under 32 concurrent keep-alive connections.

picstore side: `picstore serve` (one uvicorn process, as deployed by scripts/serve) answering
GET /api/images/{id} and GET /api/images/{id}/picture for an image with nine ready outputs.
Ceiling: bench.ceiling, a trivial Litestar JSON route with the same uvicorn settings in its own process,
so picstore needs no benchmark-only route (GET /api/health is not trivial: it queries the database; it is
measured too, for reference). Runs alternate between endpoints; medians over the repetitions.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

from bench import client, inputs, loadgen
from bench.context import Context
from bench.report import Row, median
from bench.stack import Stack, free_port, stop, wait_http

CONNECTIONS = 32
THROUGHPUT_TARGET = 0.5
P99_TARGET_MS = 50.0
WARM_UP_S = 2.0
SECTION = "3 API vs ceiling"


async def ready_image(stack: Stack) -> str:
    """The 12 MP photo uploaded and converted: nine ready outputs."""
    assert stack.tenant is not None
    await stack.start_workers(1, concurrency=2)
    async with stack.client() as http:
        _, image = await client.convert_through_api(
            http, stack.tenant.project, stack.tenant.upload_profile, inputs.PUG_12MP, "pug.jpg"
        )
    await stack.stop_workers()
    count = len(client.ready_outputs(image))
    if count != 9:
        raise RuntimeError(f"expected 9 ready outputs, got {count}")
    image_id: str = image["id"]
    return image_id


async def start_ceiling(stack: Stack) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    with (stack.logs / "api-ceiling.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.ceiling", str(port)],
            cwd=inputs.ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/ping"
    await wait_http(url, process)
    return process, url


async def run(ctx: Context) -> list[Row]:
    async with ctx.stack("api") as stack:
        await stack.start_api()
        assert stack.tenant is not None
        image_id = await ready_image(stack)
        ceiling, ceiling_url = await start_ceiling(stack)
        auth = stack.tenant.headers
        targets = {
            "ceiling": (ceiling_url, {}),
            "image": (f"{stack.base_url}/api/images/{image_id}", auth),
            "picture": (f"{stack.base_url}/api/images/{image_id}/picture", auth),
            "health": (f"{stack.base_url}/api/health", {}),
        }
        try:
            for url, headers in targets.values():
                await loadgen.run(url, headers, CONNECTIONS, WARM_UP_S)
            found: dict[str, list[loadgen.Load]] = {name: [] for name in targets}
            for _ in range(ctx.repetitions(3)):
                for name, (url, headers) in targets.items():
                    found[name].append(await loadgen.run(url, headers, CONNECTIONS, ctx.load_seconds))
                    await asyncio.sleep(1)  # let TIME_WAIT sockets and the server settle
        finally:
            await stop(ceiling)
    return rows_for(found)


def rows_for(found: dict[str, list[loadgen.Load]]) -> list[Row]:
    ceiling = median(load.rate for load in found["ceiling"])
    note = f"{loadgen.tool()}, {CONNECTIONS} connections"
    rows = [
        Row(
            SECTION,
            "trivial Litestar route (ceiling): p99",
            median(x.p99_ms for x in found["ceiling"]),
            "ms",
            note=f"{ceiling:.0f} req/s",
        )
    ]
    paths = {
        "image": "GET /api/images/{id}",
        "picture": "GET /api/images/{id}/picture",
        "health": "GET /api/health",
    }
    for name, path in paths.items():
        loads = found[name]
        rate, p99 = median(x.rate for x in loads), median(x.p99_ms for x in loads)
        errors = sum(x.errors for x in loads)
        targeted = name != "health"
        details = {
            "rates": [x.rate for x in loads],
            "p50_ms": [x.p50_ms for x in loads],
            "p99_ms": [x.p99_ms for x in loads],
            "errors": errors,
        }
        rows.append(
            Row(
                SECTION,
                f"{path}: throughput",
                rate,
                "req/s",
                ceiling,
                rate / ceiling,
                f"≥ {THROUGHPUT_TARGET}x" if targeted else "",
                (rate / ceiling >= THROUGHPUT_TARGET and errors == 0) if targeted else None,
                note=note if errors == 0 else f"{note}, {errors} errors",
                details=details,
            )
        )
        rows.append(
            Row(
                SECTION,
                f"{path}: p99",
                p99,
                "ms",
                target=f"< {P99_TARGET_MS:.0f} ms" if targeted else "",
                ok=p99 < P99_TARGET_MS if targeted else None,
                note=f"p50 {median(x.p50_ms for x in loads):.1f} ms",
            )
        )
    return rows

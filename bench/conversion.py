"""1. Conversion against the limit: upload → worker → every output ready, against plain pyvips.

picstore side: quick_upload through the real API, one `picstore worker` (default concurrency), timed from
the request's start until GET /api/images/{id} (polled every 20 ms) shows every output ready.
Limit side: bench.vips_limit making the same outputs (same sizes, formats, quality, effort) in one warm
process. The two sides alternate, repetition by repetition, after one warm-up each.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from bench import client, inputs, outputs, plans
from bench.context import Context
from bench.report import Row, median

TARGET = 1.25


def cases() -> list[tuple[str, Path]]:
    return [
        ("12 MP JPEG (photo-12mp-pug.jpg)", inputs.PUG_12MP),
        ("2 MP JPEG (photo-12mp-arrow.jpg at 1224x1632)", inputs.photo_2mp()),
        ("small RGBA PNG (with-alpha.png, 256x192)", inputs.ALPHA_PNG),
    ]


class Limit:
    """The pyvips limit in its own warm process, one JSON line per conversion."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls) -> Limit:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.sides",
            "limit",
            cwd=inputs.ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        return cls(process)

    async def convert(self, path: Path, planned: list[outputs.Output]) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        request = {"path": str(path), "outputs": outputs.to_json(planned)}
        self.process.stdin.write((json.dumps(request) + "\n").encode())
        await self.process.stdin.drain()
        line = await self.process.stdout.readline()
        if not line:
            raise RuntimeError(
                f"the pyvips limit process exited ({await self.process.wait()}) on {path.name}"
            )
        reply: dict[str, Any] = json.loads(line)
        return reply

    async def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        await self.process.wait()


async def run(ctx: Context) -> list[Row]:
    rows = []
    async with ctx.stack("conversion") as stack:
        await stack.start_api()
        await stack.start_workers(1, concurrency=2)
        assert stack.tenant is not None
        tenant = stack.tenant
        limit = await Limit.start()
        try:
            async with stack.client() as http:
                for name, path in cases():
                    planned = plans.planned(path)
                    pipeline: list[float] = []
                    limits: list[float] = []
                    for rep in range(ctx.repetitions(5) + 1):  # repetition 0 warms both sides up
                        filename = f"r{rep}-{path.name}"
                        seconds, image = await client.convert_through_api(
                            http, tenant.project, tenant.upload_profile, path, filename
                        )
                        made = len(client.ready_outputs(image))
                        if made != len(planned):
                            raise RuntimeError(f"{path.name}: {made} outputs ready, {len(planned)} planned")
                        reply = await limit.convert(path, planned)
                        if rep:
                            pipeline.append(seconds)
                            limits.append(reply["seconds"])
                    ours, base = median(pipeline), median(limits)
                    rows.append(
                        Row(
                            "1 pipeline vs pyvips",
                            name,
                            ours,
                            "s",
                            base,
                            ours / base,
                            f"≤ {TARGET}x",
                            ours / base <= TARGET,
                            note=f"{len(planned)} outputs",
                            details={
                                "pipeline_s": pipeline,
                                "limit_s": limits,
                                "outputs": [o.key for o in planned],
                            },
                        )
                    )
        finally:
            await limit.close()
    return rows

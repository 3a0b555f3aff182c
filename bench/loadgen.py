"""Load generation on loopback: wrk when installed, else an asyncio + httpx client in its own process.

Both report the same JSON: requests, duration, p50/p99 latency, socket and HTTP-status errors. The
fallback client is far slower than wrk, so its ceilings are lower bounds; the table says which ran.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

LUA = Path(__file__).with_name("wrk_report.lua")


@dataclass(frozen=True)
class Load:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def tool() -> str:
    return "wrk" if shutil.which("wrk") else "httpx"


async def run(url: str, headers: dict[str, str], connections: int, seconds: float) -> Load:
    """One load run against url; the generator runs in its own process either way."""
    if tool() == "wrk":
        header_args = [arg for name, value in headers.items() for arg in ("-H", f"{name}: {value}")]
        command = [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "-s",
            str(LUA),
            *header_args,
            url,
        ]
    else:
        options = {"url": url, "headers": headers, "connections": connections, "seconds": seconds}
        command = [sys.executable, "-m", "bench.loadgen", json.dumps(options)]
    process = await asyncio.create_subprocess_exec(
        *command,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=Path(__file__).resolve().parents[1],
    )
    out, _ = await process.communicate()
    lines = [raw for raw in out.decode().splitlines() if raw.startswith("{")]
    if not lines:
        raise RuntimeError(f"{command[0]} reported nothing for {url}: {out.decode()[-500:]}")
    found = json.loads(lines[-1])
    return Load(
        found["requests"],
        found["duration_us"] / 1e6,
        found["p50_us"] / 1000,
        found["p99_us"] / 1000,
        found["socket_errors"] + found["status_errors"],
    )


async def _client(url: str, headers: dict[str, str], connections: int, seconds: float) -> dict[str, Any]:
    """The fallback generator: `connections` tasks on one keep-alive pool, each request after the last."""
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=30) as client:
        deadline = time.perf_counter() + seconds

        async def loop() -> None:
            nonlocal errors
            while (started := time.perf_counter()) < deadline:
                try:
                    response = await client.get(url)
                    errors += response.status_code >= 400
                except httpx.HTTPError:
                    errors += 1
                latencies.append(time.perf_counter() - started)

        began = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(connections)))
        duration = time.perf_counter() - began
    cuts = statistics.quantiles(latencies, n=100)
    return {
        "requests": len(latencies),
        "duration_us": int(duration * 1e6),
        "p50_us": int(cuts[49] * 1e6),
        "p99_us": int(cuts[98] * 1e6),
        "socket_errors": 0,
        "status_errors": errors,
    }


if __name__ == "__main__":
    options = json.loads(sys.argv[1])
    print(json.dumps(asyncio.run(_client(**options))))

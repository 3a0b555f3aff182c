"""2. picstore's conversion step against Pillow, at equal output bytes.

Each repetition runs each side in a fresh process (`python -m bench.sides render|pillow`), so ru_maxrss is
that side's own peak. Before timing, Pillow's quality (PNG: zlib level) is searched per output so that
its bytes come within 5 % of picstore's; the achieved ratios are reported per format.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench import inputs, outputs, plans
from bench.context import Context
from bench.report import Row, median

SPEEDUP_TARGET = 1.3
BYTES_TOLERANCE = 0.05
SECTION = "2 picstore vs Pillow"


def cases() -> list[tuple[str, Path, tuple[str, ...] | None, bool]]:
    """Name, input, formats (None: all planned) and whether the targets apply."""
    return [
        ("12 MP JPEG", inputs.PUG_12MP, None, True),
        ("4000x3000 RGBA PNG", inputs.large_png(), None, True),
        ("12 MP JPEG, WebP + JPEG only", inputs.PUG_12MP, ("webp", "jpg"), False),
    ]


async def side(command: str, request: dict[str, Any]) -> dict[str, Any]:
    """One side in its own process; the request goes in on stdin, the JSON result comes back on stdout."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.sides",
        command,
        cwd=inputs.ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate(json.dumps(request).encode())
    if process.returncode != 0:
        raise RuntimeError(f"bench.sides {command} failed ({process.returncode}) on {request['path']}")
    result: dict[str, Any] = json.loads(out)
    return result


def by_format(sizes: dict[str, int], planned: list[outputs.Output]) -> dict[str, int]:
    totals: dict[str, int] = defaultdict(int)
    for output in planned:
        totals[output.format] += sizes[output.key]
    return dict(totals)


async def measure(path: Path, planned: list[outputs.Output], reps: int) -> dict[str, Any]:
    """Calibrate Pillow on picstore's bytes, then alternate the two sides `reps` times."""
    request = {"path": str(path), "outputs": outputs.to_json(planned)}
    targets = (await side("render", request))["sizes"]
    settings = (await side("calibrate", {**request, "targets": targets}))["settings"]
    ours, theirs = [], []
    for _ in range(reps):
        ours.append(await side("render", request))
        theirs.append(await side("pillow", {**request, "settings": settings}))
    return {"ours": ours, "theirs": theirs, "settings": settings}


def rows_for(name: str, planned: list[outputs.Output], found: dict[str, Any], targeted: bool) -> list[Row]:
    ours, theirs = found["ours"], found["theirs"]
    ours_s, theirs_s = median(r["seconds"] for r in ours), median(r["seconds"] for r in theirs)
    ours_mib = median(r["maxrss_kib"] for r in ours) / 1024
    theirs_mib = median(r["maxrss_kib"] for r in theirs) / 1024
    speedup = theirs_s / ours_s
    rows = [
        Row(
            SECTION,
            f"{name}: time",
            ours_s,
            "s",
            theirs_s,
            speedup,
            f"≥ {SPEEDUP_TARGET}x faster" if targeted else "",
            speedup >= SPEEDUP_TARGET if targeted else None,
            details={
                "picstore_s": [r["seconds"] for r in ours],
                "pillow_s": [r["seconds"] for r in theirs],
                "pillow_settings": found["settings"],
            },
        ),
        Row(
            SECTION,
            f"{name}: peak RSS",
            ours_mib,
            "MiB",
            theirs_mib,
            ours_mib / theirs_mib,
            "< 1x (lower)" if targeted else "",
            ours_mib < theirs_mib if targeted else None,
            details={
                "picstore_rss_before_mib": median(r["rss_before_kib"] for r in ours) / 1024,
                "pillow_rss_before_mib": median(r["rss_before_kib"] for r in theirs) / 1024,
            },
        ),
    ]
    ours_bytes, theirs_bytes = ours[0]["sizes"], theirs[0]["sizes"]
    per_output = {k: ours_bytes[k] / theirs_bytes[k] for k in ours_bytes}
    ours_fmt, theirs_fmt = by_format(ours_bytes, planned), by_format(theirs_bytes, planned)
    for fmt, total in ours_fmt.items():
        ratios = [per_output[o.key] for o in planned if o.format == fmt]
        within = all(abs(r - 1) <= BYTES_TOLERANCE for r in ratios)
        rows.append(
            Row(
                SECTION,
                f"{name}: {fmt} bytes",
                total / 1000,
                "kB",
                theirs_fmt[fmt] / 1000,
                total / theirs_fmt[fmt],
                "each output within ±5 %",
                within,
                note=f"per output {min(ratios):.3f}-{max(ratios):.3f}",
                details={"per_output": {o.key: per_output[o.key] for o in planned if o.format == fmt}},
            )
        )
    return rows


async def run(ctx: Context) -> list[Row]:
    rows = []
    for name, path, formats, targeted in cases():
        planned = plans.planned(path, formats)
        rows.extend(rows_for(name, planned, await measure(path, planned, ctx.reps), targeted))
    return rows

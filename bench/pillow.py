"""2. picstore's conversion step against Pillow, at equal output bytes.

Each repetition runs each side in a fresh process (`python -m bench.sides render|pillow`), so its peak RSS
is that side's own. Before timing, Pillow's quality (PNG: zlib level) is searched per output so that
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
    """Time and peak RSS rows (with the targets when `targeted`), then one bytes row per format."""
    bytes_rows = byte_rows(name, planned, found["ours"][0]["sizes"], found["theirs"][0]["sizes"])
    unmatched = [f"{r.case.split(': ')[1]} {r.ratio:.2f}x" for r in bytes_rows if not r.ok]
    return [time_row(name, found, targeted, unmatched), memory_row(name, found, targeted), *bytes_rows]


def time_row(name: str, found: dict[str, Any], targeted: bool, unmatched: list[str]) -> Row:
    ours = [r["seconds"] for r in found["ours"]]
    theirs = [r["seconds"] for r in found["theirs"]]
    speedup = median(theirs) / median(ours)
    return Row(
        SECTION,
        f"{name}: time",
        median(ours),
        "s",
        median(theirs),
        speedup,
        f"≥ {SPEEDUP_TARGET}x faster" if targeted else "",
        speedup >= SPEEDUP_TARGET if targeted else None,
        note=f"not byte-matched: {', '.join(unmatched)}" if unmatched else "",
        details={"picstore_s": ours, "pillow_s": theirs, "pillow_settings": found["settings"]},
    )


def memory_row(name: str, found: dict[str, Any], targeted: bool) -> Row:
    ours, theirs = found["ours"], found["theirs"]
    ours_mib = median(r["peak_kib"] for r in ours) / 1024
    theirs_mib = median(r["peak_kib"] for r in theirs) / 1024
    return Row(
        SECTION,
        f"{name}: peak RSS",
        ours_mib,
        "MiB",
        theirs_mib,
        ours_mib / theirs_mib,
        "< 1x (lower)" if targeted else "",
        ours_mib < theirs_mib if targeted else None,
        details={
            "picstore_mib": [r["peak_kib"] / 1024 for r in ours],
            "pillow_mib": [r["peak_kib"] / 1024 for r in theirs],
            "picstore_rss_before_mib": median(r["rss_before_kib"] for r in ours) / 1024,
            "pillow_rss_before_mib": median(r["rss_before_kib"] for r in theirs) / 1024,
        },
    )


def byte_rows(
    name: str, planned: list[outputs.Output], ours: dict[str, int], theirs: dict[str, int]
) -> list[Row]:
    per_output = {key: ours[key] / theirs[key] for key in ours}
    ours_fmt, theirs_fmt = by_format(ours, planned), by_format(theirs, planned)
    rows = []
    for fmt, total in ours_fmt.items():
        ratios = {o.key: per_output[o.key] for o in planned if o.format == fmt}
        rows.append(
            Row(
                SECTION,
                f"{name}: {fmt} bytes",
                total / 1000,
                "kB",
                theirs_fmt[fmt] / 1000,
                total / theirs_fmt[fmt],
                "each output within ±5 %",
                all(abs(r - 1) <= BYTES_TOLERANCE for r in ratios.values()),
                note=f"per output {min(ratios.values()):.3f}-{max(ratios.values()):.3f}",
                details={"per_output": ratios},
            )
        )
    return rows


async def run(ctx: Context) -> list[Row]:
    rows = []
    for name, path, formats, targeted in cases():
        planned = plans.planned(path, formats)
        rows.extend(rows_for(name, planned, await measure(path, planned, ctx.repetitions(5)), targeted))
    return rows

"""`python -m bench [--only SECTION,...] [--reps N] [--load-seconds S]`: run, print the table, save JSON."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import machine, report
from bench.context import Context
from bench.inputs import ROOT
from bench.stack import postgres_server

SECTIONS = ("conversion", "pillow", "api", "upload", "huge", "scale")
RESULTS = ROOT / "bench-results" / "latest.json"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__)
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help=f"comma-separated subset of {', '.join(SECTIONS)}"
    )
    parser.add_argument(
        "--reps", type=int, help="repetitions per measurement (default: 5 for conversions, 3 for the rest)"
    )
    parser.add_argument("--load-seconds", type=float, default=10.0, help="length of each load-generator run")
    parser.add_argument("--output", type=Path, default=RESULTS, help="results file (JSON)")
    args = parser.parse_args(argv)
    unknown = set(args.only.split(",")) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    chosen = [s for s in SECTIONS if s in args.only.split(",")]
    rows: list[report.Row] = []
    sections: dict[str, Any] = {}
    info = {**machine.describe(), "load_at_start": machine.load()}
    print(
        f"# {info['cpu']}, {info['cores']} cores, {info['ram_gib']} GiB; load {info['load_at_start']}",
        flush=True,
    )
    with postgres_server() as server, tempfile.TemporaryDirectory(prefix="picstore-bench-logs-") as logs:
        ctx = Context(server, Path(logs), args.reps, args.load_seconds)
        for name in chosen:
            module = importlib.import_module(f"bench.{name}")
            before, started = machine.load(), time.monotonic()
            print(f"## {name} (load {before[0]:.2f})", flush=True)
            found = asyncio.run(module.run(ctx))
            sections[name] = {
                "load_before": before,
                "load_after": machine.load(),
                "seconds": round(time.monotonic() - started, 1),
            }
            print(report.table(found), flush=True)
            rows.extend(found)
    info["load_at_end"] = machine.load()
    report.write_json(args.output, info, sections, rows)
    print("\n" + report.table(rows))
    print(f"\nload average at start {info['load_at_start']}, at end {info['load_at_end']}")
    print(f"results in {args.output}")


if __name__ == "__main__":
    main()

"""Result rows, the printed table (Markdown, so docs/benchmarks.md can quote it) and the JSON file."""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

UNIT_FORMATS = {
    "s": "{:.2f} s",
    "ms": "{:.1f} ms",
    "MB": "{:.0f} MB",
    "MiB": "{:.0f} MiB",
    "MB/s": "{:.0f} MB/s",
    "req/s": "{:.0f} req/s",
    "img/s": "{:.1f} img/s",
    "kB": "{:.0f} kB",
    "": "{}",
}


@dataclass
class Row:
    """One line of the table: our side, the other side (if any), their ratio and the target."""

    section: str
    case: str
    ours: float | str
    unit: str = ""
    baseline: float | str | None = None
    ratio: float | None = None
    target: str = ""
    ok: bool | None = None
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)


def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def fmt(value: float | str | None, unit: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return UNIT_FORMATS.get(unit, "{:.3g} " + unit).format(value)


def verdict(ok: bool | None) -> str:
    return {True: "yes", False: "**no**", None: ""}[ok]


def table(rows: Sequence[Row]) -> str:
    """A Markdown table: readable in a terminal and pasteable into the docs."""
    lines = [
        "| comparison | case | picstore | baseline | ratio | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ratio = "" if row.ratio is None else f"{row.ratio:.2f}x"
        case = f"{row.case} ({row.note})" if row.note else row.case
        lines.append(
            f"| {row.section} | {case} | {fmt(row.ours, row.unit)} | {fmt(row.baseline, row.unit)} "
            f"| {ratio} | {row.target} | {verdict(row.ok)} |"
        )
    return "\n".join(lines)


def write_json(path: Path, machine: dict[str, Any], sections: dict[str, Any], rows: Sequence[Row]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"machine": machine, "sections": sections, "rows": [asdict(r) for r in rows]}
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")

"""What every section gets: the PostgreSQL server, where logs go, and how long to measure."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.stack import Stack


@dataclass(frozen=True)
class Context:
    server: str  # PostgreSQL maintenance database URL
    logs: Path
    reps: int | None  # repetitions per measurement (None: each section's default); tables show medians
    load_seconds: float  # duration of each load-generator run

    def repetitions(self, default: int) -> int:
        return self.reps or default

    def stack(self, label: str) -> Stack:
        return Stack(self.server, self.logs, label)

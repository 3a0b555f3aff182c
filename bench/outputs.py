"""One planned output as plain data, importable by every side without importing picstore or pyvips."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Output:
    """One planned output; `key` names it in every side's results."""

    key: str
    format: str
    width: int
    height: int
    quality: int
    effort: int
    lossless: bool


def to_json(outputs: list[Output]) -> list[dict[str, Any]]:
    return [asdict(o) for o in outputs]


def from_json(raw: list[dict[str, Any]]) -> list[Output]:
    return [Output(**o) for o in raw]

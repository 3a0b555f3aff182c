"""The outputs picstore's default profile plans for a file, as plain data every side can read.

Both sides of a comparison make exactly these outputs: same formats, sizes, quality and effort.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from bench.outputs import Output
from picstore import conversion, imaging


def header(path: Path) -> imaging.Header:
    return imaging.read_header(str(path))


def planned(path: Path, formats: tuple[str, ...] | None = None) -> list[Output]:
    """The queued outputs of default_profile() for this file, optionally only some formats."""
    head = header(path)
    facts = conversion.ImageFacts(
        format=head.format,
        width=head.width,
        height=head.height,
        frames=head.frames,
        has_alpha=head.has_alpha,
        file_size=path.stat().st_size,
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
    )
    plans = conversion.plan_outputs(conversion.default_profile(), facts, path.stem)
    return [
        Output(
            key=f"{p.format}-{p.width}",
            format=p.format,
            width=p.width or 0,
            height=p.height or 0,
            quality=p.quality or 90,
            effort=p.effort or 0,
            lossless=p.lossless,
        )
        for p in plans
        if p.status == "queued" and (formats is None or p.format in formats)
    ]


def specs(outputs: list[Output]) -> list[imaging.OutputSpec]:
    """The OutputSpecs the worker would hand to imaging.render (see tasks._spec)."""
    return [
        imaging.OutputSpec(
            key=o.key,
            format=o.format,
            width=o.width,
            height=o.height,
            fit="contain",
            crop="focal",
            focal_x=0.5,
            focal_y=0.5,
            quality=o.quality,
            effort=o.effort,
            lossless=o.lossless,
            animated=False,
        )
        for o in outputs
    ]

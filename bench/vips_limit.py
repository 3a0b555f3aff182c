"""The limit: a plain pyvips script making the planned outputs, with picstore's encoder settings.

One shrink-on-load `thumbnail` per width, held in memory, then every format of that width (a lazy
thumbnail would re-decode the file for each format). No picstore code runs here.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyvips

from bench.outputs import Output

UNBOUNDED = 10_000_000
WHITE = [255, 255, 255]

# Every call opens the same file again: the operation cache would hand back earlier results.
pyvips.cache_set_max(0)


def encode(image: pyvips.Image, output: Output) -> bytes:
    """The savers and options picstore.imaging uses, metadata stripped."""
    if output.format == "jpg":
        flat = image.flatten(background=WHITE) if image.hasalpha() else image
        return flat.jpegsave_buffer(
            Q=output.quality,
            optimize_coding=True,
            interlace=True,
            trellis_quant=True,
            overshoot_deringing=True,
            optimize_scans=True,
            quant_table=3,
            keep="none",
        )
    if output.format == "webp":
        return image.webpsave_buffer(
            Q=output.quality, effort=output.effort, lossless=output.lossless, keep="none"
        )
    if output.format == "avif":
        return image.heifsave_buffer(compression="av1", Q=output.quality, effort=output.effort, keep="none")
    if output.format == "png":
        return image.pngsave_buffer(compression=min(max(output.effort, 1), 9), filter="all", keep="none")
    raise ValueError(f"no encoder for {output.format}")


def convert(path: str, outputs: Sequence[Output]) -> dict[str, bytes]:
    """Every output, largest width first; ICC-tagged sources are converted to sRGB like picstore does."""
    icc = bool(pyvips.Image.new_from_file(path).get_typeof("icc-profile-data"))
    colour = {"output_profile": "srgb"} if icc else {}
    results: dict[str, bytes] = {}
    for width in sorted({o.width for o in outputs}, reverse=True):
        image = pyvips.Image.thumbnail(path, width, height=UNBOUNDED, size="down", **colour).copy_memory()
        for output in outputs:
            if output.width == width:
                results[output.key] = encode(image, output)
    return results

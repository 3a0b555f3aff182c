"""Entry point of the processes that run one side of a conversion comparison.

    python -m bench.sides limit      JSON lines in, JSON lines out: the pyvips limit, kept warm
    python -m bench.sides render     one JSON request: picstore.imaging.render with the planned specs
    python -m bench.sides pillow     one JSON request: the Pillow service with calibrated settings
    python -m bench.sides calibrate  one JSON request: the Pillow settings matching picstore's bytes

Timed runs report the conversion's wall time (imports and a tiny warm-up excluded) and the process's
peak RSS: VmHWM, the high-water mark of this process's own address space. Not ru_maxrss: Linux carries
that across fork and exec, so every child would report at least the benchmark process's own RSS.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import outputs as planned
from bench.machine import status_kib

WARM_SIDE = 16
WARM_FORMATS = ("jpg", "webp", "avif", "png")


def _warm_vips() -> None:
    """Load every encoder once (libheif/AOM initialise lazily), as in a long-running worker."""
    import pyvips

    tiny = pyvips.Image.black(WARM_SIDE, WARM_SIDE, bands=3).cast("uchar").copy(interpretation="srgb")
    for fmt in WARM_FORMATS:
        tiny.write_to_buffer("." + fmt)


def _warm_pillow() -> None:
    import io

    from PIL import Image

    tiny = Image.new("RGB", (WARM_SIDE, WARM_SIDE))
    for fmt in ("JPEG", "WEBP", "AVIF", "PNG"):
        tiny.save(io.BytesIO(), fmt)


def _timed(convert: Callable[[], dict[str, bytes]]) -> dict[str, Any]:
    baseline = status_kib(os.getpid(), "VmRSS")
    started = time.perf_counter()
    results = convert()
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "peak_kib": status_kib(os.getpid(), "VmHWM"),
        "rss_before_kib": baseline,
        "sizes": {key: len(data) for key, data in results.items()},
    }


def limit_server() -> None:
    from bench import vips_limit

    _warm_vips()
    for line in sys.stdin:
        request = json.loads(line)
        outputs = planned.from_json(request["outputs"])
        reply = _timed(lambda: vips_limit.convert(request["path"], outputs))  # noqa: B023
        print(json.dumps(reply), flush=True)


def render(request: dict[str, Any]) -> dict[str, Any]:
    from bench import plans
    from picstore import imaging

    _warm_vips()
    path = Path(request["path"])
    outputs = planned.from_json(request["outputs"])
    header = plans.header(path)

    def convert() -> dict[str, bytes]:
        _, rendered = imaging.render(str(path), header, plans.specs(outputs))
        return {r.key: r.data for r in rendered}

    return _timed(convert)


def pillow(request: dict[str, Any]) -> dict[str, Any]:
    from bench import pillow_service

    _warm_pillow()
    outputs = planned.from_json(request["outputs"])
    return _timed(lambda: pillow_service.convert(request["path"], outputs, request["settings"]))


def calibrate(request: dict[str, Any]) -> dict[str, Any]:
    from bench import pillow_service

    outputs = planned.from_json(request["outputs"])
    return {"settings": pillow_service.calibrate(request["path"], outputs, request["targets"])}


COMMANDS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "render": render,
    "pillow": pillow,
    "calibrate": calibrate,
}


def main(argv: list[str]) -> None:
    if argv == ["limit"]:
        limit_server()
        return
    print(json.dumps(COMMANDS[argv[0]](json.loads(sys.stdin.read()))))


if __name__ == "__main__":
    main(sys.argv[1:])

"""imaging.render encodes outputs in parallel; the results must not depend on it.

Also the process-wide memory settings the module makes on import (malloc arenas, pillow_heif loaded
only for HEIC).
"""

import subprocess
import sys
from pathlib import Path

import pytest
import pyvips

from picstore import imaging
from picstore.imaging import ImageError, OutputSpec

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"
PHOTO = str(CORPUS / "flowers.jpeg")


def specs() -> list[OutputSpec]:
    """Nine outputs of mixed cost, in an order unlike the cost order render schedules them in."""
    return [
        OutputSpec(
            key=f"{fmt}-{width}",
            format=fmt,
            width=width,
            height=width * 9 // 16,
            fit="contain",
            crop="focal",
            focal_x=0.5,
            focal_y=0.5,
            quality=70,
            effort=0 if fmt == "avif" else 4,
            lossless=False,
            animated=False,
        )
        for width in (160, 640, 320)
        for fmt in ("jpg", "avif", "webp")
    ]


def render(threads: int, monkeypatch: pytest.MonkeyPatch) -> list[imaging.Rendered]:
    monkeypatch.setattr(imaging, "ENCODE_THREADS", threads)
    wanted = specs()
    _, rendered = imaging.render(PHOTO, imaging.read_header(PHOTO), wanted)
    return rendered


def test_parallel_render_keeps_order_and_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    sequential = render(1, monkeypatch)
    parallel = render(4, monkeypatch)
    assert [r.key for r in parallel] == [s.key for s in specs()]
    assert [r.data for r in parallel] == [r.data for r in sequential]


def test_parallel_render_raises_the_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    real = imaging._render_one

    def failing(frames: list[pyvips.Image], spec: OutputSpec) -> imaging.Rendered:
        if spec.key == "webp-640":
            raise ImageError("cannot make webp-640")
        return real(frames, spec)

    monkeypatch.setattr(imaging, "_render_one", failing)
    with pytest.raises(ImageError, match="webp-640"):
        render(2, monkeypatch)


def test_encode_cost_puts_large_avif_first() -> None:
    order = sorted(specs(), key=imaging._encode_cost, reverse=True)
    assert [s.key for s in order[:3]] == ["avif-640", "avif-320", "avif-160"]


def test_importing_imaging_leaves_pillow_heif_unloaded() -> None:
    code = "import sys, picstore.imaging; sys.exit('pillow_heif' in sys.modules or 'PIL' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_malloc_arena_cap_respects_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(_: str) -> None:
        raise AssertionError("libc must not be touched when MALLOC_ARENA_MAX is set")

    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    monkeypatch.setattr(imaging.ctypes, "CDLL", refuse)
    imaging._limit_malloc_arenas()

"""Benchmark inputs: the corpus files plus a few made from them once and kept in bench-results/inputs.

Every derived file is deterministic (fixed crops, fixed noise seeds), so runs compare like with like.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyvips

ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path(os.environ.get("PICSTORE_CORPUS", ROOT.parent / "shared" / "corpus"))
CACHE = ROOT / "bench-results" / "inputs"

PUG_12MP = CORPUS / "photo-12mp-pug.jpg"
ARROW_12MP = CORPUS / "photo-12mp-arrow.jpg"
ALPHA_PNG = CORPUS / "with-alpha.png"
GIANT_JPEG = CORPUS / "giant-image.jpg"
BOMB_PNG = CORPUS / "65536-uint32-limit.png"

SMALL_COUNT = 200
SMALL_SIDE = 256
_UNBOUNDED = 10_000_000


def _cached(name: str) -> tuple[Path, bool]:
    """The cache path for `name` and whether it still has to be made."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / name
    return path, not path.exists()


def _publish(image: pyvips.Image, path: Path, **options: object) -> Path:
    """Write next to the final name and rename, so an interrupted run leaves no half file."""
    partial = path.with_name(path.stem + ".partial" + path.suffix)
    image.write_to_file(str(partial), **options)
    partial.rename(path)
    return path


def photo_2mp() -> Path:
    """photo-12mp-arrow.jpg (3024x4032) scaled to 1224x1632 = 2.0 MP, JPEG Q90 like the corpus photos."""
    path, missing = _cached("photo-2mp-arrow.jpg")
    if missing:
        image = pyvips.Image.thumbnail(str(ARROW_12MP), 1224, height=_UNBOUNDED)
        _publish(image, path, Q=90, keep="none")
    return path


def large_png() -> Path:
    """photo-12mp-pug.jpg cropped to 4000x3000 with an elliptical alpha mask that fades to the edges."""
    path, missing = _cached("photo-12mp-pug-rgba.png")
    if missing:
        rgb = pyvips.Image.thumbnail(str(PUG_12MP), 4000, height=3000, crop="centre")
        xy = pyvips.Image.xyz(rgb.width, rgb.height)
        nx = (xy[0] - rgb.width / 2) / (rgb.width / 2)
        ny = (xy[1] - rgb.height / 2) / (rgb.height / 2)
        distance = (nx * nx + ny * ny) ** 0.5
        alpha = ((1.1 - distance) * 255 / 0.3).cast("uchar")  # opaque inside, 0 beyond the ellipse
        _publish(rgb.bandjoin(alpha).copy(interpretation="srgb"), path, compression=6)
    return path


def noisy_jpeg() -> Path:
    """A real ~20 MB JPEG: the 12 MP photo scaled to 4736x3552 with per-channel noise, Q95."""
    path, missing = _cached("noisy-20mb.jpg")
    if missing:
        photo = pyvips.Image.thumbnail(str(PUG_12MP), 4736, height=_UNBOUNDED, size="both")
        noise = [
            pyvips.Image.gaussnoise(photo.width, photo.height, sigma=16, mean=0, seed=s) for s in (1, 2, 3)
        ]
        noisy = (photo + noise[0].bandjoin(noise[1:])).cast("uchar").copy(interpretation="srgb")
        _publish(noisy, path, Q=95, keep="none")
    return path


def small_jpegs() -> list[Path]:
    """200 distinct 256x256 JPEGs: crops of the two 12 MP photos on a grid, scaled down, Q85."""
    folder = CACHE / "small"
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"small-{i:03d}.jpg" for i in range(SMALL_COUNT)]
    if all(p.exists() for p in paths):
        return paths
    sources = [pyvips.Image.new_from_file(str(p)) for p in (PUG_12MP, ARROW_12MP)]
    for i, path in enumerate(paths):
        source = sources[i % 2]
        side = 600 + 7 * (i // 2)  # a different crop size, so a different scale, for every image
        cells = i // 2
        left = (cells * 97) % (source.width - side)
        top = (cells * 61) % (source.height - side)
        crop = source.crop(left, top, side, side).thumbnail_image(
            SMALL_SIDE, height=SMALL_SIDE, crop="centre"
        )
        _publish(crop, path, Q=85, keep="none")
    return paths

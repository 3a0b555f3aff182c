"""The same outputs made the way a careful Python image service makes them with Pillow.

Decode once: JPEG draft mode (DCT scaling) to the smallest scale that still covers the largest output,
EXIF orientation applied, embedded ICC converted to sRGB; then a Lanczos resize per width (with a
reducing gap, Pillow's own fast path) and Pillow's encoders: libjpeg-turbo with optimised progressive
scans, libwebp, libavif (AOM) and zlib. HEIC opens through pillow-heif's registered opener.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import pillow_heif
from PIL import Image, ImageCms, ImageOps

from bench.outputs import Output

pillow_heif.register_heif_opener()

REDUCING_GAP = 3.0
ROTATED = (5, 6, 7, 8)  # EXIF orientations that swap width and height
EXIF_ORIENTATION = 0x0112
SRGB = ImageCms.createProfile("sRGB")


def decode(path: str, width: int, height: int) -> Image.Image:
    """The upright, sRGB, 8-bit source, decoded at the smallest draft scale covering width x height."""
    with Image.open(path) as image:
        rotated = image.getexif().get(EXIF_ORIENTATION) in ROTATED
        image.draft("RGB", (height, width) if rotated else (width, height))  # a no-op but for JPEG
        upright = ImageOps.exif_transpose(image)  # always a loaded copy
    if icc := upright.info.get("icc_profile"):
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        mode = "RGBA" if upright.mode in ("RGBA", "LA", "PA") else "RGB"
        upright = ImageCms.profileToProfile(upright.convert(mode), source, SRGB, outputMode=mode)
    alpha = upright.mode in ("RGBA", "LA", "PA") or "transparency" in upright.info
    wanted = "RGBA" if alpha else "RGB"
    return upright if upright.mode == wanted else upright.convert(wanted)


def encode(image: Image.Image, output: Output, settings: Mapping[str, Any]) -> bytes:
    """One output; `settings` holds the Pillow quality (or PNG compress_level) matched to picstore's bytes."""
    buffer = io.BytesIO()
    if output.format == "jpg":
        if image.mode == "RGBA":
            flat = Image.new("RGB", image.size, (255, 255, 255))
            flat.paste(image, mask=image.getchannel("A"))
            image = flat
        image.save(buffer, "JPEG", quality=settings["quality"], optimize=True, progressive=True)
    elif output.format == "webp":
        image.save(
            buffer, "WEBP", quality=settings["quality"], method=output.effort, lossless=output.lossless
        )
    elif output.format == "avif":
        # libvips' effort e is AOM speed 9 - e; Pillow's speed is AOM's speed.
        image.save(buffer, "AVIF", quality=settings["quality"], speed=9 - output.effort)
    elif output.format == "png":
        image.save(buffer, "PNG", compress_level=settings["compress_level"])
    else:
        raise ValueError(f"no encoder for {output.format}")
    return buffer.getvalue()


def resized(source: Image.Image, width: int, height: int) -> Image.Image:
    if source.size == (width, height):
        return source
    return source.resize((width, height), Image.Resampling.LANCZOS, reducing_gap=REDUCING_GAP)


def convert(
    path: str, outputs: Sequence[Output], settings: Mapping[str, Mapping[str, Any]]
) -> dict[str, bytes]:
    """Every output from one decode, largest size first."""
    largest = max(outputs, key=lambda o: o.width)
    source = decode(path, largest.width, largest.height)
    results: dict[str, bytes] = {}
    for size in sorted({(o.width, o.height) for o in outputs}, reverse=True):
        image = resized(source, *size)
        for output in outputs:
            if (output.width, output.height) == size:
                results[output.key] = encode(image, output, settings[output.key])
    return results


def calibrate(path: str, outputs: Sequence[Output], targets: Mapping[str, int]) -> dict[str, dict[str, int]]:
    """Per output, the Pillow setting whose bytes come closest to picstore's (`targets`, in bytes)."""
    largest = max(outputs, key=lambda o: o.width)
    source = decode(path, largest.width, largest.height)
    found: dict[str, dict[str, int]] = {}
    for size in sorted({(o.width, o.height) for o in outputs}, reverse=True):
        image = resized(source, *size)
        for output in outputs:
            if (output.width, output.height) == size:
                found[output.key] = _closest(image, output, targets[output.key])
    return found


def _closest(image: Image.Image, output: Output, target: int) -> dict[str, int]:
    """PNG: the zlib level closest in bytes. Lossy formats: a bisection on quality (bytes grow with it)."""
    if output.format == "png":
        levels = [{"compress_level": level} for level in range(1, 10)]
        return min(levels, key=lambda s: abs(len(encode(image, output, s)) - target))
    sizes: dict[int, int] = {}

    def size(quality: int) -> int:
        if quality not in sizes:
            sizes[quality] = len(encode(image, output, {"quality": quality}))
        return sizes[quality]

    low, high = 1, 100  # the smallest quality whose output is at least the target
    while low < high:
        middle = (low + high) // 2
        if size(middle) < target:
            low = middle + 1
        else:
            high = middle
    best = min((q for q in (low - 1, low) if q >= 1), key=lambda q: abs(size(q) - target))
    return {"quality": best}

"""`<picture>` markup from the outputs that exist. Pure: stdlib only.

Sources come in order AVIF, then WebP, each with a srcset of the real output widths; the `<img>` carries
the fallback format (JPEG or PNG, else the original), the upright original's width and height so the
browser reserves the box, and the alt text. Fixed-size profiles (outputs with densities) get `1x`/`2x`
descriptors instead of widths. Every attribute value is HTML-escaped.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

SOURCE_ORDER = ("avif", "webp")
FALLBACK_ORDER = ("jpg", "png", "gif")
MIME = {
    "avif": "image/avif",
    "webp": "image/webp",
    "jpg": "image/jpeg",
    "png": "image/png",
    "gif": "image/gif",
}
BROWSER_FORMATS = frozenset({"jpg", "png", "gif", "webp", "avif"})
PREFERRED_SRC_WIDTH = 800


@dataclass(frozen=True, slots=True)
class Output:
    format: str
    url: str
    width: int
    height: int
    density: int
    label: str  # the size rule's label without the density suffix: outputs of one fixed size share it


@dataclass(frozen=True, slots=True)
class Original:
    url: str
    format: str
    width: int
    height: int
    alt: str
    dominant_color: str | None = None
    placeholder: str | None = None


@dataclass(frozen=True, slots=True)
class Candidate:
    url: str
    width: int
    height: int
    descriptor: str  # "480w" or "2x"


@dataclass(frozen=True, slots=True)
class Source:
    type: str
    srcset: str
    sizes: str | None
    candidates: list[Candidate]


@dataclass(frozen=True, slots=True)
class Img:
    src: str
    srcset: str | None
    sizes: str | None
    width: int
    height: int
    alt: str
    format: str
    candidates: list[Candidate]
    class_: str | None = None
    style: str | None = None


@dataclass(frozen=True, slots=True)
class Picture:
    sources: list[Source]
    img: Img
    placeholder: dict[str, str | None] = field(default_factory=dict)


def _fixed_family(outputs: list[Output], slot: str | None) -> str | None:
    """The label of the fixed-size family to use, when the profile defines density pairs."""
    families = sorted({o.label for o in outputs if o.density > 1})
    if slot is not None:
        return slot if slot in {o.label for o in outputs} else None
    return families[0] if families else None


def _candidates(outputs: list[Output], fixed: str | None) -> list[Candidate]:
    if fixed is not None:
        chosen = sorted((o for o in outputs if o.label == fixed), key=lambda o: o.density)
        by_density = {o.density: o for o in chosen}
        return [Candidate(o.url, o.width, o.height, f"{d}x") for d, o in sorted(by_density.items())]
    by_width: dict[int, Output] = {}
    for o in sorted(outputs, key=lambda o: (o.width, o.density)):
        by_width.setdefault(o.width, o)
    return [Candidate(o.url, o.width, o.height, f"{w}w") for w, o in sorted(by_width.items())]


def _srcset(candidates: list[Candidate]) -> str:
    return ", ".join(f"{c.url} {c.descriptor}" for c in candidates)


def _src(candidates: list[Candidate]) -> Candidate:
    """1x for fixed sizes; else the smallest candidate at least PREFERRED_SRC_WIDTH wide, or the largest."""
    if candidates[0].descriptor.endswith("x"):
        return candidates[0]
    wide = [c for c in candidates if c.width >= PREFERRED_SRC_WIDTH]
    return wide[0] if wide else candidates[-1]


def _fallback_format(by_format: dict[str, list[Output]], original: Original) -> str | None:
    """The `<img>`'s format: JPEG/PNG/GIF outputs, else the original if browsers show it, else WebP
    (a HEIC or TIFF original would be a broken image in most browsers)."""
    if original.format in by_format and original.format in FALLBACK_ORDER:
        return original.format
    found = next((f for f in FALLBACK_ORDER if f in by_format), None)
    if found is None and original.format not in BROWSER_FORMATS and "webp" in by_format:
        return "webp"
    return found


def build(
    original: Original,
    outputs: list[Output],
    sizes: str | None = None,
    class_: str | None = None,
    slot: str | None = None,
    placeholder: bool = False,
) -> Picture:
    """The picture for these ready outputs (the caller filters on status)."""
    fixed = _fixed_family(outputs, slot)
    by_format: dict[str, list[Output]] = {}
    for o in outputs:
        if fixed is None or o.label == fixed:
            by_format.setdefault(o.format, []).append(o)
    widest = max((o.width for o in outputs), default=original.width)
    sizes = None if fixed is not None else (sizes or f"(max-width: {widest}px) 100vw, {widest}px")
    sources = [
        Source(MIME[f], _srcset(cands), sizes, cands)
        for f in SOURCE_ORDER
        if f in by_format and (cands := _candidates(by_format[f], fixed))
    ]
    fallback = _fallback_format(by_format, original)
    if fallback is None:
        only = Candidate(original.url, original.width, original.height, f"{original.width}w")
        img_candidates, img_format = [only], original.format
    else:
        img_candidates, img_format = _candidates(by_format[fallback], fixed), fallback
    src = _src(img_candidates)
    width, height = (src.width, src.height) if fixed is not None else (original.width, original.height)
    style = f"background-color:{original.dominant_color}" if placeholder and original.dominant_color else None
    img = Img(
        src=src.url,
        srcset=_srcset(img_candidates) if fallback is not None else None,
        sizes=sizes if fallback is not None else None,
        width=width,
        height=height,
        alt=original.alt,
        format=img_format,
        candidates=img_candidates,
        class_=class_,
        style=style,
    )
    extra = (
        {"dominant_color": original.dominant_color, "blurhash": original.placeholder} if placeholder else {}
    )
    return Picture(sources, img, extra)


def _attrs(pairs: list[tuple[str, str | int | None]]) -> str:
    return "".join(
        f' {name}="{html.escape(str(value), quote=True)}"' for name, value in pairs if value is not None
    )


def render(picture: Picture) -> str:
    lines = ["<picture>"]
    for s in picture.sources:
        lines.append(f"  <source{_attrs([('type', s.type), ('srcset', s.srcset), ('sizes', s.sizes)])}>")
    i = picture.img
    blurhash = picture.placeholder.get("blurhash")
    lines.append(
        "  <img"
        + _attrs(
            [
                ("src", i.src),
                ("srcset", i.srcset),
                ("sizes", i.sizes),
                ("width", i.width),
                ("height", i.height),
                ("alt", i.alt),
                ("loading", "lazy"),
                ("decoding", "async"),
                ("class", i.class_),
                ("style", i.style),
                ("data-blurhash", blurhash),
            ]
        )
        + ">"
    )
    lines.append("</picture>")
    return "\n".join(lines)

"""Conversion profiles: what outputs an original gets, at what size, under what name.

Pure rules (stdlib and msgspec only), so every one of them is tested as a table without libvips,
a database or a bucket.

A profile is Pic Store's `{"type": "cross", "formats": [...], "sizes": [...]}` JSON (reference
pic-store.md §7); any JSON Pic Store accepted still decodes here, and unknown keys are ignored as
serde ignored them. Additions (DESIGN.md §5): per-format `effort`; conditions on the source's size,
alpha and animation; sizes that never upscale unless asked (`resize`, `out_of_range`); `fit`
contain/cover/fill with a focal-point or attention crop; `densities` for 2x outputs.

Three steps: `decode_profile` checks the JSON's shape, `validate_profile` its meaning, and
`plan_outputs` turns a profile plus facts about one original into the list of outputs to make,
each with an immutable, content-versioned file name.
"""

import base64
import hashlib
import json
import math
import re
from collections.abc import Mapping
from fractions import Fraction
from typing import Annotated, Any, Literal, get_args

import msgspec
from msgspec import Meta

OutputFormat = Literal["jpg", "png", "webp", "avif", "gif"]
InputFormat = Literal["png", "jpg", "avif", "webp", "heic", "gif", "tiff", "svg"]
Fit = Literal["contain", "cover", "fill"]
Crop = Literal["focal", "attention"]
Resize = Literal["down", "up", "both"]
OutOfRange = Literal["skip", "clamp"]
Status = Literal["queued", "skipped"]

DEFAULT_QUALITY: Mapping[str, int] = {"jpg": 70, "webp": 70, "avif": 60}  # Pic Store's defaults

# Measured on the build machine: one 1920 px AVIF from a 12 MP photo took 0.41 s at effort 3
# (95 kB) and 1.66 s at effort 4 (91 kB), i.e. 4x the time for 4 % fewer bytes.
DEFAULT_AVIF_EFFORT = 3
DEFAULT_EFFORT: Mapping[str, int] = {"avif": DEFAULT_AVIF_EFFORT, "webp": 4, "png": 7}
# libvips' ranges; jpg and gif take no effort setting.
EFFORT_RANGES: Mapping[str, tuple[int, int]] = {"avif": (0, 9), "webp": (0, 6), "png": (1, 10)}

ANIMATABLE_FORMATS = frozenset({"webp", "gif"})
MAX_DENSITY = 4
MAX_FILENAME_LENGTH = 100

# Bump when the encoding pipeline changes what bytes the same parameters produce: every output
# then gets a new name, so CDN caches (told the files never change) cannot serve the old bytes.
RENDER_VERSION = 1

_CONTENT_TYPES: Mapping[str, str] = {
    "jpg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "avif": "image/avif",
    "gif": "image/gif",
    "heic": "image/heic",
    "tiff": "image/tiff",
    "svg": "image/svg+xml",
}

Quality = Annotated[int, Meta(ge=1, le=100)] | Annotated[float, Meta(ge=1, le=100)]
Dimension = Annotated[int, Meta(ge=1)]
Density = Annotated[int, Meta(ge=1, le=MAX_DENSITY)]


class ProfileError(ValueError):
    """A conversion profile that cannot be used; the message names the offending field."""


# Conditions (Pic Store's tagged `type`; the last three are ours)


class MustCondition(msgspec.Struct, frozen=True, tag_field="type", tag="must"):
    """The source's format is one of `formats`."""

    formats: Annotated[tuple[InputFormat, ...], Meta(min_length=1)]


class MustNotCondition(msgspec.Struct, frozen=True, tag_field="type", tag="must_not"):
    """The source's format is none of `formats`."""

    formats: Annotated[tuple[InputFormat, ...], Meta(min_length=1)]


class MinBytesCondition(msgspec.Struct, frozen=True, tag_field="type", tag="min_bytes"):
    """The source file is larger than `bytes`."""

    bytes: Annotated[int, Meta(ge=0)]


class HasAlphaCondition(msgspec.Struct, frozen=True, tag_field="type", tag="has_alpha"):
    """The source has (value true) or lacks (value false) an alpha channel."""

    value: bool


class AnimatedCondition(msgspec.Struct, frozen=True, tag_field="type", tag="animated"):
    """The source has more than one frame (value true) or exactly one (value false)."""

    value: bool


Condition = MustCondition | MustNotCondition | MinBytesCondition | HasAlphaCondition | AnimatedCondition


class Format(msgspec.Struct, frozen=True, omit_defaults=True):
    """One output format. `quality` is ignored for png and gif, as Pic Store ignored it for png."""

    format: OutputFormat
    quality: Quality | None = None
    effort: int | None = None
    # A list means all of its conditions must hold.
    condition: Condition | tuple[Condition, ...] | None = None


class Size(msgspec.Struct, frozen=True, omit_defaults=True):
    """One size rule. `width`/`height` form the box; neither means the source's own size."""

    width: Dimension | None = None
    height: Dimension | None = None
    # Pic Store's switch: false with both sides set means stretch (our fit "fill").
    preserve_aspect_ratio: bool | None = None
    fit: Fit | None = None
    crop: Crop | None = None
    resize: Resize = "down"
    out_of_range: OutOfRange = "clamp"
    densities: Annotated[tuple[Density, ...], Meta(min_length=1)] = (1,)


class Profile(msgspec.Struct, frozen=True, omit_defaults=True, tag_field="type", tag="cross"):
    """Pic Store's only profile kind: every matching format times every size."""

    formats: tuple[Format, ...]
    sizes: tuple[Size, ...]


class ImageFacts(msgspec.Struct, frozen=True):
    """What planning needs to know about an original. `format` uses InputFormat's names (jpg, not
    jpeg); width and height are of one frame, after EXIF orientation."""

    format: str
    width: int
    height: int
    frames: int
    has_alpha: bool
    file_size: int
    sha256: str
    focal_x: float = 0.5
    focal_y: float = 0.5


class PlannedOutput(msgspec.Struct, frozen=True, kw_only=True):
    """One output of one original: the encoder settings, the target size and the file name."""

    format: OutputFormat
    quality: int | None
    effort: int | None
    lossless: bool
    width: int | None  # None when the size rule skips the output
    height: int | None
    fit: Fit
    crop: Crop | None  # only for cover
    density: int
    size: dict[str, Any]  # the size rule as it appears in the profile
    label: str
    name: str
    version: str
    status: Status
    reason: str | None
    animated: bool
    focal: tuple[float, float] | None = None  # where a cover+focal crop centres, as fractions


# Decoding and validation


def decode_profile(raw: bytes | str | Mapping[str, Any]) -> Profile:
    """Decode JSON text or an already parsed object (a JSONB column) into a Profile, checking its
    shape only; `validate_profile` checks its meaning."""
    try:
        if isinstance(raw, bytes | str):
            return msgspec.json.decode(raw, type=Profile)
        return msgspec.convert(raw, Profile)
    except msgspec.ValidationError as exc:
        raise ProfileError(_readable(str(exc))) from None
    except msgspec.DecodeError as exc:
        raise ProfileError(f"invalid JSON: {_lower_first(str(exc))}") from None


def validate_profile(profile: Profile) -> None:
    """Raise ProfileError listing every rule the profile breaks, each prefixed by its field path."""
    problems = [
        *_list_problems(profile),
        *(p for i, fmt in enumerate(profile.formats) for p in _format_problems(f"formats[{i}]", fmt)),
        *(p for j, size in enumerate(profile.sizes) for p in _size_problems(f"sizes[{j}]", size)),
        *_duplicate_format_problems(profile.formats),
        *_duplicate_label_problems(profile.sizes),
    ]
    if problems:
        raise ProfileError("; ".join(problems))


def encode_profile(profile: Profile) -> dict[str, Any]:
    """The profile as plain JSON data (for a JSONB column), defaults left out."""
    return _plain(profile)


def default_profile() -> Profile:
    """AVIF and WebP for every source, plus a same-format fallback for jpg and png sources, at three
    widths that never upscale."""
    return Profile(
        formats=(
            Format(format="avif"),
            Format(format="webp"),
            Format(format="jpg", condition=MustCondition(formats=("jpg",))),
            Format(format="png", condition=MustCondition(formats=("png",))),
        ),
        sizes=(Size(width=480), Size(width=960), Size(width=1920)),
    )


def _plain(value: msgspec.Struct) -> dict[str, Any]:
    # Through JSON rather than to_builtins, which would keep tuples where JSON has arrays.
    plain: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(value))
    return plain


def _list_problems(profile: Profile) -> list[str]:
    problems = []
    if not profile.formats:
        problems.append("formats: expected at least one format")
    if not profile.sizes:
        problems.append("sizes: expected at least one size")
    return problems


def _format_problems(path: str, fmt: Format) -> list[str]:
    if fmt.effort is None:
        return []
    effort_range = EFFORT_RANGES.get(fmt.format)
    if effort_range is None:
        return [f"{path}.effort: {fmt.format} has no effort setting"]
    low, high = effort_range
    if not low <= fmt.effort <= high:
        return [f"{path}.effort: {fmt.format} effort must be within {low}..{high}, got {fmt.effort}"]
    return []


def _size_problems(path: str, size: Size) -> list[str]:
    problems = []
    has_box = size.width is not None and size.height is not None
    if size.fit in ("cover", "fill") and not has_box:
        problems.append(f'{path}: fit "{size.fit}" needs both width and height')
    if size.fit is not None and size.preserve_aspect_ratio is not None:
        stretches = not size.preserve_aspect_ratio
        if stretches != (size.fit == "fill"):
            problems.append(
                f"{path}: preserve_aspect_ratio {str(size.preserve_aspect_ratio).lower()} contradicts "
                f'fit "{size.fit}"; keep only fit'
            )
    if size.crop is not None and size.fit != "cover":
        problems.append(f'{path}.crop: only applies to fit "cover"')
    repeated = sorted({d for d in size.densities if size.densities.count(d) > 1})
    if repeated:
        problems.append(f"{path}.densities: {', '.join(map(str, repeated))} listed more than once")
    if size.width is None and size.height is None and size.densities != (1,):
        problems.append(f"{path}.densities: a size without width or height keeps the source size; use [1]")
    return problems


def _duplicate_format_problems(formats: tuple[Format, ...]) -> list[str]:
    # The outputs of two entries of one format would share every name (Pic Store bug §12.17).
    first_index: dict[str, int] = {}
    problems = []
    for i, fmt in enumerate(formats):
        first = first_index.setdefault(fmt.format, i)
        if first != i:
            problems.append(
                f"formats[{first}] and formats[{i}] are both {fmt.format}, so their outputs would get "
                "the same names; merge them into one entry"
            )
    return problems


def _duplicate_label_problems(sizes: tuple[Size, ...]) -> list[str]:
    first_index: dict[str, int] = {}
    problems = []
    for j, size in enumerate(sizes):
        for density in dict.fromkeys(size.densities):
            label = size_label(size, density)
            first = first_index.setdefault(label, j)
            if first != j:
                problems.append(f"sizes[{first}] and sizes[{j}] both produce outputs labelled {label}")
    return problems


def _readable(message: str) -> str:
    """Turn msgspec's "Expected `int` <= 100 - at `$.formats[1].quality`" into
    "formats[1].quality: expected <= 100"."""
    text, _, at = message.partition(" - at `$")
    path = at.rstrip("`").lstrip(".")
    if invalid := re.fullmatch(r"Invalid (?:enum )?value (.+)", text):
        allowed = _allowed_values(path)
        text = f"expected one of {', '.join(allowed)}; got {invalid[1]}" if allowed else text
    elif missing := re.fullmatch(r"Object missing required field `(.+)`", text):
        text = f"missing required field {missing[1]!r}"
    else:
        # The type name adds nothing to a range error ("expected `int` <= 100").
        text = re.sub(r"^Expected `[^`]+` (?=[<>])", "Expected ", text).replace("`", "")
    text = _lower_first(text)
    return f"{path}: {text}" if path else text


def _allowed_values(path: str) -> tuple[str, ...]:
    field = re.sub(r"\[\d+\]$", "", path.rpartition(".")[2])
    if field == "type":
        return ("cross",) if path == "type" else tuple(c.__struct_config__.tag for c in get_args(Condition))
    literal = {
        "format": OutputFormat,
        "formats": InputFormat,  # only a condition's list of formats holds strings
        "fit": Fit,
        "crop": Crop,
        "resize": Resize,
        "out_of_range": OutOfRange,
    }.get(field)
    return get_args(literal) if literal is not None else ()


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


# Sizes


def effective_fit(size: Size) -> Fit:
    """The fit a size rule means: Pic Store's preserve_aspect_ratio false with both sides set is
    "fill"; otherwise "contain" unless `fit` says more. Without both sides there is no box to
    cover or fill, so such a rule (refused by validation) degrades to contain."""
    if size.width is None or size.height is None:
        return "contain"
    if size.fit is not None:
        return size.fit
    return "fill" if size.preserve_aspect_ratio is False else "contain"


def target_size(src_w: int, src_h: int, size: Size, density: int = 1) -> tuple[int, int] | None:
    """The output's pixel size (one frame) for a source of src_w x src_h, or None when the rule's
    direction forbids this resize and says "skip"."""
    box_w = size.width * density if size.width is not None else None
    box_h = size.height * density if size.height is not None else None
    fit = effective_fit(size)
    if box_w is None and box_h is None:
        return (src_w, src_h)
    if box_w is None or box_h is None or fit == "contain":
        wanted = _contain(src_w, src_h, box_w, box_h)
    else:
        wanted = (box_w, box_h)  # cover crops to the box, fill stretches to it
    if not _out_of_range(src_w, src_h, box_w, box_h, fit, size.resize):
        return wanted
    if size.out_of_range == "skip":
        return None
    if box_w is None or box_h is None or fit == "contain":
        return (src_w, src_h)
    return _clamped_box(src_w, src_h, box_w, box_h, grow=fit == "fill" and size.resize == "up")


def size_label(size: Size, density: int = 1) -> str:
    """Pic Store's size string (w200, h300, 200x300, szun for "size unchanged"), plus @2x etc."""
    if size.width is not None and size.height is not None:
        label = f"{size.width}x{size.height}"
    elif size.width is not None:
        label = f"w{size.width}"
    elif size.height is not None:
        label = f"h{size.height}"
    else:
        label = "szun"
    return label if density == 1 else f"{label}@{density}x"


def _round_half_up(value: float | Fraction) -> int:
    # Rust's f64::round (half away from zero; our values are positive), not Python's banker's
    # round(); never below one pixel.
    return max(1, math.floor(value + Fraction(1, 2)))


def _contain(src_w: int, src_h: int, box_w: int | None, box_h: int | None) -> tuple[int, int]:
    # Pic Store's arithmetic, step by step, so its test vectors (§7.5) round the same way.
    tw = math.inf if box_w is None else box_w
    th = math.inf if box_h is None else box_h
    aspect = src_w / src_h
    width_for_height = th * aspect
    if width_for_height > tw:
        return (_round_half_up(tw), _round_half_up(tw / aspect))
    return (_round_half_up(width_for_height), _round_half_up(th))


def _out_of_range(
    src_w: int, src_h: int, box_w: int | None, box_h: int | None, fit: Fit, resize: Resize
) -> bool:
    """Whether reaching the box would enlarge ("down" forbids it) or shrink ("up" forbids it) the
    source, decided on whole pixels so rounding never tips the balance."""
    sides = [(box, src) for box, src in ((box_w, src_w), (box_h, src_h)) if box is not None]
    if resize == "down":
        # contain scales by the smaller ratio, cover and fill enlarge if any side grows
        if fit == "contain":
            return all(box > src for box, src in sides)
        return any(box > src for box, src in sides)
    if resize == "up":
        # cover scales by the larger ratio, contain and fill shrink if any side shrinks
        if fit == "cover":
            return all(box < src for box, src in sides)
        return any(box < src for box, src in sides)
    return False


def _clamped_box(src_w: int, src_h: int, box_w: int, box_h: int, *, grow: bool) -> tuple[int, int]:
    """The box scaled, keeping its shape, until it just fits inside the source (cover then crops
    without resampling) or, with `grow`, until it just covers it (fill that never shrinks)."""
    ratios = (Fraction(src_w, box_w), Fraction(src_h, box_h))
    scale = max(ratios) if grow else min(ratios)
    return (_round_half_up(box_w * scale), _round_half_up(box_h * scale))


def _out_of_range_reason(src_w: int, src_h: int, size: Size, density: int) -> str:
    box_w = size.width * density if size.width is not None else None
    box_h = size.height * density if size.height is not None else None
    if box_w is not None and box_h is not None:
        box = f"{box_w}x{box_h}"
    elif box_w is not None:
        box = f"{box_w} px wide"
    else:
        box = f"{box_h} px high"
    if size.resize == "down":
        return f"source {src_w}x{src_h} is smaller than {box} and the size rule never upscales"
    return f"source {src_w}x{src_h} is larger than {box} and the size rule never downscales"


# Planning


def condition_holds(condition: Condition | tuple[Condition, ...] | None, facts: ImageFacts) -> bool:
    """Whether an output with this condition is made for this source; no condition always holds."""
    match condition:
        case None:
            return True
        case tuple():
            return all(condition_holds(c, facts) for c in condition)
        case MustCondition(formats=formats):
            return facts.format in formats
        case MustNotCondition(formats=formats):
            return facts.format not in formats
        case MinBytesCondition(bytes=threshold):
            return facts.file_size > threshold
        case HasAlphaCondition(value=value):
            return facts.has_alpha == value
        case AnimatedCondition(value=value):
            return (facts.frames > 1) == value


def output_quality(fmt: Format) -> int | None:
    """The encoder quality, truncated like Pic Store's (85.9 is 85); None for png and gif."""
    if fmt.format not in DEFAULT_QUALITY:
        return None
    return int(fmt.quality) if fmt.quality is not None else DEFAULT_QUALITY[fmt.format]


def output_effort(fmt: Format) -> int | None:
    """The encoder effort; None for formats without one."""
    return fmt.effort if fmt.effort is not None else DEFAULT_EFFORT.get(fmt.format)


def plan_outputs(profile: Profile, facts: ImageFacts, stem: str) -> list[PlannedOutput]:
    """Every format whose condition holds (in profile order) x every size x every density.

    Outputs that cannot or need not be made are kept with status "skipped" and a reason, so a
    caller can show why an output is missing. Among outputs of one format, a later one that would
    render the same pixels as an earlier one (two rules clamped to the source size, say) is
    skipped as "same size as <name>".
    """
    planned = []
    rendered: dict[tuple[object, ...], str] = {}
    for fmt in profile.formats:
        if not condition_holds(fmt.condition, facts):
            continue
        for size in profile.sizes:
            for density in size.densities:
                output = _plan_one(fmt, size, density, facts, stem)
                if output.status == "queued":
                    # contain and fill both scale the whole frame to the target, so only a cover
                    # crop (crop is None otherwise) can make equal dimensions differ in content
                    key = (output.format, output.width, output.height, output.crop)
                    first = rendered.setdefault(key, output.name)
                    if first != output.name:
                        output = msgspec.structs.replace(
                            output, status="skipped", reason=f"same size as {first}"
                        )
                planned.append(output)
    return planned


def _plan_one(fmt: Format, size: Size, density: int, facts: ImageFacts, stem: str) -> PlannedOutput:
    animated = facts.frames > 1
    quality = output_quality(fmt)
    effort = output_effort(fmt)
    lossless = fmt.format == "webp" and quality is not None and quality >= 100
    fit = effective_fit(size)
    crop = (size.crop or "focal") if fit == "cover" else None
    focal = (facts.focal_x, facts.focal_y) if crop == "focal" else None
    dims = target_size(facts.width, facts.height, size, density)
    width, height = dims if dims is not None else (None, None)
    version = output_version(
        facts.sha256,
        {
            "format": fmt.format,
            "quality": quality,
            "effort": effort,
            "lossless": lossless,
            "width": width,
            "height": height,
            "fit": fit,
            "crop": crop,
            # rounded so float noise from storage round-trips cannot rename an output
            "focal": [round(v, 4) for v in focal] if focal is not None else None,
            "density": density,
        },
    )
    label = size_label(size, density)
    reason = None
    if animated and fmt.format not in ANIMATABLE_FORMATS:
        # Never flatten silently: a still frame of an animation is rarely what the page wants.
        reason = f"{fmt.format} cannot be animated; source has {facts.frames} frames"
    elif dims is None:
        reason = _out_of_range_reason(facts.width, facts.height, size, density)
    return PlannedOutput(
        format=fmt.format,
        quality=quality,
        effort=effort,
        lossless=lossless,
        width=width,
        height=height,
        fit=fit,
        crop=crop,
        density=density,
        size=_plain(size),
        label=label,
        name=f"{stem}-{label}-{version}.{fmt.format}",  # our format names are the file extensions
        version=version,
        status="queued" if reason is None else "skipped",
        reason=reason,
        animated=animated and fmt.format in ANIMATABLE_FORMATS,
        focal=focal,
    )


def output_version(source_sha256: str, params: Mapping[str, object]) -> str:
    """10 lowercase base32 characters (50 bits) of SHA-256 over the original's hash and the
    output's parameters: equal inputs keep a name, any change makes a new one, so an output file
    never changes once written and can be cached forever."""
    canonical = json.dumps({**params, "render": RENDER_VERSION}, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(f"{source_sha256.lower()}\n{canonical}".encode()).digest()
    return base64.b32encode(digest).decode("ascii").lower()[:10]


# File names and types


_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9\-_.~]+")
_MAX_KEPT_EXTENSION = 10


def sanitize_filename(name: str) -> str:
    """Pic Store's rule (§6.1: each run of characters outside [A-Za-z0-9-_.~] becomes one "-", so
    no slashes and no percent-encoding surprises at storage providers), plus: no leading dots or
    dashes (no hidden files, no option-like names), never empty, at most 100 characters with a
    short extension kept."""
    cleaned = _UNSAFE_RUN.sub("-", name).lstrip(".-")
    if len(cleaned) > MAX_FILENAME_LENGTH:
        stem, ext = split_stem(cleaned)
        if 0 < len(ext) <= _MAX_KEPT_EXTENSION:
            cleaned = f"{stem[: MAX_FILENAME_LENGTH - len(ext) - 1]}.{ext}"
        else:
            cleaned = cleaned[:MAX_FILENAME_LENGTH]
    return cleaned or "image"


def split_stem(name: str) -> tuple[str, str]:
    """Split at the last dot, like Pic Store's rsplit_once: ("a.tar", "gz"); no dot gives ("a", "")."""
    stem, dot, ext = name.rpartition(".")
    return (stem, ext) if dot else (name, "")


def content_type(fmt: str) -> str:
    """The MIME type of an output or input format name."""
    try:
        return _CONTENT_TYPES[fmt]
    except KeyError:
        raise ValueError(f"unknown image format {fmt!r}") from None

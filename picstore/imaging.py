"""Image decoding, inspection and encoding for picstore.

This is the only module that talks to libvips (pyvips) and libheif (pillow_heif); the rest of
the service sees plain dataclasses and three exception types:

* ``sniff_format`` recognises an upload from its first bytes (magic numbers only).
* ``read_header`` reads the upright size, frame count and alpha of a file without decoding pixels,
  so the caller can refuse decompression bombs before any real work.
* ``render`` decodes a source once (shrink-on-load at the largest size any output needs) and
  makes every requested output from that one decode: upright, sRGB, 8-bit, metadata stripped.
  It also returns a ``Summary`` with a dominant colour and a BlurHash placeholder.

SVG is recognised and measured but never rasterised: the untrusted SVG loader stays blocked.
"""

import ctypes
import math
import os
import re
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import ModuleType

import pyvips

# Every upload is a new file, so libvips' operation cache only costs memory.
pyvips.cache_set_max(0)
# Keeps script-capable and exotic loaders (SVG, PPM, FITS, ...) out of reach of uploaded bytes.
pyvips.block_untrusted_set(True)

# glibc's mallopt parameter for MALLOC_ARENA_MAX (malloc.h), and the cap picstore sets.
_M_ARENA_MAX = -8
_MALLOC_ARENAS = 2


def _limit_malloc_arenas() -> None:
    """Cap glibc's malloc arenas as MALLOC_ARENA_MAX=2 would, unless the environment already sets it.

    Every libvips and encoder thread otherwise gets an arena of its own whose freed memory stays
    resident: about 40 MiB more peak RSS for a 12 MP render on two encode threads (bench/, section 2).
    A no-op where the C library is not glibc.
    """
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(_M_ARENA_MAX, _MALLOC_ARENAS)


_limit_malloc_arenas()

OUTPUT_FORMATS = ("jpg", "png", "webp", "avif", "gif")
FITS = ("contain", "cover", "fill")
CROPS = ("focal", "attention")
# WebP, JPEG and PNG encoders run on one thread and pyvips releases the GIL, so render encodes its
# outputs in parallel, as many at once as libvips' own concurrency (VIPS_CONCURRENCY, default: cores).
ENCODE_THREADS = pyvips.concurrency_get()
# Bytes read_header sniffs: binary magics need 32, an SVG needs its XML prologue and <svg tag.
SNIFF_BYTES = 4096

# thumbnail's height bound: large enough that only the width constrains the result.
_UNBOUNDED = 10_000_000
# Formats whose encoders write animations (libvips writes AVIF sequences as still collections).
_ANIMATED_OUTPUTS = ("webp", "gif")
_ANIMATION_FIELDS = ("page-height", "n-pages", "delay", "loop")
_WHITE = [255, 255, 255]

_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_HEVC_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"})
# Generic HEIF brands: without an AV1 brand beside them the payload is HEVC in practice.
_HEIF_BRANDS = frozenset({b"mif1", b"msf1"})
_HEIF_BANDS = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}
# Exceptions pillow_heif documents for bad input (EOFError: corrupt data, SyntaxError: unsupported).
_HEIF_ERRORS = (ValueError, EOFError, SyntaxError, RuntimeError, OSError)

# The root element must be reached within the first KiBs; only an XML declaration, comments
# and a doctype may precede it (anything else, e.g. HTML with inline SVG, is not an SVG file).
# These patterns see untrusted bytes, so each is written to match in one way only (a comment
# cannot contain "-->", names are possessive): no catastrophic backtracking.
_SVG_PROLOGUE = re.compile(
    rb"\A(?:\xef\xbb\xbf)?(?:\s|<\?xml[^>]*>|<!--(?:(?!-->).)*-->|<!DOCTYPE[^>\[]*>)*<svg(?=[\s>])", re.DOTALL
)
_SVG_READ_BYTES = 65536
# The rest of the root start tag; quoted attribute values may contain ">".
_SVG_ROOT_REST = re.compile(rb"""((?:[^>"']|"[^"]*"|'[^']*')*)>""")
_XML_ATTRIBUTE = re.compile(rb"""(?<![\w:.-])([\w:.-]++)\s*+=\s*+(?:"([^"]*)"|'([^']*)')""")

# Summary: side of the thumbnail the placeholder and dominant colour are computed from.
_TINY = 32
_BLURHASH_X = 4
_BLURHASH_Y = 3
_BASE83 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#$%*+,-.:;=?@[]^_{|}~"
_SRGB_TO_LINEAR = tuple(
    v / 255 / 12.92 if v / 255 <= 0.04045 else ((v / 255 + 0.055) / 1.055) ** 2.4 for v in range(256)
)


class ImageError(Exception):
    """Base of every imaging failure; ``reason`` is a human-readable one-line message."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UnknownFormat(ImageError):
    """The bytes are not an image format picstore reads (HTTP 415)."""


class CorruptImage(ImageError):
    """The format is recognised but its header or pixels cannot be read."""


@dataclass(frozen=True, slots=True)
class Header:
    """What the file header says, before any pixel is decoded."""

    format: str
    width: int  # upright: after EXIF orientation / HEIF irot
    height: int  # upright; for animations the height of one frame
    frames: int  # 1 for stills, number of frames for animated GIF/WebP
    has_alpha: bool


@dataclass(frozen=True, slots=True)
class OutputSpec:
    """One output the caller wants; see ``render``."""

    key: str
    format: str  # one of OUTPUT_FORMATS
    width: int  # exact pixel width of one frame
    height: int  # exact pixel height of one frame
    fit: str  # "contain" | "cover" | "fill"
    crop: str  # for cover: "focal" | "attention"
    focal_x: float  # 0..1 of the upright source, for crop == "focal"
    focal_y: float
    quality: int  # 1..100
    effort: int  # AVIF 0..9, WebP 0..6, PNG 1..10 (zlib level); ignored for jpg/gif
    lossless: bool  # webp only
    animated: bool  # keep all frames; honoured for webp/gif


@dataclass(frozen=True, slots=True)
class Rendered:
    """One encoded output."""

    key: str
    data: bytes
    width: int
    height: int  # of one frame
    frames: int
    seconds: float  # shaping and encoding this output from the shared decode


@dataclass(frozen=True, slots=True)
class Summary:
    """Facts about the source for the base image row."""

    width: int  # full-size upright source (the decode itself may be shrunk)
    height: int
    frames: int
    has_alpha: bool
    dominant_color: str  # "#rrggbb", sRGB
    placeholder: str  # BlurHash, 4x3 components


# --- sniffing ------------------------------------------------------------------------------------


def sniff_format(head: bytes) -> str | None:
    """Return the format whose magic number ``head`` starts with, or None.

    32 bytes are enough for the binary formats; SVG needs the prologue up to the ``<svg`` tag.
    """
    if head.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head[4:8] == b"ftyp":
        return _sniff_heif(head)
    if _SVG_PROLOGUE.match(head):
        return "svg"
    return None


def _sniff_heif(head: bytes) -> str | None:
    """Tell AVIF from HEIC by the ftyp box's major and compatible brands."""
    box_end = min(int.from_bytes(head[:4], "big"), len(head))
    major = head[8:12]
    brands = {major} | {head[i : i + 4] for i in range(16, box_end - 3, 4)}
    if major in _AVIF_BRANDS:
        return "avif"
    if major in _HEVC_BRANDS:
        return "heic"
    if brands & _AVIF_BRANDS:
        return "avif"
    if brands & (_HEVC_BRANDS | _HEIF_BRANDS):
        return "heic"
    return None


# --- headers -------------------------------------------------------------------------------------


def read_header(path: str) -> Header:
    """Read format, upright size, frames and alpha from ``path`` without decoding pixels.

    Raises UnknownFormat when no magic number matches, CorruptImage when the header is unreadable.
    No pixel budget is enforced here: the caller compares width * height * frames to its limit.
    """
    with open(path, "rb") as file:
        head = file.read(SNIFF_BYTES)
    fmt = sniff_format(head)
    if fmt is None:
        raise UnknownFormat("its first bytes match no image format picstore reads")
    if fmt == "svg":
        return _svg_header(path)
    _check_complete(path, fmt)
    if fmt == "heic":
        return _heic_header(path)
    return _vips_header(path, fmt)


def _check_complete(path: str, fmt: str) -> None:
    """Refuse HEIF/AVIF and GIF files cut short: their decoders do not. libheif paints the tiles past the
    end green and libvips' GIF loader drops the frames past the end, and both report success."""
    if fmt in ("heic", "avif"):
        problem = _isobmff_cut(path)
    elif fmt == "gif":
        problem = _gif_cut(path)
    else:
        return
    if problem:
        raise CorruptImage(f"the {fmt} file is truncated: {problem}")


def _isobmff_cut(path: str) -> str | None:
    """Walk the top-level boxes (ISO/IEC 14496-12 §4.2): each must fit in the file."""
    with open(path, "rb") as file:
        end = file.seek(0, 2)
        offset = 0
        while offset < end:
            file.seek(offset)
            head = file.read(16)
            if len(head) < 8:
                return f"a box header at byte {offset} is cut short"
            size, kind = int.from_bytes(head[:4], "big"), head[4:8].decode("latin-1")
            if size == 1:  # a 64-bit size follows the type
                if len(head) < 16:
                    return f"the {kind!r} box header at byte {offset} is cut short"
                size = int.from_bytes(head[8:16], "big")
            elif size == 0:  # the last box, up to the end of the file
                return None
            if size < 8:
                return None  # not a size at all: corrupt rather than cut, for the decoder to judge
            if offset + size > end:
                return f"its {kind!r} box needs {size} bytes from byte {offset}, but the file ends at {end}"
            offset += size
    return None


def _gif_cut(path: str) -> str | None:
    """Walk the GIF blocks (GIF89a spec §17-27): an end in the middle of one is a cut. An end between
    blocks is accepted (some encoders omit the trailer); an unknown block is left to the decoder."""
    with open(path, "rb") as file:
        end = file.seek(0, 2)
        file.seek(0)
        screen = file.read(13)
        if len(screen) < 13:
            return "its header is cut short"
        if screen[10] & 0x80:
            file.seek(3 << ((screen[10] & 7) + 1), 1)
        while (introducer := file.read(1)) and introducer != b";":
            if introducer == b"!":
                label = file.read(1)
            elif introducer == b",":
                descriptor = file.read(9)
                if len(descriptor) < 9:
                    return "a frame header is cut short"
                if descriptor[8] & 0x80:
                    file.seek(3 << ((descriptor[8] & 7) + 1), 1)
                label = file.read(1)  # LZW minimum code size
            else:
                return None
            if not label:
                return "a block is cut short"
            while (length := file.read(1)) and length != b"\x00":
                file.seek(length[0], 1)
            if not length or file.tell() > end:
                return f"{'a frame' if introducer == b',' else 'an extension'} is cut short at byte {end}"
    return None


def _vips_header(path: str, fmt: str) -> Header:
    # Loading from a Source is lazy (header only) and, unlike a filename, never parses
    # "[options]" out of the path.
    try:
        image = pyvips.Image.new_from_source(pyvips.Source.new_from_file(path), "")
    except pyvips.Error as error:
        raise CorruptImage(f"cannot read the {fmt} header: {_vips_reason(error)}") from None
    width, height = image.width, image.height
    if _field(image, "orientation", 1) in (5, 6, 7, 8):  # EXIF 5-8 turn the image by 90 degrees
        width, height = height, width
    # Multi-page TIFF/HEIF are collections of stills, not animations: only their first page counts.
    frames = _field(image, "n-pages", 1) if fmt in _ANIMATED_OUTPUTS else 1
    return Header(fmt, width, height, frames, bool(image.hasalpha()))


def _heic_header(path: str) -> Header:
    # pillow_heif is the decoder render uses for HEIC, so its (irot-applied) primary size is the
    # one the pixels will have. open_heif is lazy.
    pillow_heif = _pillow_heif()
    try:
        heif = pillow_heif.open_heif(path)
    except _HEIF_ERRORS as error:
        raise CorruptImage(f"cannot read the heic header: {_one_line(str(error))}") from None
    width, height = heif.size
    return Header("heic", width, height, 1, heif.has_alpha)


def _svg_header(path: str) -> Header:
    """Size of an SVG from its root element's attributes, without rendering it."""
    with open(path, "rb") as file:
        data = file.read(_SVG_READ_BYTES)
    prologue = _SVG_PROLOGUE.match(data)  # matched on the sniffed head already, so found again
    root = _SVG_ROOT_REST.match(data, prologue.end()) if prologue else None
    if root is None:
        raise CorruptImage("cannot find the end of the svg root element")
    # latin-1 decodes any byte; the attributes that matter are ASCII numbers anyway.
    attributes = {
        m[1].decode("latin-1"): (m[2] or m[3] or b"").decode("latin-1")
        for m in _XML_ATTRIBUTE.finditer(root[1])
    }
    size = _svg_size(attributes)
    if size is None:
        raise CorruptImage("svg has no usable width/height or viewBox")
    return Header("svg", size[0], size[1], 1, True)


def _svg_size(attributes: dict[str, str]) -> tuple[int, int] | None:
    """Pixel size from width/height (px or unitless), completed by the viewBox aspect."""
    width = _svg_pixels(attributes.get("width"))
    height = _svg_pixels(attributes.get("height"))
    view_box = [_svg_pixels(v) for v in attributes.get("viewBox", "").replace(",", " ").split()]
    if len(view_box) == 4 and view_box[2] and view_box[3]:
        box_width, box_height = view_box[2], view_box[3]
        if width is None and height is None:
            width, height = box_width, box_height
        elif width is None:
            width = height * box_width / box_height
        elif height is None:
            height = width * box_height / box_width
    if not width or not height:
        return None
    return max(1, round(width)), max(1, round(height))


def _svg_pixels(value: str | None) -> float | None:
    """A positive length in px (or unitless); None for other units, percentages and junk."""
    try:
        number = float((value or "").strip().removesuffix("px"))
    except ValueError:
        return None
    return number if math.isfinite(number) and number > 0 else None


# --- render --------------------------------------------------------------------------------------


def render(path: str, header: Header, outputs: Sequence[OutputSpec]) -> tuple[Summary, list[Rendered]]:
    """Decode ``path`` once and make every output from that decode.

    Raises CorruptImage when the pixels cannot be decoded, UnknownFormat for SVG (never
    rasterised), ImageError when an output cannot be encoded, ValueError for an invalid spec.
    """
    for spec in outputs:
        _check_spec(spec)
    if header.format == "svg":
        raise UnknownFormat("svg is not rasterised")
    animate = header.frames > 1 and any(_is_animated(spec) for spec in outputs)
    frames = _split_frames(_decode(path, header, _decode_width(header, outputs), animate))
    try:
        summary = _summarise(frames[0], header)
    except pyvips.Error as error:
        raise ImageError(f"cannot summarise the image: {_vips_reason(error)}") from None
    return summary, _render_all(frames, outputs)


def _render_all(frames: list[pyvips.Image], outputs: Sequence[OutputSpec]) -> list[Rendered]:
    """Every output, ENCODE_THREADS at a time, the costliest first so that no long AVIF encode starts
    last; the results come back in the order asked for, and the first failure is raised."""
    order = sorted(range(len(outputs)), key=lambda i: _encode_cost(outputs[i]), reverse=True)
    with ThreadPoolExecutor(max(1, min(ENCODE_THREADS, len(outputs)))) as pool:
        futures = {i: pool.submit(_render_one, frames, outputs[i]) for i in order}
        try:
            return [futures[i].result() for i in range(len(outputs))]
        except BaseException:
            for future in futures.values():
                future.cancel()
            raise


def _encode_cost(spec: OutputSpec) -> tuple[bool, int]:
    """AVIF encodes cost several times any other format's at the same size."""
    return spec.format == "avif", spec.width * spec.height


def _check_spec(spec: OutputSpec) -> None:
    """Reject planner bugs before spending a decode on them."""
    if spec.format not in OUTPUT_FORMATS or spec.fit not in FITS or spec.crop not in CROPS:
        raise ValueError(f"invalid output spec {spec.key}: {spec.format}/{spec.fit}/{spec.crop}")
    if spec.width < 1 or spec.height < 1:
        raise ValueError(f"invalid output spec {spec.key}: {spec.width}x{spec.height}")


def _is_animated(spec: OutputSpec) -> bool:
    return spec.animated and spec.format in _ANIMATED_OUTPUTS


def _decode_width(header: Header, outputs: Sequence[OutputSpec]) -> int:
    """Smallest source width from which every output (and the summary) can be made by shrinking.

    contain, cover and fill all need the source scaled by at least max(w / W, h / H).
    """
    needed = [max(spec.width, spec.height * header.width / header.height) for spec in outputs]
    return math.ceil(max([_TINY, *needed]))


def _decode(path: str, header: Header, width: int, animate: bool) -> pyvips.Image:
    """Decode upright, sRGB, 8-bit at ``width`` (never upscaled) into memory, once."""
    try:
        image = _decode_heic(path, width) if header.format == "heic" else _decode_vips(path, width, animate)
        # Grey (with or without alpha) becomes 3-band sRGB: WebP, AVIF and JPEG outputs need RGB.
        if image.interpretation != "srgb":
            image = image.colourspace("srgb")
        # thumbnail turns every colourspace into 8-bit sRGB but passes extra channels through;
        # those have no meaning in the output formats.
        if image.bands > 4:
            raise CorruptImage(f"unsupported channel layout: {image.bands} bands")
        # Materialise here so the outputs read memory instead of re-decoding the file each,
        # and so truncated pixel data fails now, as a decode error.
        return image.copy_memory()
    except pyvips.Error as error:
        raise CorruptImage(f"pixel data is truncated or corrupt: {_vips_reason(error)}") from None


def _decode_vips(path: str, width: int, animate: bool) -> pyvips.Image:
    """Shrink-on-load decode of every format but HEIC; lazy until materialised."""
    probe = pyvips.Image.new_from_source(pyvips.Source.new_from_file(path), "")  # lazy: header only
    # fail_on only reaches the loader through option_string (ignored as a thumbnail kwarg,
    # libvips #5195); n=-1 stacks all frames, and is rejected by single-page loaders.
    options = "n=-1,fail_on=truncated" if animate else "fail_on=truncated"
    return pyvips.Image.thumbnail_source(
        pyvips.Source.new_from_file(path),
        width,
        height=_UNBOUNDED,
        size="down",
        option_string=options,
        **_colour_management(probe),
    )


def _colour_management(image: pyvips.Image) -> dict[str, str]:
    """thumbnail options that convert through the image's embedded ICC profile, if it has one.

    output_profile costs a full lcms transform even with no profile to honour (0.3 s of a 0.4 s
    12 MP decode to 1920 px), and without it thumbnail still turns CMYK, Lab and 16-bit into
    8-bit sRGB, so it is asked for only when there is a profile (P3, Adobe RGB, CMYK, grey ...).
    """
    return {"output_profile": "srgb"} if image.get_typeof("icc-profile-data") else {}


def _pillow_heif() -> ModuleType:
    """pillow_heif (with Pillow), imported on the first HEIC: ~7 MiB resident that other images never need."""
    import pillow_heif

    return pillow_heif


def _decode_heic(path: str, width: int) -> pyvips.Image:
    """Decode the primary HEIC image with libheif (the libvips wheel has no HEVC decoder)."""
    pillow_heif = _pillow_heif()
    try:
        heif = pillow_heif.open_heif(path, convert_hdr_to_8bit=True)
        pixels = heif.data  # the decode happens here
    except _HEIF_ERRORS as error:
        raise CorruptImage(f"pixel data is truncated or corrupt: {_one_line(str(error))}") from None
    bands = _HEIF_BANDS.get(heif.mode)
    if bands is None:
        raise CorruptImage(f"unsupported heic pixel mode {heif.mode}")
    image = pyvips.Image.new_from_memory(pixels, heif.size[0], heif.size[1], bands, "uchar").copy(
        interpretation="srgb" if bands >= 3 else "b-w"
    )
    # libheif already applied irot/imir, so the EXIF (which still says e.g. orientation 6) is
    # deliberately not attached: thumbnail would rotate a second time. Only the ICC profile is.
    if icc := heif.info.get("icc_profile"):
        image.set_type(pyvips.GValue.blob_type, "icc-profile-data", icc)
    return image.thumbnail_image(width, height=_UNBOUNDED, size="down", **_colour_management(image))


def _split_frames(image: pyvips.Image) -> list[pyvips.Image]:
    """Frames of a decoded image (libvips stacks animation frames vertically)."""
    page_height = image.get_page_height()  # the full height unless page-height divides it
    return [image.crop(0, top, image.width, page_height) for top in range(0, image.height, page_height)]


def _render_one(frames: list[pyvips.Image], spec: OutputSpec) -> Rendered:
    started = time.perf_counter()
    if not _is_animated(spec):
        frames = frames[:1]
    try:
        box = _crop_box(frames[0], spec) if spec.fit == "cover" else None
        shaped = [_shape(frame, spec, box) for frame in frames]
        image = _animation(shaped, spec.height) if len(shaped) > 1 else _still(shaped[0])
        data = _encode(image, spec)
    except pyvips.Error as error:
        raise ImageError(f"cannot make {spec.key} ({spec.format}): {_vips_reason(error)}") from None
    return Rendered(spec.key, data, spec.width, spec.height, len(shaped), time.perf_counter() - started)


def _crop_box(frame: pyvips.Image, spec: OutputSpec) -> tuple[int, int]:
    """Top-left of the cover crop, computed once so every frame of an animation gets the same one."""
    scaled = _scale_to_cover(frame, spec)
    spare_x, spare_y = scaled.width - spec.width, scaled.height - spec.height
    if spare_x == spare_y == 0:
        return 0, 0
    if spec.crop == "attention":
        _, found = scaled.smartcrop(
            spec.width, spec.height, interesting="attention", attention_x=True, attention_y=True
        )
        centre_x, centre_y = found["attention_x"], found["attention_y"]
    else:
        centre_x, centre_y = spec.focal_x * scaled.width, spec.focal_y * scaled.height
    left = round(centre_x - spec.width / 2)
    top = round(centre_y - spec.height / 2)
    return min(max(left, 0), spare_x), min(max(top, 0), spare_y)


def _shape(frame: pyvips.Image, spec: OutputSpec, box: tuple[int, int] | None) -> pyvips.Image:
    """Resize (and for cover, crop) one frame to exactly spec.width x spec.height."""
    if box is not None:
        return _scale_to_cover(frame, spec).crop(box[0], box[1], spec.width, spec.height)
    # contain and fill both resize to the exact box; for contain the caller made the aspects
    # match, so the two scales differ only by rounding.
    return _resize(frame, spec.width / frame.width, spec.height / frame.height)


def _scale_to_cover(frame: pyvips.Image, spec: OutputSpec) -> pyvips.Image:
    scale = max(spec.width / frame.width, spec.height / frame.height)
    return _resize(frame, scale, scale)


def _resize(image: pyvips.Image, hscale: float, vscale: float) -> pyvips.Image:
    if round(image.width * hscale) == image.width and round(image.height * vscale) == image.height:
        return image
    if not image.hasalpha():
        return image.resize(hscale, vscale=vscale)
    # Resampling straight alpha bleeds the colour of transparent pixels into the edges.
    return image.premultiply().resize(hscale, vscale=vscale).unpremultiply().cast("uchar")


def _animation(frames: list[pyvips.Image], page_height: int) -> pyvips.Image:
    """Stack frames for the savers; delay and loop come along from the source's first frame."""
    image = pyvips.Image.arrayjoin(frames, across=1).copy()
    image.set_type(pyvips.GValue.gint_type, "page-height", page_height)
    return image


def _still(image: pyvips.Image) -> pyvips.Image:
    """Drop animation metadata so a stale page-height can never make a still look animated."""
    image = image.copy()
    for name in _ANIMATION_FIELDS:
        image.remove(name)
    return image


def _encode(image: pyvips.Image, spec: OutputSpec) -> bytes:
    """Encode with all metadata stripped (pixels are sRGB, so no ICC profile is needed)."""
    if spec.format == "jpg":
        return _flatten(image).jpegsave_buffer(
            Q=spec.quality,
            optimize_coding=True,
            interlace=True,
            trellis_quant=True,
            overshoot_deringing=True,
            optimize_scans=True,
            quant_table=3,
            keep="none",
        )
    if spec.format == "webp":
        return image.webpsave_buffer(Q=spec.quality, effort=spec.effort, lossless=spec.lossless, keep="none")
    if spec.format == "avif":
        return image.heifsave_buffer(compression="av1", Q=spec.quality, effort=spec.effort, keep="none")
    if spec.format == "png":
        # Truecolour, never palette: quantising photos bands visibly. effort picks the zlib level. Adaptive
        # row filters (libvips' default is none): on a 1280 px photo 28 % smaller and 2.6x faster to deflate.
        return image.pngsave_buffer(compression=min(max(spec.effort, 1), 9), filter="all", keep="none")
    return image.gifsave_buffer(keep="none")


def _flatten(image: pyvips.Image) -> pyvips.Image:
    return image.flatten(background=_WHITE) if image.hasalpha() else image


# --- summary -------------------------------------------------------------------------------------


def _summarise(frame: pyvips.Image, header: Header) -> Summary:
    # Both measures describe the picture as seen on a white page, so alpha is flattened on white.
    tiny = _flatten(frame.thumbnail_image(_TINY, height=_TINY))
    rgb = bytes(tiny.write_to_memory())  # a cffi buffer, whose items are 1-byte slices
    return Summary(
        width=header.width,
        height=header.height,
        frames=header.frames,
        has_alpha=bool(frame.hasalpha()),
        dominant_color=_dominant_color(rgb),
        placeholder=_blurhash(rgb, tiny.width, tiny.height),
    )


def _dominant_color(rgb: bytes) -> str:
    """Mean colour of the most populated 8x8x8 colour bin: a colour that is really there,
    where a plain average of a photo is usually a muddy grey-brown."""
    bins: dict[int, list[int]] = {}
    for p in range(0, len(rgb), 3):
        r, g, b = rgb[p], rgb[p + 1], rgb[p + 2]
        total = bins.setdefault((r >> 5) << 6 | (g >> 5) << 3 | b >> 5, [0, 0, 0, 0])
        total[0] += 1
        total[1] += r
        total[2] += g
        total[3] += b
    count, r, g, b = max(bins.values())
    return f"#{round(r / count):02x}{round(g / count):02x}{round(b / count):02x}"


def _blurhash(rgb: bytes, width: int, height: int) -> str:
    """BlurHash (https://blurha.sh) of packed 8-bit sRGB pixels, 4x3 components."""
    linear = [_SRGB_TO_LINEAR[v] for v in rgb]
    factors: list[tuple[float, float, float]] = []
    for j in range(_BLURHASH_Y):
        cos_y = [math.cos(math.pi * j * y / height) for y in range(height)]
        for i in range(_BLURHASH_X):
            cos_x = [math.cos(math.pi * i * x / width) for x in range(width)]
            r = g = b = 0.0
            for y in range(height):
                for x in range(width):
                    basis = cos_x[x] * cos_y[y]
                    p = 3 * (y * width + x)
                    r += basis * linear[p]
                    g += basis * linear[p + 1]
                    b += basis * linear[p + 2]
            scale = (1 if i == j == 0 else 2) / (width * height)
            factors.append((r * scale, g * scale, b * scale))
    dc, ac = factors[0], factors[1:]
    quantised_max = max(0, min(82, math.floor(max(abs(c) for f in ac for c in f) * 166 - 0.5)))
    ac_max = (quantised_max + 1) / 166
    return (
        _base83((_BLURHASH_X - 1) + (_BLURHASH_Y - 1) * 9, 1)
        + _base83(quantised_max, 1)
        + _base83(_linear_to_srgb(dc[0]) << 16 | _linear_to_srgb(dc[1]) << 8 | _linear_to_srgb(dc[2]), 4)
        + "".join(_base83(_quantise_ac(f, ac_max), 2) for f in ac)
    )


def _quantise_ac(factor: tuple[float, float, float], ac_max: float) -> int:
    r, g, b = (
        max(0, min(18, math.floor(math.copysign(abs(c / ac_max) ** 0.5, c) * 9 + 9.5))) for c in factor
    )
    return r * 19 * 19 + g * 19 + b


def _linear_to_srgb(value: float) -> int:
    v = max(0.0, min(1.0, value))
    if v <= 0.0031308:
        return int(v * 12.92 * 255 + 0.5)
    return int((1.055 * v ** (1 / 2.4) - 0.055) * 255 + 0.5)


def _base83(value: int, length: int) -> str:
    return "".join(_BASE83[value // 83 ** (length - 1 - i) % 83] for i in range(length))


# --- helpers -------------------------------------------------------------------------------------


def _field(image: pyvips.Image, name: str, default: int) -> int:
    return int(image.get(name)) if image.get_typeof(name) else default


def _vips_reason(error: pyvips.Error) -> str:
    # libvips' error log is process-wide and can still hold warnings from earlier loads (even in
    # other threads) ahead of this failure's own lines, so the newest line is the one that
    # describes it.
    lines = [line.strip() for line in error.detail.splitlines() if line.strip()]
    return _one_line(lines[-1] if lines else error.message)


def _one_line(text: str) -> str:
    return (text.strip().splitlines() or ["no detail"])[0][:300]

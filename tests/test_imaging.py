"""Tests for picstore.imaging against the shared real-image corpus (../shared/corpus)."""

import csv
import dataclasses
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import pyvips

from picstore import imaging
from picstore.imaging import CorruptImage, Header, ImageError, OutputSpec, UnknownFormat

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"
with (CORPUS / "MANIFEST.tsv").open(newline="") as manifest:
    ROWS = list(csv.DictReader(manifest, delimiter="\t"))
ACCEPTED = [row for row in ROWS if row["expect"] == "accept"]
REJECTED = [row for row in ROWS if row["expect"] == "reject"]

FORMAT_BY_SUFFIX = {
    ".jpg": "jpg",
    ".jpeg": "jpg",
    ".png": "png",
    ".gif": "gif",
    ".webp": "webp",
    ".avif": "avif",
    ".heic": "heic",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".svg": "svg",
}
ANIMATED = {"animated-loop-3.gif": 10, "rotating-squares.webp": 9}
# Decoding this 12 MP HEIC takes most of a second: its full render runs only with the slow tests.
SLOW_RENDERS = {"heic_heif_other_pug.heic"}
# Metadata no output may carry (EXIF holds GPS; outputs are sRGB so no ICC either).
PRIVATE_FIELDS = ("exif-data", "xmp-data", "iptc-data", "icc-profile-data", "gainmap-data")


def corpus(name: str) -> str:
    return str(CORPUS / name)


def spec(
    key: str = "out", fmt: str = "webp", width: int = 64, height: int = 48, **changes: object
) -> OutputSpec:
    """An OutputSpec with test defaults; AVIF effort stays at 0 so the suite stays fast."""
    defaults = OutputSpec(
        key=key,
        format=fmt,
        width=width,
        height=height,
        fit="contain",
        crop="focal",
        focal_x=0.5,
        focal_y=0.5,
        quality=75,
        effort=0 if fmt == "avif" else 4,
        lossless=False,
        animated=False,
    )
    return dataclasses.replace(defaults, **changes)


def display_size(row: dict[str, str]) -> tuple[int, int]:
    width, height = row["display_size"].split("x")
    return int(width), int(height)


def contain(size: tuple[int, int], width: int) -> tuple[int, int]:
    return width, max(1, round(width * size[1] / size[0]))


def load(data: bytes, animated: bool = False) -> pyvips.Image:
    return (
        pyvips.Image.new_from_buffer(data, "", n=-1) if animated else pyvips.Image.new_from_buffer(data, "")
    )


def pages(image: pyvips.Image) -> int:
    return image.height // image.get_page_height()


def solid(width: int, height: int, colour: list[int]) -> pyvips.Image:
    return pyvips.Image.black(width, height).new_from_image(colour).copy(interpretation="srgb")


def render_files(tmp_path: Path, name: str, image: pyvips.Image) -> str:
    path = tmp_path / name
    image.write_to_file(str(path))
    return str(path)


def accept_params() -> list[object]:
    return [
        pytest.param(row, id=row["file"], marks=[pytest.mark.slow] if row["file"] in SLOW_RENDERS else [])
        for row in ACCEPTED
    ]


# --- sniff_format --------------------------------------------------------------------------------


def ftyp(major: bytes, *compatible: bytes) -> bytes:
    body = b"ftyp" + major + b"\0\0\0\0" + b"".join(compatible)
    return (len(body) + 4).to_bytes(4, "big") + body + b"\0" * 16


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\xff\xd8\xff\xe0\0\x10JFIF" + b"\0" * 24, "jpg"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 24, "png"),
        (b"GIF87a" + b"\0" * 26, "gif"),
        (b"GIF89a" + b"\0" * 26, "gif"),
        (b"RIFF\x38\x19\0\0WEBPVP8X" + b"\0" * 16, "webp"),
        (b"RIFF\x38\x19\0\0WAVEfmt " + b"\0" * 16, None),
        (b"II*\0" + b"\0" * 28, "tiff"),
        (b"MM\0*" + b"\0" * 28, "tiff"),
        (ftyp(b"avif", b"mif1", b"miaf"), "avif"),
        (ftyp(b"avis", b"msf1"), "avif"),
        (ftyp(b"mif1", b"avif", b"miaf"), "avif"),
        (ftyp(b"heic", b"mif1"), "heic"),
        (ftyp(b"heix", b"mif1"), "heic"),
        (ftyp(b"mif1", b"heic"), "heic"),
        (ftyp(b"msf1", b"hevc"), "heic"),
        (ftyp(b"isom", b"mp42"), None),
        (b'<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"/>', "svg"),
        (b'\xef\xbb\xbf  <?xml version="1.0" encoding="UTF-8"?>\n<!-- made by hand -->\n<svg>', "svg"),
        (b'<?xml version="1.0"?><!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN" "x.dtd"><svg>', "svg"),
        (b"<!DOCTYPE html><html><body><svg></svg></body></html>", None),
        (b'<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY a "b">]><svg>', None),
        (b"<?xml version='1.0'?><note>not an image</note>" + b" " * 8, None),
        (b"hello, this is plain text, not an image", None),
        (b"", None),
    ],
)
def test_sniff_format(head: bytes, expected: str | None) -> None:
    assert imaging.sniff_format(head) == expected


def test_sniff_format_is_linear_on_hostile_text() -> None:
    started = time.perf_counter()
    assert imaging.sniff_format(b"<!---->" * 600 + b"x") is None
    assert imaging.sniff_format(b" " * 4000 + b"x") is None
    assert time.perf_counter() - started < 0.5


@pytest.mark.parametrize("row", ROWS, ids=[row["file"] for row in ROWS])
def test_sniff_format_on_corpus_heads(row: dict[str, str]) -> None:
    head = (CORPUS / row["file"]).read_bytes()[:32]
    assert imaging.sniff_format(head) == FORMAT_BY_SUFFIX[Path(row["file"]).suffix.lower()]


# --- read_header ---------------------------------------------------------------------------------


@pytest.mark.parametrize("row", ACCEPTED, ids=[row["file"] for row in ACCEPTED])
def test_read_header_gives_upright_display_size(row: dict[str, str]) -> None:
    header = imaging.read_header(corpus(row["file"]))
    assert header.format == FORMAT_BY_SUFFIX[Path(row["file"]).suffix.lower()]
    assert (header.width, header.height) == display_size(row)
    assert header.frames == ANIMATED.get(row["file"], 1)


@pytest.mark.parametrize(
    ("name", "has_alpha"),
    [("with-alpha.png", True), ("16-bit-grey-alpha.png", True), ("flowers.jpeg", False), ("G31D.TIF", False)],
)
def test_read_header_alpha(name: str, has_alpha: bool) -> None:
    assert imaging.read_header(corpus(name)).has_alpha is has_alpha


def test_read_header_unknown_format(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("just some text, long enough to be sniffed properly")
    with pytest.raises(UnknownFormat):
        imaging.read_header(str(path))


def test_read_header_corrupt_heic(tmp_path: Path) -> None:
    path = tmp_path / "broken.heic"
    path.write_bytes(ftyp(b"heic", b"mif1") + b"\0" * 64)
    with pytest.raises(CorruptImage, match="heic header"):
        imaging.read_header(str(path))


@pytest.mark.parametrize(
    ("root", "size"),
    [
        ('<svg xmlns="http://www.w3.org/2000/svg" width="120" height="80">', (120, 80)),
        ("<svg width='120px' height='80px' viewBox='0 0 12 8'>", (120, 80)),
        ('<svg viewBox="0 0 30 20">', (30, 20)),
        ('<svg width="60" viewBox="0,0,30,20">', (60, 40)),
        ('<svg width="100%" height="100%" viewBox="0 0 30 20" data-x="a>b">', (30, 20)),
    ],
)
def test_read_header_svg_size_without_rendering(tmp_path: Path, root: str, size: tuple[int, int]) -> None:
    path = tmp_path / "drawing.svg"
    path.write_text(f'<?xml version="1.0"?>\n{root}<rect width="1" height="1"/></svg>')
    assert imaging.read_header(str(path)) == Header("svg", size[0], size[1], 1, True)


@pytest.mark.parametrize(
    "root",
    [
        '<svg xmlns="http://www.w3.org/2000/svg">',
        '<svg width="10em" height="-3" viewBox="0 0 0 0">',
        '<svg width="inf" height="nan">',
        '<svg width="' + "1" * 60000 + 'x" height="1">',  # hostile: must not backtrack for minutes
        "<svg " + "a" * 60000 + ">",
    ],
)
def test_read_header_svg_without_usable_size(tmp_path: Path, root: str) -> None:
    path = tmp_path / "drawing.svg"
    path.write_text(f'{root}<rect width="1" height="1"/></svg>')
    started = time.perf_counter()
    with pytest.raises(CorruptImage, match="viewBox"):
        imaging.read_header(str(path))
    assert time.perf_counter() - started < 0.5


def test_read_header_svg_root_not_closed(tmp_path: Path) -> None:
    path = tmp_path / "drawing.svg"
    path.write_text('<svg width="4" height="4" title="' + "x" * 70000)
    with pytest.raises(CorruptImage, match="root element"):
        imaging.read_header(str(path))


# --- corpus rejects ------------------------------------------------------------------------------


def reject_corrupt_header(path: str) -> None:
    with pytest.raises(CorruptImage) as raised:
        imaging.read_header(path)
    assert raised.value.reason.startswith("cannot read the jpg header: ")


def reject_truncated(path: str) -> None:
    header = imaging.read_header(path)  # the header is intact; the pixel data is not
    with pytest.raises(CorruptImage) as raised:
        imaging.render(path, header, [spec(), spec("j", "jpg")])
    assert raised.value.reason.startswith("pixel data is truncated or corrupt: ")
    assert "\n" not in raised.value.reason


def huge_header(size: tuple[int, int]) -> Callable[[str], None]:
    def check(path: str) -> None:
        started = time.perf_counter()
        header = imaging.read_header(path)
        elapsed = time.perf_counter() - started
        assert (header.width, header.height) == size
        # Well under 50 ms in practice; the bound is loose so a busy CI box can't flake it,
        # but a pixel decode of 280 MP / 4.3 GP would take far longer.
        assert elapsed < 0.5

    return check


def reject_svg(path: str) -> None:
    header = imaging.read_header(path)
    assert header == Header("svg", 8, 8, 1, True)
    with pytest.raises(UnknownFormat):
        imaging.render(path, header, [spec()])


REJECT_CHECKS = {
    "corrupt-header.jpg": reject_corrupt_header,
    "truncated.jpg": reject_truncated,
    "giant-image.jpg": huge_header((20000, 14000)),
    "65536-uint32-limit.png": huge_header((65536, 65536)),
    "circle.svg": reject_svg,
}


@pytest.mark.parametrize("row", REJECTED, ids=[row["file"] for row in REJECTED])
def test_reject_rows(row: dict[str, str]) -> None:
    assert row["file"] in REJECT_CHECKS, "new reject row in MANIFEST.tsv: add its check"
    REJECT_CHECKS[row["file"]](corpus(row["file"]))


def test_render_corrupt_heic_pixels(tmp_path: Path) -> None:
    data = (CORPUS / "heic_heif_zPug_3.heic").read_bytes()
    path = tmp_path / "half.heic"
    path.write_bytes(data[: len(data) // 2])
    # read_header refuses the cut file (its boxes run past the end), and render refuses its pixels too,
    # should one get past the header (here: rendered with the intact file's header).
    with pytest.raises(CorruptImage, match="truncated"):
        imaging.read_header(str(path))
    header = imaging.read_header(str(CORPUS / "heic_heif_zPug_3.heic"))
    with pytest.raises(CorruptImage, match="truncated or corrupt"):
        imaging.render(str(path), header, [spec(width=32, height=32)])


# --- render: corpus accepts ----------------------------------------------------------------------


def assert_clean_srgb8(image: pyvips.Image) -> None:
    assert image.interpretation == "srgb"
    assert image.format == "uchar"
    assert image.bands in (3, 4)
    assert not [field for field in image.get_fields() if field in PRIVATE_FIELDS]


@pytest.mark.parametrize("row", accept_params())
def test_render_accepted_upright_srgb_stripped(row: dict[str, str]) -> None:
    path = corpus(row["file"])
    header = imaging.read_header(path)
    width, height = contain(display_size(row), 64)
    animated = row["file"] in ANIMATED
    summary, outputs = imaging.render(
        path,
        header,
        [spec("w", "webp", width, height, animated=True), spec("j", "jpg", width, height)],
    )
    webp, jpg = (load(out.data, animated and out.key == "w") for out in outputs)
    for out, image in zip(outputs, (webp, jpg), strict=True):
        assert (out.width, out.height) == (width, height)
        assert (image.width, image.get_page_height()) == (width, height)
        assert_clean_srgb8(image)
    assert jpg.bands == 3
    assert (outputs[0].frames, pages(webp)) == ((ANIMATED[row["file"]],) * 2 if animated else (1, 1))
    assert (summary.width, summary.height) == display_size(row)
    assert len(summary.placeholder) == 28
    assert summary.dominant_color.startswith("#")
    assert len(summary.dominant_color) == 7


def test_png_outputs_use_adaptive_row_filters() -> None:
    """libvips writes PNG rows unfiltered unless told; a photo then deflates far worse than with the
    adaptive filters libpng and Pillow use."""
    path = corpus("Landscape_1.jpg")
    _, (out,) = imaging.render(path, imaging.read_header(path), [spec("p", "png", 480, 360, effort=6)])
    unfiltered = load(out.data).pngsave_buffer(compression=6, filter="none", keep="none")
    assert len(out.data) < 0.9 * len(unfiltered), (len(out.data), len(unfiltered))  # 0.82 measured


@pytest.mark.parametrize("name", ["Landscape_6.jpg", "Landscape_8.jpg"])
def test_exif_orientation_is_applied(name: str) -> None:
    """Landscape_1/6/8 are one picture stored three ways: the renders must match Landscape_1's."""

    def pixels(path: str) -> pyvips.Image:
        _, (out,) = imaging.render(path, imaging.read_header(path), [spec("p", "png", 60, 45)])
        return load(out.data)

    reference = pixels(corpus("Landscape_1.jpg"))
    rotated = pixels(corpus(name))
    assert (rotated.width, rotated.height) == (60, 45)  # landscape out
    assert (rotated - reference).abs().avg() < 8
    # The check can tell: a copy turned upside down is far off.
    assert (rotated.rot180() - reference).abs().avg() > 20


@pytest.mark.slow
def test_heic_decodes_like_the_jpeg_made_from_it() -> None:
    """photo-12mp-pug.jpg was decoded from pug.heic: same orientation and colours."""

    def pixels(name: str) -> pyvips.Image:
        path = corpus(name)
        _, (out,) = imaging.render(path, imaging.read_header(path), [spec("p", "png", 80, 60)])
        return load(out.data)

    assert (pixels("heic_heif_other_pug.heic") - pixels("photo-12mp-pug.jpg")).abs().avg() < 4


def test_heic_primary_image_of_a_collection() -> None:
    path = corpus("heic_heif_zPug_3.heic")
    header = imaging.read_header(path)
    summary, (out,) = imaging.render(path, header, [spec("a", "avif", 64, 64)])
    image = load(out.data)
    assert (image.width, image.height) == (64, 64)
    assert_clean_srgb8(image)  # the primary image is grey: outputs are still 3-band sRGB
    assert not summary.has_alpha


def test_icc_profile_is_converted_to_srgb(tmp_path: Path) -> None:
    p3_profile = pyvips.Image.new_from_file(corpus("p3.png")).get("icc-profile-data")
    tagged = solid(16, 16, [100, 150, 200])
    tagged.set_type(pyvips.GValue.blob_type, "icc-profile-data", p3_profile)
    path = render_files(tmp_path, "p3-tagged.png", tagged)
    _, (out,) = imaging.render(path, imaging.read_header(path), [spec("p", "png", 16, 16)])
    converted = load(out.data)
    expected = pyvips.Image.new_from_file(path).icc_transform("srgb").getpoint(8, 8)
    assert converted.getpoint(8, 8) == pytest.approx(expected, abs=2)
    assert converted.getpoint(8, 8) != pytest.approx([100, 150, 200], abs=5)  # really changed
    assert "icc-profile-data" not in converted.get_fields()


# --- render: alpha, animation --------------------------------------------------------------------


def test_alpha_kept_where_the_format_has_it_and_jpeg_flattened_on_white() -> None:
    path = corpus("full-transparent.png")
    formats = ("webp", "png", "avif", "gif", "jpg")
    _, outputs = imaging.render(path, imaging.read_header(path), [spec(f, f, 30, 30) for f in formats])
    images = {out.key: load(out.data) for out in outputs}
    for fmt in ("webp", "png", "avif"):
        assert images[fmt].bands == 4, fmt
        assert images[fmt][3].max() == 0, fmt  # fully transparent stays fully transparent
    assert images["gif"].hasalpha()
    assert images["jpg"].bands == 3
    assert images["jpg"].min() >= 250  # transparent pixels become white, not black


def test_alpha_of_a_partly_transparent_image() -> None:
    path = corpus("with-alpha.png")
    summary, outputs = imaging.render(
        path, imaging.read_header(path), [spec("w", "webp", 128, 96), spec("p", "png", 128, 96)]
    )
    assert summary.has_alpha
    for out in outputs:
        image = load(out.data)
        assert image.bands == 4
        assert image[3].min() < 255 and image[3].max() > 0


@pytest.mark.parametrize("fmt", ["webp", "gif"])
def test_animation_is_kept_with_its_timing(fmt: str) -> None:
    path = corpus("animated-loop-3.gif")
    source = pyvips.Image.new_from_file(path, n=-1)
    _, (out,) = imaging.render(path, imaging.read_header(path), [spec("a", fmt, 100, 77, animated=True)])
    image = load(out.data, animated=True)
    assert out.frames == pages(image) == 10
    assert (image.width, image.get_page_height()) == (100, 77)
    assert image.get("delay") == source.get("delay")
    assert image.get("loop") == source.get("loop")


def test_still_outputs_of_an_animation_use_the_first_frame() -> None:
    path = corpus("rotating-squares.webp")
    outputs = [
        spec("still-webp", "webp", 40, 40),
        spec("avif", "avif", 40, 40, animated=True),  # AVIF can't animate: first frame only
        spec("png", "png", 40, 40, animated=True),
        spec("anim", "webp", 40, 40, animated=True),
    ]
    summary, rendered = imaging.render(path, imaging.read_header(path), outputs)
    assert summary.frames == 9
    assert [out.frames for out in rendered] == [1, 1, 1, 9]
    assert pages(load(rendered[0].data, animated=True)) == 1
    assert pages(load(rendered[3].data, animated=True)) == 9


def test_animated_cover_crops_every_frame_the_same() -> None:
    path = corpus("animated-loop-3.gif")
    header = imaging.read_header(path)
    _, (out,) = imaging.render(
        path, header, [spec("c", "webp", 50, 50, fit="cover", crop="attention", animated=True)]
    )
    image = load(out.data, animated=True)
    assert (image.width, image.get_page_height(), pages(image)) == (50, 50, 10)


# --- render: geometry ----------------------------------------------------------------------------


@pytest.fixture
def red_blue(tmp_path: Path) -> str:
    """200x100: left half pure red, right half pure blue."""
    red = solid(100, 100, [255, 0, 0])
    blue = solid(100, 100, [0, 0, 255])
    return render_files(tmp_path, "red-blue.png", red.join(blue, "horizontal"))


@pytest.mark.parametrize(("focal_x", "colour"), [(0.0, [255, 0, 0]), (1.0, [0, 0, 255]), (0.2, [255, 0, 0])])
def test_cover_crops_around_the_focal_point(red_blue: str, focal_x: float, colour: list[int]) -> None:
    cover = spec("c", "png", 40, 80, fit="cover", focal_x=focal_x, focal_y=0.5)
    _, (out,) = imaging.render(red_blue, imaging.read_header(red_blue), [cover])
    image = load(out.data)
    assert (image.width, image.height) == (40, 80)
    assert image.getpoint(20, 40) == colour
    assert image.getpoint(0, 0) == colour and image.getpoint(39, 79) == colour


def test_cover_attention_finds_the_busy_part(tmp_path: Path) -> None:
    grey = (pyvips.Image.black(300, 100) + 128).cast("uchar")
    noise = pyvips.Image.gaussnoise(60, 60, mean=128, sigma=80)
    busy = noise.bandjoin([noise.rot180(), noise.flip("horizontal")]).cast("uchar")
    path = render_files(tmp_path, "busy.png", grey.bandjoin([grey, grey]).insert(busy, 220, 20))
    cover = spec("c", "png", 100, 100, fit="cover", crop="attention")
    _, (out,) = imaging.render(path, imaging.read_header(path), [cover])
    image = load(out.data)
    assert (image.width, image.height) == (100, 100)
    assert image.deviate() > 30  # a crop of the flat grey part would be uniform


@pytest.mark.parametrize(
    ("fit", "width", "height"),
    [("fill", 100, 20), ("fill", 20, 100), ("cover", 300, 50), ("cover", 7, 333), ("contain", 333, 187)],
)
def test_outputs_have_exactly_the_requested_size(fit: str, width: int, height: int) -> None:
    path = corpus("flowers.jpeg")  # 1920x1080: 333 wide in its aspect is 187.3 high
    header = imaging.read_header(path)
    formats = ("jpg", "webp", "png", "avif", "gif")
    _, outputs = imaging.render(path, header, [spec(f, f, width, height, fit=fit) for f in formats])
    for out in outputs:
        image = load(out.data)
        assert (out.width, out.height, out.frames) == (width, height, 1)
        assert (image.width, image.height) == (width, height), out.key


def test_several_widths_from_one_decode_of_a_12mp_photo() -> None:
    path = corpus("photo-12mp-arrow.jpg")  # portrait 3024x4032
    header = imaging.read_header(path)
    widths = (160, 320, 640)
    specs = [
        spec(f"{fmt}{w}", fmt, *contain((header.width, header.height), w))
        for w in widths
        for fmt in ("avif", "jpg")
    ]
    _, outputs = imaging.render(path, header, specs)
    assert [out.key for out in outputs] == [s.key for s in specs]
    for out, wanted in zip(outputs, specs, strict=True):
        image = load(out.data)
        assert (image.width, image.height) == (wanted.width, wanted.height)
        assert image.height > image.width


def test_upscaling_is_done_when_the_caller_asks() -> None:
    path = corpus("p3.png")  # 8x8
    _, (out,) = imaging.render(path, imaging.read_header(path), [spec("big", "png", 32, 32)])
    assert (load(out.data).width, load(out.data).height) == (32, 32)


def test_concurrent_renders_match_sequential_ones() -> None:
    """render runs in worker threads: libvips and libheif calls must not interfere."""
    names = ["flowers.jpeg", "heic_heif_zPug_3.heic", "animated-loop-3.gif", "with-alpha.png"] * 2

    def run(name: str) -> list[bytes]:
        path = corpus(name)
        outputs = [
            spec("w", "webp", 48, 48, fit="cover", animated=True),
            spec("j", "jpg", 48, 48, fit="fill"),
        ]
        return [out.data for out in imaging.render(path, imaging.read_header(path), outputs)[1]]

    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(run, names))
    assert concurrent == [run(name) for name in names]


def test_invalid_spec_is_a_programming_error() -> None:
    path = corpus("p3.png")
    header = imaging.read_header(path)
    with pytest.raises(ValueError, match="bmp"):
        imaging.render(path, header, [spec("x", "bmp")])
    with pytest.raises(ValueError, match="0x10"):
        imaging.render(path, header, [spec("x", "png", 0, 10)])


def test_render_errors_are_image_errors_not_pyvips_errors() -> None:
    path = corpus("flowers.jpeg")
    too_wide = spec("huge", "webp", 20000, 10)  # WebP's limit is 16383 px
    with pytest.raises(ImageError, match="huge"):
        imaging.render(path, imaging.read_header(path), [too_wide])


# --- render: encoder settings --------------------------------------------------------------------


def sizes(path: str, specs: list[OutputSpec]) -> dict[str, int]:
    _, outputs = imaging.render(path, imaging.read_header(path), specs)
    return {out.key: len(out.data) for out in outputs}


def test_quality_is_respected() -> None:
    path = corpus("flowers.jpeg")
    got = sizes(
        path,
        [spec(f"{fmt}{q}", fmt, 480, 270, quality=q) for fmt in ("jpg", "webp", "avif") for q in (20, 90)],
    )
    for fmt in ("jpg", "webp", "avif"):
        assert got[f"{fmt}20"] < got[f"{fmt}90"] * 0.7, fmt


def test_effort_is_respected() -> None:
    path = corpus("flowers.jpeg")
    got = sizes(
        path,
        [
            spec("avif0", "avif", 320, 180, effort=0),
            spec("avif2", "avif", 320, 180, effort=2),
            spec("webp0", "webp", 320, 180, effort=0),
            spec("webp6", "webp", 320, 180, effort=6),
            spec("png1", "png", 320, 180, effort=1),
            spec("png9", "png", 320, 180, effort=9),
        ],
    )
    assert got["avif0"] != got["avif2"]
    assert got["webp0"] != got["webp6"]
    assert got["png9"] < got["png1"]


def test_lossless_webp_keeps_every_pixel() -> None:
    path = corpus("with-alpha.png")
    _, (webp, png) = imaging.render(
        path,
        imaging.read_header(path),
        [spec("w", "webp", 128, 96, quality=100, lossless=True), spec("p", "png", 128, 96)],
    )
    assert (load(webp.data) - load(png.data)).abs().max() == 0


def test_jpeg_is_progressive_mozjpeg() -> None:
    path = corpus("flowers.jpeg")
    _, (out,) = imaging.render(path, imaging.read_header(path), [spec("j", "jpg", 320, 180)])
    assert load(out.data).get("interlaced") == 1


# --- summary -------------------------------------------------------------------------------------


def test_summary_of_a_solid_colour(tmp_path: Path) -> None:
    path = render_files(tmp_path, "solid.png", solid(64, 48, [30, 120, 200]))
    summary, outputs = imaging.render(path, imaging.read_header(path), [])
    assert outputs == []
    assert summary == imaging.Summary(64, 48, 1, False, "#1e78c8", "L73e?KkufQkuk]flfQflfQfQfQfQ")


def test_summary_of_transparency() -> None:
    path = corpus("full-transparent.png")
    summary, _ = imaging.render(path, imaging.read_header(path), [])
    assert summary.has_alpha
    assert summary.dominant_color == "#ffffff"  # as seen on a white page


def test_blurhash_matches_the_reference_encoder() -> None:
    # Expected value computed with the reference Python encoder (PyPI "blurhash" 1.1.5,
    # blurhash.encode(rows, components_x=4, components_y=3)) for the same pixels.
    width, height = 32, 24
    rgb = bytes(
        channel
        for y in range(height)
        for x in range(width)
        for channel in ((x * 8) % 256, (y * 10) % 256, (x * y * 3) % 256)
    )
    assert imaging._blurhash(rgb, width, height) == "LxH27x2nwtX4mCWUjrf6gFfhfRfl"


def test_dominant_colour_prefers_the_largest_area(tmp_path: Path) -> None:
    red = solid(150, 100, [200, 20, 20])
    blue = solid(50, 100, [20, 20, 200])
    path = render_files(tmp_path, "mostly-red.png", red.join(blue, "horizontal"))
    summary, _ = imaging.render(path, imaging.read_header(path), [])
    assert summary.dominant_color == "#c81414"

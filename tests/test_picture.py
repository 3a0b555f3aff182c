"""picture.py is pure: tables of outputs in, markup and data out."""

import pytest

from picstore import picture

ORIGINAL = picture.Original(url="https://cdn/o.jpg", format="jpg", width=1920, height=1080, alt="A cat")


def out(fmt: str, width: int, density: int = 1, label: str | None = None) -> picture.Output:
    return picture.Output(
        fmt, f"https://cdn/{label or width}@{density}.{fmt}", width, width // 2, density, label or f"w{width}"
    )


WIDTHS = [out(f, w) for f in ("jpg", "webp", "avif") for w in (960, 480, 1920)]


def test_sources_in_avif_webp_order_with_ascending_widths():
    pic = picture.build(ORIGINAL, WIDTHS)
    assert [s.type for s in pic.sources] == ["image/avif", "image/webp"]
    assert [c.width for c in pic.sources[0].candidates] == [480, 960, 1920]
    assert (
        pic.sources[0].srcset
        == "https://cdn/480@1.avif 480w, https://cdn/960@1.avif 960w, https://cdn/1920@1.avif 1920w"
    )
    assert pic.img.format == "jpg" and pic.img.src == "https://cdn/960@1.jpg"
    assert (pic.img.width, pic.img.height) == (1920, 1080)
    assert pic.sources[0].sizes == "(max-width: 1920px) 100vw, 1920px"


def test_caller_sizes_and_class():
    html = picture.render(picture.build(ORIGINAL, WIDTHS, sizes="50vw", class_="hero"))
    assert html.count('sizes="50vw"') == 3 and 'class="hero"' in html


@pytest.mark.parametrize(
    "alt", ['"><script>alert(1)</script>', 'it\'s <b>bold</b> & "quoted"', "x onerror=alert(1)"]
)
def test_every_attribute_is_escaped(alt):
    html = picture.render(picture.build(picture.Original('https://cdn/a"b.jpg', "jpg", 10, 10, alt), []))
    assert "<script>" not in html and "<b>" not in html
    assert html.count('"') % 2 == 0
    assert 'src="https://cdn/a&quot;b.jpg"' in html


@pytest.mark.parametrize(
    ("original_format", "formats", "expected"),
    [
        ("png", ["png", "webp", "avif"], "png"),
        ("jpg", ["webp", "avif"], "jpg"),  # no fallback output: the original itself
        ("heic", ["webp", "avif"], "webp"),  # browsers can't show HEIC: WebP is the fallback
        ("gif", ["webp", "gif"], "gif"),
    ],
)
def test_fallback_format(original_format, formats, expected):
    original = picture.Original(f"https://cdn/o.{original_format}", original_format, 800, 600, "")
    pic = picture.build(original, [out(f, 480) for f in formats])
    assert pic.img.format == expected


def test_original_fallback_when_nothing_is_ready():
    pic = picture.build(ORIGINAL, [])
    assert pic.sources == [] and pic.img.src == ORIGINAL.url and pic.img.srcset is None


def test_density_pairs_use_x_descriptors_and_the_slot_size():
    outputs = [out(f, w, d, "400x300") for f in ("avif", "jpg") for w, d in ((400, 1), (800, 2))]
    pic = picture.build(ORIGINAL, [*outputs, out("avif", 1920)])
    assert pic.sources[0].srcset == "https://cdn/400x300@1.avif 1x, https://cdn/400x300@2.avif 2x"
    assert pic.sources[0].sizes is None
    assert (pic.img.width, pic.img.src) == (400, "https://cdn/400x300@1.jpg")


def test_placeholder_is_opt_in():
    original = picture.Original(
        "https://cdn/o.jpg", "jpg", 10, 10, "", "#aabbcc", "LEHV6nWB2yk8pyo0adR*.7kCMdnj"
    )
    assert picture.build(original, []).placeholder == {}
    html = picture.render(picture.build(original, [], placeholder=True))
    assert (
        'style="background-color:#aabbcc"' in html and 'data-blurhash="LEHV6nWB2yk8pyo0adR*.7kCMdnj"' in html
    )

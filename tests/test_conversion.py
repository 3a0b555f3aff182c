"""Table tests for the pure conversion-profile rules in picstore.conversion."""

import json
import re
from typing import Any

import pytest

from picstore.conversion import (
    DEFAULT_AVIF_EFFORT,
    AnimatedCondition,
    Condition,
    Format,
    HasAlphaCondition,
    ImageFacts,
    MinBytesCondition,
    MustCondition,
    MustNotCondition,
    PlannedOutput,
    Profile,
    ProfileError,
    Size,
    content_type,
    decode_profile,
    default_profile,
    encode_profile,
    plan_outputs,
    sanitize_filename,
    size_label,
    split_stem,
    target_size,
    validate_profile,
)

SHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
OTHER_SHA = "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752"

# Pic Store's bootstrap profile (pic-store.md §7.1), serialised as Pic Store writes it.
PIC_STORE_DEFAULT = {
    "type": "cross",
    "formats": [
        {"format": "avif"},
        {"format": "webp"},
        {"format": "jpg", "condition": {"type": "must", "formats": ["jpg"]}},
        {"format": "png", "condition": {"type": "must", "formats": ["png"]}},
    ],
    "sizes": [{"width": 200, "height": None}, {"width": 400, "height": None}],
}


def facts(
    fmt: str = "jpg",
    width: int = 4000,
    height: int = 3000,
    *,
    frames: int = 1,
    has_alpha: bool = False,
    file_size: int = 2_000_000,
    sha256: str = SHA,
    focal: tuple[float, float] = (0.5, 0.5),
) -> ImageFacts:
    return ImageFacts(fmt, width, height, frames, has_alpha, file_size, sha256, *focal)


def profile(formats: list[dict[str, Any]], sizes: list[dict[str, Any]]) -> Profile:
    parsed = decode_profile({"type": "cross", "formats": formats, "sizes": sizes})
    validate_profile(parsed)
    return parsed


def summary(outputs: list[PlannedOutput]) -> list[tuple[str, str, int | None, int | None, str]]:
    return [(o.format, o.label, o.width, o.height, o.status) for o in outputs]


# Sizes


@pytest.mark.parametrize(
    ("src", "rule", "expected"),
    [
        ((100, 100), {"width": 200, "height": 125, "preserve_aspect_ratio": False}, (200, 125)),
        ((100, 100), {"width": 100, "height": 100, "preserve_aspect_ratio": False}, (100, 100)),
        ((100, 100), {}, (100, 100)),
        ((150, 100), {"width": 150, "height": 200}, (150, 100)),
        ((150, 100), {"width": 400, "height": 100}, (150, 100)),
        ((150, 100), {"width": 400, "height": 1000}, (400, 267)),
        ((150, 100), {"width": 4000, "height": 200}, (300, 200)),
        ((150, 100), {"width": 300}, (300, 200)),
        ((150, 100), {"height": 400}, (600, 400)),
        ((150, 100), {"width": 100}, (100, 67)),
        ((150, 100), {"height": 50}, (75, 50)),
    ],
)
def test_pic_store_resize_vectors_under_resize_both(
    src: tuple[int, int], rule: dict[str, Any], expected: tuple[int, int]
) -> None:
    assert target_size(*src, Size(**rule, resize="both")) == expected


@pytest.mark.parametrize(
    ("src", "rule", "expected"),
    [
        # contain, never upscaling (the default)
        ((1500, 1000), {"width": 300}, (300, 200)),
        ((150, 100), {"width": 300}, (150, 100)),
        ((150, 100), {"width": 300, "out_of_range": "skip"}, None),
        ((150, 100), {"width": 150, "out_of_range": "skip"}, (150, 100)),
        ((150, 100), {"width": 400, "height": 1000, "out_of_range": "skip"}, None),
        # a box larger than the source on one side only still shrinks it: in range
        ((150, 100), {"width": 100, "height": 1000, "out_of_range": "skip"}, (100, 67)),
        # only-upsize
        ((150, 100), {"width": 300, "resize": "up"}, (300, 200)),
        ((150, 100), {"width": 100, "resize": "up"}, (150, 100)),
        ((150, 100), {"width": 100, "resize": "up", "out_of_range": "skip"}, None),
        ((150, 100), {"width": 4000, "height": 50, "resize": "up", "out_of_range": "skip"}, None),
        ((150, 100), {"width": 150, "resize": "up", "out_of_range": "skip"}, (150, 100)),
    ],
)
def test_contain_directions(
    src: tuple[int, int], rule: dict[str, Any], expected: tuple[int, int] | None
) -> None:
    assert target_size(*src, Size(**rule)) == expected


@pytest.mark.parametrize(
    ("src", "rule", "expected"),
    [
        # halves round up, where Python's round() would go to the even neighbour
        ((2, 1), {"width": 5, "resize": "both"}, (5, 3)),  # 2.5
        ((1, 2), {"height": 5, "resize": "both"}, (3, 5)),  # 2.5
        ((4, 3), {"width": 6, "resize": "both"}, (6, 5)),  # 4.5
        ((4, 3), {"width": 10, "resize": "both"}, (10, 8)),  # 7.5
        ((5, 2), {"width": 3, "resize": "both"}, (3, 1)),  # 1.2
        # the clamped box of cover and fill rounds the same way: 5 * 2/4 = 2.5
        ((2, 100), {"width": 4, "height": 5, "fit": "cover"}, (2, 3)),
        ((2, 100), {"width": 4, "height": 5, "fit": "fill"}, (2, 3)),
        # never below one pixel
        ((10000, 10), {"width": 100}, (100, 1)),
    ],
)
def test_rounding(src: tuple[int, int], rule: dict[str, Any], expected: tuple[int, int]) -> None:
    assert target_size(*src, Size(**rule)) == expected


@pytest.mark.parametrize(
    ("src", "rule", "expected"),
    [
        # cover: exactly the box, cropped
        ((4000, 3000), {"fit": "cover"}, (300, 300)),
        ((4000, 3000), {"fit": "cover", "crop": "attention"}, (300, 300)),
        # too small for the box on one side: clamp keeps the box's shape, crops without scaling
        ((200, 600), {"fit": "cover"}, (200, 200)),
        ((200, 600), {"fit": "cover", "out_of_range": "skip"}, None),
        ((200, 600), {"fit": "cover", "resize": "both"}, (300, 300)),
        # cover "up": a box inside the source grows until it touches the source's shorter side
        ((400, 600), {"fit": "cover", "resize": "up"}, (400, 400)),
        ((400, 600), {"fit": "cover", "resize": "up", "out_of_range": "skip"}, None),
        ((300, 600), {"fit": "cover", "resize": "up", "out_of_range": "skip"}, (300, 300)),
        # fill: stretch to the box, only when asked
        ((4000, 3000), {"fit": "fill"}, (300, 300)),
        ((4000, 3000), {"preserve_aspect_ratio": False}, (300, 300)),
        ((4000, 3000), {}, (300, 225)),
        ((200, 600), {"fit": "fill"}, (200, 200)),
        ((200, 600), {"fit": "fill", "out_of_range": "skip"}, None),
        ((200, 600), {"fit": "fill", "resize": "both"}, (300, 300)),
        # fill "up" grows the box until it covers the source on both sides
        ((200, 600), {"fit": "fill", "resize": "up"}, (600, 600)),
        ((100, 100), {"fit": "fill", "resize": "up", "out_of_range": "skip"}, (300, 300)),
    ],
)
def test_cover_fill_contain(
    src: tuple[int, int], rule: dict[str, Any], expected: tuple[int, int] | None
) -> None:
    assert target_size(*src, Size(width=300, height=300, **rule)) == expected


@pytest.mark.parametrize(
    ("src", "rule", "density", "expected"),
    [
        ((4000, 3000), {"width": 480}, 1, (480, 360)),
        ((4000, 3000), {"width": 480}, 2, (960, 720)),
        ((4000, 3000), {"width": 480}, 3, (1440, 1080)),
        ((4000, 3000), {"width": 300, "height": 200, "fit": "cover"}, 2, (600, 400)),
        ((800, 600), {"width": 480}, 2, (800, 600)),
        ((800, 600), {"width": 480, "out_of_range": "skip"}, 2, None),
        ((800, 600), {"width": 480, "resize": "both"}, 2, (960, 720)),
        ((800, 600), {"width": 300, "height": 200, "fit": "cover"}, 4, (800, 533)),
    ],
)
def test_densities_multiply_the_box(
    src: tuple[int, int], rule: dict[str, Any], density: int, expected: tuple[int, int] | None
) -> None:
    assert target_size(*src, Size(**rule), density) == expected


@pytest.mark.parametrize(
    ("rule", "density", "label"),
    [
        ({"width": 200}, 1, "w200"),
        ({"height": 300}, 1, "h300"),
        ({"width": 200, "height": 300}, 1, "200x300"),
        ({}, 1, "szun"),
        ({"width": 200}, 2, "w200@2x"),
        ({"width": 200, "height": 300, "fit": "cover"}, 3, "200x300@3x"),
    ],
)
def test_size_label(rule: dict[str, Any], density: int, label: str) -> None:
    assert size_label(Size(**rule), density) == label


# Conditions


@pytest.mark.parametrize(
    ("condition", "source", "holds"),
    [
        (None, facts(), True),
        (MustCondition(formats=("jpg",)), facts("jpg"), True),
        (MustCondition(formats=("jpg",)), facts("png"), False),
        (MustCondition(formats=("png", "heic")), facts("heic"), True),
        (MustNotCondition(formats=("png",)), facts("jpg"), True),
        (MustNotCondition(formats=("png",)), facts("png"), False),
        (MinBytesCondition(bytes=1000), facts(file_size=1001), True),
        (MinBytesCondition(bytes=1000), facts(file_size=1000), False),
        (HasAlphaCondition(value=True), facts(has_alpha=True), True),
        (HasAlphaCondition(value=True), facts(has_alpha=False), False),
        (HasAlphaCondition(value=False), facts(has_alpha=False), True),
        (AnimatedCondition(value=True), facts("gif", frames=10), True),
        (AnimatedCondition(value=True), facts("gif", frames=1), False),
        (AnimatedCondition(value=False), facts("gif", frames=1), True),
        (
            (MustCondition(formats=("png",)), HasAlphaCondition(value=True)),
            facts("png", has_alpha=True),
            True,
        ),
        ((MustCondition(formats=("png",)), HasAlphaCondition(value=True)), facts("png"), False),
        (
            (MustCondition(formats=("png",)), HasAlphaCondition(value=True)),
            facts("jpg", has_alpha=True),
            False,
        ),
    ],
)
def test_conditions(
    condition: Condition | tuple[Condition, ...] | None, source: ImageFacts, holds: bool
) -> None:
    conditional = Profile(formats=(Format("webp", condition=condition),), sizes=(Size(width=100),))
    validate_profile(conditional)
    assert len(plan_outputs(conditional, source, "c")) == (1 if holds else 0)


def test_condition_list_decodes_as_all_of() -> None:
    parsed = profile(
        [
            {
                "format": "png",
                "condition": [{"type": "must", "formats": ["png"]}, {"type": "has_alpha", "value": True}],
            }
        ],
        [{"width": 100}],
    )
    assert parsed.formats[0].condition == (MustCondition(formats=("png",)), HasAlphaCondition(value=True))


# Planning


def test_pic_store_bootstrap_profile_plans_six_outputs_for_jpg_and_png() -> None:
    parsed = decode_profile(json.dumps(PIC_STORE_DEFAULT).encode())
    validate_profile(parsed)
    assert summary(plan_outputs(parsed, facts("jpg"), "sunset")) == [
        ("avif", "w200", 200, 150, "queued"),
        ("avif", "w400", 400, 300, "queued"),
        ("webp", "w200", 200, 150, "queued"),
        ("webp", "w400", 400, 300, "queued"),
        ("jpg", "w200", 200, 150, "queued"),
        ("jpg", "w400", 400, 300, "queued"),
    ]
    assert [o.format for o in plan_outputs(parsed, facts("png"), "logo")] == ["avif"] * 2 + ["webp"] * 2 + [
        "png"
    ] * 2
    assert [o.format for o in plan_outputs(parsed, facts("webp"), "x")] == ["avif"] * 2 + ["webp"] * 2


def test_pic_store_profile_on_small_source_clamps_by_default_and_upscales_when_asked() -> None:
    parsed = decode_profile(PIC_STORE_DEFAULT)
    small = facts("jpg", 300, 200)
    assert summary(plan_outputs(parsed, small, "s"))[:2] == [
        ("avif", "w200", 200, 133, "queued"),
        ("avif", "w400", 300, 200, "queued"),
    ]
    legacy = decode_profile(
        {**PIC_STORE_DEFAULT, "sizes": [{"width": 200, "resize": "both"}, {"width": 400, "resize": "both"}]}
    )
    assert summary(plan_outputs(legacy, small, "s"))[:2] == [
        ("avif", "w200", 200, 133, "queued"),
        ("avif", "w400", 400, 267, "queued"),
    ]


def test_default_profile() -> None:
    default = default_profile()
    validate_profile(default)
    assert encode_profile(default) == {
        "type": "cross",
        "formats": [
            {"format": "avif"},
            {"format": "webp"},
            {"format": "jpg", "condition": {"type": "must", "formats": ["jpg"]}},
            {"format": "png", "condition": {"type": "must", "formats": ["png"]}},
        ],
        "sizes": [{"width": 480}, {"width": 960}, {"width": 1920}],
    }
    planned = plan_outputs(default, facts("jpg"), "photo")
    assert summary(planned) == [
        (fmt, f"w{w}", w, w * 3 // 4, "queued") for fmt in ("avif", "webp", "jpg") for w in (480, 960, 1920)
    ]
    assert [(o.quality, o.effort) for o in planned[::3]] == [(60, DEFAULT_AVIF_EFFORT), (70, 4), (70, None)]
    png = plan_outputs(default, facts("png", has_alpha=True), "logo")
    assert [o.format for o in png[6:]] == ["png"] * 3
    assert [(o.quality, o.effort) for o in png[6:7]] == [(None, 7)]


def test_clamped_duplicates_are_skipped_naming_the_first() -> None:
    planned = plan_outputs(default_profile(), facts("jpg", 800, 600), "photo")
    avif = planned[:3]
    assert summary(avif) == [
        ("avif", "w480", 480, 360, "queued"),
        ("avif", "w960", 800, 600, "queued"),
        ("avif", "w1920", 800, 600, "skipped"),
    ]
    assert avif[2].reason == f"same size as {avif[1].name}"
    assert [o.status for o in planned].count("skipped") == 3  # one per format


def test_density_that_lands_on_another_size_is_skipped() -> None:
    parsed = profile([{"format": "webp"}], [{"width": 480, "densities": [1, 2]}, {"width": 960}])
    planned = plan_outputs(parsed, facts(), "p")
    assert [(o.label, o.density, o.width, o.status) for o in planned] == [
        ("w480", 1, 480, "queued"),
        ("w480@2x", 2, 960, "queued"),
        ("w960", 1, 960, "skipped"),
    ]
    assert planned[2].reason == f"same size as {planned[1].name}"


def test_cover_and_contain_of_equal_dimensions_are_both_kept() -> None:
    # Only a cover crop can make equal dimensions differ in content, so it is never deduplicated away.
    parsed = profile([{"format": "webp"}], [{"width": 300}, {"width": 300, "height": 300, "fit": "cover"}])
    planned = plan_outputs(parsed, facts("jpg", 600, 600), "sq")
    assert [(o.width, o.height, o.fit, o.crop, o.status) for o in planned] == [
        (300, 300, "contain", None, "queued"),
        (300, 300, "cover", "focal", "queued"),
    ]


@pytest.mark.parametrize(
    ("rule", "reason"),
    [
        (
            {"width": 480, "out_of_range": "skip"},
            "source 300x200 is smaller than 480 px wide and the size rule never upscales",
        ),
        (
            {"height": 150, "densities": [2], "out_of_range": "skip"},
            "source 300x200 is smaller than 300 px high and the size rule never upscales",
        ),
        (
            {"width": 400, "height": 400, "fit": "cover", "out_of_range": "skip"},
            "source 300x200 is smaller than 400x400 and the size rule never upscales",
        ),
        (
            {"width": 100, "resize": "up", "out_of_range": "skip"},
            "source 300x200 is larger than 100 px wide and the size rule never downscales",
        ),
    ],
)
def test_out_of_range_skip_reason(rule: dict[str, Any], reason: str) -> None:
    [output] = plan_outputs(profile([{"format": "webp"}], [rule]), facts("jpg", 300, 200), "p")
    assert (output.status, output.reason, output.width, output.height) == ("skipped", reason, None, None)


def test_animated_source() -> None:
    parsed = profile(
        [{"format": "avif"}, {"format": "webp"}, {"format": "gif"}, {"format": "jpg"}, {"format": "png"}],
        [{"width": 200}],
    )
    planned = plan_outputs(parsed, facts("gif", 400, 300, frames=10), "anim")
    assert [(o.format, o.status, o.reason, o.animated) for o in planned] == [
        ("avif", "skipped", "avif cannot be animated; source has 10 frames", False),
        ("webp", "queued", None, True),
        ("gif", "queued", None, True),
        ("jpg", "skipped", "jpg cannot be animated; source has 10 frames", False),
        ("png", "skipped", "png cannot be animated; source has 10 frames", False),
    ]
    still = plan_outputs(parsed, facts("gif", 400, 300, frames=1), "still")
    assert [(o.status, o.animated) for o in still] == [("queued", False)] * 5


@pytest.mark.parametrize(
    ("fmt", "quality", "lossless"),
    [
        ({"format": "webp", "quality": 100}, 100, True),
        ({"format": "webp", "quality": 99.9}, 99, False),
        ({"format": "webp"}, 70, False),
        ({"format": "jpg", "quality": 85.9}, 85, False),
        ({"format": "jpg", "quality": 100}, 100, False),
        ({"format": "avif", "quality": 100}, 100, False),
        ({"format": "png", "quality": 50}, None, False),  # Pic Store ignored quality on png
        ({"format": "gif"}, None, False),
    ],
)
def test_quality_and_lossless(fmt: dict[str, Any], quality: int | None, lossless: bool) -> None:
    [output] = plan_outputs(profile([fmt], [{"width": 100}]), facts(), "q")
    assert (output.quality, output.lossless) == (quality, lossless)


def test_planned_output_fields() -> None:
    parsed = profile(
        [{"format": "avif", "quality": 50, "effort": 5}],
        [{"width": 300, "height": 200, "fit": "cover", "densities": [2]}],
    )
    [output] = plan_outputs(parsed, facts(focal=(0.25, 0.75)), "sunset")
    assert output == PlannedOutput(
        format="avif",
        quality=50,
        effort=5,
        lossless=False,
        width=600,
        height=400,
        fit="cover",
        crop="focal",
        density=2,
        size={"width": 300, "height": 200, "fit": "cover", "densities": [2]},
        label="300x200@2x",
        name=f"sunset-300x200@2x-{output.version}.avif",
        version=output.version,
        status="queued",
        reason=None,
        animated=False,
        focal=(0.25, 0.75),
    )
    assert re.fullmatch(r"[a-z2-7]{10}", output.version)


# Naming

BASE_FORMAT: dict[str, Any] = {"format": "webp", "quality": 80}
BASE_SIZE: dict[str, Any] = {"width": 300, "height": 200, "fit": "cover"}


def version_of(
    fmt: dict[str, Any] = BASE_FORMAT, size: dict[str, Any] = BASE_SIZE, source: ImageFacts | None = None
) -> str:
    [output] = plan_outputs(profile([fmt], [size]), source or facts(), "n")
    return output.version


@pytest.mark.parametrize(
    ("fmt", "size", "source"),
    [
        (BASE_FORMAT, BASE_SIZE, facts()),
        # irrelevant to the bytes: a condition, unknown extras, the source's format name
        ({**BASE_FORMAT, "condition": {"type": "min_bytes", "bytes": 1}}, BASE_SIZE, facts()),
        ({**BASE_FORMAT, "note": "x"}, BASE_SIZE, facts()),
        (BASE_FORMAT, BASE_SIZE, facts("png")),
        (BASE_FORMAT, BASE_SIZE, facts(sha256=SHA.upper())),
        # equal effective parameters written differently
        ({**BASE_FORMAT, "quality": 80.7}, BASE_SIZE, facts()),
        ({**BASE_FORMAT, "effort": 4}, BASE_SIZE, facts()),
        (BASE_FORMAT, {**BASE_SIZE, "crop": "focal"}, facts()),
    ],
)
def test_version_is_stable_for_equal_parameters(
    fmt: dict[str, Any], size: dict[str, Any], source: ImageFacts
) -> None:
    assert version_of(fmt, size, source) == version_of()


@pytest.mark.parametrize(
    ("fmt", "size", "source"),
    [
        ({**BASE_FORMAT, "quality": 81}, BASE_SIZE, facts()),
        ({**BASE_FORMAT, "quality": 100}, BASE_SIZE, facts()),
        ({**BASE_FORMAT, "effort": 5}, BASE_SIZE, facts()),
        ({**BASE_FORMAT, "format": "avif"}, BASE_SIZE, facts()),
        (BASE_FORMAT, BASE_SIZE, facts(sha256=OTHER_SHA)),
        (BASE_FORMAT, {**BASE_SIZE, "width": 301}, facts()),
        (BASE_FORMAT, {**BASE_SIZE, "fit": "fill"}, facts()),
        (BASE_FORMAT, {**BASE_SIZE, "crop": "attention"}, facts()),
        (BASE_FORMAT, BASE_SIZE, facts(focal=(0.3, 0.5))),
        (BASE_FORMAT, {**BASE_SIZE, "width": 150, "height": 100, "densities": [2]}, facts()),
    ],
)
def test_version_changes_with_any_parameter(
    fmt: dict[str, Any], size: dict[str, Any], source: ImageFacts
) -> None:
    assert version_of(fmt, size, source) != version_of()


def test_version_is_pinned() -> None:
    # Names of outputs already on CDNs depend on this value: a change here renames every output.
    assert version_of() == "ywnz4pcasa"


def test_focal_point_only_matters_for_focal_cover() -> None:
    contain = {"width": 300}
    assert version_of(size=contain, source=facts(focal=(0.1, 0.9))) == version_of(size=contain)
    attention = {**BASE_SIZE, "crop": "attention"}
    assert version_of(size=attention, source=facts(focal=(0.1, 0.9))) == version_of(size=attention)


def test_name_is_stem_label_version_extension() -> None:
    planned = plan_outputs(decode_profile(PIC_STORE_DEFAULT), facts("png"), "My-Photo-1-")
    assert [re.sub(r"-[a-z2-7]{10}\.", "-V.", o.name) for o in planned] == [
        "My-Photo-1--w200-V.avif",
        "My-Photo-1--w400-V.avif",
        "My-Photo-1--w200-V.webp",
        "My-Photo-1--w400-V.webp",
        "My-Photo-1--w200-V.png",
        "My-Photo-1--w400-V.png",
    ]
    assert len({o.name for o in planned}) == 6


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("My Photo (1).JPG", "My-Photo-1-.JPG"),  # Pic Store's own example
        ("sunset.jpg", "sunset.jpg"),
        ("a~b_c-d.e.png", "a~b_c-d.e.png"),
        ("../../etc/passwd", "etc-passwd"),
        (".hidden.png", "hidden.png"),
        ("--rf.png", "rf.png"),
        ("Café déjà vu.webp", "Caf-d-j-vu.webp"),
        ("a//b\\c", "a-b-c"),
        ("", "image"),
        ("...", "image"),
        ("日本", "image"),
        ("a" * 150 + ".jpeg", "a" * 95 + ".jpeg"),
        ("a" * 150, "a" * 100),
        ("a" * 150 + ".averyverylongextension", ("a" * 150 + ".averyverylongextension")[:100]),
    ],
)
def test_sanitize_filename(name: str, expected: str) -> None:
    assert sanitize_filename(name) == expected
    assert len(sanitize_filename(name)) <= 100


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("sunset.jpg", ("sunset", "jpg")),
        ("archive.tar.gz", ("archive.tar", "gz")),
        ("noext", ("noext", "")),
        ("trailing.", ("trailing", "")),
    ],
)
def test_split_stem(name: str, expected: tuple[str, str]) -> None:
    assert split_stem(name) == expected


@pytest.mark.parametrize(
    ("fmt", "mime"),
    [
        ("jpg", "image/jpeg"),
        ("png", "image/png"),
        ("webp", "image/webp"),
        ("avif", "image/avif"),
        ("gif", "image/gif"),
        ("heic", "image/heic"),
        ("svg", "image/svg+xml"),
    ],
)
def test_content_type(fmt: str, mime: str) -> None:
    assert content_type(fmt) == mime


def test_content_type_refuses_unknown_formats() -> None:
    with pytest.raises(ValueError, match="unknown image format 'bmp'"):
        content_type("bmp")


# Decoding and validation


@pytest.mark.parametrize(
    "raw",
    [
        PIC_STORE_DEFAULT,
        {"type": "cross", "formats": [{"format": "webp", "quality": 100}], "sizes": [{}]},
        {
            "type": "cross",
            "formats": [
                {
                    "format": "avif",
                    "quality": 55,
                    "effort": 6,
                    "condition": {"type": "must_not", "formats": ["svg"]},
                },
                {
                    "format": "png",
                    "condition": [{"type": "has_alpha", "value": True}, {"type": "min_bytes", "bytes": 1000}],
                },
                {"format": "gif", "condition": {"type": "animated", "value": True}},
            ],
            "sizes": [
                {"width": 300, "height": 300, "fit": "cover", "crop": "attention", "densities": [1, 2]},
                {"width": 1200, "height": 630, "preserve_aspect_ratio": False, "resize": "both"},
                {"height": 100, "resize": "up", "out_of_range": "skip"},
            ],
        },
    ],
)
def test_valid_profiles_round_trip(raw: dict[str, Any]) -> None:
    parsed = decode_profile(json.dumps(raw))
    validate_profile(parsed)
    encoded = encode_profile(parsed)
    assert decode_profile(encoded) == parsed
    assert json.loads(json.dumps(encoded)) == encoded


def test_pic_store_nulls_and_unknown_keys_are_accepted() -> None:
    parsed = decode_profile(
        {**PIC_STORE_DEFAULT, "comment": "extra", "formats": [{"format": "webp", "quality": None, "x": 1}]}
    )
    assert parsed.formats == (Format("webp"),)
    assert encode_profile(parsed)["sizes"] == [{"width": 200}, {"width": 400}]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"type": "cross",', "invalid JSON: input data was truncated"),
        (b"[]", "expected object, got array"),
        ({"type": "mosaic", "formats": [], "sizes": []}, "type: expected one of cross; got 'mosaic'"),
        ({"type": "cross", "sizes": []}, "missing required field 'formats'"),
        ({"type": "cross", "formats": [{}], "sizes": []}, "formats[0]: missing required field 'format'"),
        (
            {"type": "cross", "formats": [{"format": "bmp"}], "sizes": []},
            "formats[0].format: expected one of jpg, png, webp, avif, gif; got 'bmp'",
        ),
        (
            {
                "type": "cross",
                "formats": [{"format": "jpg"}, {"format": "webp", "quality": 120}],
                "sizes": [],
            },
            "formats[1].quality: expected <= 100",
        ),
        (
            {"type": "cross", "formats": [{"format": "jpg", "quality": 0}], "sizes": []},
            "formats[0].quality: expected >= 1",
        ),
        (
            {"type": "cross", "formats": [{"format": "jpg", "quality": "high"}], "sizes": []},
            "formats[0].quality: expected int | float | null, got str",
        ),
        (
            {"type": "cross", "formats": [{"format": "jpg", "condition": {"type": "maybe"}}], "sizes": []},
            "formats[0].condition.type: "
            "expected one of must, must_not, min_bytes, has_alpha, animated; got 'maybe'",
        ),
        (
            {
                "type": "cross",
                "formats": [{"format": "jpg", "condition": [{"type": "must", "formats": ["bmp"]}]}],
                "sizes": [],
            },
            "formats[0].condition[0].formats[0]: "
            "expected one of png, jpg, avif, webp, heic, gif, tiff, svg; got 'bmp'",
        ),
        (
            {
                "type": "cross",
                "formats": [{"format": "jpg", "condition": {"type": "must", "formats": []}}],
                "sizes": [],
            },
            "formats[0].condition.formats: expected array of length >= 1",
        ),
        (
            {
                "type": "cross",
                "formats": [{"format": "jpg", "condition": {"type": "has_alpha"}}],
                "sizes": [],
            },
            "formats[0].condition: missing required field 'value'",
        ),
        ({"type": "cross", "formats": [], "sizes": [{"width": 0}]}, "sizes[0].width: expected >= 1"),
        (
            {"type": "cross", "formats": [], "sizes": [{"width": 1.5}]},
            "sizes[0].width: expected int | null, got float",
        ),
        (
            {"type": "cross", "formats": [], "sizes": [{"width": 1, "fit": "stretch"}]},
            "sizes[0].fit: expected one of contain, cover, fill; got 'stretch'",
        ),
        (
            {"type": "cross", "formats": [], "sizes": [{"width": 1, "densities": [5]}]},
            "sizes[0].densities[0]: expected <= 4",
        ),
        (
            {"type": "cross", "formats": [], "sizes": [{"width": 1, "densities": []}]},
            "sizes[0].densities: expected array of length >= 1",
        ),
    ],
)
def test_shape_errors(raw: bytes | dict[str, Any], message: str) -> None:
    with pytest.raises(ProfileError) as caught:
        decode_profile(raw)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("formats", "sizes", "message"),
    [
        ([], [{"width": 1}], "formats: expected at least one format"),
        ([{"format": "jpg"}], [], "sizes: expected at least one size"),
        (
            [{"format": "avif"}, {"format": "webp"}, {"format": "avif", "quality": 40}],
            [{"width": 1}],
            "formats[0] and formats[2] are both avif, so their outputs would get the same names; "
            "merge them into one entry",
        ),
        (
            [{"format": "jpg"}],
            [{"width": 480}, {"width": 960}, {"width": 480, "resize": "both"}],
            "sizes[0] and sizes[2] both produce outputs labelled w480",
        ),
        (
            [{"format": "jpg"}],
            [
                {"width": 480, "densities": [1, 2]},
                {"width": 480, "height": 10},
                {"width": 480, "densities": [2]},
            ],
            "sizes[0] and sizes[2] both produce outputs labelled w480@2x",
        ),
        (
            [{"format": "avif", "effort": 10}],
            [{"width": 1}],
            "formats[0].effort: avif effort must be within 0..9, got 10",
        ),
        (
            [{"format": "webp", "effort": 7}],
            [{"width": 1}],
            "formats[0].effort: webp effort must be within 0..6, got 7",
        ),
        (
            [{"format": "png", "effort": 0}],
            [{"width": 1}],
            "formats[0].effort: png effort must be within 1..10, got 0",
        ),
        ([{"format": "jpg", "effort": 3}], [{"width": 1}], "formats[0].effort: jpg has no effort setting"),
        (
            [{"format": "jpg"}],
            [{"width": 300, "fit": "cover"}],
            'sizes[0]: fit "cover" needs both width and height',
        ),
        (
            [{"format": "jpg"}],
            [{"height": 300, "fit": "fill"}],
            'sizes[0]: fit "fill" needs both width and height',
        ),
        (
            [{"format": "jpg"}],
            [{"width": 3, "height": 3, "fit": "cover", "preserve_aspect_ratio": False}],
            'sizes[0]: preserve_aspect_ratio false contradicts fit "cover"; keep only fit',
        ),
        (
            [{"format": "jpg"}],
            [{"width": 3, "height": 3, "fit": "fill", "preserve_aspect_ratio": True}],
            'sizes[0]: preserve_aspect_ratio true contradicts fit "fill"; keep only fit',
        ),
        (
            [{"format": "jpg"}],
            [{"width": 3, "crop": "attention"}],
            'sizes[0].crop: only applies to fit "cover"',
        ),
        (
            [{"format": "jpg"}],
            [{"width": 3, "densities": [1, 2, 2]}],
            "sizes[0].densities: 2 listed more than once",
        ),
        (
            [{"format": "jpg"}],
            [{"densities": [1, 2]}],
            "sizes[0].densities: a size without width or height keeps the source size; use [1]",
        ),
    ],
)
def test_semantic_errors(formats: list[dict[str, Any]], sizes: list[dict[str, Any]], message: str) -> None:
    parsed = decode_profile({"type": "cross", "formats": formats, "sizes": sizes})
    with pytest.raises(ProfileError) as caught:
        validate_profile(parsed)
    assert str(caught.value) == message


def test_every_semantic_error_is_reported_at_once() -> None:
    parsed = decode_profile(
        {
            "type": "cross",
            "formats": [{"format": "gif", "effort": 1}],
            "sizes": [{"width": 1, "fit": "cover"}],
        }
    )
    with pytest.raises(ProfileError) as caught:
        validate_profile(parsed)
    assert str(caught.value) == (
        'formats[0].effort: gif has no effort setting; sizes[0]: fit "cover" needs both width and height'
    )


def test_profile_error_is_a_value_error() -> None:
    assert issubclass(ProfileError, ValueError)

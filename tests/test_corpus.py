"""Every file of ../shared/corpus/MANIFEST.tsv through the real API and a real worker.

`accept` files must end `ready` with outputs that decode (with pyvips, from the stored files) as upright,
sRGB, 8-bit images of the right size, animated where the source is and the format can animate; `reject`
files are refused at upload with the right status (or, for pixel data that is truncated past a good
header, end `failed` with a reason) and leave the rest of the tenant untouched.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pyvips
from conftest import CORPUS, TEST_PROFILE, Tenant, make_pipeline, make_tenant, wait_settled

MANIFEST = CORPUS / "MANIFEST.tsv"


@dataclass(frozen=True)
class Row:
    file: str
    expect: str
    display_size: str
    what: str

    @property
    def size(self) -> tuple[int, int]:
        w, h = self.display_size.split("x")
        return int(w), int(h)


def _rows() -> list[Row]:
    with MANIFEST.open(newline="") as f:
        return [
            Row(r["file"], r["expect"], r["display_size"], r["what it exercises"])
            for r in csv.DictReader(f, delimiter="\t")
        ]


ROWS = _rows()
ACCEPT = [r for r in ROWS if r.expect == "accept"]
REJECT = [r for r in ROWS if r.expect == "reject"]

# What the upload answers for each file refused at upload: status, error kind, words the message must hold.
REFUSED_AT_UPLOAD = {
    "corrupt-header.jpg": (422, "invalid", ["header"]),
    "giant-image.jpg": (422, "invalid", ["20000x14000", "280000000"]),
    "65536-uint32-limit.png": (422, "invalid", ["65536x65536", "4294967296"]),
    "circle.svg": (415, "unsupported_media_type", ["svg"]),
}
# Accepted at upload (the header is fine), fails in the worker.
FAILS_IN_WORKER = {"truncated.jpg"}
ANIMATED = {"animated-loop-3.gif": 10, "rotating-squares.webp": 9}
# Same picture as Landscape_1.jpg, stored turned and tagged with an EXIF orientation.
TURNED_LANDSCAPES = {"Landscape_6.jpg", "Landscape_8.jpg"}

# TEST_PROFILE (small sizes, AVIF effort 0) plus a GIF output for animated sources.
PROFILE: dict[str, Any] = {
    **TEST_PROFILE,
    "formats": [
        *TEST_PROFILE["formats"],
        {"format": "gif", "condition": {"type": "animated", "value": True}},
    ],
}
SOURCE_FORMAT = {
    ".jpg": "jpg",
    ".jpeg": "jpg",
    ".png": "png",
    ".gif": "gif",
    ".webp": "webp",
    ".avif": "avif",
    ".heic": "heic",
    ".tif": "tiff",
    ".tiff": "tiff",
}


def expected_formats(row: Row) -> set[str]:
    source = SOURCE_FORMAT[Path(row.file).suffix.lower()]
    formats = {"avif", "webp"}
    if source in ("jpg", "heic", "tiff"):
        formats.add("jpg")
    if source == "png":
        formats.add("png")
    if row.file in ANIMATED:
        formats.add("gif")
    return formats


def test_manifest_is_covered():
    """Every row is a real file with a known expectation, so a new corpus row cannot be skipped silently."""
    assert len(ACCEPT) >= 20 and len(REJECT) >= 5
    for row in ROWS:
        assert (CORPUS / row.file).is_file(), row.file
        assert row.expect in ("accept", "reject"), row
    assert {r.file for r in REJECT} == set(REFUSED_AT_UPLOAD) | FAILS_IN_WORKER
    for row in ACCEPT:
        w, h = row.size
        assert w > 0 and h > 0
        assert Path(row.file).suffix.lower() in SOURCE_FORMAT, row.file


@dataclass
class CorpusRun:
    tenant: Tenant
    pipe: dict[str, Any]
    sentinel: dict[str, Any]  # a ready image of the same tenant that no other upload may disturb
    uploads: dict[str, httpx.Response]


async def _quick_upload(
    client: httpx.AsyncClient, tenant: Tenant, pipe: dict[str, Any], name: str
) -> httpx.Response:
    return await client.post(
        f"/api/projects/{tenant.project}/quick_upload",
        params={"upload_profile": pipe["short_id"], "filename": name, "dedupe": "false"},
        content=(CORPUS / name).read_bytes(),
        headers=tenant.headers(),
    )


@pytest.fixture(scope="module")
async def corpus(client, sessions, worker) -> CorpusRun:
    """One tenant; a ready sentinel image; then every accepted file uploaded at once so the worker's two
    slots stay busy while the tests check the results one by one."""
    tenant = await make_tenant(sessions, "corpus")
    pipe = await make_pipeline(client, tenant, PROFILE)
    r = await _quick_upload(client, tenant, pipe, "Landscape_1.jpg")
    assert r.status_code == 201, r.text
    sentinel = await wait_settled(client, tenant, r.json()["id"])
    assert sentinel["status"] == "ready", sentinel
    uploads = {row.file: await _quick_upload(client, tenant, pipe, row.file) for row in ACCEPT}
    return CorpusRun(tenant, pipe, sentinel, uploads)


def _stored(storage_root: Path, run: CorpusRun, location: str) -> Path:
    return storage_root / run.pipe["storage_dir"] / location


def _load(path: Path) -> pyvips.Image:
    return pyvips.Image.new_from_file(str(path))


def _pages(image: pyvips.Image) -> int:
    return int(image.get("n-pages")) if image.get_typeof("n-pages") else 1


def _difference(a: pyvips.Image, b: pyvips.Image) -> float:
    """Mean absolute difference per band value of two same-sized 3-band images."""
    assert (a.width, a.height) == (b.width, b.height), ((a.width, a.height), (b.width, b.height))
    return float((a.extract_band(0, n=3).cast("float") - b.extract_band(0, n=3).cast("float")).abs().avg())


def _alpha_is_opaque(row: Row) -> bool:
    """Whether the source's alpha channel is opaque everywhere, decoded independently of picstore."""
    source = pyvips.Image.new_from_file(str(CORPUS / row.file))
    assert source.hasalpha(), row.file
    return bool(source[source.bands - 1].min() == (65535 if source.format == "ushort" else 255))


def _upright_reference(row: Row, width: int) -> pyvips.Image:
    """The picture as it should look, decoded independently of picstore (libvips applies EXIF orientation)."""
    path = str(CORPUS / ("Landscape_1.jpg" if row.file in TURNED_LANDSCAPES else row.file))
    icc = (
        {"output_profile": "srgb"} if pyvips.Image.new_from_file(path).get_typeof("icc-profile-data") else {}
    )
    return pyvips.Image.thumbnail(path, width, height=10_000_000, **icc).colourspace("srgb").copy_memory()


def _accept_param(row: Row) -> Any:
    return pytest.param(row, id=row.file)


@pytest.mark.parametrize("row", [_accept_param(r) for r in ACCEPT])
async def test_accepted_file_converts(client, corpus, storage_root, row):
    run, width, height = corpus, *row.size
    r = run.uploads[row.file]
    assert r.status_code == 201, r.text
    uploaded = r.json()
    assert (uploaded["width"], uploaded["height"]) == (width, height), "display size from the header"
    done = await wait_settled(client, run.tenant, uploaded["id"], timeout=240)
    assert done["status"] == "ready", done
    assert done["error"] is None
    assert (done["width"], done["height"]) == (width, height)
    assert done["frames"] == ANIMATED.get(row.file, 1)

    outputs = done["output"]
    assert {o["format"] for o in outputs} == expected_formats(row)
    assert all(o["status"] in ("ready", "skipped") for o in outputs), outputs
    ready = [o for o in outputs if o["status"] == "ready"]
    assert {o["format"] for o in ready} == expected_formats(row) - (
        {"avif"} if row.file in ANIMATED else set()
    )
    for o in outputs:
        if o["status"] == "skipped":
            assert o["reason"], o
            if o["format"] == "avif" and row.file in ANIMATED:
                assert "animat" in o["reason"], o
            continue
        path = _stored(storage_root, run, o["location"])
        assert path.stat().st_size == o["file_size"] > 0, o
        image = _load(path)
        where = f"{o['location']} ({o['format']} {o['width']}x{o['height']})"
        assert image.interpretation == "srgb", f"{where}: {image.interpretation}"
        assert image.format == "uchar", f"{where}: {image.format}"
        assert image.bands in (3, 4), f"{where}: {image.bands} bands"
        assert (image.width, image.height) == (o["width"], o["height"]), where
        # Upright and undistorted: the display size's aspect ratio (to rounding), never upscaled.
        assert abs(image.width * height - image.height * width) <= max(width, height) / 2, where
        assert image.width <= width and image.height <= height, where
        assert image.width in (64, 160, width), where
        assert not image.get_typeof("exif-data"), f"{where}: EXIF left in the output"
        if o["format"] == "jpg":
            assert image.bands == 3, where
        elif done["has_alpha"] and not image.hasalpha():
            # Encoders (libwebp) may leave out an alpha channel that is opaque everywhere; nothing else.
            assert _alpha_is_opaque(row), f"{where}: alpha dropped"
        if row.file in ANIMATED and o["format"] in ("webp", "gif"):
            assert _pages(image) == ANIMATED[row.file], f"{where}: {_pages(image)} pages"
        else:
            assert _pages(image) == 1, where

    if row.file in TURNED_LANDSCAPES or row.file == "Portrait_6.jpg":
        out = next(o for o in ready if o["format"] == "jpg" and o["width"] == 160)
        image = _load(_stored(storage_root, run, out["location"]))
        reference = _upright_reference(row, 160)
        same, turned = _difference(image, reference), _difference(image, reference.rot180())
        assert same < 12 and turned > 2 * same, (same, turned)


def test_upright_comparison_can_fail():
    """The orientation check above tells a turned picture from an upright one."""
    reference = _upright_reference(ACCEPT[0], 160)
    wrong = pyvips.Image.thumbnail(str(CORPUS / "Landscape_6.jpg"), 160, height=10_000_000, no_rotate=True)
    assert (wrong.width, wrong.height) != (reference.width, reference.height)
    assert _difference(reference, reference.rot180()) > 12


async def _project_images(client: httpx.AsyncClient, tenant: Tenant) -> list[dict[str, Any]]:
    r = await client.get(
        f"/api/projects/{tenant.project}/images", params={"limit": 100}, headers=tenant.headers()
    )
    assert r.status_code == 200, r.text
    assert r.json()["next_after"] is None
    images: list[dict[str, Any]] = r.json()["images"]
    return images


def _files(storage_root: Path, run: CorpusRun) -> set[Path]:
    return {p for p in (storage_root / run.pipe["storage_dir"]).rglob("*") if p.is_file()}


async def _assert_sentinel_untouched(client: httpx.AsyncClient, run: CorpusRun, storage_root: Path) -> None:
    r = await client.get(f"/api/images/{run.sentinel['id']}", headers=run.tenant.headers())
    assert r.status_code == 200, r.text
    now = r.json()
    assert now["status"] == "ready"
    assert [(o["id"], o["location"], o["status"]) for o in now["output"]] == [
        (o["id"], o["location"], o["status"]) for o in run.sentinel["output"]
    ]
    for o in now["output"]:
        if o["status"] == "ready":
            assert _stored(storage_root, run, o["location"]).stat().st_size == o["file_size"]
    assert _stored(storage_root, run, now["location"]).is_file()


@pytest.mark.parametrize("name", sorted(REFUSED_AT_UPLOAD))
async def test_rejected_file_refused_at_upload(client, corpus, storage_root, name):
    run = corpus
    status, kind, words = REFUSED_AT_UPLOAD[name]
    images_before, files_before = await _project_images(client, run.tenant), _files(storage_root, run)
    r = await _quick_upload(client, run.tenant, run.pipe, name)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["kind"] == kind, error
    for word in words:
        assert word in error["message"], error
    assert [i["id"] for i in await _project_images(client, run.tenant)] == [i["id"] for i in images_before]
    assert _files(storage_root, run) == files_before, "a refused upload left an object in storage"
    await _assert_sentinel_untouched(client, run, storage_root)


async def test_truncated_file_fails_with_reason(client, corpus, storage_root):
    run = corpus
    r = await _quick_upload(client, run.tenant, run.pipe, "truncated.jpg")
    assert r.status_code == 201, r.text
    done = await wait_settled(client, run.tenant, r.json()["id"], timeout=240)
    assert done["status"] == "failed", done
    assert done["error"] and "truncated" in done["error"].lower(), done
    assert done["output"], "the planned outputs are listed with their failure"
    for o in done["output"]:
        assert o["status"] in ("failed", "skipped") and o["reason"], o
        assert not _stored(storage_root, run, o["location"]).exists(), o
    picture = await client.get(f"/api/images/{done['id']}/picture", headers=run.tenant.headers())
    assert picture.status_code == 409 and "failed" in picture.json()["error"]["message"], picture.text
    await _assert_sentinel_untouched(client, run, storage_root)

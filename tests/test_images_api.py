"""The image API end to end: create + upload, refusals, quick_upload dedupe, lookup by hash, replacing an
original, reconverting after a profile change, update, delete, listing, `<picture>`, the permission matrix,
and the purge of obsolete outputs. Real database, local storage, and a real worker where outputs matter.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import CORPUS, Tenant, make_pipeline, wait_settled
from liveserver import running_api
from procrastinate.exceptions import AlreadyEnqueued

from picstore import ids, jobs

JPEG = (CORPUS / "Landscape_1.jpg").read_bytes()  # 139 kB, 600x450
OTHER_JPEG = (CORPUS / "flowers.jpeg").read_bytes()  # 85 kB, 1920x1080
PNG = (CORPUS / "with-alpha.png").read_bytes()  # 1.4 kB

SMALL = {
    "type": "cross",
    "formats": [
        {"format": "webp", "quality": 70, "effort": 0},
        {"format": "avif", "quality": 50, "effort": 0},
    ],
    "sizes": [{"width": 64}, {"width": 160}],
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def files_under(storage_root: Path, pipe: dict[str, Any]) -> set[Path]:
    return {p for p in (storage_root / pipe["storage_dir"]).rglob("*") if p.is_file()}


def stored(storage_root: Path, pipe: dict[str, Any], location: str) -> Path:
    return storage_root / pipe["storage_dir"] / location


async def create_image(client: httpx.AsyncClient, tenant: Tenant, pipe: dict[str, Any], **body: Any) -> str:
    r = await client.post(
        "/api/images",
        json={"filename": "photo.jpg", "upload_profile_id": pipe["upload_profile"], **body},
        headers=tenant.headers(),
    )
    assert r.status_code == 201, r.text
    image_id: str = r.json()["id"]
    return image_id


async def quick_upload(
    client: httpx.AsyncClient, tenant: Tenant, pipe: dict[str, Any], data: bytes = JPEG, **params: Any
) -> httpx.Response:
    return await client.post(
        f"/api/projects/{tenant.project}/quick_upload",
        params={"upload_profile": pipe["short_id"], "filename": "photo.jpg", **params},
        content=data,
        headers=tenant.headers(),
    )


async def ready_image(
    client: httpx.AsyncClient, tenant: Tenant, pipe: dict[str, Any], data: bytes = JPEG
) -> dict[str, Any]:
    r = await quick_upload(client, tenant, pipe, data, dedupe="false")
    assert r.status_code == 201, r.text
    done = await wait_settled(client, tenant, r.json()["id"])
    assert done["status"] == "ready", done
    return done


async def get_image(client: httpx.AsyncClient, tenant: Tenant, image_id: str) -> dict[str, Any]:
    r = await client.get(f"/api/images/{image_id}", headers=tenant.headers())
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not true after {timeout} s: {what}")
        await asyncio.sleep(0.2)


async def chunked(data: bytes, size: int = 16 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def by_id(image: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {o["id"]: o for o in image["output"]}


# Create, then upload the raw body


async def test_create_then_upload_to_ready(client, tenant, worker, storage_root):
    pipe = await make_pipeline(client, tenant, SMALL)
    image_id = await create_image(client, tenant, pipe, alt_text="hello")
    created = await get_image(client, tenant, image_id)
    assert (created["status"], created["hash"], created["format"], created["output"]) == (
        "awaiting_upload",
        None,
        None,
        [],
    )
    assert created["alt_text"] == "hello"
    assert (
        created["location"].endswith(".jpg")
        and ids.short(ids.parse_id(ids.BASE_IMAGE, image_id)) in created["location"]
    )
    assert created["location"].startswith("orig/")
    sneaky = await get_image(
        client, tenant, await create_image(client, tenant, pipe, filename="../../../etc/passwd.jpg")
    )
    assert (
        sneaky["location"].startswith("orig/")
        and ".." not in sneaky["location"]
        and sneaky["filename"] == "../../../etc/passwd.jpg"
    )

    r = await client.post(f"/api/images/{image_id}/upload", content=JPEG, headers=tenant.headers())
    assert r.status_code == 200, r.text
    uploaded = r.json()
    assert uploaded["status"] == "queued"
    assert (uploaded["hash"], uploaded["file_size"], uploaded["format"]) == (sha256(JPEG), len(JPEG), "jpg")
    assert (uploaded["width"], uploaded["height"]) == (600, 450)
    assert stored(storage_root, pipe, uploaded["location"]).read_bytes() == JPEG

    done = await wait_settled(client, tenant, image_id)
    assert done["status"] == "ready", done
    assert sorted((o["format"], o["width"], o["height"]) for o in done["output"]) == [
        ("avif", 64, 48),
        ("avif", 160, 120),
        ("webp", 64, 48),
        ("webp", 160, 120),
    ]
    for o in done["output"]:
        assert o["status"] == "ready"
        assert stored(storage_root, pipe, o["location"]).stat().st_size == o["file_size"] > 0
        assert o["url"] == f"http://picstore.test/files/{pipe['storage_dir']}/{o['location']}"


# Refused uploads change nothing

LIMITS = {"max_bytes": 100_000, "allowed_formats": ["jpg"]}
assert len(OTHER_JPEG) < LIMITS["max_bytes"] < len(JPEG)

# name: (body, status, error kind, words in the message)
REFUSALS: dict[str, tuple[Callable[[], Any], int, str, list[str]]] = {
    "too_large": (lambda: JPEG, 413, "payload_too_large", ["100000"]),
    "too_large_chunked": (lambda: chunked(JPEG), 413, "payload_too_large", ["100000"]),
    "not_an_image": (
        lambda: b"hello, this is plain text and not an image at all\n" * 20,
        415,
        "unsupported_media_type",
        [],
    ),
    "format_not_allowed": (lambda: PNG, 415, "unsupported_media_type", ["png"]),
    "empty": (lambda: b"", 415, "unsupported_media_type", ["empty"]),
    "corrupt_header": (lambda: (CORPUS / "corrupt-header.jpg").read_bytes(), 422, "invalid", []),
}


@pytest.mark.parametrize("route", ["upload", "quick_upload"])
@pytest.mark.parametrize("case", sorted(REFUSALS))
async def test_refused_upload_changes_nothing(client, tenant, storage_root, route, case):
    body, status, kind, words = REFUSALS[case]
    pipe = await make_pipeline(client, tenant, SMALL, **LIMITS)
    image_id = await create_image(client, tenant, pipe)
    before = await get_image(client, tenant, image_id)
    if route == "upload":
        r = await client.post(f"/api/images/{image_id}/upload", content=body(), headers=tenant.headers())
    else:
        r = await client.post(
            f"/api/projects/{tenant.project}/quick_upload",
            params={"upload_profile": pipe["short_id"]},
            content=body(),
            headers=tenant.headers(),
        )
    assert r.status_code == status, r.text
    assert r.json()["error"]["kind"] == kind
    for word in words:
        assert word in r.json()["error"]["message"], r.text
    if case == "too_large_chunked":
        assert (
            "content-length" not in r.request.headers and r.request.headers["transfer-encoding"] == "chunked"
        )
    assert await get_image(client, tenant, image_id) == before
    listed = await client.get(f"/api/projects/{tenant.project}/images", headers=tenant.headers())
    assert [i["id"] for i in listed.json()["images"]] == [image_id], "no image row was added"
    assert files_under(storage_root, pipe) == set(), "a refused upload left an object in storage"


async def test_accepted_upload_under_the_limits(client, tenant, storage_root):
    """The refusals above are about the limits, not about the profile refusing everything."""
    pipe = await make_pipeline(client, tenant, SMALL, **LIMITS)
    image_id = await create_image(client, tenant, pipe)
    r = await client.post(
        f"/api/images/{image_id}/upload", content=chunked(OTHER_JPEG), headers=tenant.headers()
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "queued" and r.json()["hash"] == sha256(OTHER_JPEG)
    assert stored(storage_root, pipe, r.json()["location"]).read_bytes() == OTHER_JPEG


@pytest.fixture(scope="module")
def live_server(env) -> Iterator[str]:
    """The app under uvicorn (`picstore serve`) on a real socket, so request bodies really arrive chunked."""
    with running_api(env) as url:
        yield url


async def test_chunked_upload_limit_on_a_real_server(client, tenant, storage_root, live_server):
    pipe = await make_pipeline(client, tenant, SMALL, **LIMITS)
    refused, accepted = await create_image(client, tenant, pipe), await create_image(client, tenant, pipe)
    before = await get_image(client, tenant, refused)
    async with httpx.AsyncClient(base_url=live_server, headers=tenant.headers(), timeout=30) as real:
        r = await real.post(f"/api/images/{refused}/upload", content=chunked(JPEG))
        assert (
            r.request.headers.get("transfer-encoding") == "chunked"
            and "content-length" not in r.request.headers
        )
        assert r.status_code == 413, r.text
        assert r.json()["error"]["kind"] == "payload_too_large"
        r = await real.post(f"/api/images/{refused}/upload", content=JPEG)
        assert r.status_code == 413, r.text
        r = await real.post(f"/api/images/{accepted}/upload", content=chunked(OTHER_JPEG))
        assert r.status_code == 200, r.text
    assert await get_image(client, tenant, refused) == before
    accepted_image = await get_image(client, tenant, accepted)
    assert accepted_image["hash"] == sha256(OTHER_JPEG)
    assert files_under(storage_root, pipe) == {stored(storage_root, pipe, accepted_image["location"])}


# quick_upload dedupe and lookup by hash


async def test_quick_upload_dedupe(client, tenant):
    pipe = await make_pipeline(client, tenant, SMALL)
    first = await quick_upload(client, tenant, pipe)
    assert first.status_code == 201, first.text
    again = await quick_upload(client, tenant, pipe)
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]
    fresh = await quick_upload(client, tenant, pipe, dedupe="false")
    assert fresh.status_code == 201, fresh.text
    assert fresh.json()["id"] != first.json()["id"]
    assert fresh.json()["location"] != first.json()["location"], "two uploads never share an original"
    other_profile = await make_pipeline(client, tenant, SMALL)
    elsewhere = await quick_upload(client, tenant, other_profile)
    assert elsewhere.status_code == 201, "dedupe is per upload profile"
    assert elsewhere.json()["id"] not in (first.json()["id"], fresh.json()["id"])


async def test_image_by_hash(client, tenant, other_tenant):
    pipe = await make_pipeline(client, tenant, SMALL)
    r = await quick_upload(client, tenant, pipe)
    assert r.status_code == 201, r.text
    image_id, digest = r.json()["id"], sha256(JPEG)
    for text in (digest, digest.upper()):
        found = await client.get(f"/api/image_by_hash/{text}", headers=tenant.headers())
        assert found.status_code == 200, found.text
        assert found.json()["id"] == image_id and found.json()["hash"] == digest
    missing = await client.get(f"/api/image_by_hash/{sha256(b'nothing')}", headers=tenant.headers())
    assert missing.status_code == 404, missing.text
    foreign = await client.get(f"/api/image_by_hash/{digest}", headers=other_tenant.headers())
    assert foreign.status_code == 404, foreign.text
    assert foreign.json() == missing.json(), "another team's image is indistinguishable from a missing one"
    for bad in ("abc", digest[:-1] + "g", digest + "0", "z" * 64):
        r = await client.get(f"/api/image_by_hash/{bad}", headers=tenant.headers())
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["error"]["kind"] == "bad_request"


async def test_image_by_hash_answers_what_the_caller_may_read(client, tenant):
    """Same bytes in two projects: each reader gets the copy it may read; a key reading none gets 403."""
    here = await quick_upload(client, tenant, await make_pipeline(client, tenant, SMALL))
    r = await client.post("/api/projects", json={"name": "elsewhere"}, headers=tenant.headers())
    there_tenant = dataclasses.replace(tenant, project_id=ids.parse_id(ids.PROJECT, r.json()["id"]))
    there = await quick_upload(client, there_tenant, await make_pipeline(client, there_tenant, SMALL))
    assert here.status_code == there.status_code == 201
    url = f"/api/image_by_hash/{sha256(JPEG)}"
    expected = {
        await tenant.key_with(("project:read", tenant.project_id)): here.json()["id"],
        await tenant.key_with(("project:read", there_tenant.project_id)): there.json()["id"],
        tenant.admin_key: there.json()["id"],  # the newest
    }
    for key, image_id in expected.items():
        r = await client.get(url, headers=tenant.headers(key))
        assert r.status_code == 200 and r.json()["id"] == image_id, r.text
    r = await client.get(url, headers=tenant.headers(await tenant.key_with(("project:create", None))))
    assert r.status_code == 403 and r.json()["error"]["message"] == "Missing permission project:read", r.text


# Replacing an original


async def test_upload_again_replaces_the_original(client, tenant, worker, storage_root):
    pipe = await make_pipeline(client, tenant, SMALL)
    old = await ready_image(client, tenant, pipe, JPEG)
    # A refused replacement leaves the image, its outputs and its original as they were.
    for body in (b"not an image", b"", PNG[:40]):
        r = await client.post(f"/api/images/{old['id']}/upload", content=body, headers=tenant.headers())
        assert r.status_code in (415, 422), r.text
    assert await get_image(client, tenant, old["id"]) == old
    assert stored(storage_root, pipe, old["location"]).read_bytes() == JPEG

    r = await client.post(f"/api/images/{old['id']}/upload", content=OTHER_JPEG, headers=tenant.headers())
    assert r.status_code == 200, r.text
    assert r.json()["hash"] == sha256(OTHER_JPEG)
    new = await wait_settled(client, tenant, old["id"])
    assert new["status"] == "ready", new
    assert (new["width"], new["height"], new["hash"]) == (1920, 1080, sha256(OTHER_JPEG))
    assert stored(storage_root, pipe, new["location"]).read_bytes() == OTHER_JPEG
    assert new["location"] != old["location"], "originals are content-versioned too"
    assert not stored(storage_root, pipe, old["location"]).exists(), "the replaced original is deleted"

    outputs, old_ids = by_id(new), set(by_id(old))
    assert {i for i, o in outputs.items() if o["status"] == "obsolete"} == old_ids
    fresh = [o for i, o in outputs.items() if i not in old_ids]
    assert len(fresh) == 4 and all(o["status"] == "ready" for o in fresh), fresh
    old_locations = {o["location"] for o in old["output"]}
    assert not {o["location"] for o in fresh} & old_locations, "new outputs get new (content-versioned) names"
    assert sorted((o["format"], o["width"], o["height"]) for o in fresh) == [
        ("avif", 64, 36),
        ("avif", 160, 90),
        ("webp", 64, 36),
        ("webp", 160, 90),
    ]
    for o in fresh:
        assert stored(storage_root, pipe, o["location"]).stat().st_size == o["file_size"]
    for location in old_locations:  # kept until the profile's retention passes (7 days by default)
        assert stored(storage_root, pipe, location).is_file()
    gone = await client.get(f"/api/image_by_hash/{sha256(JPEG)}", headers=tenant.headers())
    assert gone.status_code == 404, "the replaced bytes no longer name the image"


async def test_replacing_back_with_earlier_bytes(client, tenant, worker, storage_root):
    """A -> B -> A: A's outputs come back under their old names (their rows revived, not duplicated)."""
    pipe = await make_pipeline(client, tenant, SMALL)
    first = await ready_image(client, tenant, pipe, JPEG)
    for data in (OTHER_JPEG, JPEG):
        r = await client.post(f"/api/images/{first['id']}/upload", content=data, headers=tenant.headers())
        assert r.status_code == 200, r.text
        done = await wait_settled(client, tenant, first["id"])
        assert done["status"] == "ready", done
    ready = {o["location"]: o for o in done["output"] if o["status"] == "ready"}
    assert set(ready) == {o["location"] for o in first["output"]}
    assert len(done["output"]) == 8 and sum(o["status"] == "obsolete" for o in done["output"]) == 4
    for location, o in ready.items():
        assert stored(storage_root, pipe, location).stat().st_size == o["file_size"] > 0


# Reconvert after the conversion profile changed


async def test_reconvert_after_profile_change(client, tenant, worker, storage_root):
    pipe = await make_pipeline(client, tenant, SMALL)
    before = await ready_image(client, tenant, pipe)
    r = await client.post(f"/api/images/{before['id']}/reconvert", headers=tenant.headers())
    assert r.status_code == 200 and r.json() == {"images": []}, "nothing to do while the profile is unchanged"
    assert await get_image(client, tenant, before["id"]) == before

    r = await client.get(
        f"/api/projects/{tenant.project}/upload_profiles/{pipe['upload_profile']}", headers=tenant.headers()
    )
    profile_id = r.json()["conversion_profile_id"]
    changed = {
        "type": "cross",
        "formats": [{"format": "webp", "quality": 70, "effort": 0}, {"format": "jpg", "quality": 80}],
        "sizes": [{"width": 64}, {"width": 100}],
    }
    r = await client.put(
        f"/api/projects/{tenant.project}/conversion_profiles/{profile_id}",
        json={"name": "changed", "output": changed},
        headers=tenant.headers(),
    )
    assert r.status_code == 200, r.text

    r = await client.post(f"/api/images/{before['id']}/reconvert", headers=tenant.headers())
    assert r.status_code == 200, r.text
    queued = set(r.json()["images"])
    after = await wait_settled(client, tenant, before["id"])
    assert after["status"] == "ready", after
    old, new = by_id(before), by_id(after)
    kept = next(i for i, o in old.items() if (o["format"], o["width"]) == ("webp", 64))
    assert new[kept] == {**old[kept], "updated": new[kept]["updated"]}, "the unchanged output is untouched"
    assert stored(storage_root, pipe, new[kept]["location"]).is_file()
    assert {i for i, o in new.items() if o["status"] == "obsolete"} == set(old) - {kept}
    assert queued == set(new) - set(old)
    assert sorted((new[i]["format"], new[i]["width"], new[i]["status"]) for i in queued) == [
        ("jpg", 64, "ready"),
        ("jpg", 100, "ready"),
        ("webp", 100, "ready"),
    ]
    for i in queued:
        assert stored(storage_root, pipe, new[i]["location"]).stat().st_size == new[i]["file_size"] > 0


async def test_reconvert_before_upload_conflicts(client, tenant):
    pipe = await make_pipeline(client, tenant, SMALL)
    image_id = await create_image(client, tenant, pipe)
    r = await client.post(f"/api/images/{image_id}/reconvert", headers=tenant.headers())
    assert r.status_code == 409, r.text


# Update


async def test_update_alt_text_and_focal_point(client, tenant):
    pipe = await make_pipeline(client, tenant, SMALL)
    image_id = await create_image(client, tenant, pipe, alt_text="old")
    r = await client.put(
        f"/api/images/{image_id}",
        json={"alt_text": "a red door", "focal_point": {"x": 0.25, "y": 0.75}},
        headers=tenant.headers(),
    )
    assert r.status_code == 200, r.text
    assert (r.json()["alt_text"], r.json()["focal_point"]) == ("a red door", {"x": 0.25, "y": 0.75})
    r = await client.put(f"/api/images/{image_id}", json={"alt_text": ""}, headers=tenant.headers())
    assert r.status_code == 200, r.text
    got = await get_image(client, tenant, image_id)
    assert (got["alt_text"], got["focal_point"]) == ("", {"x": 0.25, "y": 0.75}), (
        "a missing field keeps its value"
    )
    for bad in (
        {"focal_point": {"x": 1.5, "y": 0.5}},
        {"focal_point": {"x": 0.5}},
        {"alt": "typo"},
        {"alt_text": "x" * 5001},
    ):
        r = await client.put(f"/api/images/{image_id}", json=bad, headers=tenant.headers())
        assert r.status_code == 400, (bad, r.text)
    assert await get_image(client, tenant, image_id) == got


async def test_focal_point_moves_cover_crops(client, tenant, worker, storage_root):
    cover = {
        "type": "cross",
        "formats": [{"format": "webp", "quality": 70, "effort": 0}],
        "sizes": [{"width": 64, "height": 64, "fit": "cover"}],
    }
    pipe = await make_pipeline(client, tenant, cover)
    before = await ready_image(client, tenant, pipe)
    (old,) = before["output"]
    r = await client.put(
        f"/api/images/{before['id']}", json={"focal_point": {"x": 0.0, "y": 0.5}}, headers=tenant.headers()
    )
    assert r.status_code == 200, r.text
    after = await wait_settled(client, tenant, before["id"])
    assert after["status"] == "ready", after
    assert by_id(after)[old["id"]]["status"] == "obsolete"
    (moved,) = [o for o in after["output"] if o["status"] == "ready"]
    assert moved["location"] != old["location"] and (moved["width"], moved["height"]) == (64, 64)
    assert (
        stored(storage_root, pipe, moved["location"]).read_bytes()
        != stored(storage_root, pipe, old["location"]).read_bytes()
    )


# Delete


async def test_delete_removes_every_file(client, tenant, worker, storage_root):
    pipe = await make_pipeline(client, tenant, SMALL)
    doomed, kept = (
        await ready_image(client, tenant, pipe, JPEG),
        await ready_image(client, tenant, pipe, OTHER_JPEG),
    )
    r = await client.post(
        f"/api/images/{doomed['id']}/upload",
        content=(CORPUS / "Portrait_6.jpg").read_bytes(),
        headers=tenant.headers(),
    )
    assert r.status_code == 200, r.text
    doomed = await wait_settled(client, tenant, doomed["id"])  # 4 ready outputs and 4 obsolete ones
    paths = [stored(storage_root, pipe, doomed["location"])] + [
        stored(storage_root, pipe, o["location"]) for o in doomed["output"]
    ]
    assert len(paths) == 9 and all(p.is_file() for p in paths)
    r = await client.delete(f"/api/images/{doomed['id']}", headers=tenant.headers())
    assert r.status_code == 202, r.text
    r = await client.get(f"/api/images/{doomed['id']}", headers=tenant.headers())
    assert r.status_code == 404, r.text

    async def files_gone() -> bool:
        return not any(p.exists() for p in paths)

    await eventually(files_gone, "the original and every output deleted from storage")

    async def unlisted() -> bool:
        r = await client.get(f"/api/projects/{tenant.project}/images", headers=tenant.headers())
        return [i["id"] for i in r.json()["images"]] == [kept["id"]]

    await eventually(unlisted, "the deleted image leaves the listing")
    assert (await client.delete(f"/api/images/{doomed['id']}", headers=tenant.headers())).status_code == 404
    assert (
        await client.get(f"/api/image_by_hash/{sha256(JPEG)}", headers=tenant.headers())
    ).status_code == 404
    assert await get_image(client, tenant, kept["id"]) == kept
    for o in kept["output"]:
        assert stored(storage_root, pipe, o["location"]).is_file()


# List


async def test_list_pagination_and_filters(client, tenant, worker):
    first, second = await make_pipeline(client, tenant, SMALL), await make_pipeline(client, tenant, SMALL)
    waiting = [await create_image(client, tenant, first) for _ in range(5)]
    ready = (await ready_image(client, tenant, second))["id"]
    every = [*waiting, ready]
    assert every == sorted(every, key=lambda i: ids.parse_id(ids.BASE_IMAGE, i)), "ids sort by creation"

    async def page(**params: Any) -> dict[str, Any]:
        r = await client.get(
            f"/api/projects/{tenant.project}/images", params=params, headers=tenant.headers()
        )
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    seen, after, sizes = [], None, []
    while True:
        body = await page(limit=4, **({"after": after} if after else {}))
        seen += [i["id"] for i in body["images"]]
        sizes.append(len(body["images"]))
        after = body["next_after"]
        if after is None:
            break
        assert after == body["images"][-1]["id"]
    assert seen == every and sizes == [4, 2]
    body = await page(limit=3)
    assert [i["id"] for i in body["images"]] == every[:3] and body["next_after"] == every[2]
    body = await page()
    assert [i["id"] for i in body["images"]] == every and body["next_after"] is None

    assert [i["id"] for i in (await page(status="awaiting_upload"))["images"]] == waiting
    assert [i["id"] for i in (await page(status="ready"))["images"]] == [ready]
    assert (await page(status="failed"))["images"] == []
    assert [i["id"] for i in (await page(upload_profile=second["upload_profile"]))["images"]] == [ready]
    assert [
        i["id"]
        for i in (await page(upload_profile=first["upload_profile"], limit=2, after=waiting[1]))["images"]
    ] == waiting[2:4]
    assert (await page(upload_profile=second["upload_profile"], status="awaiting_upload"))["images"] == []
    listed = next(i for i in (await page())["images"] if i["id"] == ready)
    assert listed == await get_image(client, tenant, ready), "the listing shows the same image as GET"


BAD_QUERIES = [
    ("GET", "/api/projects/{project}/images", {"limit": "0"}),
    ("GET", "/api/projects/{project}/images", {"limit": "10000"}),
    ("GET", "/api/projects/{project}/images", {"limit": "-1"}),
    ("GET", "/api/projects/{project}/images", {"limit": "ten"}),
    ("GET", "/api/projects/{project}/images", {"status": "bogus"}),
    ("GET", "/api/projects/{project}/images", {"status": "deleted"}),
    ("GET", "/api/projects/{project}/images", {"after": "garbage"}),
    ("GET", "/api/projects/{project}/images", {"after": "x" * 5000}),
    ("GET", "/api/projects/{project}/images", {"upload_profile": "garbage"}),
    ("GET", "/api/images/{image}/picture", {"format": "xml"}),
    ("GET", "/api/images/{image}/picture", {"fallback": "yes"}),
    ("GET", "/api/images/{image}/picture", {"placeholder": "maybe"}),
    ("GET", "/api/images/{image}/picture", {"sizes": "x" * 2000}),
    ("POST", "/api/projects/{project}/quick_upload", {"dedupe": "maybe"}),
    ("POST", "/api/projects/{project}/quick_upload", {"filename": ""}),
    ("POST", "/api/projects/{project}/quick_upload", {"upload_profile": "nope"}),
]


@pytest.mark.parametrize(("method", "path", "params"), BAD_QUERIES, ids=lambda v: str(v)[:40])
async def test_absurd_query_values_are_4xx(client, tenant, method, path, params):
    pipe = await make_pipeline(client, tenant, SMALL)
    image_id = await create_image(client, tenant, pipe)
    url = path.format(project=tenant.project, image=image_id)
    r = await client.request(
        method, url, params=params, headers=tenant.headers(), content=JPEG if method == "POST" else None
    )
    assert 400 <= r.status_code < 500, r.text
    assert r.status_code not in (401, 403, 404), r.text
    assert set(r.json()["error"]) == {"kind", "message"}


# <picture>


async def test_picture_conflicts_until_something_is_ready(client, tenant, worker):
    pipe = await make_pipeline(client, tenant, SMALL)
    waiting = await create_image(client, tenant, pipe)
    for params in ({}, {"fallback": "original"}):
        r = await client.get(f"/api/images/{waiting}/picture", params=params, headers=tenant.headers())
        assert r.status_code == 409, r.text
        assert "awaiting_upload" in r.json()["error"]["message"]

    r = await quick_upload(client, tenant, pipe, (CORPUS / "truncated.jpg").read_bytes())
    failed = await wait_settled(client, tenant, r.json()["id"])
    assert failed["status"] == "failed" and not any(o["status"] == "ready" for o in failed["output"])
    r = await client.get(f"/api/images/{failed['id']}/picture", headers=tenant.headers())
    assert r.status_code == 409 and "failed" in r.json()["error"]["message"], r.text
    r = await client.get(
        f"/api/images/{failed['id']}/picture",
        params={"fallback": "original", "format": "json"},
        headers=tenant.headers(),
    )
    assert r.status_code == 200, r.text
    assert r.json()["sources"] == []
    assert (r.json()["img"]["src"], r.json()["img"]["format"]) == (failed["url"], "jpg")
    r = await client.get(
        f"/api/images/{failed['id']}/picture", params={"fallback": "original"}, headers=tenant.headers()
    )
    assert r.status_code == 200 and f'src="{failed["url"]}"' in r.text, r.text

    good = await ready_image(client, tenant, pipe)
    plain = await client.get(f"/api/images/{good['id']}/picture", headers=tenant.headers())
    r = await client.get(
        f"/api/images/{good['id']}/picture", params={"fallback": "original"}, headers=tenant.headers()
    )
    assert r.status_code == plain.status_code == 200 and r.text == plain.text, (
        "with outputs ready the fallback changes nothing"
    )
    assert 'type="image/avif"' in r.text and 'type="image/webp"' in r.text


# The permission matrix


class Ctx:
    """What one matrix row needs: a pipeline, an image waiting for its upload, an uploaded one."""

    def __init__(self, pipe: dict[str, Any], waiting: str, uploaded: dict[str, Any]) -> None:
        self.pipe, self.waiting, self.uploaded = pipe, waiting, uploaded


Call = Callable[[httpx.AsyncClient, Ctx, dict[str, str], Tenant], Awaitable[httpx.Response]]

# name: (permission, call, status for an allowed caller)
ENDPOINTS: dict[str, tuple[str, Call, int]] = {
    "create": (
        "image:create",
        lambda c, x, h, t: c.post(
            "/api/images",
            json={"filename": "a.jpg", "upload_profile_id": x.pipe["upload_profile"]},
            headers=h,
        ),
        201,
    ),
    "upload": (
        "image:create",
        lambda c, x, h, t: c.post(f"/api/images/{x.waiting}/upload", content=JPEG, headers=h),
        200,
    ),
    "upload_url": (
        "image:create",
        lambda c, x, h, t: c.post(
            f"/api/images/{x.waiting}/upload_url",
            json={"content_length": len(JPEG), "sha256": sha256(JPEG)},
            headers=h,
        ),
        409,
    ),  # allowed, but local storage cannot presign
    "complete": (
        "image:create",
        lambda c, x, h, t: c.post(f"/api/images/{x.waiting}/complete", headers=h),
        409,
    ),
    "quick_upload": (
        "image:create",
        lambda c, x, h, t: c.post(
            f"/api/projects/{t.project}/quick_upload",
            params={"upload_profile": x.pipe["short_id"], "dedupe": "false"},
            content=JPEG,
            headers=h,
        ),
        201,
    ),
    "get": ("project:read", lambda c, x, h, t: c.get(f"/api/images/{x.uploaded['id']}", headers=h), 200),
    "by_hash": (
        "project:read",
        lambda c, x, h, t: c.get(f"/api/image_by_hash/{x.uploaded['hash']}", headers=h),
        200,
    ),
    "list": ("project:read", lambda c, x, h, t: c.get(f"/api/projects/{t.project}/images", headers=h), 200),
    "picture": (
        "project:read",
        lambda c, x, h, t: c.get(f"/api/images/{x.uploaded['id']}/picture", headers=h),
        200,
    ),
    "update": (
        "image:edit",
        lambda c, x, h, t: c.put(f"/api/images/{x.uploaded['id']}", json={"alt_text": "x"}, headers=h),
        200,
    ),
    "reconvert": (
        "image:edit",
        lambda c, x, h, t: c.post(f"/api/images/{x.uploaded['id']}/reconvert", headers=h),
        200,
    ),
    "delete": ("image:edit", lambda c, x, h, t: c.delete(f"/api/images/{x.uploaded['id']}", headers=h), 202),
}
# Grants that do not include the endpoint's permission (nor imply it).
OTHER_GRANTS = {
    "image:create": ["project:read", "image:edit"],
    "image:edit": ["project:read", "image:create"],
    "project:read": ["project:create"],
}


@pytest.mark.parametrize("endpoint", sorted(ENDPOINTS))
async def test_permission_matrix(client, tenant, other_tenant, worker, endpoint):
    permission, call, allowed_status = ENDPOINTS[endpoint]
    pipe = await make_pipeline(client, tenant, SMALL)
    ctx = Ctx(pipe, await create_image(client, tenant, pipe), await ready_image(client, tenant, pipe))
    pid = tenant.project_id
    r = await client.post("/api/projects", json={"name": "elsewhere"}, headers=tenant.headers())
    elsewhere = ids.parse_id(ids.PROJECT, r.json()["id"])

    async def answer(headers: dict[str, str], who: Tenant = tenant) -> httpx.Response:
        return await call(client, ctx, headers, who)

    # No or bad credentials: 401.
    for headers in ({}, {"Authorization": "Bearer ps1.nope.nope"}):
        r = await answer(headers)
        assert r.status_code == 401, r.text
        assert r.json()["error"]["kind"] == "authn"

    # Another team (even its admin): the image, project or profile does not exist for it.
    r = await answer(other_tenant.headers())
    if endpoint == "create":  # the profile is a reference in the body: refused like a missing one
        assert r.status_code == 422, r.text
        missing = await client.post(
            "/api/images",
            json={"filename": "a.jpg", "upload_profile_id": ids.format_id(ids.UPLOAD_PROFILE, uuid.uuid4())},
            headers=other_tenant.headers(),
        )
        assert r.json()["error"]["kind"] == missing.json()["error"]["kind"] == "invalid"
    else:
        assert r.status_code == 404, r.text

    # Same team without the permission, and with it on another project only: 403 naming it.
    without = await tenant.key_with(
        *[(p, None if p == "project:create" else pid) for p in OTHER_GRANTS[permission]]
    )
    on_other_project = await tenant.key_with((permission, elsewhere))
    for key in (without, on_other_project):
        r = await answer(tenant.headers(key))
        assert r.status_code == 403, r.text
        assert r.json()["error"] == {
            "kind": "missing_permission",
            "message": f"Missing permission {permission}",
        }

    untouched = await get_image(client, tenant, ctx.uploaded["id"])
    assert untouched == ctx.uploaded, "refused callers changed nothing"
    assert (await get_image(client, tenant, ctx.waiting))["status"] == "awaiting_upload"

    # Allowed: a project grant of exactly this permission (team-wide works too).
    for key in (await tenant.key_with((permission, pid)),) + (
        (await tenant.key_with((permission, None)),) if endpoint != "delete" else ()
    ):
        r = await answer(tenant.headers(key))
        assert r.status_code == allowed_status, r.text
    if endpoint == "delete":
        assert (
            await client.get(f"/api/images/{ctx.uploaded['id']}", headers=tenant.headers())
        ).status_code == 404


# Obsolete outputs are purged after the upload profile's retention


async def purge(settings: Any) -> None:
    import picstore.tasks  # noqa: F401  (registers the task with its queue and queueing lock)

    async with jobs.open_app(settings) as app:
        task = app.configure_task("picstore.tasks.purge_obsolete", queue=jobs.QUEUE)
        with contextlib.suppress(AlreadyEnqueued):  # one is already waiting: it runs just the same
            await task.defer_async(timestamp=0)


async def test_obsolete_outputs_purged_after_retention(client, tenant, worker, settings, storage_root):
    pipe = await make_pipeline(client, tenant, SMALL, obsolete_retention_seconds=0)
    bystander = await ready_image(client, tenant, pipe, (CORPUS / "Portrait_6.jpg").read_bytes())
    keeping = await make_pipeline(client, tenant, SMALL)  # default retention: 7 days
    kept_image = await ready_image(client, tenant, keeping, JPEG)

    images = {}
    for name, p in (("purged", pipe), ("kept", keeping)):
        image = kept_image if name == "kept" else await ready_image(client, tenant, p, JPEG)
        r = await client.post(
            f"/api/images/{image['id']}/upload", content=OTHER_JPEG, headers=tenant.headers()
        )
        assert r.status_code == 200, r.text
        replaced = await wait_settled(client, tenant, image["id"])
        assert replaced["status"] == "ready"
        obsolete = [o for o in replaced["output"] if o["status"] == "obsolete"]
        assert len(obsolete) == 4
        assert all(stored(storage_root, p, o["location"]).is_file() for o in obsolete)
        images[name] = (replaced, obsolete, p)

    await purge(settings)
    replaced, obsolete, _ = images["purged"]

    async def purged() -> bool:
        now = await get_image(client, tenant, replaced["id"])
        return not any(o["status"] == "obsolete" for o in now["output"])

    await eventually(purged, "obsolete output rows deleted")
    for o in obsolete:
        assert not stored(storage_root, pipe, o["location"]).exists(), o
    now = await get_image(client, tenant, replaced["id"])
    assert now["status"] == "ready" and by_id(now) == {
        i: o for i, o in by_id(replaced).items() if o["status"] == "ready"
    }
    for o in now["output"]:
        assert stored(storage_root, pipe, o["location"]).is_file()
    assert await get_image(client, tenant, bystander["id"]) == bystander
    # The other profile keeps its obsolete outputs for its retention.
    replaced, obsolete, p = images["kept"]
    assert await get_image(client, tenant, replaced["id"]) == replaced
    assert all(stored(storage_root, p, o["location"]).is_file() for o in obsolete)


async def test_purge_keeps_outputs_that_came_back(client, tenant, worker, settings, storage_root):
    """A -> B -> A with retention 0, then purge: B's outputs go, A's revived outputs stay."""
    pipe = await make_pipeline(client, tenant, SMALL, obsolete_retention_seconds=0)
    first = await ready_image(client, tenant, pipe, JPEG)
    for data in (OTHER_JPEG, JPEG):
        r = await client.post(f"/api/images/{first['id']}/upload", content=data, headers=tenant.headers())
        assert r.status_code == 200, r.text
        done = await wait_settled(client, tenant, first["id"])
        assert done["status"] == "ready", done
    b_locations = {o["location"] for o in done["output"] if o["status"] == "obsolete"}
    assert len(b_locations) == 4
    await purge(settings)

    async def purged() -> bool:
        now = await get_image(client, tenant, first["id"])
        return not any(o["status"] == "obsolete" for o in now["output"])

    await eventually(purged, "B's obsolete outputs deleted")
    now = await get_image(client, tenant, first["id"])
    assert {o["location"] for o in now["output"]} == {o["location"] for o in first["output"]}
    for o in now["output"]:
        assert o["status"] == "ready"
        assert stored(storage_root, pipe, o["location"]).stat().st_size == o["file_size"] > 0
    for location in b_locations:
        assert not stored(storage_root, pipe, location).exists()

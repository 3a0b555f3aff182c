"""The upload → conversion pipeline on S3: a real SeaweedFS, storage created through the API, a real worker.

Outputs are fetched anonymously at the `url` the API reports, the way a CDN pulling from the bucket would.
Presigned uploads are refused by SeaweedFS itself when tampered with, expired or of the wrong length
(moto would accept them), and `complete` then reports that nothing was uploaded.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import pyvips
from conftest import (
    CORPUS,
    S3_BUCKET,
    TEST_PROFILE,
    TEST_PROFILE_JPEG_OUTPUTS,
    Tenant,
    make_pipeline,
    wait_settled,
)
from s3server import S3Server

from picstore import ids, images, models, storage, stores

BUCKET = S3_BUCKET
IMMUTABLE = "public, max-age=31536000, immutable"
CONTENT_TYPES = {"avif": "image/avif", "webp": "image/webp", "jpg": "image/jpeg", "png": "image/png"}
LOADERS = {"avif": "heifload", "webp": "webpload", "jpg": "jpegload", "png": "pngload"}
WRONG_SECRET = "wrong-secret-Kx93LmQ"


class Recorder:
    """Every response body and header the API sent in this module, to look for leaked secrets."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def __call__(self, response: httpx.Response) -> None:
        await response.aread()
        self.seen.append(response.text)
        self.seen.extend(f"{k}: {v}" for k, v in response.headers.items())


@pytest.fixture(scope="module")
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture(scope="module")
async def api(app: Any, recorder: Recorder) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://picstore.test", event_hooks={"response": [recorder]}
    ) as c:
        yield c


@pytest.fixture(autouse=True)
def no_secret_in_responses(recorder: Recorder, seaweedfs: S3Server) -> Iterator[None]:
    yield
    for secret in (seaweedfs.secret_key, WRONG_SECRET):
        leaks = [text[:200] for text in recorder.seen if secret in text]
        assert not leaks, f"a storage secret appeared in an API response: {leaks}"


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """Plain HTTP, no credentials: a browser, a CDN, or an uploader holding a presigned URL."""
    async with httpx.AsyncClient(timeout=30) as c:
        yield c


def s3_location(server: S3Server, prefix: str, secret: str | None = None) -> dict[str, Any]:
    return {
        "name": "seaweedfs",
        "provider": {
            "type": "s3",
            "endpoint": server.endpoint,
            "region": "us-east-1",
            "access_key_id": server.access_key,
            "secret_key": secret or server.secret_key,
        },
        "base_location": f"{BUCKET}/{prefix}",
        # Path-style public URL of the same prefix: anonymous reads go through the bucket policy.
        "public_url_base": f"{server.endpoint}/{BUCKET}/{prefix}",
    }


async def create_location(api: httpx.AsyncClient, tenant: Tenant, body: dict[str, Any]) -> str:
    r = await api.post(
        f"/api/projects/{tenant.project}/storage_locations", json=body, headers=tenant.headers()
    )
    assert r.status_code == 201, r.text
    assert r.json()["provider"]["has_secret_key"] is True
    location_id: str = r.json()["id"]
    return location_id


async def s3_pipeline(api: httpx.AsyncClient, tenant: Tenant, server: S3Server) -> dict[str, Any]:
    """An S3 location for originals and outputs, TEST_PROFILE, and an upload profile, all through the API."""
    h, p, name = tenant.headers(), tenant.project, uuid.uuid4().hex[:8]
    location_id = await create_location(api, tenant, s3_location(server, f"t-{name}"))
    r = await api.post(
        f"/api/projects/{p}/conversion_profiles", json={"name": "s3", "output": TEST_PROFILE}, headers=h
    )
    assert r.status_code == 201, r.text
    r = await api.post(
        f"/api/projects/{p}/upload_profiles",
        json={
            "name": "s3",
            "short_id": f"s3{name}",
            "conversion_profile_id": r.json()["id"],
            "base_storage_location_id": location_id,
            "base_storage_location_path": "orig",
            "output_storage_location_id": location_id,
            "output_storage_location_path": "out",
        },
        headers=h,
    )
    assert r.status_code == 201, r.text
    return {"location": location_id, "upload_profile": r.json()["id"]}


async def new_image(api: httpx.AsyncClient, tenant: Tenant, pipe: dict[str, Any], filename: str) -> str:
    r = await api.post(
        "/api/images",
        json={"upload_profile_id": pipe["upload_profile"], "filename": filename},
        headers=tenant.headers(),
    )
    assert r.status_code == 201, r.text
    image_id: str = r.json()["id"]
    return image_id


async def get_image(api: httpx.AsyncClient, tenant: Tenant, image_id: str) -> dict[str, Any]:
    r = await api.get(f"/api/images/{image_id}", headers=tenant.headers())
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def upload_url(
    api: httpx.AsyncClient,
    tenant: Tenant,
    image_id: str,
    body: bytes,
    content_type: str,
    sha256: str | None = None,
    **extra: Any,
) -> httpx.Response:
    return await api.post(
        f"/api/images/{image_id}/upload_url",
        json={
            "content_length": len(body),
            "sha256": sha256 or hashlib.sha256(body).hexdigest(),
            "content_type": content_type,
            **extra,
        },
        headers=tenant.headers(),
    )


async def signed_put(
    http: httpx.AsyncClient, signed: dict[str, Any], body: bytes, drop: tuple[str, ...] = ()
) -> httpx.Response:
    """Exactly the returned method, URL and headers (minus `drop`, which httpx then derives itself)."""
    headers = {k: v for k, v in signed["headers"].items() if k.lower() not in drop}
    return await http.request(signed["method"], signed["url"], headers=headers, content=body)


async def complete(api: httpx.AsyncClient, tenant: Tenant, image_id: str) -> httpx.Response:
    return await api.post(f"/api/images/{image_id}/complete", headers=tenant.headers())


async def assert_served(http: httpx.AsyncClient, image: dict[str, Any]) -> None:
    """Every output is public at its URL, with its type, immutable caching and the advertised pixels."""
    assert image["status"] == "ready", image
    assert image["output"], image
    for output in image["output"]:
        assert output["status"] == "ready", output
        r = await http.get(output["url"])
        assert r.status_code == 200, (output["url"], r.text)
        assert r.headers["content-type"] == CONTENT_TYPES[output["format"]]
        assert r.headers["cache-control"] == IMMUTABLE
        assert len(r.content) == output["file_size"] > 0
        decoded = pyvips.Image.new_from_buffer(r.content, "")
        assert decoded.get("vips-loader").startswith(LOADERS[output["format"]])
        assert (decoded.width, decoded.height) == (output["width"], output["height"])


async def stored_original(
    sessions: Any, settings: Any, image_id: str, sha256: str
) -> tuple[storage.Storage, str, stores.Stores]:
    """The storage layer and key the API presigns for this image's pending upload."""
    async with sessions() as session:
        row = await session.get_one(models.BaseImage, ids.parse_id(ids.BASE_IMAGE, image_id))
        location = await session.get_one(models.StorageLocation, row.storage_location_id)
    cache = stores.Stores(settings)
    return await cache.for_location(location), images.original_key(row, sha256), cache


# ------------------------------------------------------------------------------------------ uploads


async def test_direct_upload_to_s3_ends_ready_and_served(api, http, tenant, seaweedfs, worker):
    pipe = await s3_pipeline(api, tenant, seaweedfs)
    data = (CORPUS / "Landscape_1.jpg").read_bytes()
    image_id = await new_image(api, tenant, pipe, "land.jpg")
    r = await api.post(f"/api/images/{image_id}/upload", content=data, headers=tenant.headers())
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "queued"
    done = await wait_settled(api, tenant, image_id)
    assert sorted((o["format"], o["width"]) for o in done["output"]) == TEST_PROFILE_JPEG_OUTPUTS
    await assert_served(http, done)
    original = await http.get(done["url"])
    assert original.status_code == 200 and original.content == data
    assert original.headers["content-type"] == "image/jpeg"
    assert original.headers["cache-control"] == IMMUTABLE


async def test_presigned_upload_to_s3_ends_ready_and_served(api, http, tenant, seaweedfs, worker):
    pipe = await s3_pipeline(api, tenant, seaweedfs)
    data = (CORPUS / "with-alpha.png").read_bytes()
    image_id = await new_image(api, tenant, pipe, "alpha.png")
    r = await upload_url(api, tenant, image_id, data, "image/png")
    assert r.status_code == 200, r.text
    signed = r.json()
    assert signed["method"] == "PUT" and signed["url"].startswith(seaweedfs.endpoint)
    put = await signed_put(http, signed, data)
    assert put.status_code == 200, put.text
    assert (await get_image(api, tenant, image_id))["status"] == "awaiting_upload"

    r = await complete(api, tenant, image_id)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "queued" and r.json()["hash"] == hashlib.sha256(data).hexdigest()
    done = await wait_settled(api, tenant, image_id)
    assert sorted((o["format"], o["width"]) for o in done["output"]) == [
        ("avif", 64),
        ("avif", 160),
        ("png", 64),
        ("png", 160),
        ("webp", 64),
        ("webp", 160),
    ]
    await assert_served(http, done)
    original = await http.get(done["url"])
    assert original.status_code == 200 and original.content == data
    assert original.headers["content-type"] == "image/png"
    # Nothing is pending any more: a second complete has nothing to check.
    assert (await complete(api, tenant, image_id)).status_code == 409


# ------------------------------------------------------------------------------ refused presigned PUTs


def _tamper_signature(url: str) -> str:
    signature = parse_qs(urlsplit(url).query)["X-Amz-Signature"][0]
    forged = signature[:-1] + ("0" if signature[-1] != "0" else "1")
    return url.replace(signature, forged)


async def test_tampered_presigned_url_is_refused_and_complete_finds_nothing(
    api, http, tenant, seaweedfs, worker
):
    pipe = await s3_pipeline(api, tenant, seaweedfs)
    data = (CORPUS / "Landscape_8.jpg").read_bytes()
    image_id = await new_image(api, tenant, pipe, "tampered.jpg")
    signed = (await upload_url(api, tenant, image_id, data, "image/jpeg")).json()

    put = await signed_put(http, {**signed, "url": _tamper_signature(signed["url"])}, data)
    assert put.status_code == 403 and "SignatureDoesNotMatch" in put.text
    r = await complete(api, tenant, image_id)
    assert r.status_code == 409, r.text
    assert "nothing has been uploaded" in r.json()["error"]["message"]
    assert (await get_image(api, tenant, image_id))["status"] == "awaiting_upload"

    # The refusal left the image usable: the genuine URL still works.
    assert (await signed_put(http, signed, data)).status_code == 200
    assert (await complete(api, tenant, image_id)).status_code == 200
    await assert_served(http, await wait_settled(api, tenant, image_id))


async def test_wrong_length_body_is_refused_and_complete_finds_nothing(api, http, tenant, seaweedfs):
    pipe = await s3_pipeline(api, tenant, seaweedfs)
    data = (CORPUS / "Landscape_1.jpg").read_bytes()
    image_id = await new_image(api, tenant, pipe, "length.jpg")
    signed = (await upload_url(api, tenant, image_id, data, "image/jpeg")).json()
    # httpx then sends the real length of each body, which differs from the signed one.
    for body in (data + b"\0", data[:-1]):
        put = await signed_put(http, signed, body, drop=("content-length",))
        assert 400 <= put.status_code < 500, put.text
    assert (await complete(api, tenant, image_id)).status_code == 409


async def test_expired_presigned_url_is_refused_and_complete_finds_nothing(
    api, http, tenant, seaweedfs, sessions, settings
):
    """The API never signs for under 60 s, so expiry is tested on a URL the storage layer signs for 1 s,
    for the same key, type, length and hash as the API's pending upload."""
    pipe = await s3_pipeline(api, tenant, seaweedfs)
    data = (CORPUS / "Landscape_6.jpg").read_bytes()
    image_id = await new_image(api, tenant, pipe, "late.jpg")
    short = await upload_url(api, tenant, image_id, data, "image/jpeg", expires_in=59)
    assert short.status_code == 400 and "expires_in" in short.text
    assert (await upload_url(api, tenant, image_id, data, "image/jpeg", expires_in=60)).status_code == 200

    sha256 = hashlib.sha256(data).hexdigest()
    store, key, cache = await stored_original(sessions, settings, image_id, sha256)
    async with cache:
        late = await store.presign_put(
            key, "image/jpeg", len(data), base64.b64encode(bytes.fromhex(sha256)).decode(), expires_in=1
        )
        await asyncio.sleep(2.1)
        put = await http.request(late.method, late.url, headers=late.headers, content=data)
        assert put.status_code == 403 and "expired" in put.text, put.text
        assert await store.head(key) is None
    assert (await complete(api, tenant, image_id)).status_code == 409


# ---------------------------------------------------------------------------------- hash mismatches


async def test_complete_refuses_object_of_other_bytes_and_deletes_it(
    api, http, tenant, seaweedfs, sessions, settings
):
    """A store that skipped the signed checksum (or anything else writing to the key) is caught by
    `complete`, which hashes what is really stored. Simulated by writing other bytes under the key
    through the storage layer."""
    pipe = await s3_pipeline(api, tenant, seaweedfs)
    data = (CORPUS / "Landscape_1.jpg").read_bytes()
    other = (CORPUS / "Landscape_8.jpg").read_bytes()
    image_id = await new_image(api, tenant, pipe, "swapped.jpg")
    assert (await upload_url(api, tenant, image_id, data, "image/jpeg")).status_code == 200
    store, key, cache = await stored_original(sessions, settings, image_id, hashlib.sha256(data).hexdigest())
    async with cache:
        await store.put_bytes(key, other, "image/jpeg")
        r = await complete(api, tenant, image_id)
        assert r.status_code == 422, r.text
        assert "does not match the declared upload" in r.json()["error"]["message"]
        assert await store.head(key) is None
    assert (await get_image(api, tenant, image_id))["status"] == "awaiting_upload"


async def test_complete_refuses_a_redeclared_hash_and_deletes_the_object(api, http, tenant, seaweedfs):
    """The same check reached through the API alone: S3 verifies the body against the hash signed into
    the URL, so an honest PUT always matches the declaration it was signed for. But the client may
    declare again afterwards; a declared hash that shares the key's version (its first 10 hex digits)
    with the uploaded one names the same object, which now does not match what is pending."""
    pipe = await s3_pipeline(api, tenant, seaweedfs)
    data = (CORPUS / "Portrait_6.jpg").read_bytes()
    real = hashlib.sha256(data).hexdigest()
    image_id = await new_image(api, tenant, pipe, "redeclared.jpg")
    signed = (await upload_url(api, tenant, image_id, data, "image/jpeg")).json()
    assert (await signed_put(http, signed, data)).status_code == 200

    claimed = real[:10] + ("0" if real[10] != "0" else "1") + real[11:]
    again = await upload_url(api, tenant, image_id, data, "image/jpeg", sha256=claimed)
    assert again.status_code == 200, again.text
    assert urlsplit(again.json()["url"]).path == urlsplit(signed["url"]).path  # the same object
    r = await complete(api, tenant, image_id)
    assert r.status_code == 422, r.text
    assert real in r.json()["error"]["message"] and claimed in r.json()["error"]["message"]
    # Deleted: the public URL of the object no longer serves it.
    assert (await http.get(urlsplit(signed["url"])._replace(query="").geturl())).status_code == 404
    assert (await get_image(api, tenant, image_id))["status"] == "awaiting_upload"


async def test_local_storage_cannot_presign(api, tenant):
    pipe = await make_pipeline(api, tenant)
    image_id = await new_image(api, tenant, pipe, "local.jpg")
    r = await upload_url(api, tenant, image_id, b"x" * 100, "image/jpeg")
    assert r.status_code == 409, r.text
    assert "/upload" in r.json()["error"]["message"]


# ------------------------------------------------------------------------------------ location test


async def test_storage_location_test_reports_each_step(api, tenant, seaweedfs, recorder):
    good = await create_location(api, tenant, s3_location(seaweedfs, "probe"))
    locations = f"/api/projects/{tenant.project}/storage_locations"
    r = await api.post(f"{locations}/{good}/test", headers=tenant.headers())
    assert r.status_code == 200, r.text
    assert r.json()["ok"] is True
    assert [(s["step"], s["ok"], s["error"]) for s in r.json()["steps"]] == [
        ("write", True, None),
        ("read", True, None),
        ("delete", True, None),
    ]

    bad = await create_location(api, tenant, s3_location(seaweedfs, "probe", secret=WRONG_SECRET))
    r = await api.post(f"{locations}/{bad}/test", headers=tenant.headers())
    assert r.status_code == 200, r.text
    result = r.json()
    assert result["ok"] is False
    assert [(s["step"], s["ok"]) for s in result["steps"]] == [("write", False)]
    assert "SignatureDoesNotMatch" in result["steps"][0]["error"]
    # Secrets: not in the probe's message, nor anywhere the locations are read back (checked for every
    # response of this module by no_secret_in_responses).
    for location_id in (good, bad):
        r = await api.get(f"{locations}/{location_id}", headers=tenant.headers())
        assert r.status_code == 200 and r.json()["provider"]["has_secret_key"] is True
        assert "secret_key" not in r.json()["provider"]
    listed = await api.get(locations, headers=tenant.headers())
    assert listed.status_code == 200 and {good, bad} <= {loc["id"] for loc in listed.json()}
    assert any("SignatureDoesNotMatch" in seen for seen in recorder.seen)  # the recorder sees the responses

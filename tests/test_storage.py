"""picstore.storage: key safety, the local backend, and the S3 backend against a real SeaweedFS.

SeaweedFS rather than moto because moto accepts tampered, expired and mismatched presigned uploads.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import shutil
import stat
import tracemalloc
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from conftest import S3_BUCKET
from s3server import S3Server

from picstore.storage import (
    PROBE_PREFIX,
    LocalStorage,
    ObjectInfo,
    ObjectMissing,
    PresignedPut,
    PresignUnsupported,
    S3Config,
    S3Storage,
    StorageClients,
    StorageError,
    UnsafeKey,
    check_key,
    probe,
)

MB = 1024 * 1024
BUCKET = S3_BUCKET
PREFIX = "tenant-a/img"


def sha256_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(MB):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------- keys

SAFE_KEYS = ["a", "a/b.jpg", "img/2024/x-w400.webp", ".picstore-probe/ab12", "a..b/c", "ünï/çödé.avif"]
UNSAFE_KEYS = [
    "",
    "/etc/passwd",
    "..",
    "../x",
    "a/../../x",
    "a/..",
    ".",
    "./a",
    "a/./b",
    "a//b",
    "a/",
    "a\\..\\b",
    "a\0b",
    "a\nb",
]


@pytest.mark.parametrize("key", SAFE_KEYS)
def test_check_key_accepts(key: str) -> None:
    assert check_key(key) == key


@pytest.mark.parametrize("key", UNSAFE_KEYS)
def test_check_key_refuses(key: str) -> None:
    with pytest.raises(UnsafeKey):
        check_key(key)


def test_unsafe_key_is_a_value_error_and_missing_is_a_storage_error() -> None:
    assert issubclass(UnsafeKey, ValueError)
    assert issubclass(ObjectMissing, StorageError)


# ------------------------------------------------------------------------------------------- config


def test_config_from_base_location_splits_at_first_slash() -> None:
    config = S3Config.from_base_location("media-bucket/img//blog/")
    assert (config.bucket, config.prefix) == ("media-bucket", "img/blog")
    assert S3Config.from_base_location("media-bucket").prefix == ""


def test_config_normalizes_endpoint_and_region() -> None:
    config = S3Config(bucket="b", endpoint="s3.example.com", region=None)
    assert config.endpoint == "https://s3.example.com"
    assert config.region == "us-east-1"
    assert S3Config(bucket="b", endpoint="http://127.0.0.1:9000").endpoint == "http://127.0.0.1:9000"
    # Equivalent spellings share one cache entry.
    assert S3Config(bucket="b", prefix="/x/") == S3Config(bucket="b", prefix="x", region="us-east-1")


@pytest.mark.parametrize(("access_key_id", "secret_key"), [("AKIA", None), (None, "secret"), ("AKIA", "")])
def test_config_needs_both_keys_or_neither(access_key_id: str | None, secret_key: str | None) -> None:
    with pytest.raises(ValueError, match="together"):
        S3Config(bucket="b", access_key_id=access_key_id, secret_key=secret_key)


def test_config_refuses_bad_bucket_and_escaping_prefix() -> None:
    with pytest.raises(ValueError):
        S3Config.from_base_location("/img")
    with pytest.raises(UnsafeKey):
        S3Config(bucket="b", prefix="a/../../other-tenant")


def test_config_repr_hides_secret() -> None:
    config = S3Config(bucket="b", access_key_id="AKIAEXAMPLE", secret_key="s3cr3t-value")
    assert "s3cr3t-value" not in repr(config)
    assert "AKIAEXAMPLE" in repr(config)


# -------------------------------------------------------------------------------------------- local


@pytest.fixture
def local(tmp_path: Path) -> LocalStorage:
    # The root does not exist yet: Pic Store required the whole tree to exist (bug §12.21).
    return LocalStorage(str(tmp_path / "store" / "root"))


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


async def test_local_round_trip_creates_parent_dirs(local: LocalStorage) -> None:
    await local.put_bytes("p1/profile/a.webp", b"webp-bytes", "image/webp", "public, max-age=60")
    path = local.root / "p1" / "profile" / "a.webp"
    assert path.read_bytes() == b"webp-bytes"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert await local.get_bytes("p1/profile/a.webp") == b"webp-bytes"
    # The type comes from the extension; nothing is stored besides the bytes.
    assert await local.head("p1/profile/a.webp") == ObjectInfo(10, "image/webp", None)
    await local.delete("p1/profile/a.webp")
    await local.delete("p1/profile/a.webp")
    assert await local.head("p1/profile/a.webp") is None
    assert await local.head("p1/profile") is None  # a folder is not an object
    with pytest.raises(ObjectMissing):
        await local.get_bytes("p1/profile/a.webp")


async def test_local_files_stream_both_ways(local: LocalStorage, tmp_path: Path) -> None:
    source = tmp_path / "source.jpg"
    source.write_bytes(os.urandom(3 * MB + 17))
    await local.put_file("orig/source.jpg", str(source), "image/jpeg")
    target = tmp_path / "out" / "copy.jpg"
    assert await local.get_to_file("orig/source.jpg", str(target)) == 3 * MB + 17
    assert target.read_bytes() == source.read_bytes()
    with pytest.raises(ObjectMissing):
        await local.get_to_file("orig/missing.jpg", str(target))
    # The caller's own missing file is not a storage failure.
    with pytest.raises(FileNotFoundError):
        await local.put_file("orig/x.jpg", str(tmp_path / "nope.jpg"), "image/jpeg")


@pytest.mark.parametrize("key", ["../escape", "a/../../escape", "/tmp/escape", "a//b"])
async def test_local_refuses_escaping_keys(local: LocalStorage, tmp_path: Path, key: str) -> None:
    with pytest.raises(UnsafeKey):
        await local.put_bytes(key, b"x", "text/plain")
    assert not (tmp_path / "store" / "escape").exists()


async def test_local_refuses_symlink_escape(local: LocalStorage, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    local.root.mkdir(parents=True)
    (local.root / "dir-link").symlink_to(outside)
    (local.root / "file-link.txt").symlink_to(outside / "secret.txt")

    with pytest.raises(UnsafeKey):
        await local.put_bytes("dir-link/evil.txt", b"x", "text/plain")
    with pytest.raises(UnsafeKey):
        await local.get_bytes("dir-link/secret.txt")
    with pytest.raises(UnsafeKey):
        await local.put_bytes("file-link.txt", b"overwritten", "text/plain")
    with pytest.raises(UnsafeKey):
        await local.delete("file-link.txt")
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert (outside / "secret.txt").read_text() == "secret"


async def test_local_write_is_atomic(
    local: LocalStorage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await local.put_bytes("a/obj.bin", b"old" * 1000, "application/octet-stream")
    path = local.root / "a" / "obj.bin"
    with path.open("rb") as reader:
        await local.put_bytes("a/obj.bin", b"new", "application/octet-stream")
        # Replaced, not rewritten in place: a reader that opened the old file still sees all of it.
        assert reader.read() == b"old" * 1000
    assert path.read_bytes() == b"new"

    def copy_then_fail(source: object, out: object) -> None:
        out.write(b"partial")  # type: ignore[attr-defined]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shutil, "copyfileobj", copy_then_fail)
    source = tmp_path / "upload.bin"
    source.write_bytes(b"whatever")
    with pytest.raises(StorageError, match="No space left"):
        await local.put_file("a/obj.bin", str(source), "application/octet-stream")
    assert path.read_bytes() == b"new"
    assert leftovers(path.parent) == []


async def test_local_cannot_presign_and_needs_a_root(local: LocalStorage) -> None:
    with pytest.raises(PresignUnsupported):
        await local.presign_put("a.jpg", "image/jpeg", 10, sha256_b64(b"x"), 60)
    with pytest.raises(ValueError):
        LocalStorage("")


async def test_local_probe(local: LocalStorage) -> None:
    steps = await probe(local)
    assert [(s.step, s.ok, s.error) for s in steps] == [
        ("write", True, None),
        ("read", True, None),
        ("delete", True, None),
    ]
    assert all(s.ms >= 0 for s in steps)
    assert list((local.root / PROBE_PREFIX).iterdir()) == []


# ----------------------------------------------------------------------------------------------- S3


@pytest.fixture(scope="module")
async def s3_clients() -> AsyncIterator[StorageClients]:
    async with StorageClients() as clients:
        yield clients


@pytest.fixture(scope="module")
def s3_config(seaweedfs: S3Server) -> S3Config:
    return S3Config(
        bucket=BUCKET,
        prefix=PREFIX,
        endpoint=seaweedfs.endpoint,
        access_key_id=seaweedfs.access_key,
        secret_key=seaweedfs.secret_key,
    )


@pytest.fixture
async def s3(s3_clients: StorageClients, s3_config: S3Config) -> S3Storage:
    return await s3_clients.for_s3(s3_config)


def public_url(server: S3Server, key: str) -> str:
    return f"{server.endpoint}/{BUCKET}/{PREFIX}/{key}"


async def test_s3_clients_are_cached_per_config(
    s3_clients: StorageClients, s3_config: S3Config, s3: S3Storage
) -> None:
    same = replace(s3_config, prefix=f"/{PREFIX}/", region=None)
    assert same is not s3_config
    assert await s3_clients.for_s3(same) is s3
    other = await s3_clients.for_s3(replace(s3_config, prefix="tenant-b"))
    assert other is not s3


async def test_s3_put_bytes_sets_headers(s3: S3Storage, seaweedfs: S3Server) -> None:
    await s3.put_bytes("p/a-w400.webp", b"RIFF-webp", "image/webp", "public, max-age=31536000, immutable")
    assert await s3.head("p/a-w400.webp") == ObjectInfo(
        9, "image/webp", "public, max-age=31536000, immutable"
    )
    # What a CDN pulling from the bucket sees (anonymous read via bucket policy).
    async with httpx.AsyncClient() as http:
        response = await http.get(public_url(seaweedfs, "p/a-w400.webp"))
    assert response.status_code == 200
    assert response.content == b"RIFF-webp"
    assert response.headers["content-type"] == "image/webp"
    assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert await s3.get_bytes("p/a-w400.webp") == b"RIFF-webp"


async def test_s3_big_file_multipart_round_trip(s3: S3Storage, seaweedfs: S3Server, tmp_path: Path) -> None:
    source = tmp_path / "big.jpg"
    with source.open("wb") as f:
        for _ in range(20):
            f.write(os.urandom(MB))
    await s3.put_file("orig/big.jpg", str(source), "image/jpeg", "private, max-age=0")
    assert await s3.head("orig/big.jpg") == ObjectInfo(20 * MB, "image/jpeg", "private, max-age=0")
    etag = seaweedfs.request("HEAD", f"/{BUCKET}/{PREFIX}/orig/big.jpg").headers["etag"]
    assert etag.strip('"').endswith("-3")  # three 8 MB parts
    target = tmp_path / "down" / "big.jpg"
    assert await s3.get_to_file("orig/big.jpg", str(target)) == 20 * MB
    assert file_sha256(target) == file_sha256(source)


async def test_s3_put_file_memory_is_bounded(s3: S3Storage, tmp_path: Path) -> None:
    """An upload never holds the whole file: peak Python memory stays far below its size."""
    source = tmp_path / "huge.bin"
    with source.open("wb") as f:
        f.truncate(128 * MB)  # sparse: cheap to create, still 128 MB to read
    tracemalloc.start()
    try:
        await s3.put_file("orig/huge.bin", str(source), "application/octet-stream")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 96 * MB, f"peak {peak / MB:.0f} MB"
    assert (await s3.head("orig/huge.bin")) == ObjectInfo(128 * MB, "application/octet-stream", None)
    await s3.delete("orig/huge.bin")


async def test_s3_missing_objects(s3: S3Storage, tmp_path: Path) -> None:
    await s3.put_bytes("gone.txt", b"x", "text/plain")
    await s3.delete("gone.txt")
    await s3.delete("gone.txt")
    assert await s3.head("gone.txt") is None
    with pytest.raises(ObjectMissing, match=rf"GetObject s3://{BUCKET}/{PREFIX}/gone.txt"):
        await s3.get_bytes("gone.txt")
    with pytest.raises(ObjectMissing):
        await s3.get_to_file("gone.txt", str(tmp_path / "gone.txt"))
    assert not (tmp_path / "gone.txt").exists()


async def test_s3_refuses_unsafe_keys(s3: S3Storage) -> None:
    with pytest.raises(UnsafeKey):
        await s3.put_bytes("../tenant-b/x.jpg", b"x", "image/jpeg")


async def test_s3_missing_source_file_is_the_callers_error(s3: S3Storage, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        await s3.put_file("orig/x.jpg", str(tmp_path / "nope.jpg"), "image/jpeg")


async def test_malformed_endpoint_is_a_storage_error(s3_clients: StorageClients) -> None:
    with pytest.raises(StorageError, match="could not be created"):
        await s3_clients.for_s3(S3Config(bucket="b", endpoint="https://exa mple.com"))


# --------------------------------------------------------------------------------------- presigning


async def presign(s3: S3Storage, key: str, body: bytes, expires_in: int = 60) -> PresignedPut:
    return await s3.presign_put(key, "image/jpeg", len(body), sha256_b64(body), expires_in)


async def put(put_: PresignedPut, body: bytes, **override: str) -> httpx.Response:
    headers = {**put_.headers, **override}
    async with httpx.AsyncClient() as http:
        return await http.request(put_.method, put_.url, content=body, headers=headers)


async def test_presigned_put_uploads(s3: S3Storage) -> None:
    body = os.urandom(5000)
    started = datetime.now(UTC)
    presigned = await presign(s3, "direct/ok.jpg", body, expires_in=300)
    assert presigned.method == "PUT"
    assert 299 <= (presigned.expires_at - started).total_seconds() <= 301
    signed = parse_qs(urlsplit(presigned.url).query)["X-Amz-SignedHeaders"][0].split(";")
    assert {"content-type", "content-length", "x-amz-checksum-sha256"} <= set(signed)

    response = await put(presigned, body)
    assert response.status_code == 200, response.text
    assert await s3.head("direct/ok.jpg") == ObjectInfo(5000, "image/jpeg", None)
    assert await s3.get_bytes("direct/ok.jpg") == body


async def test_presigned_put_refuses_tampering(s3: S3Storage) -> None:
    body = os.urandom(1000)
    presigned = await presign(s3, "direct/tampered.jpg", body)
    signature = parse_qs(urlsplit(presigned.url).query)["X-Amz-Signature"][0]
    forged = signature[:-1] + ("0" if signature[-1] != "0" else "1")
    tampered = PresignedPut(
        "PUT", presigned.url.replace(signature, forged), presigned.headers, presigned.expires_at
    )
    response = await put(tampered, body)
    assert response.status_code == 403
    assert "SignatureDoesNotMatch" in response.text
    # Another key under the same signature.
    moved = PresignedPut(
        "PUT",
        presigned.url.replace("direct/tampered.jpg", "direct/other.jpg"),
        presigned.headers,
        presigned.expires_at,
    )
    assert (await put(moved, body)).status_code == 403
    assert (await put(presigned, body, **{"Content-Type": "text/html"})).status_code == 403
    assert await s3.head("direct/tampered.jpg") is None
    assert await s3.head("direct/other.jpg") is None


async def test_presigned_put_binds_length_and_hash(s3: S3Storage) -> None:
    body = os.urandom(1000)
    presigned = await presign(s3, "direct/bound.jpg", body)
    without_length = {k: v for k, v in presigned.headers.items() if k != "Content-Length"}
    bare = PresignedPut("PUT", presigned.url, without_length, presigned.expires_at)
    # Longer or shorter body: the signed Content-Length no longer matches.
    assert (await put(bare, body + b"extra")).status_code == 403
    assert (await put(bare, body[:-1])).status_code == 403
    # Same length, other bytes: the signed checksum no longer matches.
    response = await put(presigned, os.urandom(1000))
    assert 400 <= response.status_code < 500
    assert "BadDigest" in response.text
    # ... and the uploader cannot swap in the other body's own checksum either.
    other = os.urandom(1000)
    assert (await put(presigned, other, **{"x-amz-checksum-sha256": sha256_b64(other)})).status_code == 403
    assert await s3.head("direct/bound.jpg") is None


async def test_presigned_put_expires(s3: S3Storage) -> None:
    body = b"late"
    presigned = await presign(s3, "direct/late.jpg", body, expires_in=1)
    await asyncio.sleep(2)
    response = await put(presigned, body)
    assert response.status_code == 403
    assert "expired" in response.text
    assert await s3.head("direct/late.jpg") is None


@pytest.mark.parametrize(
    ("length", "digest", "expires_in"),
    [
        (-1, sha256_b64(b""), 60),
        (1, "not-base64!", 60),
        (1, base64.b64encode(b"short").decode(), 60),
        (1, sha256_b64(b""), 0),
        (1, sha256_b64(b""), 8 * 24 * 3600),
    ],
)
async def test_presign_validates_arguments(s3: S3Storage, length: int, digest: str, expires_in: int) -> None:
    with pytest.raises(ValueError):
        await s3.presign_put("direct/x.jpg", "image/jpeg", length, digest, expires_in)


# ------------------------------------------------------------------------------------------- errors


async def test_wrong_credentials_give_storage_error_without_secret(
    s3_clients: StorageClients, s3_config: S3Config
) -> None:
    secret = "wrong-secret-Zq8vP2"
    bad = await s3_clients.for_s3(replace(s3_config, secret_key=secret))
    with pytest.raises(StorageError) as caught:
        await bad.put_bytes("x.txt", b"x", "text/plain")
    assert not isinstance(caught.value, ObjectMissing)
    message = str(caught.value)
    assert f"S3 PutObject s3://{BUCKET}/{PREFIX}/x.txt failed: SignatureDoesNotMatch" in message
    assert secret not in message
    assert s3_config.secret_key not in message  # type: ignore[operator]


async def test_probe_s3(s3: S3Storage, s3_clients: StorageClients, s3_config: S3Config) -> None:
    steps = await probe(s3)
    assert [(s.step, s.ok) for s in steps] == [("write", True), ("read", True), ("delete", True)]

    missing = await s3_clients.for_s3(replace(s3_config, bucket="no-such-bucket"))
    steps = await probe(missing)
    assert len(steps) == 1
    assert (steps[0].step, steps[0].ok) == ("write", False)
    assert "NoSuchBucket" in (steps[0].error or "")


async def test_server_restart_is_survived(s3: S3Storage, seaweedfs: S3Server) -> None:
    """Storage going away is a StorageError; the same cached client works once it is back."""
    await s3.put_bytes("restart/kept.txt", b"kept", "text/plain")
    seaweedfs.stop()
    try:
        with pytest.raises(StorageError, match="S3 PutObject") as caught:
            await s3.put_bytes("restart/lost.txt", b"lost", "text/plain")
        assert not isinstance(caught.value, ObjectMissing)
    finally:
        seaweedfs.start()
    assert await s3.get_bytes("restart/kept.txt") == b"kept"
    await s3.put_bytes("restart/after.txt", b"after", "text/plain")
    assert await s3.get_bytes("restart/after.txt") == b"after"

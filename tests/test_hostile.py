"""Hostile input: whatever a client sends, picstore answers 4xx with a reason or accepts it and settles it.

Every corpus file truncated at three seeded points and with ten seeded bytes flipped, random bytes behind
each image magic number, empty bodies, lying Content-Lengths on a real socket, absurd query values,
oversized and deeply nested JSON, NUL and odd unicode in names, and wrong JSON types go through
quick_upload, the two-step upload and the admin endpoints. Asserted for every case: no 5xx; every 4xx body
is `{"error": {"kind", "message"}}` with a message that says why; every accepted image ends `ready` or
`failed` with a reason (never stuck), truncated pixel data never ends `ready`, and the worker survives all
of it and still converts a good image.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import CORPUS, Tenant, make_pipeline, wait_settled
from liveserver import running_api

# One small, fast output: the point is what the decoder meets, not the encoders.
HOSTILE_PROFILE = {
    "type": "cross",
    "formats": [{"format": "webp", "quality": 60, "effort": 0}],
    "sizes": [{"width": 32}],
}
GOOD = (CORPUS / "Landscape_1.jpg").read_bytes()
SETTLE_TIMEOUT_S = 120
# Messages that only repeat the status line say nothing about why.
GENERIC_MESSAGES = {"", "bad request", "internal server error", "server error", "not found", "error"}

MAGIC = {
    "jpeg": b"\xff\xd8\xff",
    "png": b"\x89PNG\r\n\x1a\n",
    "gif": b"GIF89a",
    "webp": b"RIFF\x00\x10\x00\x00WEBP",
    "avif": b"\x00\x00\x00\x1cftypavif",
    "tiff": b"II*\x00",
}


@dataclass(frozen=True)
class Case:
    name: str
    body: bytes
    kind: str  # "cut" (truncated past the first bytes), "head" (cut in the first 64 bytes), "flip", "magic"


def corpus_mutations(seed: int = 1234) -> list[Case]:
    """Each corpus file cut at three seeded points (in the header, in the first half, in the second half)
    and with ten seeded bytes flipped after the first 64; then random bytes behind each magic number."""
    rng = random.Random(seed)
    cases: list[Case] = []
    for path in sorted(CORPUS.iterdir()):
        if path.suffix in (".tsv", ".md"):
            continue
        data, n = path.read_bytes(), path.stat().st_size
        head = rng.randint(1, min(64, n - 1))
        cuts = {head: "head", rng.randint(n // 4, n // 2): "cut", rng.randint(n // 2, n - 1): "cut"}
        for cut, kind in sorted(cuts.items()):
            cases.append(Case(f"{path.name}[:{cut}]", data[:cut], kind))
        flipped = bytearray(data)
        for _ in range(10):
            flipped[rng.randrange(64, n)] ^= rng.randint(1, 255)
        cases.append(Case(f"{path.name}~flip", bytes(flipped), "flip"))
    for name, magic in MAGIC.items():
        for size in (1, 64, 4096, 65536):
            cases.append(Case(f"{name}+random{size}", magic + rng.randbytes(size), "magic"))
    return cases


CASES = corpus_mutations()


def assert_answer(r: httpx.Response, case: str) -> None:
    """No 5xx; a 4xx carries the one error shape with a message that says why."""
    assert r.status_code < 500, f"{case}: {r.status_code} {r.text[:500]}"
    if r.status_code >= 400:
        try:
            body = r.json()
        except json.JSONDecodeError:
            raise AssertionError(f"{case}: {r.status_code} body is not JSON: {r.text[:300]}") from None
        assert isinstance(body, dict) and set(body) == {"error"}, f"{case}: {body}"
        assert set(body["error"]) == {"kind", "message"}, f"{case}: {body}"
        assert body["error"]["kind"], f"{case}: {body}"
        message = body["error"]["message"]
        assert isinstance(message, str) and message.strip().lower() not in GENERIC_MESSAGES, f"{case}: {body}"


async def quick(
    client: httpx.AsyncClient, tenant: Tenant, short_id: str, body: bytes, **params: Any
) -> httpx.Response:
    return await client.post(
        f"/api/projects/{tenant.project}/quick_upload",
        params={"upload_profile": short_id, "filename": "hostile.bin", **params},
        content=body,
        headers=tenant.headers(),
    )


async def all_images(client: httpx.AsyncClient, tenant: Tenant, **filters: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        params = {"limit": "100", **filters, **({"after": after} if after else {})}
        r = await client.get(
            f"/api/projects/{tenant.project}/images", params=params, headers=tenant.headers()
        )
        assert r.status_code == 200, r.text
        page = r.json()
        found += page["images"]
        if not (after := page["next_after"]):
            return found


async def wait_all_settled(client: httpx.AsyncClient, tenant: Tenant, timeout: float) -> list[dict[str, Any]]:
    """Every image of the tenant's project ready or failed: polls two filtered pages, not each image."""
    deadline = time.monotonic() + timeout
    while True:
        pending = [
            i
            for status in ("queued", "converting")
            for i in (await all_images(client, tenant, status=status))
        ]
        if not pending:
            return await all_images(client, tenant)
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(pending)} image(s) still pending after {timeout} s: {pending[:3]}")
        await asyncio.sleep(0.5)


# ------------------------------------------------------------------------------- corpus mutations


async def test_mutated_corpus_is_refused_or_settles_and_the_worker_survives(client, tenant, worker):
    pipe = await make_pipeline(client, tenant, HOSTILE_PROFILE)
    gate = asyncio.Semaphore(4)

    async def send(case: Case) -> tuple[Case, httpx.Response]:
        async with gate:
            return case, await quick(client, tenant, pipe["short_id"], case.body, dedupe="false")

    started = time.monotonic()
    answers = await asyncio.gather(*(send(c) for c in CASES))
    accepted: dict[str, Case] = {}
    refused: dict[int, int] = {}
    for case, r in answers:
        assert_answer(r, case.name)
        if r.status_code == 201:
            accepted[r.json()["id"]] = case
        else:
            assert r.status_code in (413, 415, 422), f"{case.name}: {r.status_code} {r.text}"
            refused[r.status_code] = refused.get(r.status_code, 0) + 1
            assert case.kind != "magic" or r.status_code != 413, case.name
    uploaded_s = time.monotonic() - started

    settled = {i["id"]: i for i in await wait_all_settled(client, tenant, SETTLE_TIMEOUT_S)}
    assert set(settled) == set(accepted), "the project holds exactly the accepted uploads"
    outcomes: dict[str, int] = {}
    wrong: list[str] = []
    for image_id, case in accepted.items():
        image = settled[image_id]
        outcomes[image["status"]] = outcomes.get(image["status"], 0) + 1
        if image["status"] == "failed":
            if not (image["error"] or "").strip():
                wrong.append(f"{case.name}: failed without a reason")
            wrong += [
                f"{case.name}: {o}" for o in image["output"] if o["status"] == "failed" and not o["reason"]
            ]
        elif image["status"] != "ready":
            wrong.append(f"{case.name}: ended {image['status']}")
        elif case.kind in ("cut", "magic"):
            # Pixel data cut short cannot make the whole picture: it must fail, not come out half painted.
            wrong.append(f"{case.name}: truncated or random bytes ended ready")
    assert not wrong, "\n".join(wrong)
    print(
        f"\n{len(CASES)} hostile bodies in {uploaded_s:.1f} s: refused {refused}, accepted {len(accepted)} "
        f"→ {outcomes}, all settled {time.monotonic() - started:.1f} s after the first upload"
    )

    assert worker.poll() is None, "the worker died on hostile input"
    r = await quick(client, tenant, pipe["short_id"], GOOD, filename="good.jpg")
    assert r.status_code == 201, r.text
    assert (await wait_settled(client, tenant, r.json()["id"]))["status"] == "ready"


async def test_two_step_upload_refuses_hostile_bodies_and_stays_usable(client, tenant):
    pipe = await make_pipeline(client, tenant, HOSTILE_PROFILE)
    r = await client.post(
        "/api/images",
        json={"filename": "x.jpg", "upload_profile_id": pipe["upload_profile"]},
        headers=tenant.headers(),
    )
    assert r.status_code == 201, r.text
    image_id = r.json()["id"]
    for case in [*[c for c in CASES if c.kind in ("head", "magic")][::3], Case("empty", b"", "head")]:
        r = await client.post(f"/api/images/{image_id}/upload", content=case.body, headers=tenant.headers())
        assert_answer(r, case.name)
        assert r.status_code in (415, 422), f"{case.name}: {r.status_code} {r.text}"
    r = await client.get(f"/api/images/{image_id}", headers=tenant.headers())
    assert r.json()["status"] == "awaiting_upload", r.text
    r = await client.post(f"/api/images/{image_id}/upload", content=GOOD, headers=tenant.headers())
    assert r.status_code == 200 and r.json()["status"] == "queued", r.text


async def test_zero_byte_bodies(client, tenant):
    pipe = await make_pipeline(client, tenant, HOSTILE_PROFILE)
    r = await quick(client, tenant, pipe["short_id"], b"")
    assert_answer(r, "empty quick_upload")
    assert r.status_code == 415 and "empty" in r.json()["error"]["message"], r.text
    for path in ("/api/projects", "/api/images", f"/api/projects/{tenant.project}/conversion_profiles"):
        json_headers = {**tenant.headers(), "Content-Type": "application/json"}
        r = await client.post(path, content=b"", headers=json_headers)
        assert_answer(r, f"empty JSON body to {path}")
        assert r.status_code == 400 and "no body" in r.json()["error"]["message"], r.text
        r = await client.post(path, headers=tenant.headers())
        assert r.status_code == 400 and "no body" in r.json()["error"]["message"], r.text


# -------------------------------------------------------------------------- lying Content-Length


BODY_IDLE_S = 2.0  # PICSTORE_BODY_IDLE_TIMEOUT_SECONDS of the live server


@pytest.fixture(scope="module")
def live(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    log = tmp_path_factory.mktemp("hostile-live") / "api.log"
    with running_api({**env, "PICSTORE_BODY_IDLE_TIMEOUT_SECONDS": str(BODY_IDLE_S)}, log=log) as url:
        yield url, log


def raw_exchange(url: str, request: bytes, shut_write: bool, timeout: float = 10) -> bytes:
    """Send bytes on a fresh TCP connection, optionally half-close, and read until the server closes.
    Sets `raw_exchange.first_byte_s`: seconds from sending to the first byte of the answer."""
    raw_exchange.first_byte_s = None  # type: ignore[attr-defined]
    sent = time.monotonic()
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(request)
        if shut_write:
            sock.shutdown(socket.SHUT_WR)
        received = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            if not received:
                raw_exchange.first_byte_s = time.monotonic() - sent  # type: ignore[attr-defined]
            received += chunk
    return received


def statuses_in(raw: bytes) -> list[int]:
    return [int(m) for m in re.findall(rb"HTTP/1\.1 (\d{3}) ", raw)]


def server_errors_in(log: Path) -> list[str]:
    lines = log.read_text(errors="replace").splitlines()
    return [line for line in lines if re.search(r'"status": 5\d\d|unhandled error|Traceback', line)]


async def test_lying_content_length_on_a_real_socket(client, tenant, live):
    url, log = live
    pipe = await make_pipeline(client, tenant, HOSTILE_PROFILE)
    path = f"/api/projects/{tenant.project}/quick_upload?upload_profile={pipe['short_id']}&filename=x.jpg"
    head = f"POST {path} HTTP/1.1\r\nHost: picstore.test\r\nAuthorization: Bearer {tenant.admin_key}\r\n"
    errors_before = len(server_errors_in(log))

    # Declared 1000, sent 10, then the client hangs up: nothing to answer, nothing may be stored.
    short = raw_exchange(url, (head + "Content-Length: 1000\r\n\r\n").encode() + GOOD[:10], shut_write=True)
    assert all(s < 500 for s in statuses_in(short)), short[:500]
    # Declared 1000, sent 10, and the client waits: 408 once the body has stopped for the idle timeout.
    waiting = raw_exchange(
        url, (head + "Content-Length: 1000\r\n\r\n").encode() + GOOD[:10], shut_write=False, timeout=30
    )
    waited = raw_exchange.first_byte_s  # type: ignore[attr-defined]
    assert statuses_in(waiting) == [408], waiting[:500]
    assert b'"request_timeout"' in waiting and b"no body bytes for 2 s" in waiting, waiting[:500]
    assert BODY_IDLE_S <= waited < BODY_IDLE_S + 5, f"answered after {waited:.1f} s"
    # Declared 10, sent 1000: the first 10 bytes are the body (a JPEG magic and no header: 422), the rest
    # is not HTTP and is refused as such.
    long = raw_exchange(url, (head + "Content-Length: 10\r\n\r\n").encode() + GOOD[:1000], shut_write=False)
    codes = statuses_in(long)
    assert codes and codes[0] in (415, 422), long[:800]
    assert all(s < 500 for s in codes), long[:800]
    first_body = long.split(b"\r\n\r\n", 1)[1]
    assert b'"error"' in first_body and b'"message"' in first_body, long[:800]

    async with httpx.AsyncClient(base_url=url, timeout=10) as real:
        assert (await real.get("/api/health")).status_code == 200
        listed = await real.get(f"/api/projects/{tenant.project}/images", headers=tenant.headers())
        assert listed.status_code == 200 and listed.json()["images"] == [], "a lying body created an image"
    assert server_errors_in(log)[errors_before:] == [], "the server logged an error for a client's lie"


# ------------------------------------------------------------------------------ absurd query values

ABSURD_LIST = [
    {"limit": "-1"},
    {"limit": "1e309"},
    {"limit": "99999999999999999999"},
    {"limit": "NaN"},
    {"after": "\x00"},
    {"after": "bim\x00"},
    {"status": "<script>alert(1)</script>"},
    {"upload_profile": "../../etc"},
    {"status": "ready\x00"},
    {"limit": ""},
]
ABSURD_UPLOAD = [
    {"upload_profile": "../../etc"},
    {"upload_profile": "\x00"},
    {"filename": "f" * 10_000},
    {"dedupe": "maybe"},
    {"dedupe": ""},
    {"filename": "a\x00b.jpg"},
    {"location": "a\x00b"},
    {"alt_text": "\x00"},
    {"alt_text": "x" * 10_000},
    {"location": "l" * 10_000},
]


@pytest.mark.parametrize("params", ABSURD_LIST, ids=lambda p: repr(p)[:40])
async def test_absurd_list_queries_are_4xx_saying_why(client, tenant, params):
    r = await client.get(f"/api/projects/{tenant.project}/images", params=params, headers=tenant.headers())
    assert_answer(r, repr(params))
    assert r.status_code in (400, 422), r.text


@pytest.mark.parametrize("params", ABSURD_UPLOAD, ids=lambda p: repr(p)[:40])
async def test_absurd_upload_queries_are_4xx_saying_why(client, tenant, storage_root, params):
    pipe = await make_pipeline(client, tenant, HOSTILE_PROFILE)
    r = await quick(client, tenant, pipe["short_id"], GOOD, **params)
    assert_answer(r, repr(params))
    assert r.status_code in (400, 404, 422), r.text
    assert await all_images(client, tenant) == []
    assert not [p for p in (storage_root / pipe["storage_dir"]).rglob("*") if p.is_file()]


@pytest.mark.parametrize("location", ["../../etc/passwd", "/", "..", "%2e%2e/x", "a/../../b", "C:\\x\\..\\y"])
async def test_traversing_locations_stay_inside_the_storage_location(client, tenant, storage_root, location):
    """`location` only names the stored original: it is reduced to safe segments, never followed."""
    pipe = await make_pipeline(client, tenant, HOSTILE_PROFILE)
    beside = set(storage_root.iterdir())
    r = await quick(client, tenant, pipe["short_id"], GOOD, location=location)
    assert_answer(r, repr(location))
    if r.status_code == 201:
        assert ".." not in r.json()["location"].split("/"), r.text
    inside = [p for p in (storage_root / pipe["storage_dir"]).rglob("*") if p.is_file()]
    assert len(inside) == (1 if r.status_code == 201 else 0), inside
    assert set(storage_root.iterdir()) - beside <= {storage_root / pipe["storage_dir"]}, "written beside it"


async def test_odd_but_valid_names_are_kept_exactly(client, tenant):
    pipe = await make_pipeline(client, tenant, HOSTILE_PROFILE)
    for name in ("Ünïcödé 写真 🐶.jpg", "\u202eexe.jpg", "a\tb\nc.jpg", "'; DROP TABLE base_images; --.jpg"):
        r = await quick(client, tenant, pipe["short_id"], GOOD, filename=name, alt_text=name, dedupe="false")
        assert_answer(r, repr(name))
        assert r.status_code == 201, r.text
        assert r.json()["filename"] == name and r.json()["alt_text"] == name


# ------------------------------------------------------------------------------------ hostile JSON


def nested(depth: int) -> bytes:
    return b'{"name": ' + b"[" * depth + b"]" * depth + b"}"


def admin_targets(tenant: Tenant) -> list[tuple[str, str]]:
    p = tenant.project
    return [
        ("POST", "/api/projects"),
        ("PUT", f"/api/projects/{p}"),
        ("POST", f"/api/projects/{p}/storage_locations"),
        ("POST", f"/api/projects/{p}/conversion_profiles"),
        ("POST", "/api/projects/global/conversion_profiles"),
        ("POST", f"/api/projects/{p}/upload_profiles"),
        ("POST", "/api/users"),
        ("POST", "/api/roles"),
        ("POST", "/api/api_keys"),
        ("POST", "/api/images"),
        ("POST", f"/api/projects/{p}/webhooks"),
    ]


HOSTILE_JSON: list[tuple[str, bytes]] = [
    ("nested 100", nested(100)),
    ("nested 10000", nested(10_000)),
    ("nested objects 5000", b'{"name": ' + b'{"a":' * 5000 + b"1" + b"}" * 5000 + b"}"),
    ("array", b"[]"),
    ("null", b"null"),
    ("true", b"true"),
    ("number", b"1e309"),
    ("string", b'"x"'),
    ("name int", b'{"name": 1}'),
    ("name list", b'{"name": ["x"]}'),
    ("name huge int", b'{"name": 1' + b"0" * 400 + b"}"),
    ("name NUL", b'{"name": "a\\u0000b"}'),
    ("name lone surrogate", b'{"name": "\\udc00"}'),
    ("name RTL", ('{"name": "' + "\u202e" * 300 + '"}').encode()),
    ("duplicate keys", b'{"name": "a", "name": {"x": 1}}'),
    ("invalid utf-8", b'{"name": "\xc3\x28"}'),
    ("BOM", b'\xef\xbb\xbf{"name": "x"}'),
    ("trailing garbage", b'{"name": "x"} xyz'),
    ("NaN", b'{"name": NaN}'),
]


@pytest.mark.parametrize(("label", "body"), HOSTILE_JSON, ids=[label for label, _ in HOSTILE_JSON])
async def test_hostile_json_to_admin_endpoints_is_never_a_server_error(client, tenant, label, body):
    for method, path in admin_targets(tenant):
        r = await client.request(
            method, path, content=body, headers={**tenant.headers(), "Content-Type": "application/json"}
        )
        assert_answer(r, f"{label} → {method} {path}")
        # Nothing in this list is a complete valid body for any of these endpoints.
        assert 400 <= r.status_code < 500, f"{label} → {method} {path}: {r.status_code} {r.text[:300]}"


async def test_oversized_json_is_413_everywhere(client, tenant):
    body = b'{"name": "' + b"x" * (1024 * 1024 + 10) + b'"}'
    for method, path in admin_targets(tenant):
        r = await client.request(
            method, path, content=body, headers={**tenant.headers(), "Content-Type": "application/json"}
        )
        assert_answer(r, f"1 MB JSON → {method} {path}")
        assert r.status_code == 413, f"{method} {path}: {r.status_code} {r.text[:300]}"


async def test_names_with_nul_and_unicode(client, tenant):
    h = tenant.headers()
    r = await client.post("/api/projects", json={"name": "a\x00b"}, headers=h)
    assert_answer(r, "NUL in a project name")
    assert r.status_code == 400, r.text
    for name in ("写真 🐶", "\u202eevil", "x" * 200, "\u0301"):
        r = await client.post("/api/projects", json={"name": name}, headers=h)
        assert r.status_code == 201, r.text
        got = await client.get(f"/api/projects/{r.json()['id']}", headers=h)
        assert got.json()["name"] == name
    r = await client.post("/api/projects", json={"name": "x" * 201}, headers=h)
    assert_answer(r, "name too long")
    assert r.status_code == 400


@pytest.mark.parametrize(
    ("headers", "content"),
    [
        ({"Content-Type": "text/plain"}, b'{"name": "x"}'),
        ({"Content-Type": "application/x-www-form-urlencoded"}, b"name=x"),
        ({"Content-Type": "multipart/form-data; boundary=zz"}, b"--zz\r\n\r\nname\r\n--zz--"),
        ({"Content-Type": "application/json; charset=latin-1"}, '{"name": "é"}'.encode("latin-1")),
        ({"Content-Encoding": "gzip", "Content-Type": "application/json"}, b'{"name": "x"}'),
    ],
    ids=["text", "form", "multipart", "latin-1", "fake-gzip"],
)
async def test_wrong_content_types(client, tenant, headers, content):
    r = await client.post("/api/projects", content=content, headers={**tenant.headers(), **headers})
    assert_answer(r, repr(headers))


@pytest.mark.parametrize(
    "authorization",
    [
        "",
        "Bearer",
        "Bearer ",
        "Bearer ps1.",
        "Bearer ps1..",
        "Bearer ps1.\x7f.x",
        "Basic Zm9vOmJhcg==",
        "Bearer " + "A" * 10_000,
        "Bearer ps1.prj0000.secret",
        "Bearer ps1.ak" + "z" * 30 + ".s",
    ],
    ids=lambda a: repr(a)[:30],
)
async def test_garbage_credentials_are_401(client, authorization):
    r = await client.get("/api/projects", headers={"Authorization": authorization})
    assert_answer(r, repr(authorization[:40]))
    assert r.status_code == 401, r.text


# ------------------------------------------------------------------ truncation the decoders accept


def test_truncation_check_refuses_cut_heif_and_gif_but_not_a_gif_without_trailer(tmp_path):
    """libheif paints missing tiles green and libvips drops GIF frames past the end, both reporting success:
    read_header refuses such files itself. A GIF that merely lacks its trailer byte is whole and accepted."""
    from picstore import imaging

    def header(data: bytes) -> imaging.Header:
        path = tmp_path / "f"
        path.write_bytes(data)
        return imaging.read_header(str(path))

    for name in ("heic_heif_other_pug.heic", "pitm.avif", "animated-loop-3.gif"):
        data = (CORPUS / name).read_bytes()
        assert header(data).width > 0
        with pytest.raises(imaging.CorruptImage, match="truncated"):
            header(data[: len(data) * 2 // 3])
    gif = (CORPUS / "animated-loop-3.gif").read_bytes()
    assert gif.endswith(b";")
    assert header(gif[:-1]).frames == 10

"""Webhooks end to end: a real worker POSTs signed events to a receiver on loopback; the API's permission
matrix; the secret is write-only; delivery rules (retry schedule, refused addresses, timeouts)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from conftest import CORPUS, Tenant, make_pipeline, wait_settled

from picstore import ids, models, sealing, webhooks
from picstore.settings import Settings


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


@dataclass
class Receiver:
    """Records every POST; answers each path with its scripted statuses first, then 200."""

    base: str
    requests: list[Received] = field(default_factory=list)
    scripts: dict[str, list[int]] = field(default_factory=dict)
    delays: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return self.base + path

    def respond(self, path: str, *statuses: int, delay: float = 0.0) -> None:
        self.scripts[path], self.delays[path] = list(statuses), delay

    def got(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if r.path == path]

    async def wait(self, path: str, count: int, timeout: float = 60) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(found := self.got(path)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{path} got {len(found)} requests, expected {count}")
            await asyncio.sleep(0.1)
        return found


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with state.lock:
                state.requests.append(Received(self.path, dict(self.headers.items()), body))
                script = state.scripts.get(self.path, [])
                status = script.pop(0) if script else 200
            time.sleep(state.delays.get(self.path, 0.0))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state = Receiver(f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


def verify(secret: str, request: Received) -> None:
    """What a receiver does: recompute the HMAC over "<t>.<body>" and check the timestamp is fresh."""
    parts = dict(item.split("=", 1) for item in request.headers["Picstore-Signature"].split(","))
    expected = hmac.new(
        secret.encode(), parts["t"].encode() + b"." + request.body, hashlib.sha256
    ).hexdigest()
    assert hmac.compare_digest(parts["v1"], expected)
    assert abs(time.time() - int(parts["t"])) < 300


async def add_webhook(client: httpx.AsyncClient, tenant: Tenant, url: str, **body: Any) -> dict[str, Any]:
    r = await client.post(
        f"/api/projects/{tenant.project}/webhooks", json={"url": url, **body}, headers=tenant.headers()
    )
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


async def quick_upload(client: httpx.AsyncClient, tenant: Tenant, pipe: dict[str, Any], name: str) -> str:
    r = await client.post(
        f"/api/projects/{tenant.project}/quick_upload",
        params={"upload_profile": pipe["short_id"], "filename": name},
        content=(CORPUS / name).read_bytes(),
        headers=tenant.headers(),
    )
    assert r.status_code == 201, r.text
    image_id: str = r.json()["id"]
    return image_id


async def deliveries(client: httpx.AsyncClient, tenant: Tenant, webhook_id: str) -> list[dict[str, Any]]:
    r = await client.get(
        f"/api/projects/{tenant.project}/webhooks/{webhook_id}/deliveries", headers=tenant.headers()
    )
    assert r.status_code == 200, r.text
    found: list[dict[str, Any]] = r.json()
    return found


async def test_ready_event_is_signed_and_carries_image_and_picture(client, tenant, worker, receiver):
    pipe = await make_pipeline(client, tenant)
    created = await add_webhook(client, tenant, receiver.url("/ready"))
    assert created["secret"].startswith("whsec_") and created["webhook"]["events"] == [
        "image.deleted",
        "image.failed",
        "image.ready",
    ]
    image_id = await quick_upload(client, tenant, pipe, "Landscape_6.jpg")
    assert (await wait_settled(client, tenant, image_id))["status"] == "ready"

    [request] = await receiver.wait("/ready", 1)
    verify(created["secret"], request)
    with pytest.raises(AssertionError):
        verify(
            created["secret"],
            Received(request.path, request.headers, request.body.replace(b"ready", b"rEady")),
        )
    event = request.event
    assert request.headers["Content-Type"] == "application/json"
    assert (event["type"], request.headers["Picstore-Event"]) == ("image.ready", "image.ready")
    assert event["id"] == request.headers["Picstore-Delivery"] and event["id"].startswith("whd")
    assert (event["image"]["id"], event["image"]["status"]) == (image_id, "ready")
    assert sorted((o["format"], o["width"], o["status"]) for o in event["image"]["output"]) == [
        ("avif", 64, "ready"),
        ("avif", 160, "ready"),
        ("jpg", 64, "ready"),
        ("jpg", 160, "ready"),
        ("webp", 64, "ready"),
        ("webp", 160, "ready"),
    ]
    picture = await client.get(
        f"/api/images/{image_id}/picture", params={"format": "json"}, headers=tenant.headers()
    )
    assert event["picture"] == picture.json()


async def test_failing_receiver_gets_retries_until_it_answers(client, tenant, worker, receiver):
    receiver.respond("/flaky", 500, 503)
    hook = (await add_webhook(client, tenant, receiver.url("/flaky"), events=["image.ready"]))["webhook"]
    pipe = await make_pipeline(client, tenant)
    image_id = await quick_upload(client, tenant, pipe, "Landscape_1.jpg")
    await wait_settled(client, tenant, image_id)

    attempts = await receiver.wait("/flaky", 3)
    assert len({a.headers["Picstore-Delivery"] for a in attempts}) == 1
    assert {a.body for a in attempts} == {attempts[0].body}
    deadline = time.monotonic() + 10
    while (found := await deliveries(client, tenant, hook["id"]))[0]["status"] == "pending":
        assert time.monotonic() < deadline, found
        await asyncio.sleep(0.1)
    [delivery] = found
    assert delivery["id"] == attempts[0].headers["Picstore-Delivery"]
    assert (delivery["event"], delivery["image_id"], delivery["webhook_id"]) == (
        "image.ready",
        image_id,
        hook["id"],
    )
    assert (delivery["status"], delivery["attempts"], delivery["status_code"], delivery["error"]) == (
        "delivered",
        3,
        200,
        None,
    )
    assert delivery["delivered"] is not None


async def test_failed_and_deleted_events_reach_subscribed_active_webhooks(client, tenant, worker, receiver):
    await add_webhook(client, tenant, receiver.url("/lifecycle"))
    await add_webhook(client, tenant, receiver.url("/deletions"), events=["image.deleted"])
    await add_webhook(client, tenant, receiver.url("/inactive"), active=False)
    pipe = await make_pipeline(client, tenant)
    image_id = await quick_upload(client, tenant, pipe, "truncated.jpg")
    settled = await wait_settled(client, tenant, image_id)
    assert settled["status"] == "failed" and settled["error"]

    [failed] = await receiver.wait("/lifecycle", 1)
    assert failed.event["type"] == "image.failed"
    assert (failed.event["image"]["id"], failed.event["image"]["error"]) == (image_id, settled["error"])
    assert failed.event["picture"] is None

    r = await client.delete(f"/api/images/{image_id}", headers=tenant.headers())
    assert r.status_code == 202, r.text
    _, deleted = await receiver.wait("/lifecycle", 2)
    assert (deleted.event["type"], deleted.event["image"]["id"], deleted.event["image"]["status"]) == (
        "image.deleted",
        image_id,
        "deleted",
    )
    [only_deletion] = await receiver.wait("/deletions", 1)
    assert only_deletion.event["type"] == "image.deleted"
    assert receiver.got("/inactive") == []


async def test_permission_matrix(client, tenant, other_tenant):
    base = f"/api/projects/{tenant.project}/webhooks"
    hook = (await add_webhook(client, tenant, "https://example.com/hook"))["webhook"]
    one = f"{base}/{hook['id']}"
    body = {"url": "https://example.com/other"}
    reads = [("GET", base, None), ("GET", one, None), ("GET", one + "/deliveries", None)]
    writes = [("POST", base, body), ("PUT", one, body), ("DELETE", one, None)]
    r = await client.post("/api/projects", json={"name": "second"}, headers=tenant.headers())
    second = ids.parse_id(ids.PROJECT, r.json()["id"])

    async def call(method: str, url: str, json_body: Any, key: str | None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return await client.request(method, url, json=json_body, headers=headers)

    reader = await tenant.key_with(("project:read", tenant.project_id))
    for method, url, json_body in reads:
        assert (await call(method, url, json_body, reader)).status_code == 200, (method, url)
    for method, url, json_body in writes:
        r = await call(method, url, json_body, reader)
        assert r.status_code == 403 and "project:write" in r.json()["error"]["message"], (method, url, r.text)
    elsewhere = await tenant.key_with(("project:write", second))
    for method, url, json_body in reads + writes:
        assert (await call(method, url, json_body, elsewhere)).status_code == 403, (method, url)
    for method, url, json_body in reads + writes:
        assert (await call(method, url, json_body, other_tenant.admin_key)).status_code == 404, (method, url)
        assert (await call(method, url, json_body, None)).status_code == 401, (method, url)
    foreign = f"/api/projects/{other_tenant.project}/webhooks/{hook['id']}"
    assert (await call("GET", foreign, None, other_tenant.admin_key)).status_code == 404

    writer = await tenant.key_with(("project:write", tenant.project_id))
    for method, url, json_body in reads + writes:
        assert (await call(method, url, json_body, writer)).status_code in (200, 201), (method, url)
    assert (await call("GET", one, None, writer)).status_code == 404  # deleted


async def test_secret_is_write_only(client, tenant, settings):
    secret, rotated = "s3cret-" + uuid.uuid4().hex, "r0tated-" + uuid.uuid4().hex
    created = await add_webhook(client, tenant, "https://example.com/hook", secret=secret)
    assert created["secret"] == secret
    one = f"/api/projects/{tenant.project}/webhooks/{created['webhook']['id']}"
    hook_id = ids.parse_id(ids.WEBHOOK, created["webhook"]["id"])

    async def stored() -> str:
        async with tenant.sessions() as session:
            return sealing.unseal(
                settings.secret_key, (await session.get_one(models.Webhook, hook_id)).secret_sealed
            )

    h = tenant.headers()
    answers = [
        await client.get(f"/api/projects/{tenant.project}/webhooks", headers=h),
        await client.get(one, headers=h),
        await client.put(one, json={"url": "https://example.com/moved"}, headers=h),
        await client.get(one + "/deliveries", headers=h),
    ]
    assert await stored() == secret  # an update without a secret keeps it
    answers.append(
        await client.put(one, json={"url": "https://example.com/moved", "secret": rotated}, headers=h)
    )
    assert await stored() == rotated
    for r in answers:
        assert r.status_code == 200, r.text
        assert secret not in r.text and rotated not in r.text and '"secret"' not in r.text


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/hook",
        "javascript:alert(1)",
        "http:///no-host",
        "example.com/hook",
        "https://user:password@example.com/hook",
    ],
)
async def test_only_plain_http_urls_are_accepted(client, tenant, url):
    r = await client.post(
        f"/api/projects/{tenant.project}/webhooks", json={"url": url}, headers=tenant.headers()
    )
    assert r.status_code == 422, r.text
    hook = (await add_webhook(client, tenant, "https://example.com/hook"))["webhook"]
    r = await client.put(
        f"/api/projects/{tenant.project}/webhooks/{hook['id']}", json={"url": url}, headers=tenant.headers()
    )
    assert r.status_code == 422, r.text


@pytest.mark.parametrize(
    ("attempts", "age", "expected"),
    [
        (1, 0, 10),
        (2, 10, 20),
        (3, 30, 40),
        (7, 630, 600),
        (10, 2430, 600),
        (11, 3030, None),
        (1, 3595, None),
    ],
)
def test_retry_schedule_doubles_caps_and_ends_with_the_window(attempts, age, expected):
    assert webhooks.retry_wait(attempts, age, base=10, window=3600) == expected


def test_signature_covers_timestamp_and_body():
    header = webhooks.sign("secret", 1700000000, b'{"a":1}')
    digest = hmac.new(b"secret", b'1700000000.{"a":1}', hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={digest}"
    assert webhooks.sign("secret", 1700000001, b'{"a":1}') != header


def _target(url: str) -> webhooks.Target:
    return webhooks.Target(ids.new_uuid(), "image.ready", url, "secret", b"{}")


async def test_attempts_refuse_private_addresses_time_out_and_do_not_follow_redirects(settings, receiver):
    strict = Settings(database_url=settings.database_url, secret_key="k", webhook_timeout_seconds=0.5)
    refused = await webhooks.post(_target(receiver.url("/never")), strict)
    assert not refused.ok and "not a public address" in (refused.error or "")
    assert receiver.got("/never") == []

    lenient = Settings(
        database_url=settings.database_url,
        secret_key="k",
        webhook_timeout_seconds=0.5,
        webhook_allow_private_addresses=True,
    )
    receiver.respond("/slow", 200, delay=2)
    slow = await webhooks.post(_target(receiver.url("/slow")), lenient)
    assert (slow.ok, slow.error) == (False, "no answer within 0.5 s")
    receiver.respond("/moved", 302)
    moved = await webhooks.post(_target(receiver.url("/moved")), lenient)
    assert (moved.ok, moved.status_code, moved.error) == (False, 302, "HTTP 302")
    assert (await webhooks.post(_target(receiver.url("/fine")), lenient)).ok

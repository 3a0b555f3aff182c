"""Webhooks: a project's receivers of image events, signed Stripe-style, delivered by a worker job.

CRUD is team-scoped like profiles.py (another team's project or webhook is a 404, a missing permission a
403) and the signing secret is write-only. An event is recorded as one delivery row per subscribed
webhook, inside the transaction that settles the image, with a snapshot of the image and its picture; the
worker defers a `deliver_webhook` job per row once that commits, and each attempt POSTs the snapshot with

    Picstore-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>

A non-2xx answer, a timeout or a refused address is retried with doubling waits until the retry window
(counted from the event) has passed. The only module that imports httpx.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import secrets
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import msgspec
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from picstore import errors, ids, images, models, projects, schemas, sealing
from picstore.auth import Caller
from picstore.settings import Settings

EVENTS = {"ready": "image.ready", "failed": "image.failed", "deleted": "image.deleted"}
SIGNATURE_HEADER = "Picstore-Signature"
MAX_WAIT_SECONDS = 600.0
RECENT_DELIVERIES = 50


class RetryLater(Exception):
    """The attempt failed and the retry window is still open: try again in `seconds`."""

    def __init__(self, seconds: float, error: str) -> None:
        self.seconds = seconds
        super().__init__(f"retry in {seconds:g} s after: {error}")


# Rules


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header's value. The timestamp is signed too, so a captured request cannot be replayed
    later without the receiver noticing its age."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def retry_wait(attempts: int, age: float, base: float, window: float) -> float | None:
    """Seconds until the next attempt after `attempts` failed ones, `age` seconds after the event; None
    once the next attempt would fall outside the retry window."""
    wait = min(base * 2 ** (attempts - 1), MAX_WAIT_SECONDS)
    return None if age + wait > window else wait


def check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise errors.Invalid("url: must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        # The URL is shown in every response; credentials belong in the signing secret.
        raise errors.Invalid("url: must not carry credentials (user:password@); verify the signature instead")
    return url


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


# CRUD


def out(hook: models.Webhook) -> schemas.WebhookOut:
    return schemas.WebhookOut(
        id=ids.format_id(ids.WEBHOOK, hook.id),
        project_id=ids.format_id(ids.PROJECT, hook.project_id),
        url=hook.url,
        events=list(hook.events),
        active=hook.active,
        created=hook.created,
        updated=hook.updated,
    )


def delivery_out(delivery: models.WebhookDelivery) -> schemas.WebhookDeliveryOut:
    return schemas.WebhookDeliveryOut(
        id=ids.format_id(ids.WEBHOOK_DELIVERY, delivery.id),
        webhook_id=ids.format_id(ids.WEBHOOK, delivery.webhook_id),
        event=delivery.event,
        image_id=ids.format_id(ids.BASE_IMAGE, delivery.image_id),
        status=delivery.status,
        attempts=delivery.attempts,
        status_code=delivery.status_code,
        error=delivery.error,
        created=delivery.created,
        updated=delivery.updated,
        delivered=delivery.delivered,
    )


async def _permitted(session: AsyncSession, caller: Caller, project_id: uuid.UUID, permission: str) -> None:
    await projects.require_live(session, caller, project_id)
    caller.require(permission, project_id)


async def _one(
    session: AsyncSession, caller: Caller, project_id: uuid.UUID, webhook_id: uuid.UUID
) -> models.Webhook:
    hook = await session.scalar(
        select(models.Webhook).where(
            models.Webhook.id == webhook_id,
            models.Webhook.team_id == caller.team_id,
            models.Webhook.project_id == project_id,
            models.Webhook.deleted.is_(None),
        )
    )
    if hook is None:
        raise errors.NotFound("webhook")
    return hook


async def list_webhooks(session: AsyncSession, caller: Caller, project_id: uuid.UUID) -> list[models.Webhook]:
    await _permitted(session, caller, project_id, "project:read")
    query = (
        select(models.Webhook)
        .where(
            models.Webhook.team_id == caller.team_id,
            models.Webhook.project_id == project_id,
            models.Webhook.deleted.is_(None),
        )
        .order_by(models.Webhook.id)
    )
    return list((await session.scalars(query)).all())


async def get_webhook(
    session: AsyncSession, caller: Caller, project_id: uuid.UUID, webhook_id: uuid.UUID
) -> models.Webhook:
    await _permitted(session, caller, project_id, "project:read")
    return await _one(session, caller, project_id, webhook_id)


async def create_webhook(
    session: AsyncSession, caller: Caller, project_id: uuid.UUID, data: schemas.WebhookIn, server_key: str
) -> tuple[str, models.Webhook]:
    """The new webhook and its secret (the given one, else a generated one): the only time it is shown."""
    await _permitted(session, caller, project_id, "project:write")
    secret = data.secret or new_secret()
    hook = models.Webhook(
        id=ids.new_uuid(),
        team_id=caller.team_id,
        project_id=project_id,
        url=check_url(data.url),
        secret_sealed=sealing.seal(server_key, secret),
        events=sorted(set(data.events)),
        active=data.active,
    )
    session.add(hook)
    await session.flush()
    await session.refresh(hook)
    return secret, hook


async def update_webhook(
    session: AsyncSession,
    caller: Caller,
    project_id: uuid.UUID,
    webhook_id: uuid.UUID,
    data: schemas.WebhookIn,
    server_key: str,
) -> models.Webhook:
    await _permitted(session, caller, project_id, "project:write")
    hook = await _one(session, caller, project_id, webhook_id)
    hook.url = check_url(data.url)
    hook.events = sorted(set(data.events))
    hook.active = data.active
    if data.secret is not None:
        hook.secret_sealed = sealing.seal(server_key, data.secret)
    await session.flush()
    await session.refresh(hook)
    return hook


async def delete_webhook(
    session: AsyncSession, caller: Caller, project_id: uuid.UUID, webhook_id: uuid.UUID
) -> None:
    await _permitted(session, caller, project_id, "project:write")
    hook = await _one(session, caller, project_id, webhook_id)
    hook.deleted = func.now()
    await session.flush()


async def list_deliveries(
    session: AsyncSession, caller: Caller, project_id: uuid.UUID, webhook_id: uuid.UUID
) -> list[models.WebhookDelivery]:
    """The most recent deliveries first (ids are time-ordered)."""
    hook = await get_webhook(session, caller, project_id, webhook_id)
    query = (
        select(models.WebhookDelivery)
        .where(models.WebhookDelivery.webhook_id == hook.id)
        .order_by(models.WebhookDelivery.id.desc())
        .limit(RECENT_DELIVERIES)
    )
    return list((await session.scalars(query)).all())


# Events


async def _snapshot(session: AsyncSession, image: models.BaseImage) -> dict[str, Any]:
    """The image as `GET /images/{id}` shows it, and its picture as `GET .../picture?format=json` does."""
    found = await images.read(session, image)
    pic = None
    # Ready with every output skipped (409) means there is nothing to put in a <picture>.
    if image.status == "ready" and found.ready:
        pic = found.picture_json(images.PictureOptions())
    return {"image": msgspec.to_builtins(found.view), "picture": msgspec.to_builtins(pic)}


async def announce(session: AsyncSession, image: models.BaseImage) -> list[uuid.UUID]:
    """Record the event of the image's status (ready, failed or deleted) for each active webhook of its
    project that subscribed to it. Returns the deliveries, for the caller to defer after the commit."""
    event = EVENTS.get(image.status)
    if event is None:
        return []
    hook_ids = list(
        await session.scalars(
            select(models.Webhook.id).where(
                models.Webhook.team_id == image.team_id,
                models.Webhook.project_id == image.project_id,
                models.Webhook.deleted.is_(None),
                models.Webhook.active,
                models.Webhook.events.any(event),
            )
        )
    )
    if not hook_ids:
        return []
    snapshot = await _snapshot(session, image)
    created = datetime.now(UTC).isoformat()
    rows = []
    for hook_id in hook_ids:
        delivery_id = ids.new_uuid()
        public_id = ids.format_id(ids.WEBHOOK_DELIVERY, delivery_id)
        payload = {"id": public_id, "type": event, "created": created, **snapshot}
        rows.append(
            models.WebhookDelivery(
                id=delivery_id,
                team_id=image.team_id,
                webhook_id=hook_id,
                image_id=image.id,
                event=event,
                payload=payload,
                status="pending",
                attempts=0,
            )
        )
    session.add_all(rows)
    await session.flush()
    return [row.id for row in rows]


# Delivery


@dataclass(frozen=True, slots=True)
class Target:
    delivery_id: uuid.UUID
    event: str
    url: str
    secret: str
    body: bytes


@dataclass(frozen=True, slots=True)
class Attempt:
    status_code: int | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


async def target(session: AsyncSession, delivery_id: uuid.UUID, server_key: str) -> Target | None:
    """What to send for a pending delivery; None when there is nothing to do. A delivery whose webhook was
    deleted or deactivated meanwhile is closed as failed."""
    row = (
        await session.execute(
            select(models.WebhookDelivery, models.Webhook)
            .join(models.Webhook, models.Webhook.id == models.WebhookDelivery.webhook_id)
            .where(models.WebhookDelivery.id == delivery_id, models.WebhookDelivery.status == "pending")
        )
    ).first()
    if row is None:
        return None
    delivery, hook = row
    if hook.deleted is not None or not hook.active:
        delivery.status, delivery.error = "failed", "the webhook was deleted or deactivated"
        return None
    body = msgspec.json.encode(delivery.payload)
    return Target(delivery.id, delivery.event, hook.url, sealing.unseal(server_key, hook.secret_sealed), body)


async def _refusal(url: str) -> str | None:
    """Why this destination is refused: tenants must not reach the server's own network through us.

    Checked on the resolved addresses; the HTTP client resolves again, so a DNS answer that changes in
    between (rebinding) is not covered.
    """
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    infos = await asyncio.get_running_loop().getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(sockaddr[0])
        if not address.is_global:
            return f"{parts.hostname} resolves to {address}, which is not a public address"
    return None


def _headers(target: Target) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": "picstore-webhooks",
        "Picstore-Event": target.event,
        "Picstore-Delivery": ids.format_id(ids.WEBHOOK_DELIVERY, target.delivery_id),
        SIGNATURE_HEADER: sign(target.secret, int(time.time()), target.body),
    }


async def post(target: Target, settings: Settings) -> Attempt:
    """One attempt. Redirects are not followed and the response body is never read."""
    timeout = settings.webhook_timeout_seconds
    try:
        if not settings.webhook_allow_private_addresses and (refused := await _refusal(target.url)):
            return Attempt(None, refused)
        async with (
            httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client,
            client.stream("POST", target.url, content=target.body, headers=_headers(target)) as response,
        ):
            code = response.status_code
    except httpx.TimeoutException:
        return Attempt(None, f"no answer within {timeout:g} s")
    except (httpx.HTTPError, OSError) as exc:
        return Attempt(None, f"{type(exc).__name__}: {exc}"[:500])
    return Attempt(code, None if 200 <= code < 300 else f"HTTP {code}")


async def record_attempt(
    session: AsyncSession, delivery_id: uuid.UUID, attempt: Attempt, settings: Settings
) -> float | None:
    """Store the attempt's result; returns the seconds to wait before retrying, or None when done."""
    delivery = await session.get_one(models.WebhookDelivery, delivery_id, with_for_update=True)
    delivery.attempts += 1
    delivery.status_code, delivery.error = attempt.status_code, attempt.error
    delivery.updated = func.now()
    if attempt.ok:
        delivery.status, delivery.delivered = "delivered", func.now()
        return None
    age = (datetime.now(UTC) - delivery.created).total_seconds()
    base, window = settings.webhook_retry_base_seconds, settings.webhook_retry_window_seconds
    wait = retry_wait(delivery.attempts, age, base, window)
    if wait is None:
        delivery.status = "failed"
    return wait

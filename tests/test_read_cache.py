"""The api's read caches (picstore/cache.py): the rules as table tests, the notification triggers against
the real schema, and the in-process app answering from its cache only what a fresh read would answer,
whoever changed the database (this process, another connection, a timer) and while the listener is down.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from conftest import Tenant, make_pipeline
from sqlalchemy import func, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from picstore import cache, db, ids, models

NOTICE_S = 2.0  # a notification reaches the app well within this on a loaded 2-core machine


# ------------------------------------------------------------------------------------------ the rules


def live_cache(max_entries: int = 10, max_age: float = 60) -> cache.ReadCache:
    found = cache.ReadCache(max_entries, max_age)
    found.attach(lambda: True)
    return found


def test_nothing_is_stored_or_served_while_detached() -> None:
    found = cache.ReadCache(10)
    found.images.put(uuid.uuid4(), "x", found.generation)  # type: ignore[arg-type]
    key = uuid.uuid4()
    found.attach(lambda: True)
    found.images.put(key, "x", found.generation)  # type: ignore[arg-type]
    assert found.images.get(key) == "x"
    found.detach()
    assert found.images.get(key) is None
    found.attach(lambda: True)
    assert found.images.get(key) is None, "re-attaching starts empty: notifications may have been missed"


def test_the_listener_connection_closing_stops_serving_at_once() -> None:
    open_ = [True]
    found = cache.ReadCache(10)
    found.attach(lambda: open_[0])
    key = uuid.uuid4()
    found.images.put(key, "x", found.generation)  # type: ignore[arg-type]
    open_[0] = False
    assert found.images.get(key) is None


def test_a_read_that_raced_an_invalidation_is_not_stored() -> None:
    found = live_cache()
    key = uuid.uuid4()
    generation = found.generation
    found.notified(f"image:{uuid.uuid4()}")  # any commit while the read ran
    found.images.put(key, "stale?", generation)  # type: ignore[arg-type]
    assert found.images.get(key) is None


A, B = uuid.uuid4(), uuid.uuid4()


@pytest.mark.parametrize(
    ("message", "images_left", "callers_left"),
    [
        (f"image:{A}", {B}, True),
        ("images", set(), True),
        ("auth", {A, B}, False),
        ("image:not-a-uuid", set(), False),
        ("something new", set(), False),
    ],
)
def test_notifications_evict(message: str, images_left: set[uuid.UUID], callers_left: bool) -> None:
    found = live_cache()
    for key in (A, B):
        found.images.put(key, "x", found.generation)  # type: ignore[arg-type]
    found.callers.put(b"digest", "caller", found.generation)  # type: ignore[arg-type]
    found.notified(message)
    assert {k for k in (A, B) if found.images.get(k) is not None} == images_left
    assert (found.callers.get(b"digest") is not None) == callers_left


def test_bounded_oldest_out_and_aged_out() -> None:
    found = live_cache(max_entries=2)
    keys = [uuid.uuid4() for _ in range(3)]
    for key in keys:
        found.images.put(key, "x", found.generation)  # type: ignore[arg-type]
    assert [found.images.get(k) is not None for k in keys] == [False, True, True]
    aging = live_cache(max_age=0.05)
    aging.images.put(A, "x", aging.generation)  # type: ignore[arg-type]
    time.sleep(0.1)
    assert aging.images.get(A) is None
    off = live_cache(max_entries=0)
    off.images.put(A, "x", off.generation)  # type: ignore[arg-type]
    assert off.images.get(A) is None


def slow_read(outcome: str | Exception) -> tuple[Callable[[], Awaitable[str]], list[int]]:
    """A read that takes 50 ms, then answers or raises `outcome`, and the list its calls are counted in."""
    reads: list[int] = []

    async def read() -> str:
        reads.append(1)
        await asyncio.sleep(0.05)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    return read, reads


async def test_concurrent_misses_share_one_read() -> None:
    found = live_cache()
    read, reads = slow_read("value")
    answers = await asyncio.gather(*(found.images.fetch(A, read) for _ in range(20)))  # type: ignore[arg-type]
    assert answers == ["value"] * 20 and len(reads) == 1
    assert await found.images.fetch(A, read) == "value" and len(reads) == 1, "then served from the cache"


async def test_a_read_started_before_an_invalidation_is_not_shared_after_it() -> None:
    found = live_cache()
    database = ["before"]

    async def read() -> str:
        seen = database[0]
        await asyncio.sleep(0.05)
        return seen

    early = asyncio.create_task(found.images.fetch(A, read))  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    database[0] = "after"
    found.notified(f"image:{A}")  # the commit's notification, while the early read is under way
    assert await found.images.fetch(A, read) == "after"  # type: ignore[arg-type]
    assert await early == "before"
    assert found.images.get(A) == "after"


async def test_a_failed_read_fails_its_waiters_and_is_not_stored() -> None:
    found = live_cache()
    refuse, reads = slow_read(LookupError("no such image"))
    answers = await asyncio.gather(*(found.images.fetch(A, refuse) for _ in range(5)), return_exceptions=True)  # type: ignore[arg-type]
    assert [type(a) for a in answers] == [LookupError] * 5 and len(reads) == 1
    with pytest.raises(LookupError):
        await found.images.fetch(A, refuse)  # type: ignore[arg-type]
    assert len(reads) == 2, "a failure is not cached"


async def test_a_waiter_going_away_does_not_cancel_the_read() -> None:
    found = live_cache()
    read, reads = slow_read("value")
    first = asyncio.create_task(found.images.fetch(A, read))  # type: ignore[arg-type]
    second = asyncio.create_task(found.images.fetch(A, read))  # type: ignore[arg-type]
    await asyncio.sleep(0.02)
    first.cancel()
    assert await second == "value" and len(reads) == 1
    assert found.images.get(A) == "value"


# ------------------------------------------------------------------------------ the triggers (0004)


async def test_triggers_notify_what_changed(
    sessions: async_sessionmaker[AsyncSession], tenant: Tenant
) -> None:
    """Each statement, committed by a connection of its own, against the messages that must (not) follow."""
    key_id = await _scalar(sessions, "SELECT id FROM api_keys WHERE team_id = :t", t=tenant.team_id)
    image_id = uuid.uuid4()
    cases: list[tuple[str, dict[str, Any], set[str]]] = [
        ("UPDATE api_keys SET last_used = now() WHERE id = :k", {"k": key_id}, set()),
        ("UPDATE api_keys SET name = 'renamed' WHERE id = :k", {"k": key_id}, {"auth"}),
        ("UPDATE teams SET name = 'renamed' WHERE id = :t", {"t": tenant.team_id}, {"auth"}),
        (
            "UPDATE role_permissions SET permission = permission WHERE team_id = :t",
            {"t": tenant.team_id},
            {"auth"},
        ),
        ("UPDATE users SET name = name WHERE team_id = :t", {"t": tenant.team_id}, {"auth"}),
        ("UPDATE storage_locations SET name = name WHERE team_id = :t", {"t": tenant.team_id}, {"images"}),
        ("UPDATE projects SET name = name WHERE team_id = :t", {"t": tenant.team_id}, set()),
        ("UPDATE base_images SET alt_text = 'x' WHERE id = :i", {"i": image_id}, set()),
    ]
    async with sessions() as listening:
        raw = (await (await listening.connection()).get_raw_connection()).driver_connection
        heard: list[str] = []

        def hear(*args: Any) -> None:
            heard.append(args[3])

        await raw.add_listener(cache.CHANNEL, hear)
        try:
            for sql, params, expected in cases:
                heard.clear()
                await _execute(sessions, sql, **params)
                await asyncio.sleep(0.3)
                assert set(heard) == expected, sql
        finally:
            await raw.remove_listener(cache.CHANNEL, hear)


async def _scalar(sessions: async_sessionmaker[AsyncSession], sql: str, **params: Any) -> Any:
    async with sessions() as session:
        return (await session.execute(text(sql), params)).scalar_one()


async def _execute(sessions: async_sessionmaker[AsyncSession], sql: str, **params: Any) -> None:
    """A commit the app's engine never sees: only its notification can tell the app."""
    async with sessions() as session, session.begin():
        await session.execute(text(sql), params)


async def test_writes_through_the_engine_invalidate_after_their_commit(settings: Any) -> None:
    engine = db.make_engine(settings.database_url, 2)
    calls: list[int] = []
    db.on_writes(engine, lambda: calls.append(1))
    sessions = db.make_sessionmaker(engine)
    try:
        async with sessions() as session, session.begin():
            await session.execute(text("SELECT 1"))
        assert calls == [], "a read changes nothing"
        async with sessions() as session, session.begin():
            await session.execute(text("UPDATE teams SET name = name WHERE false"))
            assert calls == [], "not before the commit: a read meanwhile would store the old state again"
        assert calls == [1]
        async with sessions() as session, session.begin():
            stamp = update(models.ApiKey).where(models.ApiKey.id == uuid.uuid4()).values(last_used=func.now())
            await session.execute(stamp.execution_options(**{db.CACHE_NEUTRAL: True}))
        assert calls == [1], "a key's last_used stamp is no change to any cached read"
    finally:
        await engine.dispose()


# ------------------------------------------------------------------------------------- the app


async def _image(client: httpx.AsyncClient, tenant: Tenant) -> str:
    pipe = await make_pipeline(client, tenant)
    r = await client.post(
        "/api/images",
        json={"filename": "photo.jpg", "upload_profile_id": pipe["upload_profile"], "alt_text": "first"},
        headers=tenant.headers(),
    )
    assert r.status_code == 201, r.text
    image_id: str = r.json()["id"]
    return image_id


async def _until(check: Callable[[], Awaitable[bool]], timeout: float = NOTICE_S) -> float:
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < timeout, "the change did not show in time"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def _wait_live(app: Any) -> cache.ReadCache:
    found: cache.ReadCache = app.state.cache

    async def live() -> bool:
        return found.live()

    await _until(live, timeout=10)
    return found


async def test_reads_are_served_from_the_cache(app: Any, client: httpx.AsyncClient, tenant: Tenant) -> None:
    read_cache = await _wait_live(app)
    image_id = await _image(client, tenant)
    first = await client.get(f"/api/images/{image_id}", headers=tenant.headers())
    assert first.status_code == 200, first.text
    assert read_cache.images.get(ids.parse_id(ids.BASE_IMAGE, image_id)) is not None
    again = await client.get(f"/api/images/{image_id}", headers=tenant.headers())
    assert again.json() == first.json()


async def test_a_write_through_this_process_shows_at_once(
    app: Any, client: httpx.AsyncClient, tenant: Tenant
) -> None:
    await _wait_live(app)
    image_id = await _image(client, tenant)
    for alt in ("second", "third", "fourth"):
        assert (await client.get(f"/api/images/{image_id}", headers=tenant.headers())).status_code == 200
        r = await client.put(f"/api/images/{image_id}", json={"alt_text": alt}, headers=tenant.headers())
        assert r.status_code == 200, r.text
        assert (await client.get(f"/api/images/{image_id}", headers=tenant.headers())).json()[
            "alt_text"
        ] == alt


async def test_a_commit_elsewhere_shows_by_notification(
    app: Any, client: httpx.AsyncClient, tenant: Tenant, sessions: async_sessionmaker[AsyncSession]
) -> None:
    await _wait_live(app)
    image_id = await _image(client, tenant)
    url = f"/api/images/{image_id}"
    assert (await client.get(url, headers=tenant.headers())).json()["alt_text"] == "first"
    await _execute(
        sessions,
        "UPDATE base_images SET alt_text = 'changed elsewhere' WHERE id = :i",
        i=ids.parse_id(ids.BASE_IMAGE, image_id),
    )

    async def changed() -> bool:
        return (await client.get(url, headers=tenant.headers())).json()["alt_text"] == "changed elsewhere"

    await _until(changed)
    await _execute(
        sessions,
        "UPDATE storage_locations SET public_url_base = 'https://cdn.example' WHERE team_id = :t",
        t=tenant.team_id,
    )

    async def moved() -> bool:
        return (
            (await client.get(url, headers=tenant.headers())).json()["url"].startswith("https://cdn.example/")
        )

    await _until(moved)


async def test_revoked_grants_and_keys_stop_working(
    app: Any, client: httpx.AsyncClient, tenant: Tenant, sessions: async_sessionmaker[AsyncSession]
) -> None:
    await _wait_live(app)
    image_id = await _image(client, tenant)
    url = f"/api/images/{image_id}"
    reader = await tenant.key_with(("project:read", tenant.project_id))
    assert (await client.get(url, headers=tenant.headers(reader))).status_code == 200
    # The grant is taken away by another connection: 403 once the notification is in.
    await _execute(
        sessions,
        "DELETE FROM role_permissions WHERE role_id IN (SELECT ur.role_id FROM user_roles ur JOIN api_keys k"
        " ON k.user_id = ur.user_id WHERE k.prefix = :p)",
        p=reader[:16],
    )

    async def refused() -> bool:
        return (await client.get(url, headers=tenant.headers(reader))).status_code == 403

    await _until(refused)
    # A key revoked through the api is refused by the very next request.
    made = await client.post("/api/api_keys", json={"name": "short-lived"}, headers=tenant.headers())
    assert made.status_code == 201, made.text
    key, key_id = made.json()["key"], made.json()["api_key"]["id"]
    assert (await client.get(url, headers=tenant.headers(key))).status_code == 200
    r = await client.delete(f"/api/api_keys/{key_id}", headers=tenant.headers())
    assert r.status_code == 200, r.text
    assert (await client.get(url, headers=tenant.headers(key))).status_code == 401


async def test_an_expiring_key_is_refused_when_it_expires(
    app: Any, client: httpx.AsyncClient, tenant: Tenant
) -> None:
    await _wait_live(app)
    image_id = await _image(client, tenant)
    expires = datetime.now(UTC) + timedelta(seconds=1.5)
    key = await tenant.key_with(("project:read", None), expires=expires)
    assert (await client.get(f"/api/images/{image_id}", headers=tenant.headers(key))).status_code == 200
    await asyncio.sleep((expires - datetime.now(UTC)).total_seconds() + 0.1)
    assert (await client.get(f"/api/images/{image_id}", headers=tenant.headers(key))).status_code == 401


async def test_a_cached_image_is_checked_against_each_caller(
    app: Any, client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    await _wait_live(app)
    image_id = await _image(client, tenant)
    for path in (f"/api/images/{image_id}", f"/api/images/{image_id}/picture?fallback=original"):
        assert (await client.get(path, headers=tenant.headers())).status_code in (200, 409)
        r = await client.get(path, headers=other_tenant.headers())
        assert r.status_code == 404, r.text
        elsewhere = await tenant.key_with(("project:read", uuid.uuid4()))
        r = await client.get(path, headers=tenant.headers(elsewhere))
        assert r.status_code == 403 and "project:read" in r.text, r.text


async def test_while_the_listener_is_down_reads_go_to_the_database(
    app: Any, client: httpx.AsyncClient, tenant: Tenant, sessions: async_sessionmaker[AsyncSession]
) -> None:
    read_cache = await _wait_live(app)
    image_id = await _image(client, tenant)
    url = f"/api/images/{image_id}"
    assert (await client.get(url, headers=tenant.headers())).status_code == 200
    terminated = await _scalar(
        sessions,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE application_name = :n AND datname = current_database()",
        n=f"picstore {cache.CHANNEL}",
    )
    assert terminated == 1

    async def detached() -> bool:
        return not read_cache.live()

    await _until(detached)
    await _execute(
        sessions,
        "UPDATE base_images SET alt_text = 'while down' WHERE id = :i",
        i=ids.parse_id(ids.BASE_IMAGE, image_id),
    )
    assert (await client.get(url, headers=tenant.headers())).json()["alt_text"] == "while down"
    await _wait_live(app)
    assert (await client.get(url, headers=tenant.headers())).json()["alt_text"] == "while down"

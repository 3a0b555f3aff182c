"""In-process caches for the hot read routes (authenticated callers, image reads), kept coherent with
PostgreSQL: a cached answer is what a fresh read would give, up to the milliseconds a notification from
another process takes to arrive.

- Triggers (migration 0004) send a notification on channel `picstore_cache` with every commit that
  changes what an entry was read from: `auth`, `image:<uuid>` or `images`. A listener connection
  (db.follow) evicts on each one, whichever process committed.
- While the listener is not connected nothing is stored or served: a notification may have been missed.
- A write committed through this process's engine clears everything as its connection returns to the
  pool, so a client reads its own writes at once instead of after its notification arrives.
- A read stores its result only if nothing was invalidated while it ran (the generation), so a read that
  raced a commit cannot store what that commit replaced.
- Entries also expire after max_age, a backstop should anything be missed all the same.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from picstore.auth import Caller
from picstore.images import ImageRead

CHANNEL = "picstore_cache"
MAX_AGE_S = 60.0

K = TypeVar("K")
V = TypeVar("V")


class ReadCache:
    """The shelves and the invalidation state they share; db.follow and db.on_writes feed it."""

    def __init__(self, max_entries: int, max_age: float = MAX_AGE_S) -> None:
        self.generation = 0
        self._connected: Callable[[], bool] = _never
        self.callers: Shelf[bytes, Caller] = Shelf(self, max_entries, max_age)
        self.images: Shelf[uuid.UUID, ImageRead] = Shelf(self, max_entries, max_age)

    def live(self) -> bool:
        return self._connected()

    def attach(self, connected: Callable[[], bool]) -> None:
        """The listener is listening (again): what is cached may have missed notifications meanwhile."""
        self.clear()
        self._connected = connected

    def detach(self) -> None:
        self._connected = _never
        self.clear()

    def notified(self, message: str) -> None:
        """One message from the channel (see migration 0004); anything unknown clears everything."""
        kind, _, rest = message.partition(":")
        self.generation += 1
        image_id = _uuid(rest) if kind == "image" else None
        if image_id is not None:
            self.images.evict(image_id)
        elif kind == "images":
            self.images.clear()
        elif kind == "auth":
            self.callers.clear()
        else:
            self.clear()

    def clear(self) -> None:
        self.generation += 1
        self.callers.clear()
        self.images.clear()


class Shelf(Generic[K, V]):
    """A bounded map whose entries only count while its ReadCache is live."""

    def __init__(self, cache: ReadCache, max_entries: int, max_age: float) -> None:
        self._cache = cache
        self._max_entries = max_entries
        self._max_age = max_age
        self._entries: dict[K, tuple[float, V]] = {}
        # Reads under way: flight → (the generation it started in, its result).
        self._flights: dict[Hashable, tuple[int, asyncio.Future[V]]] = {}

    def get(self, key: K) -> V | None:
        if not self._cache.live():
            return None
        entry = self._entries.get(key)
        if entry is None:
            return None
        if time.monotonic() - entry[0] > self._max_age:
            self._entries.pop(key, None)
            return None
        return entry[1]

    async def fetch(self, key: K, read: Callable[[], Awaitable[V]], flight: Hashable | None = None) -> V:
        """The cached value, else what `read` returns, stored unless something was invalidated meanwhile.

        Concurrent misses of one `flight` (default: the key) share a single read, so an entry expiring or
        being evicted under load costs one database read, not one per waiting request. A read started
        before an invalidation is shared with no one who asks after it: it may hold what was replaced."""
        found = self.get(key)
        if found is not None:
            return found
        flight = key if flight is None else flight
        generation = self._cache.generation
        started = self._flights.get(flight)
        if started is not None and started[0] == generation:
            pending = started[1]
        else:
            pending = asyncio.ensure_future(self._read(key, read, generation))
            self._flights[flight] = (generation, pending)
            pending.add_done_callback(lambda done: self._landed(flight, done))
        # Shielded: a waiter that goes away (its client hung up) must not cancel the others' read.
        return await asyncio.shield(pending)

    async def _read(self, key: K, read: Callable[[], Awaitable[V]], generation: int) -> V:
        value = await read()
        self.put(key, value, generation)
        return value

    def _landed(self, flight: Hashable, done: asyncio.Future[V]) -> None:
        started = self._flights.get(flight)
        if started is not None and started[1] is done:
            del self._flights[flight]
        if not done.cancelled():
            done.exception()  # retrieved: every waiter may have gone, and asyncio would log it as lost

    def put(self, key: K, value: V, generation: int) -> None:
        """Store what was read after `generation` was taken, unless something was invalidated meanwhile."""
        if generation != self._cache.generation or not self._cache.live() or self._max_entries <= 0:
            return
        if len(self._entries) >= self._max_entries:
            del self._entries[next(iter(self._entries))]  # the oldest: dicts keep insertion order
        self._entries[key] = (time.monotonic(), value)

    def evict(self, key: K) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()


def _never() -> bool:
    return False


def _uuid(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except ValueError:
        return None

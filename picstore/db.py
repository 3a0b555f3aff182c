"""The SQLAlchemy engine and session factory, and the query fragments every team-scoped lookup shares."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import ColumnElement, Select, and_, event, false, true
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from picstore import errors, ids

if TYPE_CHECKING:
    from picstore.auth import Caller

log = logging.getLogger("picstore.db")

# Statements run with this execution option change nothing a read cache holds (a key's last_used stamp).
CACHE_NEUTRAL = "picstore_cache_neutral"
_WROTE = "picstore_wrote"


def make_engine(url: str, pool_size: int = 10, statement_timeout: float = 60) -> AsyncEngine:
    """Pooled connections are pinged before use, so a restarted server costs no request an error. The
    statement timeout also bounds that ping: a server that stops answering (frozen, or cut off by the
    network with the TCP connection still open) is an error after that long, not a hang."""
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args={"timeout": min(5, statement_timeout), "command_timeout": statement_timeout},
    )


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autobegin=True)


def allowed_in(project_column: Any, caller: Caller, permission: str) -> ColumnElement[bool]:
    """The permission as SQL: true where the caller's grants cover the row's project.

    Team-global rows (project NULL) only pass a team-wide grant, since `NULL IN (...)` is not true.
    """
    scope = caller.scope(permission)
    if scope.everywhere:
        return true()
    if not scope.projects:
        return false()
    return project_column.in_(scope.projects)


def live(model: Any, caller: Caller) -> ColumnElement[bool]:
    return and_(model.team_id == caller.team_id, model.deleted.is_(None))


async def get_allowed(
    session: AsyncSession, query: Select[Any], project_column: Any, caller: Caller, permission: str, what: str
) -> Any:
    """Run a one-row query that is already team-scoped, with the permission evaluated in the same query.

    Missing (or another team's) → NotFound; present but not permitted → MissingPermission naming it.
    """
    row = (await session.execute(query.add_columns(allowed_in(project_column, caller, permission)))).first()
    if row is None:
        raise errors.NotFound(what)
    if not row[-1]:
        raise errors.MissingPermission(permission)
    return row[0] if len(row) == 2 else row[:-1]


def parse_ref(prefix: str, text: str, what: str) -> uuid.UUID:
    try:
        return ids.parse_id(prefix, text)
    except ids.InvalidId:
        raise errors.Invalid(f"{what}: {text[:64]!r} is not a valid id") from None


class Follower(Protocol):
    def attach(self, connected: Callable[[], bool]) -> None: ...
    def detach(self) -> None: ...
    def notified(self, message: str) -> None: ...


async def follow(engine: AsyncEngine, channel: str, follower: Follower, ping_s: float = 5.0) -> None:
    """Until cancelled: LISTEN on `channel` over a connection of its own and hand each message to the
    follower, attached only while that connection is open and answering a ping every `ping_s`, so a
    frozen server detaches it too. Reconnects after any failure."""
    while True:
        try:
            await _follow_once(engine, channel, follower, ping_s)
            log.warning("the %s listener's connection closed; listening again", channel)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # whatever broke the connection, listen again
            log.warning("not following %s notifications: %s; retrying", channel, exc)
        await asyncio.sleep(1)


async def _follow_once(engine: AsyncEngine, channel: str, follower: Follower, ping_s: float) -> None:
    async with engine.connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        lost = asyncio.Event()
        raw.add_termination_listener(lambda _: lost.set())
        try:
            # Named, so an operator can tell it from the pool's connections in pg_stat_activity.
            await raw.execute(f"SET application_name = 'picstore {channel}'")
            await raw.add_listener(channel, lambda _conn, _pid, _channel, message: follower.notified(message))
            follower.attach(lambda: not raw.is_closed())
            while not lost.is_set():
                try:
                    await asyncio.wait_for(lost.wait(), ping_s)
                except TimeoutError:
                    await raw.fetchval("SELECT 1", timeout=ping_s)
        finally:
            follower.detach()
            # Close the socket without waiting on the server (nothing to wait for, and this may run while
            # being cancelled), then drop the connection from the pool.
            raw.terminate()
            await conn.invalidate()


def on_writes(engine: AsyncEngine, callback: Callable[[], None]) -> None:
    """Call `callback` each time a connection that ran anything but a SELECT (or a CACHE_NEUTRAL statement)
    returns to the pool, which is after its transaction has committed or rolled back."""

    @event.listens_for(engine.sync_engine, "after_cursor_execute")
    def executed(conn: Any, _cursor: Any, statement: str, _params: Any, context: Any, _many: bool) -> None:
        if statement.lstrip()[:6].upper() != "SELECT" and not context.execution_options.get(CACHE_NEUTRAL):
            conn.info[_WROTE] = True

    @event.listens_for(engine.sync_engine.pool, "checkin")
    def returned(_dbapi_connection: Any, record: Any) -> None:
        # No record: the connection was invalidated mid-transaction, and whether it wrote is unknown.
        if record is None or record.info.pop(_WROTE, False):
            callback()

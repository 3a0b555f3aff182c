"""The SQLAlchemy engine and session factory, and the query fragments every team-scoped lookup shares."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, false, true
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from picstore import errors, ids
from picstore.auth import Caller


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

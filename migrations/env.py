"""Alembic environment: async on asyncpg; procrastinate's tables are managed by their own revision."""

import asyncio
import os
from typing import Any

from alembic import context
from sqlalchemy.ext.asyncio import create_async_engine

from picstore import models, settings

config = context.config


def _url() -> str:
    url = config.attributes.get("url") or os.environ.get("PICSTORE_DATABASE_URL")
    if not url:
        raise SystemExit("PICSTORE_DATABASE_URL is not set")
    return settings.database_url(url)


def _include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    # procrastinate's schema is applied from its own SQL; autogenerate must not propose dropping it.
    return not (name or "").startswith("procrastinate")


def _run(connection: Any) -> None:
    context.configure(
        connection=connection,
        target_metadata=models.Base.metadata,
        include_name=_include_name,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _main() -> None:
    engine = create_async_engine(_url())
    async with engine.connect() as connection:
        await connection.run_sync(_run)
    await engine.dispose()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    asyncio.run(_main())

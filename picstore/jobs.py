"""The procrastinate App and deferral. Tasks live in tasks.py; the api defers them by name so it never
imports pyvips. procrastinate has no asyncpg connector, so jobs use their own psycopg pool."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import procrastinate

from picstore.settings import Settings

app = procrastinate.App(connector=procrastinate.PsycopgConnector(), import_paths=["picstore.tasks"])


def connected(settings: Settings, max_size: int = 4) -> procrastinate.App:
    connector = procrastinate.PsycopgConnector(conninfo=settings.libpq_url, min_size=1, max_size=max_size)
    return app.with_connector(connector)


@asynccontextmanager
async def open_app(settings: Settings, max_size: int = 4) -> AsyncIterator[procrastinate.App]:
    job_app = connected(settings, max_size)
    async with job_app.open_async():
        yield job_app

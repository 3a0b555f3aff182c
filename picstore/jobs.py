"""The procrastinate App and deferral. Tasks live in tasks.py; the api defers them by name so it never
imports pyvips. procrastinate has no asyncpg connector, so jobs use their own psycopg pool.

Jobs are deferred after the commit that made their rows visible. A queueing lock keeps one waiting job
per image, and a lock runs one job per image at a time; if the process dies between commit and defer,
the reconcile task (tasks.py) finds the image still queued and defers it.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import procrastinate
from procrastinate.exceptions import AlreadyEnqueued

from picstore.settings import Settings

QUEUE = "images"
WEBHOOK_QUEUE = "webhooks"
CONVERT = "picstore.tasks.convert_image"
DELETE = "picstore.tasks.delete_image"
DELIVER = "picstore.tasks.deliver_webhook"

app = procrastinate.App(connector=procrastinate.PsycopgConnector(), import_paths=["picstore.tasks"])


@asynccontextmanager
async def open_app(settings: Settings, max_size: int = 4) -> AsyncIterator[procrastinate.App]:
    """The app connected to this process's database (tasks are registered on the module-level app)."""
    connector = procrastinate.PsycopgConnector(conninfo=settings.libpq_url, min_size=1, max_size=max_size)
    with app.replace_connector(connector) as job_app:
        async with job_app.open_async():
            yield job_app


async def _defer(job_app: procrastinate.App, task: str, kind: str, image_id: uuid.UUID) -> None:
    # A job already waiting will read the image's current state when it runs.
    with contextlib.suppress(AlreadyEnqueued):
        await job_app.configure_task(
            task, queue=QUEUE, lock=f"image:{image_id}", queueing_lock=f"{kind}:{image_id}"
        ).defer_async(image_id=str(image_id))


async def defer_conversion(job_app: procrastinate.App, image_id: uuid.UUID) -> None:
    await _defer(job_app, CONVERT, "convert", image_id)


async def defer_deletion(job_app: procrastinate.App, image_id: uuid.UUID) -> None:
    await _defer(job_app, DELETE, "delete", image_id)


async def defer_deliveries(job_app: procrastinate.App, delivery_ids: list[uuid.UUID]) -> None:
    """One job per webhook delivery; the delivery row is the durable record (tasks.reconcile re-defers)."""
    for delivery_id in delivery_ids:
        lock = f"delivery:{delivery_id}"
        with contextlib.suppress(AlreadyEnqueued):  # the waiting job sends it
            task = job_app.configure_task(DELIVER, queue=WEBHOOK_QUEUE, lock=lock, queueing_lock=lock)
            await task.defer_async(delivery_id=str(delivery_id))

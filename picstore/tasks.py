"""Background tasks and the worker entry point."""

from __future__ import annotations

from picstore import jobs
from picstore.settings import Settings


async def run_worker(settings: Settings, concurrency: int) -> None:
    """Run until SIGINT/SIGTERM; running jobs finish first (procrastinate's graceful shutdown)."""
    async with jobs.open_app(settings, max_size=concurrency + 2) as app:
        await app.run_worker_async(concurrency=concurrency, shutdown_graceful_timeout=60)

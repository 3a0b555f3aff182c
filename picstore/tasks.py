"""Background tasks (procrastinate) and the worker entry point.

convert_image is idempotent and resumes: it renders only the image's outputs that are still queued or
were converting when a worker died, from one decode of the original, and marks them ready in one
transaction after every object is stored. Names are content-versioned, so storing again after a crash
rewrites identical bytes under the same name: each output exists exactly once.

When a job settles an image (ready or failed) or deletes it, the same transaction records a webhook
delivery per subscribed webhook, and a deliver_webhook job per delivery is deferred after the commit.
Every job run writes one log line (task, arguments, outcome, duration).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio.to_thread
from procrastinate import BaseRetryStrategy, JobContext, RetryDecision
from procrastinate.jobs import Job
from sqlalchemy import delete, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from picstore import conversion, db, images, imaging, jobs, logs, models, sealing, storage, stores, webhooks
from picstore.settings import Settings

log = logging.getLogger("picstore.worker")

OUTPUT_CACHE_CONTROL = "public, max-age=31536000, immutable"
RETRIES = 4
TRANSIENT = (storage.StorageError, sealing.SealError, OSError, DBAPIError)


class _Backoff(BaseRetryStrategy):
    """RETRIES retries of a TRANSIENT error, after 3, 5, 9 and 17 times the base:
    settings.job_retry_base_seconds (PICSTORE_JOB_RETRY_BASE_SECONDS, default 1 s), set by run_worker."""

    base_seconds = 1.0

    def get_retry_decision(self, *, exception: BaseException, job: Job) -> RetryDecision | None:
        if job.attempts >= RETRIES or not isinstance(exception, TRANSIENT):
            return None
        return RetryDecision(retry_in={"seconds": self.base_seconds * (1 + 2 ** (job.attempts + 1))})


RETRY = _Backoff()
STALLED_AFTER_SECONDS = 30
RECONCILE_AFTER = timedelta(seconds=30)
# A sixth cron field is seconds (croniter): a SIGKILLed worker's jobs are retried at most
# STALLED_AFTER_SECONDS + 15 s after its last heartbeat, instead of up to a minute later. A run that finds
# nothing to do is three small queries.
RECONCILE_CRON = "* * * * * */15"
JOB_HISTORY_HOURS = 7 * 24


@dataclass(frozen=True)
class Resources:
    settings: Settings
    sessions: async_sessionmaker[AsyncSession]
    stores: stores.Stores


def _resources(context: JobContext) -> Resources:
    resources: Resources = context.additional_context["picstore"]
    return resources


@dataclass(frozen=True)
class _Work:
    """A snapshot of what one conversion run needs, taken inside its first transaction."""

    image: models.BaseImage
    base: models.StorageLocation
    outputs: list[models.OutputImage]
    locations: dict[uuid.UUID, models.StorageLocation]


def settle(statuses: list[tuple[str, str | None]]) -> tuple[str, str | None]:
    """The base image's status from its outputs': ready when every live one is ready or skipped."""
    live = [(s, r) for s, r in statuses if s not in ("obsolete", "deleted")]
    if any(s in ("queued", "converting") for s, _ in live):
        return "queued", None
    failed = [r for s, r in live if s == "failed"]
    if failed:
        return "failed", failed[0] or "conversion failed"
    return "ready", None


async def _settle(session: AsyncSession, image: models.BaseImage) -> None:
    rows = await session.execute(
        select(models.OutputImage.status, models.OutputImage.reason).where(
            models.OutputImage.base_image_id == image.id
        )
    )
    image.status, image.error = settle(list(rows.all()))


async def _claim(session: AsyncSession, image_id: uuid.UUID) -> _Work | None:
    image = await session.get(models.BaseImage, image_id, with_for_update=True)
    if image is None or image.format is None or image.status in ("deleting", "deleted", "awaiting_upload"):
        return None
    outputs = list(
        await session.scalars(
            select(models.OutputImage).where(
                models.OutputImage.base_image_id == image_id,
                models.OutputImage.status.in_(("queued", "converting")),
            )
        )
    )
    if not outputs:
        await _settle(session, image)
        return None
    image.status = "converting"
    for output in outputs:
        output.status = "converting"
    location_ids = {image.storage_location_id, *(o.storage_location_id for o in outputs)}
    locations = {
        loc.id: loc
        for loc in await session.scalars(
            select(models.StorageLocation).where(models.StorageLocation.id.in_(location_ids))
        )
    }
    return _Work(image, locations[image.storage_location_id], outputs, locations)


def _spec(output: models.OutputImage, image: models.BaseImage) -> imaging.OutputSpec:
    p = output.params
    focal = p.get("focal") or (image.focal_x or 0.5, image.focal_y or 0.5)
    return imaging.OutputSpec(
        key=str(output.id),
        format=output.format,
        width=p["width"],
        height=p["height"],
        fit=p["fit"],
        crop=p.get("crop") or "focal",
        focal_x=focal[0],
        focal_y=focal[1],
        quality=p.get("quality") or 90,
        effort=p.get("effort") or 0,
        lossless=bool(p.get("lossless")),
        animated=bool(p.get("animated")),
    )


def _header(image: models.BaseImage) -> imaging.Header:
    return imaging.Header(image.format or "", image.width, image.height, image.frames, image.has_alpha)


@contextmanager
def _temp_path() -> Iterator[str]:
    fd, path = tempfile.mkstemp(prefix="picstore-original-")
    os.close(fd)
    try:
        yield path
    finally:
        os.unlink(path)


def _sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while chunk := source.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


async def _render_and_store(
    res: Resources, work: _Work
) -> tuple[imaging.Summary, list[imaging.Rendered]] | None:
    """None when the original changed under us (a replacement upload): its own job will redo the work."""
    base_store = await res.stores.for_location(work.base)
    with _temp_path() as path:
        await base_store.get_to_file(images.original_key(work.image), path)
        if await anyio.to_thread.run_sync(_sha256_of, path) != work.image.hash:
            return None
        started = time.perf_counter()
        specs = [_spec(o, work.image) for o in work.outputs]
        summary, rendered = await anyio.to_thread.run_sync(imaging.render, path, _header(work.image), specs)
    log.info(
        "image %s: rendered %d outputs in %.2f s", work.image.id, len(rendered), time.perf_counter() - started
    )
    by_id = {str(o.id): o for o in work.outputs}
    for item in rendered:
        output = by_id[item.key]
        out_store = await res.stores.for_location(work.locations[output.storage_location_id])
        await out_store.put_bytes(
            output.location, item.data, conversion.content_type(output.format), OUTPUT_CACHE_CONTROL
        )
    return summary, rendered


async def _finish(
    res: Resources, image_id: uuid.UUID, summary: imaging.Summary, rendered: list[imaging.Rendered]
) -> list[uuid.UUID]:
    """Mark the rendered outputs ready; returns the webhook deliveries to defer (when the image settled)."""
    async with res.sessions() as session, session.begin():
        image = await session.get(models.BaseImage, image_id, with_for_update=True)
        if image is None:
            return []
        for item in rendered:
            # Only outputs still converting: a replacement may have made some obsolete meanwhile.
            await session.execute(
                update(models.OutputImage)
                .where(
                    models.OutputImage.id == uuid.UUID(item.key), models.OutputImage.status == "converting"
                )
                .values(
                    status="ready",
                    width=item.width,
                    height=item.height,
                    file_size=len(item.data),
                    reason=None,
                    convert_ms=round(item.seconds * 1000),
                )
            )
        image.placeholder, image.dominant_color = summary.placeholder, summary.dominant_color
        await _settle(session, image)
        return await webhooks.announce(session, image)


async def _fail(res: Resources, image_id: uuid.UUID, reason: str) -> list[uuid.UUID]:
    """Fail the unfinished outputs and the image; returns the webhook deliveries to defer."""
    async with res.sessions() as session, session.begin():
        image = await session.get(models.BaseImage, image_id, with_for_update=True)
        if image is None:
            return []
        await session.execute(
            update(models.OutputImage)
            .where(
                models.OutputImage.base_image_id == image_id,
                models.OutputImage.status.in_(("queued", "converting")),
            )
            .values(status="failed", reason=reason)
        )
        image.status, image.error = "failed", reason
        return await webhooks.announce(session, image)


async def _announce_settled(session: AsyncSession, image_id: uuid.UUID) -> list[uuid.UUID]:
    """A job with nothing to render still settles an upload whose outputs were all kept or skipped."""
    image = await session.get(models.BaseImage, image_id)
    if image is None or image.status not in ("ready", "failed"):
        return []
    return await webhooks.announce(session, image)


async def _requeue(res: Resources, image_id: uuid.UUID) -> None:
    async with res.sessions() as session, session.begin():
        await session.execute(
            update(models.OutputImage)
            .where(models.OutputImage.base_image_id == image_id, models.OutputImage.status == "converting")
            .values(status="queued")
        )


@jobs.app.task(name=jobs.CONVERT, queue=jobs.QUEUE, pass_context=True, retry=RETRY)
async def convert_image(context: JobContext, image_id: str) -> None:
    res, iid = _resources(context), uuid.UUID(image_id)
    async with res.sessions() as session, session.begin():
        work = await _claim(session, iid)
        settled = [] if work else await _announce_settled(session, iid)
    if work is None:
        await jobs.defer_deliveries(context.app, settled)
        return
    try:
        done = await _render_and_store(res, work)
    except imaging.ImageError as exc:
        log.info("image %s failed: %s", iid, exc.reason)
        await jobs.defer_deliveries(context.app, await _fail(res, iid, exc.reason))
        return
    except TRANSIENT as exc:
        attempts = context.job.attempts if context.job else RETRIES
        if attempts >= RETRIES:
            failed = await _fail(res, iid, f"storage error after {attempts + 1} attempts: {exc}")
            await jobs.defer_deliveries(context.app, failed)
            return
        await _requeue(res, iid)
        raise
    except Exception as exc:
        # A bug, not the input: fail the image with a reason instead of leaving it for reconcile forever.
        log.exception("image %s: unexpected error while converting", iid)
        failed = await _fail(
            res, iid, f"internal error while converting ({type(exc).__name__}); see the worker log"
        )
        await jobs.defer_deliveries(context.app, failed)
        return
    if done is None:
        await _requeue(res, iid)
        return
    await jobs.defer_deliveries(context.app, await _finish(res, iid, *done))


@jobs.app.task(name=jobs.DELETE, queue=jobs.QUEUE, pass_context=True, retry=RETRY)
async def delete_image(context: JobContext, image_id: str) -> None:
    """Delete the original and every output from storage, then the rows."""
    res, iid = _resources(context), uuid.UUID(image_id)
    async with res.sessions() as session, session.begin():
        image = await session.get(models.BaseImage, iid)
        if image is None or image.status != "deleting":
            return
        outputs = list(
            await session.scalars(select(models.OutputImage).where(models.OutputImage.base_image_id == iid))
        )
        ids = {image.storage_location_id, *(o.storage_location_id for o in outputs)}
        locations = {
            loc.id: loc
            for loc in await session.scalars(
                select(models.StorageLocation).where(models.StorageLocation.id.in_(ids))
            )
        }
    for location_id, key in [(o.storage_location_id, o.location) for o in outputs] + [
        (image.storage_location_id, images.original_key(image))
    ]:
        await (await res.stores.for_location(locations[location_id])).delete(key)
    async with res.sessions() as session, session.begin():
        await session.execute(delete(models.OutputImage).where(models.OutputImage.base_image_id == iid))
        await session.execute(
            update(models.BaseImage)
            .where(models.BaseImage.id == iid)
            .values(status="deleted", deleted=datetime.now(UTC))
        )
        deleted = await webhooks.announce(session, await session.get_one(models.BaseImage, iid))
    await jobs.defer_deliveries(context.app, deleted)


class _WebhookRetry(BaseRetryStrategy):
    """Retry when deliver_webhook says when: its schedule depends on the settings and the event's age,
    which a RetryStrategy fixed at import cannot know."""

    def get_retry_decision(self, *, exception: BaseException, job: Job) -> RetryDecision | None:
        if isinstance(exception, webhooks.RetryLater):
            return RetryDecision(retry_at=datetime.now(UTC) + timedelta(seconds=exception.seconds))
        return None


@jobs.app.task(name=jobs.DELIVER, queue=jobs.WEBHOOK_QUEUE, pass_context=True, retry=_WebhookRetry())
async def deliver_webhook(context: JobContext, delivery_id: str) -> None:
    """POST one event. No transaction is held during the request; the row records every attempt."""
    res, did = _resources(context), uuid.UUID(delivery_id)
    async with res.sessions() as session, session.begin():
        target = await webhooks.target(session, did, res.settings.secret_key)
    if target is None:
        return
    attempt = await webhooks.post(target, res.settings)
    async with res.sessions() as session, session.begin():
        wait = await webhooks.record_attempt(session, did, attempt, res.settings)
    if wait is not None:
        raise webhooks.RetryLater(wait, attempt.error or "")
    if not attempt.ok:
        log.warning("webhook delivery %s given up after the retry window: %s", did, attempt.error)


# Periodic housekeeping


STRANDED = text(
    """
    SELECT b.id, b.status FROM base_images b
    WHERE b.status IN ('queued', 'converting', 'deleting') AND b.updated < :before
      AND NOT EXISTS (
        SELECT 1 FROM procrastinate_jobs j
        WHERE j.status IN ('todo', 'doing') AND j.args->>'image_id' = b.id::text)
    LIMIT 500
    """
)
STRANDED_DELIVERIES = text(
    """
    SELECT d.id FROM webhook_deliveries d
    WHERE d.status = 'pending' AND d.updated < :before
      AND NOT EXISTS (
        SELECT 1 FROM procrastinate_jobs j
        WHERE j.status IN ('todo', 'doing') AND j.args->>'delivery_id' = d.id::text)
    LIMIT 500
    """
)


@jobs.app.periodic(cron=RECONCILE_CRON, periodic_id="reconcile")
@jobs.app.task(
    name="picstore.tasks.reconcile", queue=jobs.QUEUE, pass_context=True, queueing_lock="reconcile"
)
async def reconcile(context: JobContext, timestamp: int) -> None:
    """Retry jobs of dead workers, and re-defer images and webhook deliveries whose job was lost between
    commit and defer."""
    res = _resources(context)
    app = context.app
    for job in await app.job_manager.get_stalled_jobs(seconds_since_heartbeat=STALLED_AFTER_SECONDS):
        log.warning("retrying stalled job %s (%s)", job.id, job.task_name)
        await app.job_manager.retry_job(job)
    before = {"before": datetime.now(UTC) - RECONCILE_AFTER}
    async with res.sessions() as session:
        stranded = (await session.execute(STRANDED, before)).all()
        deliveries = list((await session.scalars(STRANDED_DELIVERIES, before)).all())
    for image_id, status in stranded:
        log.warning("re-deferring image %s left %s without a job", image_id, status)
        defer = jobs.defer_deletion if status == "deleting" else jobs.defer_conversion
        await defer(app, image_id)
    if deliveries:
        log.warning("re-deferring %d webhook deliveries left pending without a job", len(deliveries))
        await jobs.defer_deliveries(app, deliveries)


@jobs.app.periodic(cron="*/10 * * * *", periodic_id="purge_obsolete")
@jobs.app.task(
    name="picstore.tasks.purge_obsolete", queue=jobs.QUEUE, pass_context=True, queueing_lock="purge"
)
async def purge_obsolete(context: JobContext, timestamp: int) -> None:
    """Delete obsolete outputs once their upload profile's retention has passed (None keeps them forever)."""
    res = _resources(context)
    async with res.sessions() as session:
        rows = (
            await session.execute(
                select(models.OutputImage, models.StorageLocation)
                .join(models.BaseImage, models.BaseImage.id == models.OutputImage.base_image_id)
                .join(models.UploadProfile, models.UploadProfile.id == models.BaseImage.upload_profile_id)
                .join(
                    models.StorageLocation,
                    models.StorageLocation.id == models.OutputImage.storage_location_id,
                )
                .where(
                    models.OutputImage.status == "obsolete",
                    models.UploadProfile.obsolete_retention_seconds.is_not(None),
                    models.OutputImage.obsolete_since
                    < text("now() - make_interval(secs => upload_profiles.obsolete_retention_seconds)"),
                )
                .limit(1000)
            )
        ).all()
    for output, location in rows:
        # The row goes first and its lock is held until the file is gone: a replan that brings this output
        # back (images.replan locks the rows it reads) waits, then plans a new row and a fresh render.
        async with res.sessions() as session, session.begin():
            gone = await session.scalar(
                delete(models.OutputImage)
                .where(models.OutputImage.id == output.id, models.OutputImage.status == "obsolete")
                .returning(models.OutputImage.id)
            )
            if gone is not None:
                await (await res.stores.for_location(location)).delete(output.location)


@jobs.app.periodic(cron="17 * * * *", periodic_id="forget_old_jobs")
@jobs.app.task(
    name="picstore.tasks.forget_old_jobs", queue=jobs.QUEUE, pass_context=True, queueing_lock="forget"
)
async def forget_old_jobs(context: JobContext, timestamp: int) -> None:
    """Keep procrastinate's job table bounded (reconcile alone adds a row every 15 s): drop finished jobs
    after a week. Failed ones stay for inspection; the image rows keep every failure's reason anyway."""
    await context.app.job_manager.delete_old_jobs(nb_hours=JOB_HISTORY_HOURS)


def _outcome(context: JobContext, exc: BaseException) -> str:
    task = context.app.tasks.get(context.job.task_name)
    return "retrying" if task is not None and task.get_retry_exception(exc, context.job) else "failed"


async def _log_job(call_next: Callable[[], Awaitable[Any]], context: JobContext, worker: Any) -> Any:
    """One line per job run; every line the job logs carries its task, id and arguments (ids only)."""
    job = context.job
    started, outcome, error = time.perf_counter(), "succeeded", None
    with logs.bound(task=job.task_name, job_id=job.id, attempt=job.attempts + 1, **job.task_kwargs):
        try:
            return await call_next()
        except BaseException as exc:
            outcome, error = _outcome(context, exc), f"{type(exc).__name__}: {exc}"
            raise
        finally:
            duration_ms = round((time.perf_counter() - started) * 1000, 1)
            fields = {"outcome": outcome, "error": error, "duration_ms": duration_ms}
            log.info("job %s %s", job.task_name, outcome, extra=fields)


async def run_worker(settings: Settings, concurrency: int) -> None:
    """Run until SIGINT/SIGTERM; running jobs finish first (procrastinate's graceful shutdown)."""
    logs.configure(settings.log_level)
    RETRY.base_seconds = settings.job_retry_base_seconds
    engine = db.make_engine(settings.database_url, concurrency + 2)
    try:
        async with (
            stores.Stores(settings) as store_cache,
            jobs.open_app(settings, max_size=concurrency + 2) as app,
        ):
            resources = Resources(settings, db.make_sessionmaker(engine), store_cache)
            await app.run_worker_async(
                queues=[jobs.QUEUE, jobs.WEBHOOK_QUEUE],
                concurrency=concurrency,
                task_middleware=[_log_job],
                shutdown_graceful_timeout=60,
                additional_context={"picstore": resources},
                update_heartbeat_interval=5,
                stalled_worker_timeout=STALLED_AFTER_SECONDS,
            )
    finally:
        await engine.dispose()

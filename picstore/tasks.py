"""Background tasks (procrastinate) and the worker entry point.

convert_image is idempotent and resumes: it renders only the image's outputs that are still queued or
were converting when a worker died, from one decode of the original, and marks them ready in one
transaction after every object is stored. Names are content-versioned, so storing again after a crash
rewrites identical bytes under the same name: each output exists exactly once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import anyio.to_thread
from procrastinate import JobContext, RetryStrategy
from sqlalchemy import delete, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from picstore import conversion, db, images, imaging, jobs, models, sealing, storage, stores
from picstore.settings import Settings

log = logging.getLogger("picstore.worker")

OUTPUT_CACHE_CONTROL = "public, max-age=31536000, immutable"
RETRIES = 4
TRANSIENT = (storage.StorageError, sealing.SealError, OSError, DBAPIError)
RETRY = RetryStrategy(max_attempts=RETRIES, wait=1, exponential_wait=2, retry_exceptions=set(TRANSIENT))
STALLED_AFTER_SECONDS = 30
RECONCILE_AFTER = timedelta(seconds=30)


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
    image.status, image.error = settle(list(rows.tuples().all()))


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


async def _render_and_store(res: Resources, work: _Work) -> tuple[imaging.Summary, list[imaging.Rendered]] | None:
    """None when the original changed under us (a replacement upload): its own job will redo the work."""
    base_store = await res.stores.for_location(work.base)
    with _temp_path() as path:
        await base_store.get_to_file(images.original_key(work.image), path)
        if await anyio.to_thread.run_sync(_sha256_of, path) != work.image.hash:
            return None
        started = time.perf_counter()
        specs = [_spec(o, work.image) for o in work.outputs]
        summary, rendered = await anyio.to_thread.run_sync(imaging.render, path, _header(work.image), specs)
    log.info("image %s: rendered %d outputs in %.2f s", work.image.id, len(rendered), time.perf_counter() - started)
    by_id = {str(o.id): o for o in work.outputs}
    for item in rendered:
        output = by_id[item.key]
        out_store = await res.stores.for_location(work.locations[output.storage_location_id])
        await out_store.put_bytes(output.location, item.data, conversion.content_type(output.format), OUTPUT_CACHE_CONTROL)
    return summary, rendered


async def _finish(res: Resources, image_id: uuid.UUID, summary: imaging.Summary, rendered: list[imaging.Rendered]) -> None:
    async with res.sessions() as session, session.begin():
        image = await session.get(models.BaseImage, image_id, with_for_update=True)
        if image is None:
            return
        for item in rendered:
            # Only outputs still converting: a replacement may have made some obsolete meanwhile.
            await session.execute(
                update(models.OutputImage)
                .where(models.OutputImage.id == uuid.UUID(item.key), models.OutputImage.status == "converting")
                .values(status="ready", width=item.width, height=item.height, file_size=len(item.data), reason=None)
            )
        image.placeholder, image.dominant_color = summary.placeholder, summary.dominant_color
        await _settle(session, image)


async def _fail(res: Resources, image_id: uuid.UUID, reason: str) -> None:
    async with res.sessions() as session, session.begin():
        image = await session.get(models.BaseImage, image_id, with_for_update=True)
        if image is None:
            return
        await session.execute(
            update(models.OutputImage)
            .where(models.OutputImage.base_image_id == image_id, models.OutputImage.status.in_(("queued", "converting")))
            .values(status="failed", reason=reason)
        )
        image.status, image.error = "failed", reason


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
    if work is None:
        return
    try:
        done = await _render_and_store(res, work)
    except imaging.ImageError as exc:
        log.info("image %s failed: %s", iid, exc.reason)
        await _fail(res, iid, exc.reason)
        return
    except TRANSIENT as exc:
        attempts = context.job.attempts if context.job else RETRIES
        if attempts >= RETRIES:
            await _fail(res, iid, f"storage error after {attempts + 1} attempts: {exc}")
            return
        await _requeue(res, iid)
        raise
    if done is None:
        await _requeue(res, iid)
        return
    await _finish(res, iid, *done)


@jobs.app.task(name=jobs.DELETE, queue=jobs.QUEUE, pass_context=True, retry=RETRY)
async def delete_image(context: JobContext, image_id: str) -> None:
    """Delete the original and every output from storage, then the rows."""
    res, iid = _resources(context), uuid.UUID(image_id)
    async with res.sessions() as session, session.begin():
        image = await session.get(models.BaseImage, iid)
        if image is None or image.status != "deleting":
            return
        outputs = list(await session.scalars(select(models.OutputImage).where(models.OutputImage.base_image_id == iid)))
        ids = {image.storage_location_id, *(o.storage_location_id for o in outputs)}
        locations = {
            loc.id: loc
            for loc in await session.scalars(select(models.StorageLocation).where(models.StorageLocation.id.in_(ids)))
        }
    for location_id, key in [(o.storage_location_id, o.location) for o in outputs] + [
        (image.storage_location_id, images.original_key(image))
    ]:
        await (await res.stores.for_location(locations[location_id])).delete(key)
    async with res.sessions() as session, session.begin():
        await session.execute(delete(models.OutputImage).where(models.OutputImage.base_image_id == iid))
        await session.execute(
            update(models.BaseImage).where(models.BaseImage.id == iid).values(status="deleted", deleted=datetime.now(UTC))
        )


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


@jobs.app.periodic(cron="* * * * *", periodic_id="reconcile")
@jobs.app.task(name="picstore.tasks.reconcile", queue=jobs.QUEUE, pass_context=True, queueing_lock="reconcile")
async def reconcile(context: JobContext, timestamp: int) -> None:
    """Retry jobs of dead workers, and re-defer images whose job was lost between commit and defer."""
    res = _resources(context)
    app = context.app
    for job in await app.job_manager.get_stalled_jobs(seconds_since_heartbeat=STALLED_AFTER_SECONDS):
        log.warning("retrying stalled job %s (%s)", job.id, job.task_name)
        await app.job_manager.retry_job(job)
    async with res.sessions() as session:
        stranded = (await session.execute(STRANDED, {"before": datetime.now(UTC) - RECONCILE_AFTER})).all()
    for image_id, status in stranded:
        log.warning("re-deferring image %s left %s without a job", image_id, status)
        defer = jobs.defer_deletion if status == "deleting" else jobs.defer_conversion
        await defer(app, image_id)


@jobs.app.periodic(cron="*/10 * * * *", periodic_id="purge_obsolete")
@jobs.app.task(name="picstore.tasks.purge_obsolete", queue=jobs.QUEUE, pass_context=True, queueing_lock="purge")
async def purge_obsolete(context: JobContext, timestamp: int) -> None:
    """Delete obsolete outputs once their upload profile's retention has passed (None keeps them forever)."""
    res = _resources(context)
    async with res.sessions() as session:
        rows = (
            await session.execute(
                select(models.OutputImage, models.StorageLocation)
                .join(models.BaseImage, models.BaseImage.id == models.OutputImage.base_image_id)
                .join(models.UploadProfile, models.UploadProfile.id == models.BaseImage.upload_profile_id)
                .join(models.StorageLocation, models.StorageLocation.id == models.OutputImage.storage_location_id)
                .where(
                    models.OutputImage.status == "obsolete",
                    models.UploadProfile.obsolete_retention_seconds.is_not(None),
                    models.OutputImage.obsolete_since
                    < text("now() - make_interval(secs => upload_profiles.obsolete_retention_seconds)"),
                )
                .limit(1000)
            )
        ).tuples().all()
    for output, location in rows:
        await (await res.stores.for_location(location)).delete(output.location)
        async with res.sessions() as session, session.begin():
            await session.execute(
                delete(models.OutputImage).where(models.OutputImage.id == output.id, models.OutputImage.status == "obsolete")
            )


async def run_worker(settings: Settings, concurrency: int) -> None:
    """Run until SIGINT/SIGTERM; running jobs finish first (procrastinate's graceful shutdown)."""
    engine = db.make_engine(settings.database_url, concurrency + 2)
    try:
        async with stores.Stores(settings) as store_cache, jobs.open_app(settings, max_size=concurrency + 2) as app:
            resources = Resources(settings, db.make_sessionmaker(engine), store_cache)
            await app.run_worker_async(
                queues=[jobs.QUEUE],
                concurrency=concurrency,
                shutdown_graceful_timeout=60,
                additional_context={"picstore": resources},
                update_heartbeat_interval=5,
                stalled_worker_timeout=STALLED_AFTER_SECONDS,
            )
    finally:
        await engine.dispose()

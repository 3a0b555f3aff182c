"""Base images and their outputs: create, accept an upload, plan outputs, read, list, update, delete.

Functions take the session and never commit; the edge commits and then defers jobs (jobs.py), so a job
never sees a row its transaction has not committed. The base image row is the durable record: the
reconcile task re-defers anything left queued.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, case, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from picstore import conversion, db, errors, ids, models, paths, picture, schemas
from picstore.auth import Caller
from picstore.uploads import Spooled

# An image being deleted is already gone for every reader, though its job has not finished yet.
PRESENT = (models.BaseImage.deleted.is_(None), models.BaseImage.status.not_in(("deleting", "deleted")))
LIVE_OUTPUTS = ("queued", "converting", "ready", "failed", "skipped")
UNSETTLED = ("queued", "converting")


async def resolve_profile(
    session: AsyncSession, caller: Caller, ref: str | None, project_id: uuid.UUID | None = None
) -> models.UploadProfile:
    """By id, else by short_id, else the key's or user's default (Pic Store's untagged union)."""
    query = select(models.UploadProfile).where(db.live(models.UploadProfile, caller))
    if project_id is not None:
        query = query.where(models.UploadProfile.project_id == project_id)
    if ref is None:
        if caller.default_upload_profile_id is None:
            raise errors.BadRequest(
                "no upload_profile given and the key or user has no default upload profile"
            )
        query = query.where(models.UploadProfile.id == caller.default_upload_profile_id)
    else:
        try:
            query = query.where(models.UploadProfile.id == ids.parse_id(ids.UPLOAD_PROFILE, ref))
        except ids.InvalidId:
            query = query.where(models.UploadProfile.short_id == ref)
    profile = await session.scalar(query)
    if profile is None:
        raise errors.Invalid(f"upload profile {ref or 'default'!r} does not exist in this team and project")
    caller.require("image:create", profile.project_id)
    return profile


def original_location(
    project: models.Project, profile: models.UploadProfile, image_id: uuid.UUID, filename: str
) -> str:
    """Originals get the image id in their name, so two uploads of `photo.jpg` never share an object."""
    stem, ext = conversion.split_stem(conversion.sanitize_filename(filename))
    name = f"{stem}-{ids.short(image_id)}" + (f".{ext.lower()}" if ext else "")
    return paths.join(project.base_location, profile.base_storage_location_path, name)


def new_image(
    caller: Caller,
    project: models.Project,
    profile: models.UploadProfile,
    filename: str,
    name: str,
    alt_text: str,
) -> models.BaseImage:
    """A base image row, not yet added: `name` (Pic Store's `location`) names the stored original."""
    image_id = ids.new_uuid()
    return models.BaseImage(
        id=image_id,
        team_id=caller.team_id,
        project_id=profile.project_id,
        user_id=caller.user_id,
        upload_profile_id=profile.id,
        storage_location_id=profile.base_storage_location_id,
        filename=filename,
        location=original_location(project, profile, image_id, name),
        status="awaiting_upload",
        alt_text=alt_text,
        hash=None,
        format=None,
        focal_x=None,
        focal_y=None,
    )


async def insert(session: AsyncSession, image: models.BaseImage) -> models.BaseImage:
    session.add(image)
    await session.flush()
    return image


def _present_in_team(image_id: uuid.UUID, team_id: uuid.UUID) -> Select[tuple[models.BaseImage]]:
    return select(models.BaseImage).where(
        models.BaseImage.id == image_id, models.BaseImage.team_id == team_id, *PRESENT
    )


async def load(
    session: AsyncSession, caller: Caller, image_id: uuid.UUID, permission: str, lock: bool = False
) -> models.BaseImage:
    """A live image of the caller's team, the permission checked in the same query."""
    query = _present_in_team(image_id, caller.team_id)
    if lock:
        query = query.with_for_update(of=models.BaseImage)
    image: models.BaseImage = await db.get_allowed(
        session, query, models.BaseImage.project_id, caller, permission, "image"
    )
    return image


async def upload_target(
    session: AsyncSession, caller: Caller, image_id: uuid.UUID
) -> tuple[models.BaseImage, models.UploadProfile, models.StorageLocation]:
    image = await load(session, caller, image_id, "image:create")
    profile = await session.get_one(models.UploadProfile, image.upload_profile_id)
    location = await session.get_one(models.StorageLocation, image.storage_location_id)
    return image, profile, location


def facts(image: models.BaseImage) -> conversion.ImageFacts:
    return conversion.ImageFacts(
        format=image.format or "",
        width=image.width,
        height=image.height,
        frames=image.frames,
        has_alpha=image.has_alpha,
        file_size=image.file_size,
        sha256=image.hash or "",
        focal_x=0.5 if image.focal_x is None else image.focal_x,
        focal_y=0.5 if image.focal_y is None else image.focal_y,
    )


def original_key(image: models.BaseImage, sha256: str | None = None) -> str:
    """Where the original with this hash (default: the current one) is stored."""
    sha256 = sha256 or image.hash
    return paths.versioned(image.location, sha256) if sha256 else image.location


async def record_upload(session: AsyncSession, image: models.BaseImage, spooled: Spooled) -> str | None:
    """The original is stored: take its facts, re-plan the outputs and queue the image.

    Returns the key of the original it replaces, for the caller to delete after the commit.
    """
    replaced = original_key(image) if image.hash and image.hash != spooled.sha256 else None
    header = spooled.header
    image.hash = spooled.sha256
    image.file_size = spooled.size
    image.format = header.format
    image.width, image.height, image.frames, image.has_alpha = (
        header.width,
        header.height,
        header.frames,
        header.has_alpha,
    )
    image.upload_sha256 = image.upload_size = None
    image.error = None
    await replan(session, image)
    return replaced


async def replan(session: AsyncSession, image: models.BaseImage) -> list[uuid.UUID]:
    """Plan from the current profile: unchanged outputs (same content-versioned name) are kept, failed ones
    retried, new ones queued, the rest become obsolete and are deleted after the profile's retention."""
    profile = await session.get_one(models.UploadProfile, image.upload_profile_id)
    project = await session.get_one(models.Project, image.project_id)
    conversion_profile = await session.get_one(models.ConversionProfile, profile.conversion_profile_id)
    stem = conversion.split_stem(conversion.sanitize_filename(image.filename))[0]
    planned = conversion.plan_outputs(
        conversion.decode_profile(conversion_profile.output), facts(image), stem
    )
    directory = paths.join(project.base_location, profile.output_storage_location_path)

    # Obsolete rows too (locked, so the purge task cannot delete one's file while it comes back): a planned
    # output whose name is still taken by an obsolete row (A -> B -> A) revives that row, as names are unique.
    existing = {
        o.location: o
        for o in await session.scalars(
            select(models.OutputImage).where(models.OutputImage.base_image_id == image.id).with_for_update()
        )
    }
    kept: set[str] = set()
    queued: list[uuid.UUID] = []
    for plan in planned:
        location = paths.join(directory, plan.name)
        kept.add(location)
        row = existing.get(location)
        if row is None:
            row = _new_output(image, profile.output_storage_location_id, location, plan)
            session.add(row)
        elif row.status == "failed" or row.status not in LIVE_OUTPUTS:
            row.status, row.reason, row.obsolete_since = plan.status, plan.reason, None
        if row.status == "queued":
            queued.append(row.id)
    now = datetime.now(UTC)
    for location, row in existing.items():
        if location not in kept and row.status in LIVE_OUTPUTS:
            row.status, row.obsolete_since = "obsolete", now
    image.status = (
        "queued"
        if queued or any(o.status in UNSETTLED for o in existing.values() if o.location in kept)
        else "ready"
    )
    await session.flush()
    return queued


def _new_output(
    image: models.BaseImage, storage_location_id: uuid.UUID, location: str, plan: conversion.PlannedOutput
) -> models.OutputImage:
    return models.OutputImage(
        id=ids.new_uuid(),
        team_id=image.team_id,
        base_image_id=image.id,
        storage_location_id=storage_location_id,
        location=location,
        format=plan.format,
        size_rule=plan.size,
        params={
            "quality": plan.quality,
            "effort": plan.effort,
            "lossless": plan.lossless,
            "width": plan.width,
            "height": plan.height,
            "fit": plan.fit,
            "crop": plan.crop,
            "focal": plan.focal,
            "animated": plan.animated,
            "label": plan.label,
            "family": plan.label.split("@")[0],
        },
        density=plan.density,
        width=plan.width if plan.status == "skipped" else None,
        height=plan.height if plan.status == "skipped" else None,
        status=plan.status,
        reason=plan.reason,
    )


async def find_duplicate(
    session: AsyncSession, project_id: uuid.UUID, profile_id: uuid.UUID, sha256: str, lock: bool
) -> models.BaseImage | None:
    """The same bytes already uploaded through the same profile. With lock, concurrent identical uploads
    are serialised by a transaction-scoped advisory lock, so they cannot both create an image."""
    if lock:
        await session.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
            {"k": f"{project_id}:{profile_id}:{sha256}"},
        )
    found: models.BaseImage | None = await session.scalar(
        select(models.BaseImage)
        .where(
            models.BaseImage.project_id == project_id,
            models.BaseImage.upload_profile_id == profile_id,
            models.BaseImage.hash == sha256,
            *PRESENT,
        )
        .order_by(models.BaseImage.id)
        .limit(1)
    )
    return found


async def by_hash(
    session: AsyncSession,
    caller: Caller,
    sha256: str,
    project_id: uuid.UUID | None = None,
    profile_id: uuid.UUID | None = None,
) -> models.BaseImage:
    """The newest readable image of the team with these bytes; 403 when the team has one the caller may not
    read (as for lookups by id), 404 when it has none. A project and upload profile narrow the search."""
    readable = db.allowed_in(models.BaseImage.project_id, caller, "project:read")
    narrow = [
        *([models.BaseImage.project_id == project_id] if project_id is not None else []),
        *([models.BaseImage.upload_profile_id == profile_id] if profile_id is not None else []),
    ]
    query = (
        select(models.BaseImage)
        .where(
            models.BaseImage.team_id == caller.team_id,
            models.BaseImage.hash == sha256.lower(),
            *PRESENT,
            *narrow,
        )
        # Readable rows first; a CASE because `readable` may be a constant, which ORDER BY refuses.
        .order_by(case((readable, 0), else_=1), models.BaseImage.id.desc())
        .limit(1)
    )
    image: models.BaseImage = await db.get_allowed(
        session, query, models.BaseImage.project_id, caller, "project:read", "image"
    )
    return image


async def outputs_of(session: AsyncSession, image_ids: list[uuid.UUID]) -> list[models.OutputImage]:
    query = (
        select(models.OutputImage)
        .where(models.OutputImage.base_image_id.in_(image_ids))
        .order_by(models.OutputImage.format, models.OutputImage.width, models.OutputImage.id)
    )
    return list((await session.scalars(query)).all())


async def url_bases(session: AsyncSession, location_ids: set[uuid.UUID]) -> dict[uuid.UUID, str]:
    rows = await session.execute(
        select(models.StorageLocation.id, models.StorageLocation.public_url_base).where(
            models.StorageLocation.id.in_(location_ids)
        )
    )
    return {location_id: base for location_id, base in rows}


async def list_images(
    session: AsyncSession,
    caller: Caller,
    project_id: uuid.UUID,
    limit: int,
    after: uuid.UUID | None,
    status: str | None,
    upload_profile_id: uuid.UUID | None,
) -> list[models.BaseImage]:
    caller.require("project:read", project_id)
    query = select(models.BaseImage).where(
        models.BaseImage.team_id == caller.team_id,
        models.BaseImage.project_id == project_id,
        *PRESENT,
    )
    if after is not None:
        query = query.where(models.BaseImage.id > after)
    if status is not None:
        query = query.where(models.BaseImage.status == status)
    if upload_profile_id is not None:
        query = query.where(models.BaseImage.upload_profile_id == upload_profile_id)
    return list((await session.scalars(query.order_by(models.BaseImage.id).limit(limit))).all())


async def update_info(
    session: AsyncSession,
    caller: Caller,
    image_id: uuid.UUID,
    alt_text: str | None,
    focal: tuple[float, float] | None,
) -> tuple[models.BaseImage, bool]:
    """Returns the image and whether outputs were re-planned (a new focal point moves cover crops)."""
    image = await load(session, caller, image_id, "image:edit", lock=True)
    if alt_text is not None:
        image.alt_text = alt_text
    replanned = False
    if focal is not None and (image.focal_x, image.focal_y) != focal:
        image.focal_x, image.focal_y = focal
        if image.format is not None:
            replanned = bool(await replan(session, image))
    image.updated = func.now()
    await session.flush()
    await session.refresh(image)
    return image, replanned


async def reconvert(session: AsyncSession, caller: Caller, image_id: uuid.UUID) -> list[uuid.UUID]:
    image = await load(session, caller, image_id, "image:edit", lock=True)
    if image.format is None:
        raise errors.Conflict("the image has not been uploaded yet")
    return await replan(session, image)


async def mark_deleting(session: AsyncSession, caller: Caller, image_id: uuid.UUID) -> models.BaseImage:
    image = await load(session, caller, image_id, "image:edit", lock=True)
    image.status = "deleting"
    await session.flush()
    return image


def _output_view(output: models.OutputImage, url_base: str) -> schemas.OutputOut:
    return schemas.OutputOut(
        id=ids.format_id(ids.OUTPUT_IMAGE, output.id),
        location=output.location,
        url=paths.public_url(url_base, output.location),
        format=output.format,
        status=output.status,
        width=output.width,
        height=output.height,
        density=output.density,
        file_size=output.file_size,
        size_rule=output.size_rule,
        reason=output.reason,
        updated=output.updated,
    )


def _image_view(
    image: models.BaseImage, outputs: list[models.OutputImage], bases: dict[uuid.UUID, str]
) -> schemas.ImageOut:
    focal = (
        None
        if image.focal_x is None or image.focal_y is None
        else schemas.FocalPoint(image.focal_x, image.focal_y)
    )
    return schemas.ImageOut(
        id=ids.format_id(ids.BASE_IMAGE, image.id),
        project_id=ids.format_id(ids.PROJECT, image.project_id),
        upload_profile_id=ids.format_id(ids.UPLOAD_PROFILE, image.upload_profile_id),
        filename=image.filename,
        location=original_key(image),
        url=paths.public_url(bases[image.storage_location_id], original_key(image)),
        status=image.status,
        error=image.error,
        hash=image.hash,
        format=image.format,
        file_size=image.file_size,
        width=image.width,
        height=image.height,
        frames=image.frames,
        has_alpha=image.has_alpha,
        alt_text=image.alt_text,
        focal_point=focal,
        placeholder=image.placeholder,
        dominant_color=image.dominant_color,
        updated=image.updated,
        output=[_output_view(o, bases[o.storage_location_id]) for o in outputs if o.status != "deleted"],
    )


async def views(session: AsyncSession, found: list[models.BaseImage]) -> list[schemas.ImageOut]:
    """Images with their outputs and URLs, in three queries however many images there are."""
    outputs = await outputs_of(session, [i.id for i in found])
    bases = await url_bases(
        session, {i.storage_location_id for i in found} | {o.storage_location_id for o in outputs}
    )
    by_image: dict[uuid.UUID, list[models.OutputImage]] = {}
    for output in outputs:
        by_image.setdefault(output.base_image_id, []).append(output)
    return [_image_view(i, by_image.get(i.id, []), bases) for i in found]


async def view(session: AsyncSession, image: models.BaseImage) -> schemas.ImageOut:
    return (await views(session, [image]))[0]


@dataclass(frozen=True, slots=True)
class PictureOptions:
    """What a client may ask of `GET /images/{id}/picture`, besides the format."""

    allow_original: bool = False
    sizes: str | None = None
    class_: str | None = None
    slot: str | None = None
    placeholder: bool = False


# Pages embed an image in a few ways, not many: a read keeps the pictures of its first few option sets.
PICTURES_PER_READ = 8


@dataclass(frozen=True, slots=True)
class ImageRead:
    """What `GET /images/{id}` and its `/picture` answer from: one read, which the api caches (cache.py)
    and so checks against each caller itself. Pictures made from it are kept with it."""

    team_id: uuid.UUID
    project_id: uuid.UUID
    view: schemas.ImageOut
    original: picture.Original
    ready: tuple[picture.Output, ...]
    _made: dict[tuple[str, PictureOptions], Any] = field(default_factory=dict, compare=False, repr=False)

    def require_readable(self, caller: Caller) -> None:
        """As load() would answer: another team's image is not found, a missing permission is named."""
        if self.team_id != caller.team_id:
            raise errors.NotFound("image")
        caller.require("project:read", self.project_id)

    def _parts(self, allow_original: bool) -> tuple[picture.Original, list[picture.Output]]:
        """Only ready outputs. 409 while none is ready, unless the original will do."""
        if not self.ready and not (allow_original and self.view.format is not None):
            raise errors.Conflict(f"no outputs are ready yet; the image is {self.view.status}")
        return self.original, list(self.ready)

    def picture_html(self, options: PictureOptions) -> str:
        html: str = self._made_once("html", options, picture.render)
        return html

    def picture_json(self, options: PictureOptions) -> schemas.PictureOut:
        out: schemas.PictureOut = self._made_once("json", options, picture_out)
        return out

    def _made_once(self, kind: str, options: PictureOptions, finish: Callable[[picture.Picture], Any]) -> Any:
        made = self._made.get((kind, options))
        if made is None:
            original, outputs = self._parts(options.allow_original)
            pic = picture.build(
                original,
                outputs,
                sizes=options.sizes,
                class_=options.class_,
                slot=options.slot,
                placeholder=options.placeholder,
            )
            made = finish(pic)
            if len(self._made) < PICTURES_PER_READ:
                self._made[(kind, options)] = made
        return made


async def read_in_team(session: AsyncSession, team_id: uuid.UUID, image_id: uuid.UUID) -> ImageRead:
    """The read the api caches: scoped to the team, the permission left to ImageRead.require_readable so
    that callers of one team holding different grants share it."""
    image = await session.scalar(_present_in_team(image_id, team_id))
    if image is None:
        raise errors.NotFound("image")
    return await read(session, image)


async def read(session: AsyncSession, image: models.BaseImage) -> ImageRead:
    """An image already loaded (and permitted, or read by the worker for a webhook), with its outputs."""
    outputs = await outputs_of(session, [image.id])
    bases = await url_bases(session, {image.storage_location_id} | {o.storage_location_id for o in outputs})
    original = picture.Original(
        url=paths.public_url(bases[image.storage_location_id], original_key(image)),
        format=image.format or "",
        width=image.width,
        height=image.height,
        alt=image.alt_text,
        dominant_color=image.dominant_color,
        placeholder=image.placeholder,
    )
    ready = tuple(
        picture.Output(
            format=o.format,
            url=paths.public_url(bases[o.storage_location_id], o.location),
            width=o.width or 0,
            height=o.height or 0,
            density=o.density,
            label=o.params.get("family") or o.params.get("label", ""),
        )
        for o in outputs
        if o.status == "ready"
    )
    return ImageRead(image.team_id, image.project_id, _image_view(image, outputs, bases), original, ready)


def picture_out(pic: picture.Picture) -> schemas.PictureOut:
    """The JSON form of a picture: `GET /images/{id}/picture?format=json` and webhook events."""

    def cands(items: list[picture.Candidate]) -> list[schemas.CandidateOut]:
        return [schemas.CandidateOut(c.url, c.width, c.height, c.descriptor) for c in items]

    i = pic.img
    return schemas.PictureOut(
        sources=[schemas.SourceOut(s.type, s.srcset, s.sizes, cands(s.candidates)) for s in pic.sources],
        img=schemas.ImgOut(i.src, i.srcset, i.sizes, i.width, i.height, i.alt, i.format, cands(i.candidates)),
        placeholder=pic.placeholder,
        html=picture.render(pic),
    )

"""HTTP handlers for images: create, direct/presigned/quick upload, read, list, update, reconvert, delete.

An upload is checked completely (size, format, header, pixel budget) before any row changes; the
original is stored before the transaction that records it commits, and the job is deferred after it.
"""

from __future__ import annotations

import base64
import logging
import mimetypes
import uuid
from typing import Annotated, Any

from litestar import MediaType, Request, Response, Router, delete, get, post, put
from litestar.datastructures import State
from litestar.params import FromPath, FromQuery, JSONBody, Parameter, QueryParameter
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from picstore import (
    cache,
    conversion,
    errors,
    ids,
    images,
    jobs,
    models,
    projects,
    schemas,
    storage,
    uploads,
)
from picstore.api_admin import EMPTY, Db, Who, path_id
from picstore.auth import Caller

log = logging.getLogger("picstore.api")

UPLOAD_CEILING = 2**40
# Marks the routes whose request bodies count as upload bytes in /metrics.
UPLOAD_ROUTE = {"upload": True}
# Originals are stored under content-versioned keys too, so they never change either.
CACHE_CONTROL = "public, max-age=31536000, immutable"
ImageStatus = Annotated[
    str | None,
    Parameter(pattern=r"^(awaiting_upload|queued|converting|ready|failed)$", required=False),
]


def _image_id(text: str) -> uuid.UUID:
    return path_id(ids.BASE_IMAGE, text, "image")


def _query_id(prefix: str, text: str, name: str) -> uuid.UUID:
    """A malformed id in the query string is a bad request (400), not a missing path object (404)."""
    try:
        return ids.parse_id(prefix, text)
    except ids.InvalidId:
        raise errors.BadRequest(f"{name}: {text[:64]!r} is not a valid {prefix} id") from None


def _announced_size(request: Request[Any, Any, Any], limit: int) -> None:
    """Refuse at once when Content-Length already says the body is too large."""
    raw = request.headers.get("content-length")
    if raw is not None and raw.isdigit() and int(raw) > limit:
        raise errors.PayloadTooLarge(f"the body is larger than this upload profile's limit of {limit} bytes")


def _type_of(location: str) -> str:
    guessed, _ = mimetypes.guess_type(location)
    return guessed if guessed and guessed.startswith("image/") else "application/octet-stream"


async def _store_original(store: storage.Storage, image: models.BaseImage, spooled: uploads.Spooled) -> None:
    key = images.original_key(image, spooled.sha256)
    await store.put_file(key, spooled.path, conversion.content_type(spooled.header.format), CACHE_CONTROL)


async def _delete_replaced(store: storage.Storage, key: str | None) -> None:
    """Best effort: a leftover replaced original wastes space but is never served."""
    if key is None:
        return
    try:
        await store.delete(key)
    except storage.StorageError as exc:
        log.warning("could not delete replaced original %s: %s", key, exc)


async def _record(
    db: AsyncSession,
    caller: Any,
    state: State,
    store: storage.Storage,
    image_id: uuid.UUID,
    spooled: uploads.Spooled,
) -> schemas.ImageOut:
    async with db.begin():
        image = await images.load(db, caller, image_id, "image:create", lock=True)
        replaced = await images.record_upload(db, image, spooled)
        result = await images.view(db, image)
    await jobs.defer_conversion(state.jobs, image_id)
    await _delete_replaced(store, replaced)
    return result


@post("/images")
async def create_image(db: Db, caller: Who, data: JSONBody[schemas.ImageIn]) -> schemas.Created:
    async with db.begin():
        profile = await images.resolve_profile(db, caller, data.upload_profile_id)
        project = await db.get_one(models.Project, profile.project_id)
        image = images.new_image(
            caller, project, profile, data.filename, data.location or data.filename, data.alt_text
        )
        await images.insert(db, image)
        return schemas.Created(id=ids.format_id(ids.BASE_IMAGE, image.id))


@post(
    "/images/{image_id:str}/upload", status_code=200, request_max_body_size=UPLOAD_CEILING, opt=UPLOAD_ROUTE
)
async def upload(
    request: Request[Any, Any, Any], db: Db, caller: Who, state: State, image_id: FromPath[str]
) -> schemas.ImageOut:
    iid = _image_id(image_id)
    async with db.begin():
        image, profile, location = await images.upload_target(db, caller, iid)
    _announced_size(request, profile.max_bytes)
    spooled = await uploads.receive(request.stream(), profile)
    store = await state.stores.for_location(location)
    try:
        await _store_original(store, image, spooled)
    finally:
        spooled.discard()
    return await _record(db, caller, state, store, iid, spooled)


@post("/images/{image_id:str}/upload_url", status_code=200)
async def upload_url(
    db: Db, caller: Who, state: State, image_id: FromPath[str], data: JSONBody[schemas.UploadUrlIn]
) -> schemas.UploadUrlOut:
    iid = _image_id(image_id)
    async with db.begin():
        image, profile, location = await images.upload_target(db, caller, iid)
        if data.content_length > profile.max_bytes:
            raise errors.PayloadTooLarge(
                f"content_length is over this upload profile's limit of {profile.max_bytes} bytes"
            )
        store = await state.stores.for_location(location)
        sha256_b64 = base64.b64encode(bytes.fromhex(data.sha256)).decode()
        try:
            signed = await store.presign_put(
                images.original_key(image, data.sha256.lower()),
                data.content_type or _type_of(image.location),
                data.content_length,
                sha256_b64,
                data.expires_in,
            )
        except storage.PresignUnsupported:
            raise errors.Conflict(
                "this upload profile stores originals on local storage, which cannot presign uploads; "
                "POST the bytes to /api/images/{id}/upload instead"
            ) from None
        image.upload_sha256, image.upload_size = data.sha256.lower(), data.content_length
    return schemas.UploadUrlOut(
        method=signed.method, url=signed.url, headers=signed.headers, expires_at=signed.expires_at
    )


@post("/images/{image_id:str}/complete", status_code=200)
async def complete(db: Db, caller: Who, state: State, image_id: FromPath[str]) -> schemas.ImageOut:
    iid = _image_id(image_id)
    async with db.begin():
        image, profile, location = await images.upload_target(db, caller, iid)
    if image.upload_sha256 is None:
        raise errors.Conflict("no upload is pending: ask for an upload_url first")
    store = await state.stores.for_location(location)
    try:
        path, size, sha256 = await uploads.fetch(store, images.original_key(image, image.upload_sha256))
    except storage.ObjectMissing:
        raise errors.Conflict("nothing has been uploaded to the upload_url yet") from None
    try:
        if (sha256, size) != (image.upload_sha256, image.upload_size):
            raise errors.Invalid(
                f"the stored object ({size} bytes, sha256 {sha256}) does not match the declared upload "
                f"({image.upload_size} bytes, sha256 {image.upload_sha256})"
            )
        if size > profile.max_bytes:
            raise errors.PayloadTooLarge(
                f"the object is larger than this upload profile's limit of {profile.max_bytes} bytes"
            )
        spooled = await uploads.inspect(path, size, sha256, profile)
    except errors.PicstoreError:
        uploads.discard(path)
        await store.delete(images.original_key(image, image.upload_sha256))
        raise
    spooled.discard()
    return await _record(db, caller, state, store, iid, spooled)


@post(
    "/projects/{project_id:str}/quick_upload",
    status_code=201,
    request_max_body_size=UPLOAD_CEILING,
    opt=UPLOAD_ROUTE,
)
async def quick_upload(
    request: Request[Any, Any, Any],
    db: Db,
    caller: Who,
    state: State,
    project_id: FromPath[str],
    filename: FromQuery[Annotated[str, Parameter(min_length=1, max_length=500)]] = "image",
    upload_profile: FromQuery[Annotated[str | None, Parameter(max_length=200)]] = None,
    alt_text: FromQuery[Annotated[str, Parameter(max_length=5000)]] = "",
    location: FromQuery[Annotated[str | None, Parameter(max_length=500)]] = None,
    dedupe: FromQuery[bool] = True,
) -> Response[schemas.ImageOut]:
    """Create and upload in one request; the same bytes through the same profile return the existing image.

    No transaction is held while the body streams or the original is stored.
    """
    pid = path_id(ids.PROJECT, project_id, "project")
    for name, value in (("filename", filename), ("alt_text", alt_text), ("location", location)):
        if value and "\x00" in value:
            raise errors.BadRequest(f"{name}: must not contain NUL characters")
    async with db.begin():
        await projects.require_live(db, caller, pid)
        profile = await images.resolve_profile(db, caller, upload_profile, pid)
        project = await db.get_one(models.Project, pid)
        target = await db.get_one(models.StorageLocation, profile.base_storage_location_id)
    image = images.new_image(caller, project, profile, filename, location or filename, alt_text)
    _announced_size(request, profile.max_bytes)
    spooled = await uploads.receive(request.stream(), profile)
    try:
        if dedupe and (existing := await _duplicate(db, pid, profile.id, spooled.sha256, lock=False)):
            return Response(existing, status_code=200)
        store = await state.stores.for_location(target)
        await _store_original(store, image, spooled)
    finally:
        spooled.discard()
    return await _insert_quick(db, caller, state, store, image, spooled, dedupe)


async def _duplicate(
    db: AsyncSession, project_id: uuid.UUID, profile_id: uuid.UUID, sha256: str, lock: bool
) -> schemas.ImageOut | None:
    async with db.begin():
        found = await images.find_duplicate(db, project_id, profile_id, sha256, lock)
        return None if found is None else await images.view(db, found)


async def _insert_quick(
    db: AsyncSession,
    caller: Any,
    state: State,
    store: storage.Storage,
    planned: models.BaseImage,
    spooled: uploads.Spooled,
    dedupe: bool,
) -> Response[schemas.ImageOut]:
    try:
        async with db.begin():
            existing = None
            if dedupe:
                existing = await images.find_duplicate(
                    db, planned.project_id, planned.upload_profile_id, spooled.sha256, lock=True
                )
            if existing is None:
                image = await images.insert(db, planned)
                await images.record_upload(db, image, spooled)
            result = await images.view(db, existing or image)
    except (errors.PicstoreError, DBAPIError) as exc:
        # Refused before any commit (a lost connection may have committed: then the object stays).
        if not (isinstance(exc, DBAPIError) and exc.connection_invalidated):
            await _delete_replaced(store, images.original_key(planned, spooled.sha256))
        raise
    if existing is not None:
        # A concurrent identical upload won the race; ours is a second copy of the same bytes.
        await _delete_replaced(store, images.original_key(planned, spooled.sha256))
        return Response(result, status_code=200)
    await jobs.defer_conversion(state.jobs, planned.id)
    return Response(result, status_code=201)


async def _read(state: State, caller: Caller, image_id: uuid.UUID) -> images.ImageRead:
    """The image as the caller may see it: from the read cache, else read (and cached for the next caller).
    The session is opened only on a miss, so the routes using this take no `db`."""

    async def from_database() -> images.ImageRead:
        async with state.sessionmaker() as db, db.begin():
            return await images.read_in_team(db, caller.team_id, image_id)

    read_cache: cache.ReadCache = state.cache
    found = await read_cache.images.fetch(image_id, from_database, flight=(caller.team_id, image_id))
    found.require_readable(caller)
    return found


@get("/images/{image_id:str}")
async def get_image(caller: Who, state: State, image_id: FromPath[str]) -> schemas.ImageOut:
    return (await _read(state, caller, _image_id(image_id))).view


@get("/image_by_hash/{sha256:str}")
async def image_by_hash(
    db: Db,
    caller: Who,
    sha256: FromPath[str],
    project: FromQuery[Annotated[str | None, Parameter(max_length=100)]] = None,
    upload_profile: FromQuery[Annotated[str | None, Parameter(max_length=100)]] = None,
) -> schemas.ImageOut:
    """`project` and `upload_profile` ask "are these bytes already in here?", as `picstore publish` does."""
    if len(sha256) != 64 or any(c not in "0123456789abcdefABCDEF" for c in sha256):
        raise errors.BadRequest("the hash must be 64 hex characters (SHA-256)")
    pid = None if project is None else _query_id(ids.PROJECT, project, "project")
    profile = (
        None if upload_profile is None else _query_id(ids.UPLOAD_PROFILE, upload_profile, "upload_profile")
    )
    async with db.begin():
        return await images.view(db, await images.by_hash(db, caller, sha256, pid, profile))


@get("/projects/{project_id:str}/images")
async def list_images(
    db: Db,
    caller: Who,
    project_id: FromPath[str],
    limit: FromQuery[Annotated[int, Parameter(ge=1, le=100)]] = 50,
    after: FromQuery[Annotated[str | None, Parameter(max_length=100)]] = None,
    status: FromQuery[ImageStatus] = None,
    upload_profile: FromQuery[Annotated[str | None, Parameter(max_length=100)]] = None,
) -> schemas.ImagePage:
    pid = path_id(ids.PROJECT, project_id, "project")
    after_id = None if after is None else _query_id(ids.BASE_IMAGE, after, "after")
    profile_id = (
        None if upload_profile is None else _query_id(ids.UPLOAD_PROFILE, upload_profile, "upload_profile")
    )
    async with db.begin():
        await projects.require_live(db, caller, pid)
        found = await images.list_images(db, caller, pid, limit, after_id, status, profile_id)
        page = await images.views(db, found)
    next_after = page[-1].id if len(page) == limit else None
    return schemas.ImagePage(images=page, next_after=next_after)


@put("/images/{image_id:str}")
async def update_image(
    db: Db, caller: Who, state: State, image_id: FromPath[str], data: JSONBody[schemas.ImageUpdate]
) -> schemas.ImageOut:
    iid = _image_id(image_id)
    focal = None if data.focal_point is None else (data.focal_point.x, data.focal_point.y)
    async with db.begin():
        image, replanned = await images.update_info(db, caller, iid, data.alt_text, focal)
        result = await images.view(db, image)
    if replanned:
        await jobs.defer_conversion(state.jobs, iid)
    return result


@post("/images/{image_id:str}/reconvert", status_code=200)
async def reconvert(db: Db, caller: Who, state: State, image_id: FromPath[str]) -> schemas.Reconverted:
    iid = _image_id(image_id)
    async with db.begin():
        queued = await images.reconvert(db, caller, iid)
    if queued:
        await jobs.defer_conversion(state.jobs, iid)
    return schemas.Reconverted(images=[ids.format_id(ids.OUTPUT_IMAGE, o) for o in queued])


@delete("/images/{image_id:str}", status_code=202)
async def delete_image(db: Db, caller: Who, state: State, image_id: FromPath[str]) -> schemas.Empty:
    iid = _image_id(image_id)
    async with db.begin():
        await images.mark_deleting(db, caller, iid)
    await jobs.defer_deletion(state.jobs, iid)
    return EMPTY


@get("/images/{image_id:str}/picture", media_type=MediaType.HTML)
async def get_picture(
    caller: Who,
    state: State,
    image_id: FromPath[str],
    format: FromQuery[Annotated[str, Parameter(pattern="^(html|json)$")]] = "html",
    sizes: FromQuery[Annotated[str | None, Parameter(max_length=1000)]] = None,
    class_: Annotated[str | None, QueryParameter(name="class", max_length=200)] = None,
    slot: FromQuery[Annotated[str | None, Parameter(max_length=100)]] = None,
    fallback: FromQuery[Annotated[str | None, Parameter(pattern="^original$")]] = None,
    placeholder: FromQuery[bool] = False,
) -> Response[Any]:
    """A `<picture>` tag (or, with ?format=json, the same as data) from the ready outputs."""
    found = await _read(state, caller, _image_id(image_id))
    options = images.PictureOptions(fallback == "original", sizes, class_, slot, placeholder)
    if format == "json":
        return Response(found.picture_json(options), media_type=MediaType.JSON)
    return Response(found.picture_html(options), media_type=MediaType.HTML)


router = Router(
    path="/",
    route_handlers=[
        create_image,
        upload,
        upload_url,
        complete,
        quick_upload,
        get_image,
        image_by_hash,
        list_images,
        update_image,
        reconvert,
        delete_image,
        get_picture,
    ],
)

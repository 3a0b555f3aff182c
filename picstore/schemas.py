"""Request and response bodies (msgspec Structs). Ids travel in their prefixed form."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from picstore.permissions import Permission

Name = Annotated[str, Meta(min_length=1, max_length=200)]
PathSegment = Annotated[str, Meta(max_length=500)]
Email = Annotated[str, Meta(min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")]
ShortId = Annotated[str, Meta(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.~-]+$")]
InputFormat = Literal["jpg", "png", "gif", "webp", "avif", "heic", "tiff", "svg"]


class Request(Struct, forbid_unknown_fields=True, kw_only=True):
    """Request bodies refuse unknown fields so a typo is a 400, not a silently ignored setting."""


class Health(Struct):
    database: bool
    healthy: bool


class Empty(Struct):
    pass


# Projects


class ProjectIn(Request):
    name: Name
    base_location: PathSegment = ""


class ProjectOut(Struct):
    id: str
    name: str
    base_location: str
    updated: datetime


# Storage locations


class LocalProvider(Struct, tag_field="type", tag="local", forbid_unknown_fields=True):
    pass


class S3Provider(Struct, tag_field="type", tag="s3", forbid_unknown_fields=True):
    endpoint: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_key: str | None = None
    virtual_host_style: bool | None = None


class LocalProviderOut(Struct, tag_field="type", tag="local"):
    pass


class S3ProviderOut(Struct, tag_field="type", tag="s3"):
    endpoint: str | None
    region: str | None
    access_key_id: str | None
    virtual_host_style: bool | None
    has_secret_key: bool


class StorageLocationIn(Request):
    name: Name
    provider: LocalProvider | S3Provider
    base_location: PathSegment
    public_url_base: Annotated[str, Meta(max_length=2000)]


class StorageLocationOut(Struct):
    id: str
    project_id: str | None
    name: str
    provider: LocalProviderOut | S3ProviderOut
    base_location: str
    public_url_base: str
    updated: datetime


class ProbeStepOut(Struct):
    step: str
    ok: bool
    ms: float
    error: str | None = None


class ProbeOut(Struct):
    ok: bool
    steps: list[ProbeStepOut]


# Conversion profiles


class ConversionProfileIn(Request):
    name: Name
    output: dict[str, Any]


class ConversionProfileOut(Struct):
    id: str
    project_id: str | None
    name: str
    output: dict[str, Any]
    updated: datetime


# Upload profiles

MAX_BYTES_CEILING = 2**40
MaxBytes = Annotated[int, Meta(ge=1, le=MAX_BYTES_CEILING)]
MaxPixels = Annotated[int, Meta(ge=1, le=2**40)]
RetentionSeconds = Annotated[int, Meta(ge=0, le=10 * 365 * 86400)]


class UploadProfileIn(Request):
    name: Name
    base_storage_location_id: str
    output_storage_location_id: str
    conversion_profile_id: str
    short_id: ShortId | None = None
    base_storage_location_path: PathSegment | None = None
    output_storage_location_path: PathSegment | None = None
    max_bytes: MaxBytes = 50 * 1024 * 1024
    max_pixels: MaxPixels = 100_000_000
    allowed_formats: list[InputFormat] = msgspec.field(
        default_factory=lambda: ["jpg", "png", "gif", "webp", "avif", "heic", "tiff"]
    )
    obsolete_retention_seconds: RetentionSeconds | None = 7 * 86400


class UploadProfileOut(Struct):
    id: str
    project_id: str
    name: str
    short_id: str | None
    base_storage_location_id: str
    base_storage_location_path: str | None
    output_storage_location_id: str
    output_storage_location_path: str | None
    conversion_profile_id: str
    max_bytes: int
    max_pixels: int
    allowed_formats: list[str]
    obsolete_retention_seconds: int | None
    updated: datetime


# Users, roles, API keys


class GrantIn(Request):
    permission: Permission
    project_id: str | None = None


class GrantOut(Struct):
    permission: str
    project_id: str | None


class UserIn(Request):
    email: Email
    name: Name
    password: Annotated[str, Meta(min_length=8, max_length=1000)] | None = None
    role_ids: list[str] = msgspec.field(default_factory=list)
    default_upload_profile_id: str | None = None


class UserUpdate(Request):
    email: Email | None = None
    name: Name | None = None
    password: Annotated[str, Meta(min_length=8, max_length=1000)] | None = None
    default_upload_profile_id: str | None = None


class UserOut(Struct):
    id: str
    email: str
    name: str
    has_password: bool
    role_ids: list[str]
    default_upload_profile_id: str | None
    updated: datetime


class UserRolesIn(Request):
    role_ids: list[str]


class RoleIn(Request):
    name: Name
    permissions: list[GrantIn] = msgspec.field(default_factory=list)


class RolePermissionsIn(Request):
    permissions: list[GrantIn]


class RoleOut(Struct):
    id: str
    name: str
    permissions: list[GrantOut]


class ApiKeyIn(Request):
    name: Annotated[str, Meta(max_length=200)] = ""
    user_id: str | None = None
    expires: datetime | None = None
    inherits_user_permissions: bool = True
    permissions: list[GrantIn] = msgspec.field(default_factory=list)
    default_upload_profile_id: str | None = None


class ApiKeyOut(Struct):
    id: str
    user_id: str
    name: str
    prefix: str
    inherits_user_permissions: bool
    permissions: list[GrantOut]
    created: datetime
    expires: datetime | None
    last_used: datetime | None
    revoked: datetime | None


class ApiKeyCreated(Struct):
    key: str
    api_key: ApiKeyOut


class ErrorBody(Struct):
    kind: str
    message: str


class ErrorOut(Struct):
    error: ErrorBody


# Images


class ImageIn(Request):
    filename: Annotated[str, Meta(min_length=1, max_length=500)]
    location: Annotated[str, Meta(min_length=1, max_length=500)] | None = None
    alt_text: Annotated[str, Meta(max_length=5000)] = ""
    upload_profile_id: Annotated[str, Meta(max_length=200)] | None = None


class Created(Struct):
    id: str


class FocalPoint(Struct, forbid_unknown_fields=True):
    x: Annotated[float, Meta(ge=0, le=1)]
    y: Annotated[float, Meta(ge=0, le=1)]


class ImageUpdate(Request):
    alt_text: Annotated[str, Meta(max_length=5000)] | None = None
    focal_point: FocalPoint | None = None


class UploadUrlIn(Request):
    content_length: Annotated[int, Meta(ge=1)]
    sha256: Annotated[str, Meta(pattern=r"^[0-9a-fA-F]{64}$")]
    # The Content-Type the PUT must carry (it is signed); by default the one the filename's extension implies.
    content_type: Annotated[str, Meta(max_length=100, pattern=r"^image/[A-Za-z0-9.+-]+$")] | None = None
    expires_in: Annotated[int, Meta(ge=60, le=7 * 86400)] = 3600


class UploadUrlOut(Struct):
    method: str
    url: str
    headers: dict[str, str]
    expires_at: datetime


class OutputOut(Struct):
    id: str
    location: str
    url: str
    format: str
    status: str
    width: int | None
    height: int | None
    density: int
    file_size: int
    size_rule: dict[str, Any]
    reason: str | None
    updated: datetime


class ImageOut(Struct):
    id: str
    project_id: str
    upload_profile_id: str
    filename: str
    location: str
    url: str
    status: str
    error: str | None
    hash: str | None
    format: str | None
    file_size: int
    width: int
    height: int
    frames: int
    has_alpha: bool
    alt_text: str
    focal_point: FocalPoint | None
    placeholder: str | None
    dominant_color: str | None
    updated: datetime
    output: list[OutputOut]


class Reconverted(Struct):
    images: list[str]


class ImagePage(Struct):
    images: list[ImageOut]
    next_after: str | None


class CandidateOut(Struct):
    url: str
    width: int
    height: int
    descriptor: str


class SourceOut(Struct):
    type: str
    srcset: str
    sizes: str | None
    candidates: list[CandidateOut]


class ImgOut(Struct):
    src: str
    srcset: str | None
    sizes: str | None
    width: int
    height: int
    alt: str
    format: str
    candidates: list[CandidateOut]
    loading: str = "lazy"
    decoding: str = "async"


class PictureOut(Struct):
    sources: list[SourceOut]
    img: ImgOut
    placeholder: dict[str, str | None]
    html: str


# Webhooks

WebhookEvent = Literal["image.ready", "image.failed", "image.deleted"]


class WebhookIn(Request):
    """On update, a missing secret keeps the current one; on create, one is generated."""

    url: Annotated[str, Meta(min_length=1, max_length=2000)]
    secret: Annotated[str, Meta(min_length=16, max_length=200)] | None = None
    events: Annotated[list[WebhookEvent], Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: ["image.ready", "image.failed", "image.deleted"]
    )
    active: bool = True


class WebhookOut(Struct):
    id: str
    project_id: str
    url: str
    events: list[str]
    active: bool
    created: datetime
    updated: datetime


class WebhookCreated(Struct):
    """The only response that carries the signing secret."""

    secret: str
    webhook: WebhookOut


class WebhookDeliveryOut(Struct):
    id: str
    webhook_id: str
    event: str
    image_id: str
    status: str
    attempts: int
    status_code: int | None
    error: str | None
    created: datetime
    updated: datetime
    delivered: datetime | None

"""The tables. Every team-owned row carries team_id; every query filters on it."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NIL_UUID = uuid.UUID(int=0)

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar = {uuid.UUID: UUID(as_uuid=True), datetime: DateTime(timezone=True)}
    # Fetch server-side defaults (created/updated) with RETURNING, so rows stay readable after a flush.
    __mapper_args__: ClassVar = {"eager_defaults": True}


def _created() -> Mapped[datetime]:
    return mapped_column(server_default=func.now())


def _updated() -> Mapped[datetime]:
    return mapped_column(server_default=func.now(), onupdate=func.now())


def _team_fk() -> Mapped[uuid.UUID]:
    return mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), index=True)


class Team(Base):
    __tablename__ = "teams"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    created: Mapped[datetime] = _created()
    deleted: Mapped[datetime | None]


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    team_id: Mapped[uuid.UUID] = _team_fk()
    name: Mapped[str] = mapped_column(Text)
    base_location: Mapped[str] = mapped_column(Text, server_default="")
    created: Mapped[datetime] = _created()
    updated: Mapped[datetime] = _updated()
    deleted: Mapped[datetime | None]


class User(Base):
    __tablename__ = "users"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    team_id: Mapped[uuid.UUID] = _team_fk()
    email: Mapped[str] = mapped_column(Text)
    name: Mapped[str] = mapped_column(Text)
    password_hash: Mapped[str | None] = mapped_column(Text)
    default_upload_profile_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("upload_profiles.id", ondelete="SET NULL")
    )
    created: Mapped[datetime] = _created()
    updated: Mapped[datetime] = _updated()
    deleted: Mapped[datetime | None]


class Role(Base):
    __tablename__ = "roles"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    team_id: Mapped[uuid.UUID] = _team_fk()
    name: Mapped[str] = mapped_column(Text)
    created: Mapped[datetime] = _created()


class UserRole(Base):
    __tablename__ = "user_roles"
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    role_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("roles.id", ondelete="CASCADE"), primary_key=True)
    added: Mapped[datetime] = _created()


class RolePermission(Base):
    """A grant; project_id NIL_UUID means team-wide (every project and the team-global objects)."""

    __tablename__ = "role_permissions"
    role_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("roles.id", ondelete="CASCADE"), primary_key=True)
    project_id: Mapped[uuid.UUID] = mapped_column(primary_key=True, server_default=text(f"'{NIL_UUID}'"))
    permission: Mapped[str] = mapped_column(Text, primary_key=True)
    team_id: Mapped[uuid.UUID] = _team_fk()


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    team_id: Mapped[uuid.UUID] = _team_fk()
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(Text, server_default="")
    prefix: Mapped[str] = mapped_column(Text)
    digest: Mapped[bytes] = mapped_column(LargeBinary)
    inherits_user_permissions: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    default_upload_profile_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("upload_profiles.id", ondelete="SET NULL")
    )
    created: Mapped[datetime] = _created()
    expires: Mapped[datetime | None]
    revoked: Mapped[datetime | None]
    last_used: Mapped[datetime | None]


class ApiKeyPermission(Base):
    """A key's own grant, used when the key does not inherit its user's permissions."""

    __tablename__ = "api_key_permissions"
    api_key_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=True
    )
    project_id: Mapped[uuid.UUID] = mapped_column(primary_key=True, server_default=text(f"'{NIL_UUID}'"))
    permission: Mapped[str] = mapped_column(Text, primary_key=True)


class StorageLocation(Base):
    """provider is Pic Store's JSON without the secret; the secret is sealed in secret_sealed."""

    __tablename__ = "storage_locations"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    team_id: Mapped[uuid.UUID] = _team_fk()
    project_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(Text)
    provider: Mapped[dict[str, Any]] = mapped_column(JSONB)
    secret_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    base_location: Mapped[str] = mapped_column(Text)
    public_url_base: Mapped[str] = mapped_column(Text)
    created: Mapped[datetime] = _created()
    updated: Mapped[datetime] = _updated()
    deleted: Mapped[datetime | None]


class ConversionProfile(Base):
    __tablename__ = "conversion_profiles"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    team_id: Mapped[uuid.UUID] = _team_fk()
    project_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(Text)
    output: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created: Mapped[datetime] = _created()
    updated: Mapped[datetime] = _updated()
    deleted: Mapped[datetime | None]


class UploadProfile(Base):
    __tablename__ = "upload_profiles"
    __table_args__ = (
        Index(
            "uq_upload_profiles_team_short_id",
            "team_id",
            "short_id",
            unique=True,
            postgresql_where=text("deleted IS NULL"),
        ),
    )
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    team_id: Mapped[uuid.UUID] = _team_fk()
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(Text)
    short_id: Mapped[str | None] = mapped_column(Text)
    base_storage_location_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("storage_locations.id"))
    base_storage_location_path: Mapped[str | None] = mapped_column(Text)
    output_storage_location_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("storage_locations.id"))
    output_storage_location_path: Mapped[str | None] = mapped_column(Text)
    conversion_profile_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("conversion_profiles.id"))
    max_bytes: Mapped[int] = mapped_column(BigInteger)
    max_pixels: Mapped[int] = mapped_column(BigInteger)
    allowed_formats: Mapped[list[str]] = mapped_column(ARRAY(Text))
    obsolete_retention_seconds: Mapped[int | None] = mapped_column(Integer)
    created: Mapped[datetime] = _created()
    updated: Mapped[datetime] = _updated()
    deleted: Mapped[datetime | None]


class BaseImage(Base):
    """The original. storage_location_id/location are fixed at upload, so later path edits move nothing."""

    __tablename__ = "base_images"
    __table_args__ = (
        Index("ix_base_images_team_hash", "team_id", "hash"),
        Index("ix_base_images_team_project", "team_id", "project_id", "id"),
    )
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    team_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    upload_profile_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("upload_profiles.id"))
    storage_location_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("storage_locations.id"))
    filename: Mapped[str] = mapped_column(Text)
    location: Mapped[str] = mapped_column(Text)
    hash: Mapped[str | None] = mapped_column(Text)
    # What a presigned upload promised; `complete` checks the stored object against it.
    upload_sha256: Mapped[str | None] = mapped_column(Text)
    upload_size: Mapped[int | None] = mapped_column(BigInteger)
    file_size: Mapped[int] = mapped_column(BigInteger, server_default="0")
    format: Mapped[str | None] = mapped_column(Text)
    width: Mapped[int] = mapped_column(Integer, server_default="0")
    height: Mapped[int] = mapped_column(Integer, server_default="0")
    frames: Mapped[int] = mapped_column(Integer, server_default="1")
    has_alpha: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    status: Mapped[str] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    alt_text: Mapped[str] = mapped_column(Text, server_default="")
    focal_x: Mapped[float | None] = mapped_column(Float)
    focal_y: Mapped[float | None] = mapped_column(Float)
    placeholder: Mapped[str | None] = mapped_column(Text)
    dominant_color: Mapped[str | None] = mapped_column(Text)
    created: Mapped[datetime] = _created()
    updated: Mapped[datetime] = _updated()
    deleted: Mapped[datetime | None]


class OutputImage(Base):
    __tablename__ = "output_images"
    __table_args__ = (Index("uq_output_images_base_location", "base_image_id", "location", unique=True),)
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    team_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), index=True)
    base_image_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("base_images.id", ondelete="CASCADE"))
    storage_location_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("storage_locations.id"))
    location: Mapped[str] = mapped_column(Text)
    format: Mapped[str] = mapped_column(Text)
    size_rule: Mapped[dict[str, Any]] = mapped_column(JSONB)
    params: Mapped[dict[str, Any]] = mapped_column(JSONB)
    density: Mapped[int] = mapped_column(Integer, server_default="1")
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    file_size: Mapped[int] = mapped_column(BigInteger, server_default="0")
    status: Mapped[str] = mapped_column(Text)
    reason: Mapped[str | None] = mapped_column(Text)
    # Milliseconds to shape and encode this output from the job's shared decode (the /metrics histogram).
    convert_ms: Mapped[int | None] = mapped_column(Integer)
    obsolete_since: Mapped[datetime | None]
    created: Mapped[datetime] = _created()
    updated: Mapped[datetime] = _updated()


class Webhook(Base):
    """A project's event receiver. The signing secret is sealed with the server key and never returned."""

    __tablename__ = "webhooks"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    team_id: Mapped[uuid.UUID] = _team_fk()
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(Text)
    secret_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    events: Mapped[list[str]] = mapped_column(ARRAY(Text))
    active: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    created: Mapped[datetime] = _created()
    updated: Mapped[datetime] = _updated()
    deleted: Mapped[datetime | None]


class WebhookDelivery(Base):
    """One event for one webhook: the payload is a snapshot taken when the event happened.

    status: pending (being tried) → delivered | failed (gave up after the retry window).
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_webhook_id", "webhook_id", "id"),
        Index("ix_webhook_deliveries_pending", "updated", postgresql_where=text("status = 'pending'")),
    )
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    team_id: Mapped[uuid.UUID] = _team_fk()
    webhook_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    image_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("base_images.id", ondelete="CASCADE"))
    event: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    status: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    created: Mapped[datetime] = _created()
    updated: Mapped[datetime] = _updated()
    delivered: Mapped[datetime | None]

"""API keys (`ps1.<id>.<secret>`), user passwords (argon2id) and the authenticated Caller.

Keys are 122-bit random secrets: a SHA-256 digest looked up by id and compared in constant time is the
right tool; argon2 (~100 ms a verify) is for human-chosen passwords only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from picstore import db, errors, models, permissions
from picstore.models import NIL_UUID

KEY_VERSION = "ps1"
LAST_USED_RESOLUTION = timedelta(minutes=1)
# One answer for an unknown key, a wrong secret, an expired and a revoked key: nothing to probe with.
REFUSED = "API key not found, expired or revoked"

_hasher = PasswordHasher()


@dataclass(frozen=True, slots=True)
class ParsedKey:
    id: uuid.UUID
    digest: bytes
    prefix: str


@dataclass(frozen=True, slots=True)
class Caller:
    team_id: uuid.UUID
    user_id: uuid.UUID
    key_id: uuid.UUID
    grants: tuple[permissions.Grant, ...]
    default_upload_profile_id: uuid.UUID | None
    expires: datetime | None = None

    def expired(self, now: datetime) -> bool:
        return self.expires is not None and self.expires <= now

    def allows(self, permission: str, project_id: uuid.UUID | None) -> bool:
        return permissions.allows(self.grants, permission, project_id)

    def require(self, permission: str, project_id: uuid.UUID | None) -> None:
        if not self.allows(permission, project_id):
            raise errors.MissingPermission(permission)

    def scope(self, permission: str) -> permissions.Scope:
        return permissions.scope(self.grants, permission)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def new_key() -> str:
    return f"{KEY_VERSION}.{_b64(uuid.uuid4().bytes)}.{_b64(os.urandom(16))}"


def parse_key(key: str) -> ParsedKey:
    """Raises errors.Unauthenticated for anything that is not a well-formed ps1 key."""
    parts = key.split(".")
    if len(parts) != 3 or parts[0] != KEY_VERSION or len(key) != 49:
        raise errors.Unauthenticated("Invalid API key format")
    try:
        raw_id = base64.urlsafe_b64decode(parts[1] + "==")
        raw_secret = base64.urlsafe_b64decode(parts[2] + "==")
    except ValueError:
        raise errors.Unauthenticated("Invalid API key format") from None
    if len(raw_id) != 16 or len(raw_secret) != 16:
        raise errors.Unauthenticated("Invalid API key format")
    return ParsedKey(uuid.UUID(bytes=raw_id), digest(key), key[:16])


def digest(key: str) -> bytes:
    """What the database keeps of a key, and what the read cache knows an authenticated key by."""
    return hashlib.sha256(key.encode()).digest()


def bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise errors.Unauthenticated("Missing Authorization: Bearer <api key>")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise errors.Unauthenticated("Authorization must be 'Bearer <api key>'")
    return token.strip()


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def _grant(permission: str, project_id: uuid.UUID) -> permissions.Grant:
    return permissions.Grant(permission, None if project_id == NIL_UUID else project_id)


async def user_grants(
    session: AsyncSession, user_id: uuid.UUID, team_id: uuid.UUID
) -> tuple[permissions.Grant, ...]:
    """What a user holds through their roles, and so what each of their inheriting keys holds."""
    query = (
        select(models.RolePermission.permission, models.RolePermission.project_id)
        .join(models.UserRole, models.UserRole.role_id == models.RolePermission.role_id)
        .where(models.UserRole.user_id == user_id, models.RolePermission.team_id == team_id)
    )
    return tuple(_grant(p, pid) for p, pid in (await session.execute(query)).all())


async def load_grants(session: AsyncSession, key: models.ApiKey) -> tuple[permissions.Grant, ...]:
    if key.inherits_user_permissions:
        return await user_grants(session, key.user_id, key.team_id)
    query = select(models.ApiKeyPermission.permission, models.ApiKeyPermission.project_id).where(
        models.ApiKeyPermission.api_key_id == key.id
    )
    return tuple(_grant(p, pid) for p, pid in (await session.execute(query)).all())


async def authenticate(session: AsyncSession, parsed: ParsedKey) -> Caller:
    """One query for the live key, its live user and live team; same answer for unknown id and bad secret."""
    now = datetime.now(UTC)
    row = (
        await session.execute(
            select(models.ApiKey, models.User.default_upload_profile_id)
            .join(models.User, models.User.id == models.ApiKey.user_id)
            .join(models.Team, models.Team.id == models.ApiKey.team_id)
            .where(
                models.ApiKey.id == parsed.id,
                models.ApiKey.revoked.is_(None),
                or_(models.ApiKey.expires.is_(None), models.ApiKey.expires > now),
                models.User.team_id == models.ApiKey.team_id,
                models.User.deleted.is_(None),
                models.Team.deleted.is_(None),
            )
        )
    ).first()
    if row is None or not hmac.compare_digest(row[0].digest, parsed.digest):
        raise errors.Unauthenticated(REFUSED)
    key, user_default = row
    await _touch(session, key, now)
    return Caller(
        team_id=key.team_id,
        user_id=key.user_id,
        key_id=key.id,
        grants=await load_grants(session, key),
        default_upload_profile_id=key.default_upload_profile_id or user_default,
        expires=key.expires,
    )


async def _touch(session: AsyncSession, key: models.ApiKey, now: datetime) -> None:
    # Only write last_used once a minute, so reads stay reads.
    if key.last_used is None or now - key.last_used > LAST_USED_RESOLUTION:
        stamp = update(models.ApiKey).where(models.ApiKey.id == key.id).values(last_used=now)
        await session.execute(stamp.execution_options(**{db.CACHE_NEUTRAL: True}))

"""Pic Store's object ids: a 3-letter type prefix + base64url (no padding) of a time-ordered UUID.

Pure: stdlib only. Plain hyphenated UUIDs are accepted on input; output is always prefixed.
"""

from __future__ import annotations

import base64
import os
import time
import uuid

TEAM, ROLE, USER, PROJECT = "tem", "rol", "usr", "prj"
CONVERSION_PROFILE, STORAGE_LOCATION, UPLOAD_PROFILE = "cpr", "slc", "upl"
BASE_IMAGE, OUTPUT_IMAGE, API_KEY, WEBHOOK, WEBHOOK_DELIVERY = "bim", "oim", "key", "whk", "whd"


class InvalidId(ValueError):
    """The text is neither a prefixed id of the expected type nor a UUID."""


def new_uuid() -> uuid.UUID:
    """A UUIDv7-style value: 48-bit millisecond timestamp then random bits, so ids sort by creation."""
    millis = time.time_ns() // 1_000_000
    raw = bytearray(millis.to_bytes(6, "big") + os.urandom(10))
    raw[6] = (raw[6] & 0x0F) | 0x70
    raw[8] = (raw[8] & 0x3F) | 0x80
    return uuid.UUID(bytes=bytes(raw))


def format_id(prefix: str, value: uuid.UUID) -> str:
    return prefix + short(value)


def short(value: uuid.UUID) -> str:
    """The 22-character base64url form without the type prefix."""
    return base64.urlsafe_b64encode(value.bytes).rstrip(b"=").decode()


def parse_id(prefix: str, text: str) -> uuid.UUID:
    if text.startswith(prefix) and len(text) == len(prefix) + 22:
        try:
            raw = base64.urlsafe_b64decode(text[len(prefix) :] + "==")
        except ValueError:
            raw = b""
        if len(raw) == 16:
            return uuid.UUID(bytes=raw)
    try:
        return uuid.UUID(text)
    except ValueError:
        raise InvalidId(f"{text[:64]!r} is not a valid {prefix} id") from None

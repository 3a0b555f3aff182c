"""Storage keys and public URLs (Pic Store §8.3 without its `//` and moving-URL bugs). Pure."""

from __future__ import annotations

import re
from urllib.parse import quote

from picstore import errors

_SEGMENT = re.compile(r"^[A-Za-z0-9._~-]+$")


def clean_segment(value: str | None, field: str) -> str:
    """A relative path of safe segments, without leading/trailing slashes; '' for none.

    Refuses '..', '.', empty inner segments and characters that some stores double-encode.
    """
    if value is None:
        return ""
    trimmed = value.strip().strip("/")
    if not trimmed:
        return ""
    for segment in trimmed.split("/"):
        if segment in ("", ".", "..") or not _SEGMENT.match(segment):
            raise errors.Invalid(
                f"{field}: {value[:100]!r} must be a relative path of segments made of A-Z a-z 0-9 . _ ~ -"
            )
    return trimmed


def join(*parts: str | None) -> str:
    """Join path parts with single slashes, skipping empty ones."""
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


def versioned(location: str, sha256: str) -> str:
    """`dir/photo-ID.jpg` → `dir/photo-ID-<first 10 hex of the hash>.jpg`: a replaced original gets a new
    key, so every stored object is immutable and CDN-cacheable forever."""
    directory, _, name = location.rpartition("/")
    stem, dot, ext = name.rpartition(".")
    if not dot:
        stem, ext = name, ""
    versioned_name = f"{stem}-{sha256[:10]}" + (f".{ext}" if ext else "")
    return f"{directory}/{versioned_name}" if directory else versioned_name


def public_url(base: str, location: str) -> str:
    return base.rstrip("/") + "/" + quote(location.lstrip("/"))

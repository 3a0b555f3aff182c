"""Receiving originals: spool the body to a temporary file while hashing and counting, then check it.

The body never sits whole in memory; the api process never decodes pixels (imaging.read_header only
reads the header). Every refusal is decided before any row changes or any object is stored.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio.to_thread

from picstore import errors, imaging, models, storage

CHUNK = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Spooled:
    """An accepted original on local disk, with what the header says about it."""

    path: str
    size: int
    sha256: str
    header: imaging.Header

    def discard(self) -> None:
        discard(self.path)


def discard(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


async def spool(chunks: AsyncIterator[bytes], max_bytes: int) -> tuple[str, int, str]:
    """Write the body to a temp file; refuse (413) as soon as it grows past max_bytes."""
    fd, path = tempfile.mkstemp(prefix="picstore-upload-")
    digest, size = hashlib.sha256(), 0
    try:
        with os.fdopen(fd, "wb") as out:
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise errors.PayloadTooLarge(
                        f"the body is larger than this upload profile's limit of {max_bytes} bytes"
                    )
                digest.update(chunk)
                out.write(chunk)
    except BaseException:
        discard(path)
        raise
    return path, size, digest.hexdigest()


def check_limits(header: imaging.Header, profile: models.UploadProfile) -> None:
    if header.format not in profile.allowed_formats:
        raise errors.UnsupportedMedia(
            f"{header.format} images are not accepted by this upload profile "
            f"(allowed: {', '.join(profile.allowed_formats)})"
        )
    pixels = header.width * header.height * header.frames
    if pixels > profile.max_pixels:
        frames = f" x {header.frames} frames" if header.frames > 1 else ""
        raise errors.Invalid(
            f"the image is {header.width}x{header.height}{frames} = {pixels} pixels, over this upload "
            f"profile's limit of {profile.max_pixels} pixels"
        )


async def inspect(path: str, size: int, sha256: str, profile: models.UploadProfile) -> Spooled:
    """Read the header of a spooled file and apply the profile's limits; the file is removed on refusal."""
    try:
        if size == 0:
            raise errors.UnsupportedMedia("the body is empty; send the image bytes")
        try:
            header = await anyio.to_thread.run_sync(imaging.read_header, path)
        except imaging.UnknownFormat as exc:
            raise errors.UnsupportedMedia(f"not a supported image: {exc.reason}") from None
        except imaging.CorruptImage as exc:
            raise errors.Invalid(f"the image header cannot be read: {exc.reason}") from None
        check_limits(header, profile)
    except BaseException:
        discard(path)
        raise
    return Spooled(path, size, sha256, header)


async def receive(chunks: AsyncIterator[bytes], profile: models.UploadProfile) -> Spooled:
    path, size, sha256 = await spool(chunks, profile.max_bytes)
    return await inspect(path, size, sha256, profile)


def _digest_file(path: str) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as source:
        while chunk := source.read(CHUNK):
            size += len(chunk)
            digest.update(chunk)
    return size, digest.hexdigest()


async def fetch(store: storage.Storage, key: str) -> tuple[str, int, str]:
    """An object read back from storage into a temp file (presigned uploads): path, size, sha256."""
    fd, path = tempfile.mkstemp(prefix="picstore-complete-")
    os.close(fd)
    try:
        await store.get_to_file(key, path)
        size, sha256 = await anyio.to_thread.run_sync(_digest_file, path)
    except BaseException:
        discard(path)
        raise
    return path, size, sha256

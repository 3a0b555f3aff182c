"""The error tree of picstore. Each class carries its wire `kind`; app.py maps classes to HTTP status.

PicstoreError
├── BadRequest            (bad_request)
├── Unauthenticated       (authn)
├── MissingPermission     (missing_permission)
├── NotFound              (not_found)
├── Conflict              (conflict)
├── PayloadTooLarge       (payload_too_large)
├── RequestTimeout        (request_timeout)
├── UnsupportedMedia      (unsupported_media_type)
├── Invalid               (invalid)
└── Unavailable           (unavailable)
"""

from __future__ import annotations


class PicstoreError(Exception):
    kind = "internal_server_error"

    def __init__(self, message: str | None = None) -> None:
        self.message = message or (self.__doc__ or self.kind).strip()
        super().__init__(self.message)


class BadRequest(PicstoreError):
    """The request is malformed."""

    kind = "bad_request"


class Unauthenticated(PicstoreError):
    """Missing or invalid credentials."""

    kind = "authn"


class MissingPermission(PicstoreError):
    """The caller lacks a permission."""

    kind = "missing_permission"

    def __init__(self, permission: str) -> None:
        self.permission = permission
        super().__init__(f"Missing permission {permission}")


class NotFound(PicstoreError):
    """Not found."""

    kind = "not_found"

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} not found")


class Conflict(PicstoreError):
    """The request conflicts with the current state."""

    kind = "conflict"


class PayloadTooLarge(PicstoreError):
    """The body is larger than allowed."""

    kind = "payload_too_large"


class RequestTimeout(PicstoreError):
    """The client stopped sending the body."""

    kind = "request_timeout"


class UnsupportedMedia(PicstoreError):
    """The body is not an accepted image format."""

    kind = "unsupported_media_type"


class Invalid(PicstoreError):
    """The request refers to something invalid."""

    kind = "invalid"


class Unavailable(PicstoreError):
    """A backing service is unavailable; retry later."""

    kind = "unavailable"

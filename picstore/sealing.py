"""Encryption at rest for storage credentials, keyed by the server secret; the only user of cryptography."""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken


class SealError(Exception):
    """The sealed value cannot be opened with this server key."""


def _fernet(server_key: str) -> Fernet:
    digest = hashlib.sha256(b"picstore storage secrets\0" + server_key.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def seal(server_key: str, plaintext: str) -> bytes:
    return _fernet(server_key).encrypt(plaintext.encode())


def unseal(server_key: str, sealed: bytes) -> str:
    try:
        return _fernet(server_key).decrypt(sealed).decode()
    except InvalidToken:
        raise SealError("stored secret cannot be decrypted with PICSTORE_SECRET_KEY") from None

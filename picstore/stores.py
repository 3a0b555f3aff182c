"""Storage for a storage_locations row: unseal its secret, pick the provider, reuse one client per config."""

from __future__ import annotations

from types import TracebackType

from picstore import models, profiles, sealing, storage
from picstore.settings import Settings


class Stores:
    """Kept for the life of a process (api or worker); closes the S3 clients on exit."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._clients = storage.StorageClients()

    async def __aenter__(self) -> Stores:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._clients.aclose()

    async def for_location(self, location: models.StorageLocation) -> storage.Storage:
        provider = location.provider
        if provider.get("type") != "s3":
            return storage.LocalStorage(
                profiles.local_root_for(location.base_location, self._settings.local_storage_roots)
            )
        bucket, _, prefix = location.base_location.strip("/").partition("/")
        secret = (
            None
            if location.secret_sealed is None
            else sealing.unseal(self._settings.secret_key, location.secret_sealed)
        )
        return await self._clients.for_s3(
            storage.S3Config(
                bucket=bucket,
                prefix=prefix,
                endpoint=provider.get("endpoint"),
                region=provider.get("region") or "us-east-1",
                access_key_id=provider.get("access_key_id"),
                secret_key=secret,
                virtual_host_style=bool(provider.get("virtual_host_style")),
            )
        )

"""Runtime settings, read once from environment variables; the only module that reads os.environ."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field


class MissingSetting(Exception):
    """A required environment variable is not set."""


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str
    secret_key: str = field(repr=False)
    host: str = "127.0.0.1"
    port: int = 7205
    local_storage_roots: tuple[str, ...] = ("./data/storage",)
    public_url: str = "http://127.0.0.1:7205"
    worker_concurrency: int = 2
    db_pool_size: int = 10
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ

        def required(name: str) -> str:
            value = env.get(name, "").strip()
            if not value:
                raise MissingSetting(f"{name} is not set")
            return value

        host = env.get("PICSTORE_HOST", "127.0.0.1")
        port = _int(env, "PICSTORE_PORT", 7205)
        roots = env.get("PICSTORE_LOCAL_STORAGE_ROOTS", "./data/storage")
        return cls(
            database_url=database_url(required("PICSTORE_DATABASE_URL")),
            secret_key=required("PICSTORE_SECRET_KEY"),
            host=host,
            port=port,
            local_storage_roots=tuple(os.path.abspath(r) for r in roots.split(os.pathsep) if r),
            public_url=env.get("PICSTORE_PUBLIC_URL", f"http://{host}:{port}").rstrip("/"),
            worker_concurrency=_int(env, "PICSTORE_WORKER_CONCURRENCY", 2),
            db_pool_size=_int(env, "PICSTORE_DB_POOL_SIZE", 10),
            log_level=env.get("PICSTORE_LOG_LEVEL", "INFO").upper(),
        )

    @property
    def libpq_url(self) -> str:
        """The same database as a plain libpq URL, for procrastinate's psycopg pool."""
        return self.database_url.replace("postgresql+asyncpg://", "postgresql://", 1)


def database_url(url: str) -> str:
    """Accept plain postgres:// URLs and point SQLAlchemy at asyncpg."""
    for prefix in ("postgresql+asyncpg://", "postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    raise MissingSetting("PICSTORE_DATABASE_URL must be a postgresql:// URL")


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise MissingSetting(f"{name} must be an integer, got {raw!r}") from None

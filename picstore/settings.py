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
    # The api answers 503 when PostgreSQL takes longer than this to connect or to answer one statement.
    db_timeout_seconds: float = 5.0
    # A request whose body stops arriving for this long is answered 408 (a pause, not a total, uploads too).
    body_idle_timeout_seconds: float = 60.0
    log_level: str = "INFO"
    # Entries in each of the api's read caches (keys, image reads; see cache.py); 0 turns them off.
    read_cache_entries: int = 10000
    # Webhook deliveries: per-request timeout, first retry wait (doubling per attempt) and the total
    # time after the event during which failed deliveries are retried.
    webhook_timeout_seconds: float = 10.0
    webhook_retry_base_seconds: float = 10.0
    webhook_retry_window_seconds: float = 3600.0
    # Off by default: tenants must not make the worker POST to loopback, private or link-local hosts.
    webhook_allow_private_addresses: bool = False
    # Conversion and deletion jobs that hit a storage or database error retry after 3, 5, 9 and 17 times this.
    job_retry_base_seconds: float = 1.0

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
            db_timeout_seconds=_float(env, "PICSTORE_DB_TIMEOUT_SECONDS", 5.0),
            body_idle_timeout_seconds=_float(env, "PICSTORE_BODY_IDLE_TIMEOUT_SECONDS", 60.0),
            log_level=env.get("PICSTORE_LOG_LEVEL", "INFO").upper(),
            read_cache_entries=_int(env, "PICSTORE_READ_CACHE_ENTRIES", 10000),
            webhook_timeout_seconds=_float(env, "PICSTORE_WEBHOOK_TIMEOUT_SECONDS", 10.0),
            webhook_retry_base_seconds=_float(env, "PICSTORE_WEBHOOK_RETRY_BASE_SECONDS", 10.0),
            webhook_retry_window_seconds=_float(env, "PICSTORE_WEBHOOK_RETRY_WINDOW_SECONDS", 3600.0),
            webhook_allow_private_addresses=_bool(env, "PICSTORE_WEBHOOK_ALLOW_PRIVATE_ADDRESSES"),
            job_retry_base_seconds=_float(env, "PICSTORE_JOB_RETRY_BASE_SECONDS", 1.0),
        )

    @property
    def libpq_url(self) -> str:
        """The same database as a plain libpq URL, for procrastinate's psycopg pool."""
        return self.database_url.replace("postgresql+asyncpg://", "postgresql://", 1)


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """Where `picstore publish` and `import` find a server: flags, else PICSTORE_URL and PICSTORE_API_KEY."""

    url: str
    api_key: str = field(repr=False)

    @classmethod
    def from_env(
        cls, url: str | None = None, api_key: str | None = None, environ: Mapping[str, str] | None = None
    ) -> ClientSettings:
        env = os.environ if environ is None else environ
        url = (url or env.get("PICSTORE_URL", "")).strip().rstrip("/")
        api_key = (api_key or env.get("PICSTORE_API_KEY", "")).strip()
        if not url:
            raise MissingSetting("no server URL: set PICSTORE_URL or pass --url")
        if not url.startswith(("http://", "https://")):
            raise MissingSetting(f"the server URL must start with http:// or https://, got {url!r}")
        if not api_key:
            raise MissingSetting("no API key: set PICSTORE_API_KEY or pass --api-key")
        return cls(url=url, api_key=api_key)


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


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise MissingSetting(f"{name} must be a number, got {raw!r}") from None


def _bool(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise MissingSetting(f"{name} must be true or false, got {raw!r}")

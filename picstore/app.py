"""create_app: the only place that knows every module. Wires settings, database, storage, jobs and routes."""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import anyio
from litestar import Litestar, MediaType, Request, Response, Router, get
from litestar.datastructures import CacheControlHeader, State
from litestar.di import Provide
from litestar.exceptions import (
    HTTPException,
    InternalServerException,
    SerializationException,
    ValidationException,
)
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import (
    OpenAPIFormat,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    RequestBody,
    Schema,
    SecurityScheme,
)
from litestar.static_files import create_static_files_router
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from picstore import (
    api_admin,
    api_images,
    api_webhooks,
    auth,
    cache,
    db,
    errors,
    jobs,
    logs,
    metrics,
    schemas,
    stores,
)
from picstore.settings import Settings

log = logging.getLogger("picstore.api")

STATUS: dict[type[errors.PicstoreError], int] = {
    errors.BadRequest: 400,
    errors.Unauthenticated: 401,
    errors.MissingPermission: 403,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.PayloadTooLarge: 413,
    errors.RequestTimeout: 408,
    errors.UnsupportedMedia: 415,
    errors.Invalid: 422,
    errors.Unavailable: 503,
}
HTTP_KINDS = {
    400: "bad_request",
    401: "authn",
    403: "missing_permission",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid",
    429: "too_many_requests",
    503: "unavailable",
}
JSON_BODY_LIMIT = 1024 * 1024
BODY_IDLE_TIMEOUT_S = 60.0  # before the lifespan has put the settings in app.state


def error_response(status: int, kind: str, message: str) -> Response[Any]:
    return Response(
        schemas.ErrorOut(error=schemas.ErrorBody(kind=kind, message=message)),
        status_code=status,
        media_type=MediaType.JSON,
    )


def _status_of(exc: errors.PicstoreError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def picstore_error(_: Request[Any, Any, Any], exc: errors.PicstoreError) -> Response[Any]:
    return error_response(_status_of(exc), exc.kind, exc.message)


def _validation_message(exc: ValidationException) -> str:
    extra = exc.extra if isinstance(exc.extra, list) else []
    details = [_detail(e) for e in extra if isinstance(e, dict)]
    return "; ".join(details) or str(exc.detail)


def _detail(error: dict[str, Any]) -> str:
    key, message = error.get("key"), str(error.get("message"))
    if key and message == repr(key):
        # Litestar reports a missing value as the KeyError's text, e.g. "data: 'data'" for a missing body.
        return "the request has no body: send a JSON object" if key == "data" else f"{key}: missing"
    return f"{key}: {message}" if key else message


def http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    status = exc.status_code
    if status >= 500:
        return error_response(status, "internal_server_error", "Server error")
    message = _validation_message(exc) if isinstance(exc, ValidationException) else str(exc.detail)
    return error_response(status, HTTP_KINDS.get(status, "bad_request"), message)


class PicstoreRequest(Request[Any, Any, Any]):
    """Litestar's Request, with what a client's body can break mapped to 4xx instead of 500."""

    async def json(self) -> Any:
        # msgspec raises UnicodeDecodeError for invalid UTF-8 inside strings and RecursionError for deep
        # nesting; Litestar turns only msgspec.DecodeError (as SerializationException) into a 400.
        try:
            return await super().json()
        except UnicodeDecodeError as exc:
            raise SerializationException(f"JSON is malformed: invalid UTF-8 at byte {exc.start}") from None
        except RecursionError:
            raise SerializationException("JSON is malformed: nested too deeply") from None

    async def stream(self) -> AsyncGenerator[bytes, None]:
        # A client that hangs up mid-body is not a server error (Litestar raises a 500 for it), and one that
        # stops sending (a short body under a longer Content-Length, a slow-loris) must not hold the request
        # open forever.
        settings: Settings | None = getattr(self.app.state, "settings", None)
        idle = settings.body_idle_timeout_seconds if settings else BODY_IDLE_TIMEOUT_S
        chunks = super().stream()
        try:
            while True:
                try:
                    with anyio.fail_after(idle):
                        chunk = await anext(chunks)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise errors.RequestTimeout(
                        f"the client sent no body bytes for {idle:g} s; send the whole body without pausing"
                    ) from None
                yield chunk
        except InternalServerException as exc:
            if "disconnected" not in str(exc.detail):
                raise
            raise errors.BadRequest("the client disconnected before sending the whole body") from None
        finally:
            await chunks.aclose()


def database_error(request: Request[Any, Any, Any], exc: DBAPIError) -> Response[Any]:
    if isinstance(exc, IntegrityError):
        return error_response(409, "conflict", "The request conflicts with existing data")
    if str(getattr(exc.orig, "sqlstate", "")).startswith("22"):
        # SQLSTATE class 22 (data exception): a value PostgreSQL cannot store, e.g. text with a NUL character.
        return error_response(400, "bad_request", "The request contains a value the database cannot store")
    if exc.connection_invalidated or _is_connection_problem(exc):
        return error_response(503, "unavailable", "The database is unavailable; retry shortly")
    return internal_error(request, exc)


def _is_connection_problem(exc: BaseException) -> bool:
    text_ = f"{type(exc.__cause__).__name__} {exc}".lower()
    return any(w in text_ for w in ("connection", "cannotconnectnow", "shutdown", "admin", "terminat"))


def connection_error(_: Request[Any, Any, Any], exc: OSError) -> Response[Any]:
    return error_response(503, "unavailable", "A backing service is unavailable; retry shortly")


def internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_server_error", "Server error")


async def provide_db(state: State) -> AsyncGenerator[AsyncSession, None]:
    async with state.sessionmaker() as session:
        yield session


async def provide_caller(request: Request[Any, Any, Any]) -> auth.Caller:
    """From the read cache, else authenticated in a session of its own: a cached read needs none."""
    token = auth.bearer_token(request.headers.get("authorization"))
    state = request.app.state

    async def from_database() -> auth.Caller:
        async with state.sessionmaker() as session, session.begin():
            return await auth.authenticate(session, auth.parse_key(token))

    # Same digest, same key: a cached caller needs no parsing of it.
    read_cache: cache.ReadCache = state.cache
    caller = await read_cache.callers.fetch(auth.digest(token), from_database)
    if caller.expired(datetime.now(UTC)):
        raise errors.Unauthenticated(auth.REFUSED)
    return caller


@get("/health")
async def health(state: State) -> schemas.Health:
    try:
        async with state.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        ok = True
    except (DBAPIError, OSError):
        ok = False
    return schemas.Health(database=ok, healthy=ok)


@get("/metrics", media_type=metrics.CONTENT_TYPE, include_in_schema=False)
async def metrics_endpoint(state: State) -> str:
    """Prometheus text format, without credentials: keep it on an internal network."""
    return await metrics.scrape(state.metrics, state.sessionmaker)


def _resources(settings: Settings) -> Any:
    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncGenerator[None, None]:
        engine = db.make_engine(settings.database_url, settings.db_pool_size, settings.db_timeout_seconds)
        app.state.engine = engine
        app.state.sessionmaker = db.make_sessionmaker(engine)
        app.state.settings = settings
        app.state.cache = read_cache = cache.ReadCache(settings.read_cache_entries)
        db.on_writes(engine, read_cache.clear)
        try:
            async with (
                stores.Stores(settings) as store_cache,
                jobs.open_app(settings) as job_app,
                anyio.create_task_group() as background,
            ):
                app.state.stores = store_cache
                app.state.jobs = job_app
                if settings.read_cache_entries > 0:
                    background.start_soon(db.follow, engine, cache.CHANNEL, read_cache)
                # What start-up made lives as long as the process: keep it out of the collector's full
                # passes, which would otherwise walk all of it while requests wait.
                gc.freeze()
                try:
                    yield
                finally:
                    background.cancel_scope.cancel()
        finally:
            # Outside the cancelled task group, so closing the pool's connections is not cancelled too.
            await engine.dispose()

    return lifespan


ERROR_SCHEMA = Schema(
    type=OpenAPIType.OBJECT,
    required=["error"],
    properties={
        "error": Schema(
            type=OpenAPIType.OBJECT,
            required=["kind", "message"],
            properties={"kind": Schema(type=OpenAPIType.STRING), "message": Schema(type=OpenAPIType.STRING)},
        )
    },
)
ERRORS = {
    400: "Malformed request: the message says which part",
    401: "Missing, invalid, expired or revoked API key",
    403: "The key lacks the named permission",
    404: "Not found, or another team's",
    408: "The client stopped sending the body",
    409: "Conflicts with the current state",
    413: "The body is too large",
    415: "Not an image format this upload profile accepts",
    422: "Invalid reference, profile or image",
    503: "The database is unavailable; retry shortly",
}
UPLOAD_PATHS = ("/upload", "/quick_upload")


def _document_api(app: Litestar) -> None:
    """Declare in the OpenAPI document what /api operations really answer: Litestar documents only its own
    400 body, which picstore never sends. Every error status an operation can return, with the one error
    shape; the bearer key; and the raw image body of the upload routes (read as a stream, so undeclared)."""
    document = app.openapi_schema  # built once and cached by Litestar: edits here are what /schema serves
    components = document.components
    components.security_schemes = {
        **(components.security_schemes or {}),
        "apiKey": SecurityScheme(type="http", scheme="bearer", description="An API key: ps1.<id>.<secret>"),
    }
    for path, item in (document.paths or {}).items():
        if not path.startswith("/api/") or path == "/api/health":
            continue
        for method in ("get", "post", "put", "delete"):
            operation = getattr(item, method, None)
            if operation is None:
                continue
            operation.security = [{"apiKey": []}]
            upload = method == "post" and path.endswith(UPLOAD_PATHS)
            statuses = [400, 401, 403, 404, 409, 422, 503]
            if upload or operation.request_body is not None:
                statuses += [408, 413]
            if upload:
                statuses.append(415)
                operation.request_body = RequestBody(
                    description="The image bytes, streamed",
                    content={
                        "application/octet-stream": OpenAPIMediaType(
                            schema=Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY)
                        )
                    },
                )
            responses = operation.responses or {}
            for status in sorted(statuses):
                responses[str(status)] = OpenAPIResponse(
                    description=ERRORS[status],
                    content={"application/json": OpenAPIMediaType(schema=ERROR_SCHEMA)},
                )
            operation.responses = responses


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or Settings.from_env()
    logs.configure(settings.log_level)
    api = Router(
        path="/api",
        route_handlers=[health, api_admin.router, api_images.router, api_webhooks.router],
        dependencies={"db": Provide(provide_db), "caller": Provide(provide_caller)},
    )
    handlers: list[Any] = [api, metrics_endpoint]
    files_root = settings.local_storage_roots[0] if settings.local_storage_roots else None
    if files_root:
        os.makedirs(files_root, exist_ok=True)
        handlers.append(
            create_static_files_router(
                path="/files",
                directories=[files_root],
                # Every stored object has a content-versioned name, so it never changes.
                cache_control=CacheControlHeader(public=True, max_age=31536000, immutable=True),
            )
        )
    registry = metrics.Registry()
    app = Litestar(
        route_handlers=handlers,
        state=State({"metrics": registry}),
        dependencies={"settings": Provide(lambda: settings, use_cache=True, sync_to_thread=False)},
        lifespan=[_resources(settings)],
        exception_handlers={
            errors.PicstoreError: picstore_error,
            HTTPException: http_error,
            DBAPIError: database_error,
            OSError: connection_error,
            Exception: internal_error,
        },
        openapi_config=OpenAPIConfig(title="picstore", version="0.1.0", path="/schema"),
        request_max_body_size=JSON_BODY_LIMIT,
        request_class=PicstoreRequest,
        # logs.configure owns logging; Litestar's own config would replace its root handler at startup.
        logging_config=None,
        debug=False,
    )
    # Outermost, around routing and the exception handlers, so every answer is counted and logged; this is
    # where Litestar itself puts its outermost middleware (OpenTelemetry).
    app.asgi_handler = metrics.instrument(app.asgi_handler, registry)
    _document_api(app)
    return app

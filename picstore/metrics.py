"""Prometheus metrics and the request log.

Two sources. The api process counts its own requests (by route template, so the label set stays small)
and upload bytes, in `Registry`. Everything about work is read from PostgreSQL at scrape time: jobs by
task and status and the queue depth from procrastinate's table, conversion time and stored bytes by
format from the output rows. Workers are separate processes, possibly on other machines; the database
already holds their results, so one scrape of any api process covers all of them and nothing is lost when
a worker restarts. Request counters are per api process: with `serve --workers N` scrape each process.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from picstore import jobs, logs, models

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CONVERT_BUCKETS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000)
UNMATCHED = "unmatched"
# Any token is a valid HTTP method on the wire; labels take only these, so a client cannot grow the series.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# Generated request ids: random per process, counted per request. Unique is all they need to be, and a
# uuid4 per request costs a getrandom() system call, which is slow on virtual machines.
_PROCESS_ID = os.urandom(8).hex()
_REQUEST_COUNT = itertools.count()

log = logging.getLogger("picstore.requests")

Labels = tuple[tuple[str, str], ...]
Sample = tuple[str, Labels, float]  # name suffix, labels, value
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Family:
    name: str
    kind: str  # counter | gauge | histogram
    help: str
    samples: list[Sample]


def histogram_samples(
    labels: Labels, buckets: tuple[float, ...], cumulative: list[int], total: float
) -> list[Sample]:
    """`cumulative[i]` counts observations <= buckets[i]; the last item (+Inf) is the count."""
    bounds = (*buckets, math.inf)
    samples: list[Sample] = [
        ("_bucket", (*labels, ("le", _number(b))), n) for b, n in zip(bounds, cumulative, strict=True)
    ]
    return [*samples, ("_sum", labels, total), ("_count", labels, cumulative[-1])]


@dataclass(slots=True)
class _Histogram:
    buckets: tuple[float, ...]
    cumulative: list[int] = field(default_factory=list)
    total: float = 0.0

    def observe(self, value: float) -> None:
        if not self.cumulative:
            self.cumulative = [0] * (len(self.buckets) + 1)
        for i, bound in enumerate((*self.buckets, math.inf)):
            if value <= bound:
                self.cumulative[i] += 1
        self.total += value


@dataclass(slots=True)
class Registry:
    """This process's request metrics. Only the event loop touches it, so no locking."""

    requests: dict[Labels, int] = field(default_factory=dict)
    durations: dict[Labels, _Histogram] = field(default_factory=dict)
    upload_bytes: dict[Labels, int] = field(default_factory=dict)

    def observe(self, method: str, route: str, status: int, seconds: float, upload_bytes: int | None) -> None:
        where = (("method", method), ("route", route))
        key = (*where, ("status", str(status)))
        self.requests[key] = self.requests.get(key, 0) + 1
        self.durations.setdefault(where, _Histogram(DURATION_BUCKETS)).observe(seconds)
        if upload_bytes is not None:
            self.upload_bytes[where] = self.upload_bytes.get(where, 0) + upload_bytes

    def families(self) -> list[Family]:
        durations = [
            sample
            for key, h in self.durations.items()
            for sample in histogram_samples(key, h.buckets, h.cumulative, h.total)
        ]
        return [
            Family(
                "picstore_http_requests_total",
                "counter",
                "HTTP requests by method, route template and status.",
                [("", k, v) for k, v in self.requests.items()],
            ),
            Family(
                "picstore_http_request_duration_seconds",
                "histogram",
                "HTTP request duration by method and route template.",
                durations,
            ),
            Family(
                "picstore_upload_bytes_total",
                "counter",
                "Request body bytes received by the upload routes.",
                [("", k, v) for k, v in self.upload_bytes.items()],
            ),
        ]


# Exposition


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _line(name: str, labels: Labels, value: float) -> str:
    if not labels:
        return f"{name} {_number(value)}"
    rendered = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return f"{name}{{{rendered}}} {_number(value)}"


def exposition(families: list[Family]) -> str:
    """Prometheus text format 0.0.4."""
    lines: list[str] = []
    for family in families:
        lines += [f"# HELP {family.name} {family.help}", f"# TYPE {family.name} {family.kind}"]
        lines += [_line(family.name + suffix, labels, value) for suffix, labels, value in family.samples]
    return "\n".join(lines) + "\n"


# From the database, at scrape time

JOBS = text("SELECT task_name, status::text, count(*) FROM procrastinate_jobs GROUP BY 1, 2")
TODO = text("SELECT queue_name, count(*) FROM procrastinate_jobs WHERE status = 'todo' GROUP BY 1")


async def _jobs(session: AsyncSession) -> list[Family]:
    by_task = (await session.execute(JOBS)).all()
    # Known queues always report, so an alert on depth sees 0 rather than no series.
    depth = {jobs.QUEUE: 0, jobs.WEBHOOK_QUEUE: 0, **dict((await session.execute(TODO)).all())}
    return [
        Family(
            "picstore_jobs",
            "gauge",
            "Jobs by task and status (todo, doing, succeeded, failed, ...); finished jobs are kept a week.",
            [("", (("task", t), ("status", s)), n) for t, s, n in by_task],
        ),
        Family(
            "picstore_queue_depth",
            "gauge",
            "Jobs waiting to run (todo, scheduled retries included) by queue.",
            [("", (("queue", q),), n) for q, n in sorted(depth.items())],
        ),
    ]


async def _outputs(session: AsyncSession) -> list[Family]:
    o = models.OutputImage
    stored = await session.execute(
        select(o.format, func.sum(o.file_size)).where(o.status == "ready").group_by(o.format)
    )
    under = [func.count().filter(o.convert_ms <= b) for b in CONVERT_BUCKETS_MS]
    timed = await session.execute(
        select(o.format, func.sum(o.convert_ms), *under, func.count())
        .where(o.convert_ms.is_not(None))
        .group_by(o.format)
        .order_by(o.format)
    )
    seconds = tuple(b / 1000 for b in CONVERT_BUCKETS_MS)
    conversion = [
        s
        for fmt, total_ms, *cumulative in timed.all()
        for s in histogram_samples((("format", fmt),), seconds, cumulative, (total_ms or 0) / 1000)
    ]
    return [
        Family(
            "picstore_output_bytes",
            "gauge",
            "Bytes of ready outputs by format.",
            [("", (("format", f),), int(n or 0)) for f, n in stored.all()],
        ),
        Family(
            "picstore_conversion_seconds",
            "histogram",
            "Seconds to shape and encode one stored output from its job's shared decode, by format.",
            conversion,
        ),
    ]


async def _deliveries(session: AsyncSession) -> list[Family]:
    d = models.WebhookDelivery
    rows = (await session.execute(select(d.status, func.count()).group_by(d.status))).all()
    return [
        Family(
            "picstore_webhook_deliveries",
            "gauge",
            "Webhook deliveries by status (pending, delivered, failed).",
            [("", (("status", s),), n) for s, n in rows],
        )
    ]


async def scrape(registry: Registry, sessions: async_sessionmaker[AsyncSession]) -> str:
    """The whole exposition; the request metrics still answer while the database is down."""
    families = registry.families()
    try:
        async with sessions() as session:
            families += [*await _jobs(session), *await _outputs(session), *await _deliveries(session)]
        up = 1
    except (DBAPIError, OSError) as exc:
        log.warning("metrics: the database did not answer: %s", exc)
        up = 0
    families.append(
        Family(
            "picstore_database_up", "gauge", "Whether this scrape could read the database.", [("", (), up)]
        )
    )
    return exposition(families)


# Every request: count it, time it, log one line


def _request_id(scope: MutableMapping[str, Any]) -> str:
    """The caller's X-Request-Id when it is a sane token, so a trace can span services; else a new one."""
    for name, value in scope.get("headers", []):
        if name == b"x-request-id" and _REQUEST_ID.match(candidate := value.decode("latin-1")):
            return candidate
    return f"{_PROCESS_ID}{next(_REQUEST_COUNT):016x}"


def instrument(app: ASGIApp, registry: Registry) -> ASGIApp:
    """Wrap the whole ASGI app, so requests that match no route and errors answered by exception handlers
    count too. Labels use the route template the router put in the scope, never the raw path."""

    async def observed(scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        # Routing rewrites scope["path"] for mounted apps (/files): keep what the client asked for.
        started, request_id, path = time.perf_counter(), _request_id(scope), scope["path"]
        status, received = 500, 0  # 500 if the app dies before answering: the server answers that

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            return message

        async def tagged_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        with logs.bound(request_id=request_id):
            try:
                await app(scope, counting_receive, tagged_send)
            finally:
                _record(registry, scope, path, status, time.perf_counter() - started, received)

    return observed


def _record(
    registry: Registry, scope: MutableMapping[str, Any], path: str, status: int, seconds: float, received: int
) -> None:
    route = scope.get("path_template") or UNMATCHED
    method = scope["method"] if scope["method"] in METHODS else "other"
    handler = scope.get("route_handler")
    is_upload = handler is not None and bool(handler.opt.get("upload"))
    registry.observe(method, route, status, seconds, received if is_upload else None)
    logs.access(
        log,
        logging.WARNING if status >= 500 else logging.INFO,
        f"{method} {route} {status}",
        {
            "method": method,
            "route": route,
            "path": path,
            "status": status,
            "duration_ms": round(seconds * 1000, 1),
        },
    )

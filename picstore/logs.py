"""Logging for the api and the worker, configured in one place: JSON lines when stderr is not a terminal
(a container, a service manager, a test run), short plain lines when a person watches it.

A line carries the record's `extra=` fields and whatever is bound to the current request or job
(`bound`), so one request id or job id finds every line it caused. Nothing here logs headers, and the
known secret shapes (API keys, webhook secrets, bearer tokens, credentials in URLs) are masked in every
line as a last line of defence, whatever a message or an exception happens to contain.
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, TextIO

import msgspec

HANDLER_NAME = "picstore"
# Fields every LogRecord has; whatever else a record carries came from `extra=`.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
# (a lower-case marker every match contains, the pattern, its mask): every request logs a line, and a
# substring test is far cheaper than a regular expression scan of a line holding no secret at all.
_SECRETS = (
    ("ps1.", re.compile(r"ps1\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"), "ps1.<redacted>"),
    ("whsec_", re.compile(r"whsec_[A-Za-z0-9_-]+"), "whsec_<redacted>"),
    ("bearer", re.compile(r"(?i)\bbearer\s+[^\s\"',]+"), "Bearer <redacted>"),
    ("://", re.compile(r"://[^/\s:@]+:[^/\s@]+@"), "://<redacted>@"),
)
# procrastinate would add two lines per job (tasks.py writes one); httpx would log webhook URLs, and those
# can carry tokens; sqlalchemy would log every statement and pyvips every libvips step at INFO.
_QUIET = ("procrastinate", "httpx", "httpcore", "sqlalchemy", "pyvips")

# One line per request goes through this, so the fast encoder; anything it does not know becomes its str().
_json_encode = msgspec.json.Encoder(enc_hook=str).encode

_installed: logging.StreamHandler[TextIO] | None = None  # picstore's handler, once configure() ran

_bound: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "picstore_log_fields", default=MappingProxyType({})
)


@contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """Add `fields` to every line logged in this context (this request, this job)."""
    token = _bound.set({**_bound.get(), **fields})
    try:
        yield
    finally:
        _bound.reset(token)


def redact(line: str) -> str:
    lowered = line.lower()
    for marker, pattern, mask in _SECRETS:
        if marker in lowered:
            line = pattern.sub(mask, line)
    return line


class Formatter(logging.Formatter):
    def __init__(self, json_lines: bool) -> None:
        super().__init__()
        self.json_lines = json_lines

    def format(self, record: logging.LogRecord) -> str:
        fields = {**_bound.get(), **{k: v for k, v in vars(record).items() if k not in _STANDARD}}
        trace = self.formatException(record.exc_info) if record.exc_info else None
        return self.line(record.created, record.levelname, record.name, record.getMessage(), fields, trace)

    def line(
        self, created: float, level: str, logger: str, message: str, fields: dict[str, Any], trace: str | None
    ) -> str:
        if self.json_lines:
            entry = {
                "ts": datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds"),
                "level": level.lower(),
                "logger": logger,
                "msg": message,
                **fields,
            }
            if trace:
                entry["exc"] = trace
            return redact(_json_encode(entry).decode())
        when = datetime.fromtimestamp(created).strftime("%H:%M:%S")
        extra = "".join(f" {k}={v}" for k, v in fields.items() if v is not None)
        plain = f"{when} {level:<7} {logger}: {message}{extra}"
        return redact(f"{plain}\n{trace}" if trace else plain)


def access(logger: logging.Logger, level: int, message: str, fields: dict[str, Any]) -> None:
    """One request's line, as `logger.log(level, message, extra=fields)` would write it, straight to
    picstore's handler: every request writes one, and logging's per-record machinery (a LogRecord, the
    filter and handler walk) cost twice the line itself, 22 of ~105 us a cached read. So request lines
    reach picstore's handler only, never handlers others add to the root logger."""
    handler = _installed
    if handler is None:
        logger.log(level, message, extra=fields)
        return
    if not logger.isEnabledFor(level):
        return
    formatter: Formatter = handler.formatter  # type: ignore[assignment]
    fields = {**_bound.get(), **fields}
    line = formatter.line(time.time(), logging.getLevelName(level), logger.name, message, fields, None)
    handler.acquire()
    try:
        handler.stream.write(line + handler.terminator)
        handler.flush()
    finally:
        handler.release()


def configure(level: str, stream: TextIO | None = None) -> None:
    """Install picstore's handler on the root logger (replacing an earlier one; others are left alone)."""
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    handler.set_name(HANDLER_NAME)
    handler.setFormatter(Formatter(json_lines=not stream.isatty()))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    global _installed
    _installed = handler
    for name in _QUIET:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    # Every request logs a line, and no line shows the caller's file, thread or process: skip looking them
    # up (the logging HOWTO's "Optimization" section).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False

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
        message = record.getMessage()
        trace = self.formatException(record.exc_info) if record.exc_info else None
        render = self._json if self.json_lines else self._plain
        return redact(render(record, message, fields, trace))

    def _json(
        self, record: logging.LogRecord, message: str, fields: dict[str, Any], trace: str | None
    ) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": message,
            **fields,
        }
        if trace:
            entry["exc"] = trace
        return _json_encode(entry).decode()

    def _plain(
        self, record: logging.LogRecord, message: str, fields: dict[str, Any], trace: str | None
    ) -> str:
        when = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        extra = "".join(f" {k}={v}" for k, v in fields.items() if v is not None)
        line = f"{when} {record.levelname:<7} {record.name}: {message}{extra}"
        return f"{line}\n{trace}" if trace else line


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
    for name in _QUIET:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    # Every request logs a line, and no line shows the caller's file, thread or process: skip looking them
    # up (the logging HOWTO's "Optimization" section).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False

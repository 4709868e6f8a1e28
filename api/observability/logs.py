"""JSON logs that Cloud Logging reads: severity, message, trace, and the job's fields.

A request-scoped context (a ContextVar, so each thread or greenlet has its own) carries the
fields every line of a request or an attempt should have: the trace, and the job id, attempt
and queue once they are known. `api.observability.traces` fills it from Flask's request hooks.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

# Attributes every LogRecord has; anything else came in through `extra=` and is logged.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}

_context: ContextVar[Mapping[str, Any]] = ContextVar(
    "cloudjobs_log_context", default=MappingProxyType({})
)


def context() -> Mapping[str, Any]:
    """The fields the current request or attempt adds to every log line."""
    return _context.get()


def set_context(**fields: Any) -> None:
    """Replace the context (at the start of a request); None values are left out."""
    _context.set({k: v for k, v in fields.items() if v is not None})


def clear_context() -> None:
    """Forget the context (at the end of a request)."""
    _context.set(MappingProxyType({}))


@contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """Add fields to the context for the length of a block (an attempt), then restore it."""
    token = _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, in Cloud Logging's structured format."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": record.levelname,
            "message": record.getMessage(),
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "logger": record.name,
        }
        # The context first: a field passed with `extra=` says more about this line.
        entry.update(_context.get())
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["stack_trace"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(level: str = "INFO", *, json_logs: bool = True) -> None:
    """Send the root logger to stderr, as JSON unless asked for plain text."""
    handler = logging.StreamHandler(sys.stderr)
    if json_logs:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)

"""Traces and request logs: what Cloud Logging and Cloud Trace need to tie a job together.

- Each request's trace comes from its W3C `traceparent` header, or Google's
  `X-Cloud-Trace-Context`; every log line of the request carries it as
  `logging.googleapis.com/trace`, so Cloud Logging groups them under the request.
- A task created during a request carries the same headers, so the attempt that Cloud Tasks
  delivers later logs under the trace of the request that created the job.
- One log line per request (Cloud Logging's `httpRequest` object) and one per attempt.
- OpenTelemetry, with the `otel` extra and OTEL_ENABLED=true, exports spans to Cloud Trace.

Nothing here logs a header value other than the user agent, a query string, or a body.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from api.config import ConfigurationInvalid
from api.observability import logs

if TYPE_CHECKING:
    from flask import Flask
    from werkzeug.datastructures import Headers

    from api.state import AppState
    from api.store.jobs import Finish

logger = logging.getLogger(__name__)

TRACE = "logging.googleapis.com/trace"
SPAN_ID = "logging.googleapis.com/spanId"
TRACE_SAMPLED = "logging.googleapis.com/trace_sampled"

# The trace headers of the current request, as received and checked: a task created during
# the request carries them to /handlers/run.
_incoming: ContextVar[Mapping[str, str]] = ContextVar(
    "cloudjobs_trace_headers", default=MappingProxyType({})
)


@dataclass(frozen=True)
class TraceContext:
    """A request's place in a trace."""

    trace_id: str  # 32 lowercase hex digits
    span_id: str | None = None  # 16 lowercase hex digits: the caller's span
    sampled: bool | None = None


# W3C Trace Context, version-format = version "-" trace-id "-" parent-id "-" trace-flags;
# later versions may append fields, which a version 00 parser ignores.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
# Google's legacy header: TRACE_ID/SPAN_ID;o=OPTIONS, the span id in decimal.
_CLOUD_TRACE = re.compile(r"([0-9a-fA-F]{32})(?:/([0-9]{1,20}))?(?:;o=([0-9]+))?")


def parse_traceparent(value: str | None) -> TraceContext | None:
    """The trace context of a W3C `traceparent` header; None when absent or malformed."""
    m = _TRACEPARENT.fullmatch((value or "").strip())
    if not m:
        return None
    version, trace_id, span_id, flags, rest = m.groups()
    if version == "ff" or (version == "00" and rest):
        return None
    if trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    return TraceContext(trace_id, span_id, bool(int(flags, 16) & 1))


def parse_cloud_trace_context(value: str | None) -> TraceContext | None:
    """The trace context of an `X-Cloud-Trace-Context` header; None when absent or malformed."""
    m = _CLOUD_TRACE.fullmatch((value or "").strip())
    if not m:
        return None
    trace_id = m.group(1).lower()
    if trace_id == "0" * 32:
        return None
    span = int(m.group(2)) if m.group(2) else 0
    # Cloud Logging wants the span as 16 hex digits; 0 or more than 64 bits is no span.
    span_id = f"{span:016x}" if 0 < span < 2**64 else None
    sampled = bool(int(m.group(3)) & 1) if m.group(3) else None
    return TraceContext(trace_id, span_id, sampled)


def trace_from_headers(headers: Headers | Mapping[str, str]) -> TraceContext | None:
    """The request's trace: `traceparent` if it is valid, else `X-Cloud-Trace-Context`."""
    return parse_traceparent(headers.get("traceparent")) or parse_cloud_trace_context(
        headers.get("X-Cloud-Trace-Context")
    )


def trace_fields(project: str, trace: TraceContext | None) -> dict[str, Any]:
    """The Cloud Logging fields that tie a log line to its trace and span."""
    if trace is None:
        return {}
    fields: dict[str, Any] = {TRACE: f"projects/{project}/traces/{trace.trace_id}"}
    if trace.span_id:
        fields[SPAN_ID] = trace.span_id
    if trace.sampled is not None:
        fields[TRACE_SAMPLED] = trace.sampled
    return fields


def forwardable(headers: Headers | Mapping[str, str]) -> dict[str, str]:
    """The request's trace headers that are well formed, to be passed on to a task."""
    out = {}
    if parse_traceparent(headers.get("traceparent")):
        out["traceparent"] = headers["traceparent"].strip()
    if parse_cloud_trace_context(headers.get("X-Cloud-Trace-Context")):
        out["X-Cloud-Trace-Context"] = headers["X-Cloud-Trace-Context"].strip()
    return out


def trace_headers() -> dict[str, str]:
    """Headers for a task created now: the current request's trace (none outside a request).

    With OpenTelemetry on, `traceparent` names the current span, so the attempt's spans
    become children of the request that created the job.
    """
    headers = dict(_incoming.get())
    if _otel_provider is not None:
        from opentelemetry import propagate

        propagate.inject(headers)
    return headers


def receive(headers: Headers | Mapping[str, str]) -> None:
    """Keep a request's well-formed trace headers, for the tasks created while serving it."""
    _incoming.set(forwardable(headers))


def forget() -> None:
    """The request is over: tasks created from now on carry no trace of it."""
    _incoming.set(MappingProxyType({}))


# ---------------------------------------------------------------- attempts


@dataclass
class AttemptClock:
    """How long an attempt's job function ran."""

    started: float
    seconds: float = 0.0


@contextmanager
def attempt(*, job_id: uuid.UUID, attempt: int, queue: str) -> Iterator[AttemptClock]:
    """Time an attempt; every line logged inside carries its job id, attempt and queue."""
    clock = AttemptClock(time.perf_counter())
    try:
        with logs.bound(job_id=str(job_id), attempt=attempt, queue=queue):
            yield clock
    finally:
        clock.seconds = time.perf_counter() - clock.started


def log_attempt(*, job_type: str, queue: str, finish: Finish, state: str, seconds: float) -> None:
    """One line per attempt: job, type, queue, attempt, outcome, the job's state, duration."""
    level = logging.INFO if finish.outcome in ("COMPLETED", "CANCELLED") else logging.WARNING
    logger.log(
        level,
        "attempt %s of %s job %s: %s",
        finish.attempt,
        job_type,
        finish.job_id,
        finish.outcome,
        extra={
            "job_id": str(finish.job_id),
            "type": job_type,
            "queue": queue,
            "attempt": finish.attempt,
            "outcome": finish.outcome,
            "state": state,
            "duration_s": round(seconds, 6),
            # The code only: an error message may quote the payload.
            "error_code": (finish.error or {}).get("code"),
        },
    )


# ---------------------------------------------------------------- OpenTelemetry

_otel_provider: Any = None
_otel_lock = threading.Lock()


def otel_missing(e: ImportError) -> ConfigurationInvalid:
    """The refusal of OTEL_ENABLED=true without the otel extra, naming what is missing."""
    return ConfigurationInvalid(
        f"OTEL_ENABLED=true needs the otel extra ({e.name} is missing): "
        "pip install 'cloudjobs[otel]', or unset OTEL_ENABLED"
    )


def enable_otel(app: Flask, state: AppState, *, exporter: Any = None) -> None:
    """Trace requests and SQL with OpenTelemetry and export the spans to Cloud Trace.

    Imported here, never at import time: the `otel` extra is optional. The exporter's client
    looks up Google credentials, so this runs in create_app, after gunicorn forks. `exporter`
    replaces Cloud Trace's (tests).
    """
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.cloud_trace import CloudTraceSpanExporter
        from opentelemetry.instrumentation.flask import FlaskInstrumentor
        from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as e:
        raise otel_missing(e) from None
    global _otel_provider
    with _otel_lock:
        if _otel_provider is None:
            if exporter is None:
                from google.auth.exceptions import DefaultCredentialsError

                try:
                    exporter = CloudTraceSpanExporter(project_id=state.config.project)
                except DefaultCredentialsError:
                    raise ConfigurationInvalid(
                        "OTEL_ENABLED=true exports to Cloud Trace, which needs Google "
                        "credentials; none were found (set up ADC, or unset OTEL_ENABLED)"
                    ) from None
            # One provider per process: OpenTelemetry refuses to replace the global one.
            provider = TracerProvider(resource=Resource.create({"service.name": "cloudjobs"}))
            provider.add_span_processor(BatchSpanProcessor(exporter))
            trace.set_tracer_provider(provider)
            _otel_provider = provider
    FlaskInstrumentor().instrument_app(app, excluded_urls="healthz")
    # Statements are recorded without their parameters, so no payload reaches a span. The
    # instrumentation checks the SQLAlchemy version itself and, outside its range, logs a
    # warning and records no SQL spans (request spans still work).
    SQLAlchemyInstrumentor().instrument(engine=state.engine)

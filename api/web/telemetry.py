"""The request hooks of observability: log context, one line per request, OpenTelemetry.

What they rest on (trace headers, attempt logs, the OpenTelemetry provider) is in
api/observability/traces.py, which job code and the runner use without Flask.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, g, request

from api.observability import logs, metrics, traces
from api.state import AppState

logger = logging.getLogger("api.observability.traces")  # one logger for requests and attempts

def install(app: Flask, state: AppState) -> None:
    """Log context, one line per request, and (if enabled) OpenTelemetry for the app."""
    project = state.config.project

    @app.before_request
    def _start_request() -> None:
        g.cloudjobs_started = time.perf_counter()
        traces.receive(request.headers)
        queue = request.headers.get("X-CloudTasks-QueueName") or request.headers.get(
            "X-AppEngine-QueueName"
        )
        logs.set_context(
            **traces.trace_fields(project, traces.trace_from_headers(request.headers)),
            job_id=_job_id(request.view_args),
            queue=queue[:100] if queue else None,
        )

    @app.after_request
    def _log_request(response: Response) -> Response:
        started = g.get("cloudjobs_started")
        latency = time.perf_counter() - started if started is not None else 0.0
        log_request(response, latency)
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        metrics.request(route, request.method, response.status_code, latency)
        return response

    @app.teardown_request
    def _end_request(_exc: BaseException | None) -> None:
        logs.clear_context()
        traces.forget()

    if state.config.otel_enabled:
        traces.enable_otel(app, state)
        metrics.enable_otel(state.engine)


def _job_id(view_args: Mapping[str, Any] | None) -> str | None:
    raw = (view_args or {}).get("job_id")
    try:
        return str(uuid.UUID(raw)) if raw else None
    except ValueError:
        return None


def log_request(response: Response, latency_s: float) -> None:
    """One line per request, with Cloud Logging's `httpRequest` object.

    The URL is the path alone: a query string is the client's and may carry anything.
    """
    level = logging.WARNING if response.status_code >= 500 else logging.INFO
    if not logger.isEnabledFor(level):
        return  # LOG_LEVEL above it: nothing to build (the user agent alone is parsed)
    http: dict[str, Any] = {
        "requestMethod": request.method,
        "requestUrl": request.path,
        "status": response.status_code,
        "latency": f"{latency_s:.6f}s",
        "protocol": request.environ.get("SERVER_PROTOCOL"),
    }
    if request.content_length is not None:
        http["requestSize"] = str(request.content_length)
    if response.content_length is not None:
        http["responseSize"] = str(response.content_length)
    if request.user_agent.string:
        http["userAgent"] = request.user_agent.string[:200]
    if request.remote_addr:
        http["remoteIp"] = request.remote_addr
    logger.log(
        level,
        "%s %s %s",
        request.method,
        request.path,
        response.status_code,
        extra={"httpRequest": http},
    )

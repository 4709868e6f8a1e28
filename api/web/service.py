"""The service's own endpoints: health, readiness, the OpenAPI document; security headers."""

from __future__ import annotations

import sqlalchemy as sa
from flask import Blueprint, Response, request

from api.errors import DatabaseUnavailable, Forbidden
from api.observability import metrics
from api.web.http import current_state, json_response
from api.web.openapi import openapi_document

bp = Blueprint("api", __name__)
# Open to anyone: liveness, readiness, and the API's description.
PUBLIC = {"api.openapi", "api.healthz", "api.readyz"}


_SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'"),
    ("Strict-Transport-Security", "max-age=31536000; includeSubDomains"),
    ("Cache-Control", "no-store"),
)


@bp.after_app_request
def _security_headers(resp: Response) -> Response:
    # Each unless the response set its own. One look at the names, not a setdefault each:
    # werkzeug scans the header list per call (49 -> 18 us a response).
    h = resp.headers
    present = {name.lower() for name in h.keys()}  # noqa: SIM118 (iterating Headers gives pairs)
    h.extend([(name, value) for name, value in _SECURITY_HEADERS if name.lower() not in present])
    return resp


@bp.get("/openapi.json")
def openapi() -> Response:
    """The OpenAPI 3.1 document of this API."""
    state = current_state()
    types = tuple(sorted(state.registry.types))
    return json_response(openapi_document(types, tuple(state.queues.specs)))


@bp.get("/healthz")
def healthz() -> Response:
    """Liveness: the process answers."""
    return json_response({"status": "ok"})


@bp.get("/metrics")
def metrics_page() -> Response:
    """Prometheus metrics (docs/operations.md): admins only, like every operator's view."""
    state = current_state()
    caller = state.authenticator.principal(request)
    if not caller.admin:
        raise Forbidden("metrics are for admins: scrape with an admin key")
    return Response(metrics.render(state.engine, list(state.queues.specs)), mimetype=metrics.CONTENT_TYPE)


@bp.get("/readyz")
def readyz() -> Response:
    """Readiness: the database answers and accepts writes (not a standby, not read-only)."""
    state = current_state()
    with state.engine.connect() as conn:
        row = conn.execute(_WRITABLE).one()
    if row.standby or row.read_only == "on":
        raise DatabaseUnavailable(
            "the database accepts no writes (a standby, or read-only); try again",
            headers={"Retry-After": "5"},
        )
    return json_response({"status": "ok", "database": "ok"})


_WRITABLE = sa.text(
    "SELECT pg_is_in_recovery() AS standby, current_setting('transaction_read_only') AS read_only"
)

"""The REST API (/v1): views parse, call, commit, enqueue and serialise."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from flask import Blueprint, Request, Response, g, request
from werkzeug.exceptions import UnsupportedMediaType

from api import jobs as jobs_service
from api import paging, store, waiters
from api.auth import Principal
from api.db import autocommit
from api.errors import InvalidRequest, JobNotFound
from api.models import STATES
from api.openapi import openapi_document
from api.resources import attempt_resource, job_resource
from api.state import current_state

bp = Blueprint("api", __name__)

# Open to anyone: liveness, readiness, and the API's description.
PUBLIC = {"api.openapi", "api.healthz", "api.readyz"}
MAX_FILTER_VALUES = 50
MAX_FILTER_LENGTH = 200


@bp.before_request
def _authenticate() -> None:
    if request.endpoint in PUBLIC:
        return
    g.principal = current_state().authenticator.principal(request)


def principal() -> Principal:
    """The caller of this request."""
    return g.principal  # type: ignore[no-any-return]


# One encoder: json.dumps builds a new JSONEncoder for every call with options (~1 µs).
compact_json = json.JSONEncoder(separators=(",", ":")).encode


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A compact JSON response."""
    resp = Response(compact_json(body), status=status, mimetype="application/json")
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


def json_body(req: Request) -> Any:
    """The request's JSON body: 415 when it is not JSON, 400 when it does not parse."""
    if not req.mimetype or not (req.mimetype == "application/json" or req.mimetype.endswith("+json")):
        raise UnsupportedMediaType("send the body as application/json")
    try:
        return json.loads(req.get_data(cache=False) or b"null")
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidRequest(f"the body is not valid JSON: {e}") from None


def parse_job_id(raw: str) -> uuid.UUID:
    """A job id from the path; anything that is not a UUID is simply not found."""
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise JobNotFound(f"no job {raw!r}") from None


@bp.post("/v1/jobs")
def create_job() -> Response:
    """Create a job: 202 and the job, or 200 and the original for an idempotent replay."""
    state = current_state()
    key = jobs_service.check_idempotency_key(request.headers.get("Idempotency-Key"))
    req = jobs_service.parse_create(state, json_body(request))
    row, created = jobs_service.create_job(state, req, idempotency_key=key, owner=principal().owner)
    return json_response(
        job_resource(row),
        status=202 if created else 200,
        headers={"Location": f"/v1/jobs/{row.id}"},
    )


@bp.post("/v1/jobs:batchCreate")
def batch_create() -> Response:
    """Create up to 500 jobs, all or nothing, in order."""
    state = current_state()
    key = jobs_service.check_idempotency_key(request.headers.get("Idempotency-Key"))
    reqs = jobs_service.parse_batch(state, json_body(request))
    rows, created = jobs_service.create_jobs(state, reqs, idempotency_key=key, owner=principal().owner)
    return json_response({"jobs": [job_resource(r) for r in rows]}, status=202 if created else 200)


@bp.post("/v1/jobs/<job_id>:cancel")
def cancel_job(job_id: str) -> Response:
    """Cancel a job; idempotent; 409 for a job that already COMPLETED or FAILED."""
    state = current_state()
    row = jobs_service.cancel_job(state, parse_job_id(job_id), scope=principal().scope)
    if row is None:
        raise JobNotFound(f"no job {job_id}")
    return json_response(job_resource(row))


@bp.post("/v1/jobs/<job_id>:retry")
def retry_job(job_id: str) -> Response:
    """Run a FAILED or CANCELLED job again; idempotent; 409 for a COMPLETED job."""
    state = current_state()
    row = jobs_service.retry_job(state, parse_job_id(job_id), scope=principal().scope)
    if row is None:
        raise JobNotFound(f"no job {job_id}")
    return json_response(job_resource(row))


@bp.get("/v1/jobs/<job_id>")
def get_job(job_id: str) -> Response:
    """One job."""
    state = current_state()
    jid = parse_job_id(job_id)
    wait_s = waiters.wait_seconds(request.args.get("wait"))
    with autocommit(state.engine) as conn:  # one statement: no BEGIN, no ROLLBACK
        row = store.get_job(conn, jid, owner=principal().scope)
    if row is None:
        raise JobNotFound(f"no job {job_id}")
    if wait_s is not None:  # the re-read below must filter as the read above does
        scope = principal().scope
        row = waiters.wait_until_done(state, row, wait_s, lambda c: store.get_job(c, jid, owner=scope))
        if row is None:
            raise JobNotFound(f"no job {job_id}")
    return json_response(job_resource(row))


@bp.get("/v1/jobs/<job_id>/attempts")
def list_attempts(job_id: str) -> Response:
    """A job's attempts, oldest first."""
    state = current_state()
    jid = parse_job_id(job_id)
    with state.engine.connect() as conn:
        if store.get_job(conn, jid, owner=principal().scope) is None:
            raise JobNotFound(f"no job {job_id}")
        rows = store.list_attempts(conn, jid)
    return json_response({"attempts": [attempt_resource(r) for r in rows]})


@bp.get("/v1/jobs")
def list_jobs() -> Response:
    """Jobs, newest first, filtered and paged by keyset."""
    state = current_state()
    flt = parse_filter(request.args, owner=principal().scope)
    size = paging.page_size(request.args.get("page_size"))
    scope = _scope(flt)
    after = None
    if token := request.args.get("page_token"):
        after = paging.decode(state.config.page_token_key, token, scope)
    with state.engine.connect() as conn:
        rows = store.list_jobs(conn, flt, limit=size + 1, after=after)
    next_token = ""
    if len(rows) > size:
        rows = rows[:size]
        last = rows[-1]
        next_token = paging.encode(state.config.page_token_key, (last.created_time, last.id), scope)
    return json_response({"jobs": [job_resource(r) for r in rows], "next_page_token": next_token})


def parse_filter(args: Any, *, owner: str | None = None) -> store.JobFilter:
    """The filters of GET /v1/jobs; 400 for any that does not parse."""
    states = tuple(_multi(args, "state"))
    bad = [s for s in states if s not in STATES]
    if bad:
        raise InvalidRequest(f"unknown state {bad[0]!r}; use one of {', '.join(STATES)}")
    labels = []
    if len(args.getlist("label")) > MAX_FILTER_VALUES:
        raise InvalidRequest(f"label: at most {MAX_FILTER_VALUES} filters")
    for raw in args.getlist("label"):
        k, sep, v = raw.partition(":")
        if "\x00" in raw or len(raw) > MAX_FILTER_LENGTH:
            raise InvalidRequest("label filters may not hold NUL characters or exceed 200 characters")
        if not sep or not k:
            raise InvalidRequest(f"label filter {raw!r} must be key:value")
        labels.append((k, v))
    return store.JobFilter(
        states=states,
        types=tuple(_multi(args, "type")),
        queues=tuple(_multi(args, "queue")),
        labels=tuple(labels),
        created_after=_time(args, "created_after"),
        created_before=_time(args, "created_before"),
        owner=owner,
    )


def _multi(args: Any, name: str) -> list[str]:
    values = [v for raw in args.getlist(name) for v in raw.split(",") if v]
    if any("\x00" in v for v in values):
        raise InvalidRequest(f"{name} may not hold NUL characters")
    if len(values) > MAX_FILTER_VALUES or any(len(v) > MAX_FILTER_LENGTH for v in values):
        raise InvalidRequest(f"{name}: at most {MAX_FILTER_VALUES} values of {MAX_FILTER_LENGTH} characters")
    return values


def _time(args: Any, name: str) -> datetime | None:
    raw = args.get(name)
    if raw is None:
        return None
    if not raw:
        raise InvalidRequest(f"{name} must be an RFC 3339 time, not empty")
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        value.astimezone()  # out-of-range years fail here rather than in the database
    except (ValueError, OverflowError):
        raise InvalidRequest(f"{name} must be an RFC 3339 time, not {raw!r}") from None
    if value.tzinfo is None:
        raise InvalidRequest(f"{name} needs a time zone (Z or +hh:mm)")
    return value


def _scope(flt: store.JobFilter) -> str:
    raw = repr((flt.states, flt.types, flt.queues, flt.labels, flt.created_after, flt.created_before))
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


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


@bp.get("/readyz")
def readyz() -> Response:
    """Readiness: the database answers."""
    state = current_state()
    with state.engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
    return json_response({"status": "ok", "database": "ok"})

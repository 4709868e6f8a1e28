"""What every view shares: the app's state, JSON in and out, the caller, ids, filters and times.

Views import these; no view imports another view.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Collection
from datetime import datetime
from typing import Any

from flask import Request, Response, current_app, g, request
from werkzeug.exceptions import UnsupportedMediaType

from api.errors import InvalidRequest, JobNotFound
from api.state import AppState
from api.store import jobs as store
from api.store.engine import autocommit
from api.store.tables import STATES
from api.web.auth import Principal

MAX_FILTER_VALUES = 50
MAX_FILTER_LENGTH = 200


def current_state() -> AppState:
    """The AppState of the app handling this request."""
    return current_app.extensions["cloudjobs"]  # type: ignore[no-any-return]


def authenticate(open_endpoints: Collection[str] = ()) -> None:
    """Identify the caller of an API request (a blueprint's before_request)."""
    if request.endpoint in open_endpoints:
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


# What the command line and the dashboard show of an id (8 characters) is enough to name it.
MIN_ID_PREFIX = 8
_ID_PREFIX = re.compile(rf"[0-9a-f]{{{MIN_ID_PREFIX},31}}")


def parse_job_id(raw: str) -> uuid.UUID:
    """A job id from the path: a whole UUID, or the start of one (at least 8 hex digits) that
    names exactly one of the caller's jobs. 404 when nothing matches; 400 listing the matches
    when more than one does."""
    try:
        return uuid.UUID(raw)
    except ValueError:
        pass
    prefix = raw.replace("-", "").lower()
    if not _ID_PREFIX.fullmatch(prefix):
        raise JobNotFound(f"no job {raw!r}")
    with autocommit(current_state().engine) as conn:
        matches = store.job_ids_with_prefix(conn, prefix, owner=principal().scope, limit=5)
    if not matches:
        raise JobNotFound(f"no job {raw!r}")
    if len(matches) > 1:
        raise InvalidRequest(
            f"{raw!r} starts more than one job's id ({', '.join(str(m) for m in matches)}"
            f"{', …' if len(matches) == 5 else ''}); give more of it",
            matches=[str(m) for m in matches],
        )
    return matches[0]


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
        created_after=parse_time(args, "created_after"),
        created_before=parse_time(args, "created_before"),
        owner=owner,
    )


def _multi(args: Any, name: str) -> list[str]:
    values = [v for raw in args.getlist(name) for v in raw.split(",") if v]
    if any("\x00" in v for v in values):
        raise InvalidRequest(f"{name} may not hold NUL characters")
    if len(values) > MAX_FILTER_VALUES or any(len(v) > MAX_FILTER_LENGTH for v in values):
        raise InvalidRequest(f"{name}: at most {MAX_FILTER_VALUES} values of {MAX_FILTER_LENGTH} characters")
    return values


def parse_time(args: Any, name: str) -> datetime | None:
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


def filter_digest(flt: store.JobFilter) -> str:
    raw = repr((flt.states, flt.types, flt.queues, flt.labels, flt.created_after, flt.created_before))
    return hashlib.sha256(raw.encode()).hexdigest()[:16]



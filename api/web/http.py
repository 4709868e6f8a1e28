"""What every view shares: the app's state, JSON in and out, the caller, ids, filters and times.

Views import these; no view imports another view.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import uuid
from collections.abc import Collection, Iterable
from datetime import datetime
from typing import Any, NoReturn

from flask import Request, Response, current_app, g, request
from werkzeug.exceptions import RequestEntityTooLarge, UnsupportedMediaType

from api.errors import InvalidRequest, JobNotFound, ValidationFailed, WorkflowNotFound
from api.state import AppState
from api.store import jobs as store
from api.store.engine import autocommit
from api.store.tables import STATES
from api.times import MAX_YEAR, MIN_YEAR, in_range
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


# How deep a request body may nest (the document itself is level 1): deep enough for any real
# payload, and far below what would exhaust the parser's recursion.
MAX_JSON_DEPTH = 64
_NOT_FINITE = object()  # what NaN, Infinity and numbers beyond a double parse to, to be named


def json_body(req: Request) -> Any:
    """The request's JSON body: 415 when it is not JSON, 413 when it is too large (chunked too),
    400 when it does not parse, 422 naming the field when it nests deeper than 64 levels or
    holds a number that is not finite (NaN, Infinity, 1e400)."""
    if not req.mimetype or not (req.mimetype == "application/json" or req.mimetype.endswith("+json")):
        raise UnsupportedMediaType("send the body as application/json")
    raw = _body_bytes(req) or b"null"
    found: list[str] = []

    def not_finite(text: str) -> object:
        found.append(text)
        return _NOT_FINITE

    def number(text: str) -> object:
        value = float(text)
        return not_finite(text) if math.isinf(value) else value

    try:
        value = json.loads(raw, parse_constant=not_finite, parse_float=number)
    except RecursionError:
        _too_deep(_deep_path(raw))
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidRequest(f"the body is not valid JSON: {e}") from None
    # Nothing can nest deeper than the number of brackets: most bodies skip the walk.
    if found or raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH:
        _check_tree(value)
    return value


def _body_bytes(req: Request) -> bytes:
    """The body; a chunked one (no Content-Length) is read to one byte past the limit, so a
    body over it is a 413 rather than silently cut short."""
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    if req.content_length is None and limit and req.environ.get("wsgi.input_terminated"):
        data = req.environ["wsgi.input"].read(limit + 1)
        if len(data) > limit:
            raise RequestEntityTooLarge(f"the body is larger than {limit} bytes")
        return data  # type: ignore[no-any-return]
    return req.get_data(cache=False)


def _check_tree(value: Any) -> None:
    """Walk the parsed body without recursion: the first value nested too deep, or not finite."""
    stack: list[tuple[Any, str, int]] = [(value, "", 1)]
    while stack:
        node, path, depth = stack.pop()
        if node is _NOT_FINITE:
            raise ValidationFailed(
                "numbers must be finite",
                errors=[{"field": path or "body", "message": "NaN, Infinity and numbers beyond "
                                                             "±1.8e308 cannot be stored; send a finite number"}],
            )
        if isinstance(node, dict | list):
            if depth > MAX_JSON_DEPTH:
                _too_deep(path)
            items = node.items() if isinstance(node, dict) else enumerate(node)
            for k, v in items:
                child = f"{path}[{k}]" if isinstance(node, list) else (f"{path}.{k}" if path else str(k))
                stack.append((v, child, depth + 1))


def _too_deep(path: str) -> NoReturn:
    raise ValidationFailed(
        f"the body nests deeper than {MAX_JSON_DEPTH} levels",
        errors=[{"field": path or "body", "message": f"nested deeper than {MAX_JSON_DEPTH} levels"}],
    )


def _deep_path(raw: bytes) -> str:
    """Where a body too deep for the parser first passes the limit, by a scan of its text
    (only for a body that failed to parse): `payload.a[0].b`."""
    text = raw.decode("utf-8", "replace")
    frames: list[list[Any]] = []  # [kind, key or index, expecting a key]
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == '"':
            end = i + 1
            while end < len(text) and text[end] != '"':
                end += 2 if text[end] == "\\" else 1
            if frames and frames[-1][0] == "{" and frames[-1][2]:
                frames[-1][1], frames[-1][2] = text[i + 1:end], False
            i = end
        elif ch in "{[":
            frames.append([ch, 0 if ch == "[" else None, ch == "{"])
            if len(frames) > MAX_JSON_DEPTH:
                break
        elif ch in "}]" and frames:
            frames.pop()
        elif ch == "," and frames:
            if frames[-1][0] == "[":
                frames[-1][1] += 1
            else:
                frames[-1][2] = True
        i += 1
    parts = [f"[{f[1]}]" if f[0] == "[" else f".{f[1]}" for f in frames[:-1]]
    return "".join(parts).lstrip(".")[:300]


# What the command line and the dashboard show of an id (8 characters) is enough to name it.
MIN_ID_PREFIX = 8
_ID_PREFIX = re.compile(rf"[0-9a-f]{{{MIN_ID_PREFIX},31}}")


def parse_workflow_id(raw: str) -> uuid.UUID:
    """A workflow id from the path; 404 when it is not a UUID (no workflow can have it)."""
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise WorkflowNotFound(f"no workflow {raw}") from None


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


FILTER_PARAMS = frozenset({"state", "type", "queue", "label", "created_after", "created_before", "schedule", "trigger",
                           "error_code", "workflow"})
LIST_PARAMS = FILTER_PARAMS | {"page_size", "page_token"}
REPORT_PARAMS = frozenset({"from", "to", "type", "queue", "group_by", "bucket", "limit"})


def check_params(args: Any, known: Iterable[str]) -> None:
    """A 400 naming the query parameters the endpoint does not take: a mistyped filter
    (`?stat=FAILED`) must not silently widen a list, or later a bulk action."""
    known = set(known)
    unknown = sorted(k for k in args if k not in known)
    if unknown:
        raise InvalidRequest(
            f"unknown query parameter{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"this endpoint takes {', '.join(sorted(known))}"
        )


def parse_label(raw: str) -> tuple[str, str]:
    """`key:value` or `key=value` (keys hold neither character): the one label syntax of the API,
    the dashboard and the command line."""
    cut = min((i for i in (raw.find(":"), raw.find("=")) if i >= 0), default=-1)
    if cut <= 0:
        raise InvalidRequest(f"label filter {raw!r} must be key:value or key=value")
    return raw[:cut], raw[cut + 1:]


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
        if "\x00" in raw or len(raw) > MAX_FILTER_LENGTH:
            raise InvalidRequest("label filters may not hold NUL characters or exceed 200 characters")
        labels.append(parse_label(raw))
    return store.JobFilter(
        states=states,
        types=tuple(_multi(args, "type")),
        queues=tuple(_multi(args, "queue")),
        labels=tuple(labels),
        created_after=parse_time(args, "created_after"),
        created_before=parse_time(args, "created_before"),
        owner=owner,
        schedules=tuple(_multi(args, "schedule")),
        triggers=tuple(_multi(args, "trigger")),
        error_codes=tuple(_multi(args, "error_code")),
        workflows=tuple(_uuid(v, "workflow") for v in _multi(args, "workflow")),
    )


def _uuid(raw: str, name: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be a workflow id (a UUID), not {raw[:40]!r}") from None


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
    except ValueError:
        raise InvalidRequest(f"{name} must be an RFC 3339 time, not {raw!r}") from None
    if value.tzinfo is None:
        raise InvalidRequest(f"{name} needs a time zone (Z or +hh:mm)")
    if not in_range(value):
        raise InvalidRequest(f"{name} must be between the years {MIN_YEAR} and {MAX_YEAR}, not {raw!r}")
    return value


def filter_digest(flt: store.JobFilter) -> str:
    fields: tuple[Any, ...] = (flt.states, flt.types, flt.queues, flt.labels, flt.created_after, flt.created_before)
    if flt.schedules or flt.triggers:  # tokens made before these filters existed stay good
        fields += (flt.schedules, flt.triggers)
    raw = repr(fields)
    return hashlib.sha256(raw.encode()).hexdigest()[:16]



"""Bulk actions as long-running operations: POST /v1/jobs:batchCancel and :batchRetry,
GET /v1/operations/{id} (docs/operations.md; the work is api/orchestration/operations.py)."""

from __future__ import annotations

import uuid
from typing import Any

from flask import Blueprint, Response, request
from werkzeug.datastructures import MultiDict

from api.errors import InvalidRequest, OperationNotFound, ValidationFailed
from api.orchestration import lifecycle
from api.orchestration import operations as ops
from api.store import operations as op_store
from api.store.engine import autocommit
from api.store.jobs import JobFilter
from api.times import rfc3339
from api.web.http import FILTER_PARAMS, authenticate, current_state, json_body, json_response, parse_filter, principal

bp = Blueprint("operations", __name__)
bp.before_request(authenticate)


@bp.post("/v1/jobs:batchCancel")
def batch_cancel() -> Response:
    """Cancel the jobs of a filter (or a list of ids): an operation, processed in chunks."""
    return _bulk("batchCancel")


@bp.post("/v1/jobs:batchRetry")
def batch_retry() -> Response:
    """Run the FAILED and CANCELLED jobs of a filter (or ids) again: an operation. Redrive."""
    return _bulk("batchRetry")


def _bulk(kind: str) -> Response:
    state = current_state()
    key = lifecycle.check_idempotency_key(request.headers.get("Idempotency-Key"))
    body = json_body(request)
    flt, ids, validate_only = parse_bulk(body, scope=principal().scope)
    if validate_only:
        with autocommit(state.engine) as conn:
            n = op_store.count_matching(conn, kind, flt, ids, principal().scope)
        return json_response({"validate_only": True, "matched": n})
    op = ops.start(state, kind, flt=flt, ids=ids, principal=principal().owner, scope=principal().scope,
                   idempotency_key=key, body_hash=ops.request_hash(body), via="api")
    return json_response(operation_resource(op))


def parse_bulk(body: Any, *, scope: str | None) -> tuple[JobFilter | None, list[uuid.UUID] | None, bool]:
    """`{"filter": {...}}` (GET /v1/jobs' filters) or `{"ids": [...]}`, and `validate_only`."""
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object with `filter` or `ids`")
    unknown = sorted(set(body) - {"filter", "ids", "validate_only"})
    if unknown:
        raise ValidationFailed("unknown fields", errors=[{"field": k, "message": "unknown field"} for k in unknown])
    validate_only = body.get("validate_only", False)
    if not isinstance(validate_only, bool):
        raise ValidationFailed("validate_only must be true or false",
                               errors=[{"field": "validate_only", "message": "a boolean"}])
    if ("filter" in body) == ("ids" in body):
        raise ValidationFailed("give either `filter` or `ids`",
                               errors=[{"field": "filter", "message": "either filter or ids, not both nor neither"}])
    if "ids" in body:
        raw = body["ids"]
        if not isinstance(raw, list) or not 1 <= len(raw) <= ops.MAX_IDS:
            raise ValidationFailed(f"ids: 1 to {ops.MAX_IDS} job ids",
                                   errors=[{"field": "ids", "message": f"a list of 1 to {ops.MAX_IDS} job ids"}])
        try:
            return None, sorted({uuid.UUID(str(i)) for i in raw}), validate_only
        except ValueError:
            raise ValidationFailed("ids must be job ids (UUIDs)",
                                   errors=[{"field": "ids", "message": "UUIDs"}]) from None
    raw = body["filter"]
    if not isinstance(raw, dict):
        raise ValidationFailed("filter must be an object", errors=[{"field": "filter", "message": "an object"}])
    unknown = sorted(set(raw) - FILTER_PARAMS)
    if unknown:
        raise ValidationFailed("unknown filter fields", errors=[
            {"field": f"filter.{k}", "message": f"unknown; use {', '.join(sorted(FILTER_PARAMS))}"} for k in unknown])
    args: MultiDict[str, str] = MultiDict()
    for name, value in raw.items():
        for v in value if isinstance(value, list) else [value]:
            if not isinstance(v, str):
                raise ValidationFailed(f"filter.{name} must be text", errors=[{"field": f"filter.{name}",
                                                                              "message": "a string or a list of strings"}])
            args.add(name, v)
    return parse_filter(args, owner=scope), None, validate_only


@bp.get("/v1/operations/<op_id>")
def get_operation(op_id: str) -> Response:
    """An operation: its counts, and done once every chunk is processed."""
    return json_response(operation_resource(find_operation(op_id, scope=principal().scope)))


def find_operation(op_id: str, *, scope: str | None) -> Any:
    """An operation of the caller's by its id; 404 for any other (or not an id)."""
    try:
        oid = uuid.UUID(op_id)
    except ValueError:
        raise OperationNotFound(f"no operation {op_id}") from None
    with autocommit(current_state().engine) as conn:
        op = op_store.get_operation(conn, oid, scope=scope)
    if op is None:
        raise OperationNotFound(f"no operation {op_id}")
    return op


def operation_resource(op: Any) -> dict[str, Any]:
    """An operation as the API shows it (AIP-151: name, done, metadata; response once done)."""
    counts = {"matched": op.matched, "succeeded": op.succeeded, "skipped": op.skipped, "failed": op.failed}
    out: dict[str, Any] = {
        "name": f"operations/{op.id}",
        "done": op.done,
        "metadata": {
            "kind": op.kind, **counts,
            "filter": op.filter, "ids": len(op.ids) if op.ids is not None else None,
            "create_time": rfc3339(op.created_time), "update_time": rfc3339(op.updated_time),
            "end_time": rfc3339(op.done_time),
        },
    }
    if op.done:
        out["response"] = counts
    return out

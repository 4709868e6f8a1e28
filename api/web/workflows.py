"""The workflows API (/v1/workflows): a DAG of jobs in one request, read, listed, cancelled, retried."""

from __future__ import annotations

import time
import uuid
from typing import Any

from flask import Blueprint, Response, request
from sqlalchemy.engine import Row

from api.errors import InvalidRequest, WorkflowNotFound
from api.orchestration import lifecycle
from api.orchestration import workflows as service
from api.store import workflows as store
from api.store.engine import autocommit
from api.store.tables import WORKFLOW_STATES
from api.web import paging
from api.web import waiting as waiters
from api.web.http import (
    authenticate,
    check_params,
    current_state,
    filter_digest,
    json_body,
    json_response,
    parse_filter,
    parse_workflow_id,
    principal,
)
from api.web.resources import workflow_resource

bp = Blueprint("workflows", __name__)
bp.before_request(authenticate)

# A workflow's ?wait= re-reads its row (one indexed read) at this pace; a step's end does not
# notify the workflow's waiters as a job's end does its own.
WAIT_POLL_S = 0.25
LIST_PARAMS = {"state", "label", "created_after", "created_before", "page_size", "page_token"}


def _read(workflow_id: uuid.UUID) -> tuple[Row[Any], list[Row[Any]]]:
    with autocommit(current_state().engine) as conn:
        row = store.get_workflow(conn, workflow_id, owner=principal().scope)
        if row is None:
            raise WorkflowNotFound(f"no workflow {workflow_id}")
        return row, store.steps(conn, workflow_id)


@bp.post("/v1/workflows")
def create_workflow() -> Response:
    """Store a DAG of jobs in one transaction: 202 and the workflow (200 for a replay)."""
    state = current_state()
    key = lifecycle.check_idempotency_key(request.headers.get("Idempotency-Key"))
    req, steps = service.parse(state, json_body(request))
    row, created = service.create(state, req, steps, idempotency_key=key, owner=principal().owner)
    _, step_rows = _read(row.id)
    return json_response(workflow_resource(row, step_rows), status=202 if created else 200,
                         headers={"Location": f"/v1/workflows/{row.id}"})


@bp.get("/v1/workflows/<workflow_id>")
def get_workflow(workflow_id: str) -> Response:
    """One workflow with its steps; `?wait=S` answers as soon as it has ended (or after S)."""
    wid = parse_workflow_id(workflow_id)
    check_params(request.args, {"wait"})
    wait_s = waiters.wait_seconds(request.args.get("wait"))
    row, steps = _read(wid)
    if wait_s is not None:
        deadline = time.monotonic() + wait_s
        while row.state == "RUNNING" and time.monotonic() < deadline:
            time.sleep(min(WAIT_POLL_S, max(deadline - time.monotonic(), 0)))
            row, steps = _read(wid)
    return json_response(workflow_resource(row, steps))


@bp.get("/v1/workflows")
def list_workflows() -> Response:
    """Workflows, newest first, filtered and paged by keyset (without their steps)."""
    state = current_state()
    check_params(request.args, LIST_PARAMS)
    flt = parse_filter(request.args, owner=principal().scope)
    bad = [s for s in flt.states if s not in WORKFLOW_STATES]
    if bad:
        raise InvalidRequest(f"unknown workflow state {bad[0]!r}; use one of {', '.join(WORKFLOW_STATES)}")
    size = paging.page_size(request.args.get("page_size"))
    scope = "workflows:" + filter_digest(flt)
    after = None
    if token := request.args.get("page_token"):
        after = paging.decode(state.config.page_token_key, token, scope)
    with autocommit(state.engine) as conn:
        rows = store.list_workflows(conn, flt, limit=size + 1, after=after)
    next_token = ""
    if len(rows) > size:
        rows = rows[:size]
        next_token = paging.encode(state.config.page_token_key, (rows[-1].created_time, rows[-1].id), scope)
    return json_response({"workflows": [workflow_resource(r, None) for r in rows], "next_page_token": next_token})


@bp.post("/v1/workflows/<workflow_id>:cancel")
def cancel_workflow(workflow_id: str) -> Response:
    """Cancel every step not yet terminal; idempotent; 409 once it COMPLETED or FAILED."""
    row = service.cancel(current_state(), parse_workflow_id(workflow_id), scope=principal().scope)
    if row is None:
        raise WorkflowNotFound(f"no workflow {workflow_id}")
    return json_response(workflow_resource(*_read(row.id)))


@bp.post("/v1/workflows/<workflow_id>:retry")
def retry_workflow(workflow_id: str) -> Response:
    """Run the failed and cancelled steps and what follows them again; 409 once it COMPLETED."""
    row = service.retry(current_state(), parse_workflow_id(workflow_id), scope=principal().scope)
    if row is None:
        raise WorkflowNotFound(f"no workflow {workflow_id}")
    return json_response(workflow_resource(*_read(row.id)))

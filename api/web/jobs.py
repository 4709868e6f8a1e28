"""The REST API (/v1): views parse, call, commit, enqueue and serialise."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

from flask import Blueprint, Response, request
from sqlalchemy.engine import Connection, Row

from api.errors import JobNotFound
from api.orchestration import lifecycle
from api.state import AppState
from api.store import dependencies, steps
from api.store import jobs as store
from api.store import webhooks as webhook_store
from api.store.engine import autocommit
from api.web import paging
from api.web import waiting as waiters
from api.web.http import (
    LIST_PARAMS,
    authenticate,
    check_params,
    current_state,
    filter_digest,
    json_body,
    json_response,
    parse_filter,
    parse_job_id,
    principal,
)
from api.web.resources import attempts_resource, callbacks_resource, job_resource, steps_resource

bp = Blueprint("jobs", __name__)
bp.before_request(authenticate)


@bp.post("/v1/jobs")
def create_job() -> Response:
    """Create a job: 202 and the job, or 200 and the original for an idempotent replay."""
    state = current_state()
    key = lifecycle.check_idempotency_key(request.headers.get("Idempotency-Key"))
    req = lifecycle.parse_create(state, json_body(request))
    row, created = lifecycle.create_job(state, req, idempotency_key=key, owner=principal().owner)
    return json_response(
        jobs_json(state, [row])[0],
        status=202 if created else 200,
        headers={"Location": f"/v1/jobs/{row.id}"},
    )


@bp.post("/v1/jobs:batchCreate")
def batch_create() -> Response:
    """Create up to 500 jobs, all or nothing, in order."""
    state = current_state()
    key = lifecycle.check_idempotency_key(request.headers.get("Idempotency-Key"))
    reqs = lifecycle.parse_batch(state, json_body(request))
    rows, created = lifecycle.create_jobs(state, reqs, idempotency_key=key, owner=principal().owner)
    return json_response({"jobs": jobs_json(state, rows)}, status=202 if created else 200)


@bp.post("/v1/jobs/<job_id>:cancel")
def cancel_job(job_id: str) -> Response:
    """Cancel a job; idempotent; 409 for a job that already COMPLETED or FAILED."""
    return _act_on(job_id, lifecycle.cancel_job)


@bp.post("/v1/jobs/<job_id>:retry")
def retry_job(job_id: str) -> Response:
    """Run a FAILED or CANCELLED job again; idempotent; 409 for a COMPLETED job."""
    return _act_on(job_id, lifecycle.retry_job)


def _act_on(job_id: str, action: Callable[..., Row[Any] | None]) -> Response:
    row = action(current_state(), parse_job_id(job_id), scope=principal().scope)
    if row is None:
        raise JobNotFound(f"no job {job_id}")
    return json_response(jobs_json(current_state(), [row])[0])


def jobs_json(state: AppState, rows: Sequence[Row[Any]]) -> list[dict[str, Any]]:
    """The job resources of rows; one more query, only when some were created with dependencies."""
    waiting = [r.id for r in rows if r.on_dependency_failure is not None]
    parents: dict[uuid.UUID, list[uuid.UUID]] = {}
    if waiting:
        with autocommit(state.engine) as conn:
            parents = dependencies.parent_ids(conn, waiting)
    return [job_resource(r, parents.get(r.id)) for r in rows]


@bp.get("/v1/jobs/<job_id>")
def get_job(job_id: str) -> Response:
    """One job."""
    state = current_state()
    jid = parse_job_id(job_id)
    check_params(request.args, {"wait"})
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
    return json_response(jobs_json(state, [row])[0])


@bp.get("/v1/jobs/<job_id>/attempts")
def list_attempts(job_id: str) -> Response:
    """A job's attempts, oldest first."""
    job, rows = _of_job(job_id, store.list_attempts)
    return json_response({"attempts": attempts_resource(job, rows)})


@bp.get("/v1/jobs/<job_id>/callbacks")
def list_callbacks(job_id: str) -> Response:
    """A job's completion webhooks: an event per terminal transition, each with its deliveries."""
    _, events = _of_job(job_id, webhook_store.events_of_job)
    return json_response({"callbacks": callbacks_resource(events)})


@bp.get("/v1/jobs/<job_id>/steps")
def list_steps(job_id: str) -> Response:
    """A job's durable steps (ctx.step), in the order they finished."""
    _, rows = _of_job(job_id, steps.list_steps)
    return json_response({"steps": steps_resource(rows)})


def _of_job(job_id: str, read: Callable[[Connection, uuid.UUID], Any]) -> tuple[Row[Any], Any]:
    """A job and what `read` reads of it (its attempts, events, steps) in one connection; 404
    unless the caller may see the job."""
    jid = parse_job_id(job_id)
    with current_state().engine.connect() as conn:
        job = store.get_job(conn, jid, owner=principal().scope)
        if job is None:
            raise JobNotFound(f"no job {job_id}")
        return job, read(conn, jid)


@bp.get("/v1/jobs")
def list_jobs() -> Response:
    """Jobs, newest first, filtered and paged by keyset."""
    state = current_state()
    check_params(request.args, LIST_PARAMS)
    flt = parse_filter(request.args, owner=principal().scope)
    size = paging.page_size(request.args.get("page_size"))
    scope = filter_digest(flt)
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
    return json_response({"jobs": jobs_json(state, rows), "next_page_token": next_token})



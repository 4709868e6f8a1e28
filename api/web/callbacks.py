"""/handlers/*: the endpoints Cloud Tasks and Cloud Scheduler call.

Each checks its caller (fail closed, api/web/callers.py), parses the request and answers
the queue. Running jobs is the job authors' side, `handlers.run.run_jobs`, which create_app
hands in; the sweep is api/orchestration/sweep.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from flask import Blueprint, Request, Response, request

from api.errors import Busy, InvalidRequest, LeaseHeld, Problem
from api.orchestration.sweep import sweep
from api.state import AppState
from api.store import jobs as store
from api.web.callers import require_task_caller
from api.web.http import current_state, json_body, json_response

RunJobs = Callable[[AppState, Sequence[uuid.UUID], store.Delivery], Any]


class RetryRequested(Problem):
    """The attempt failed and attempts remain: the queue should deliver the task again."""

    status = 500
    title = "Attempt failed; retry requested"
    slug = "retry-requested"


def delivery_from(req: Request) -> store.Delivery:
    """What Cloud Tasks (or App Engine) says about this delivery in its headers."""
    h = req.headers

    def header(name: str) -> str | None:
        return h.get(f"X-CloudTasks-{name}") or h.get(f"X-AppEngine-{name}")

    def number(name: str) -> int | None:
        raw = header(name)
        return int(raw) if raw and raw.isdigit() else None

    return store.Delivery(
        task_name=header("TaskName"),
        retry_count=number("TaskRetryCount"),
        execution_count=number("TaskExecutionCount"),
        retry_reason=header("TaskRetryReason"),
    )


def job_ids_from(body: Any) -> list[uuid.UUID]:
    """`{"job_id": …}` (or `{"job_ids": […]}`) as UUIDs; 400 otherwise."""
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object with job_id")
    raw = body.get("job_ids", [body["job_id"]] if "job_id" in body else None)
    if not isinstance(raw, list) or not raw:
        raise InvalidRequest("the body must name job_id")
    try:
        return [uuid.UUID(str(r)) for r in raw]
    except ValueError:
        raise InvalidRequest("job_id must be a UUID") from None


def blueprint(*, run_jobs: RunJobs) -> Blueprint:
    """The /handlers blueprint, running the jobs of a task with `run_jobs`."""
    bp = Blueprint("handlers", __name__, url_prefix="/handlers")

    @bp.post("/run")
    def run() -> Response:
        """Run the jobs a task names; 2xx when done for good, non-2xx to have the queue retry."""
        state = current_state()
        require_task_caller(request, state)
        ids = job_ids_from(json_body(request))
        # Refused before the claim, so the job keeps its attempts: the queue backs off on 429
        # and delivers again, and the threads left serve the API and the health checks.
        if not state.run_slots.acquire(blocking=False):
            raise Busy(
                f"this instance is running its limit of {state.config.run_concurrency} job attempts; "
                "deliver again later",
                headers={"Retry-After": "1"},
            )
        try:
            outcome = run_jobs(state, ids, delivery_from(request))
        finally:
            state.run_slots.release()
        if outcome.retry:
            raise RetryRequested(
                "the job asked for another attempt", jobs=[str(i) for i in outcome.retry]
            )
        if outcome.lease_held:
            raise LeaseHeld(
                "another attempt holds the job's lease; deliver again later",
                jobs=[str(i) for i in outcome.lease_held],
            )
        return json_response({"jobs": outcome.states})

    @bp.post("/sweep")
    def sweep_endpoint() -> Response:
        """Run one sweep (for Cloud Scheduler)."""
        state = current_state()
        require_task_caller(request, state)
        return json_response(asdict(sweep(state)))

    return bp

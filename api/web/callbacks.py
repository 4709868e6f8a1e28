"""/handlers/*: the endpoints Cloud Tasks and Cloud Scheduler call.

Each checks its caller (fail closed, api/web/callers.py), parses the request and answers
the queue. Running jobs is the job authors' side, `handlers.run.run_jobs`, which create_app
hands in; the sweep is api/orchestration/sweep.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Request, Response, request

from api.cloud.schedules import schedule_from_job_name
from api.errors import Busy, InvalidRequest, LeaseHeld, Problem, ScheduleNotFound
from api.orchestration import operations, triggers, webhooks
from api.orchestration.sweep import sweep
from api.state import AppState
from api.store import dependencies
from api.store import jobs as store
from api.store import operations as op_store
from api.times import rfc3339
from api.web.callers import require_task_caller
from api.web.http import current_state, json_body, json_response
from api.web.resources import job_resource, snapshot_resource

RunJobs = Callable[[AppState, Sequence[uuid.UUID], store.Delivery], Any]


class RetryRequested(Problem):
    """The attempt failed and attempts remain: the queue should deliver the task again."""

    status = 500
    title = "Attempt failed; retry requested"
    slug = "retry-requested"


class WebhookRetry(Problem):
    """A webhook delivery failed and may be tried again: the queue should deliver the task again."""

    status = 500
    title = "Webhook delivery failed; retry requested"
    slug = "webhook-retry"


def _event_job(state: AppState, event: Any) -> dict[str, Any]:
    """The job resource a webhook event carries: the job as it was when it ended."""
    depends_on = None
    if event.job.get("on_dependency_failure") is not None:
        with state.engine.connect() as conn:
            depends_on = dependencies.parent_ids(conn, [event.job_id]).get(event.job_id)
    return snapshot_resource(event.job, depends_on)


def _exists(state: AppState, op_id: uuid.UUID) -> bool:
    with state.engine.connect() as conn:
        return op_store.get_operation(conn, op_id, scope=None) is not None


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


def fire_from(req: Request, state: AppState) -> tuple[str, datetime]:
    """The schedule and the fire time of a Cloud Scheduler delivery: X-CloudScheduler-JobName
    (our job of that schedule) or the body's `schedule`, and X-CloudScheduler-ScheduleTime
    (this moment, to the second, when a caller sends none)."""
    job_name = req.headers.get("X-CloudScheduler-JobName")
    if job_name:
        name = schedule_from_job_name(state.config, job_name)
        if name is None:
            raise ScheduleNotFound(f"the Cloud Scheduler job {job_name!r} is not one of cloudjobs' schedules")
    else:
        body = json_body(req)
        name = body.get("schedule") if isinstance(body, dict) else None
        if not isinstance(name, str) or not name:
            raise InvalidRequest("name the schedule: X-CloudScheduler-JobName, or {\"schedule\": NAME}",
                                 errors=[{"field": "schedule", "message": "required"}])
    raw = req.headers.get("X-CloudScheduler-ScheduleTime")
    if not raw:
        return name, datetime.now(UTC).replace(microsecond=0)
    try:
        when = datetime.fromisoformat(raw)
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise InvalidRequest("X-CloudScheduler-ScheduleTime must be an RFC 3339 time with an offset",
                             errors=[{"field": "X-CloudScheduler-ScheduleTime", "message": "RFC 3339"}])
    return name, when.astimezone(UTC)


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

    @bp.post("/webhook")
    def webhook() -> Response:
        """Deliver a completion webhook event once (its task: api/orchestration/webhooks.py);
        500 to have the webhooks queue deliver it again."""
        state = current_state()
        require_task_caller(request, state)
        body = json_body(request)
        event_id = body.get("event_id") if isinstance(body, dict) else None
        if not isinstance(event_id, str) or not event_id:
            raise InvalidRequest("the body must name event_id", errors=[{"field": "event_id", "message": "required"}])
        done = webhooks.deliver(state, event_id, retry_count=delivery_from(request).retry_count,
                                render=lambda event: _event_job(state, event))
        if done.outcome == "retry":
            raise WebhookRetry("the receiver did not take the webhook; deliver again", event_id=event_id,
                               status_code=done.status, error=done.error)
        return json_response({"event_id": event_id, "outcome": done.outcome, "status_code": done.status})

    @bp.post("/operation")
    def operation() -> Response:
        """Work on a bulk operation for a while (its task: api/orchestration/operations.py);
        the next task carries on."""
        state = current_state()
        require_task_caller(request, state)
        body = json_body(request)
        try:
            op_id = uuid.UUID(str(body.get("operation_id"))) if isinstance(body, dict) else None
        except ValueError:
            op_id = None
        if op_id is None:
            raise InvalidRequest("the body must name operation_id", errors=[{"field": "operation_id", "message": "a UUID"}])
        op = operations.process(state, op_id, budget_s=operations.TASK_BUDGET_S) if _exists(state, op_id) else None
        return json_response({"operation": str(op_id), "done": op.done if op else None, "matched": op.matched if op else 0})

    @bp.post("/sweep")
    def sweep_endpoint() -> Response:
        """Run one sweep (for Cloud Scheduler)."""
        state = current_state()
        require_task_caller(request, state)
        return json_response(asdict(sweep(state)))

    @bp.post("/schedule")
    def schedule() -> Response:
        """A schedule's fire (Cloud Scheduler): its job, created once per fire time."""
        state = current_state()
        require_task_caller(request, state, identity=state.config.scheduler_identity)
        name, when = fire_from(request, state)
        fire = triggers.fire_schedule(state, name, when)
        return json_response({
            "schedule": name, "scheduled_for": rfc3339(fire.scheduled_for), "outcome": fire.outcome,
            "duplicate": fire.duplicate, "job": job_resource(fire.job) if fire.job is not None else None,
            "previous_job_id": str(fire.previous_job_id) if fire.previous_job_id else None,
        })

    @bp.post("/pubsub")
    def pubsub() -> Response:
        """A Pub/Sub push delivery: its trigger's job, created once per messageId; acknowledged
        (2xx) with the reason when it can create none, so Pub/Sub does not push it again."""
        state = current_state()
        require_task_caller(request, state, identity=state.config.pubsub_identity)
        pushed = triggers.push_message(state, json_body(request))
        if pushed.rejected is not None:
            return json_response({"rejected": pushed.rejected, "errors": pushed.errors})
        assert pushed.job is not None
        return json_response({"job": job_resource(pushed.job), "duplicate": pushed.duplicate})

    return bp

"""POST /handlers/run: claim, run, finish — the callback Cloud Tasks makes for each task."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Blueprint, Request, Response, request
from pydantic import ValidationError
from sqlalchemy.engine import Row

from api import observability, store
from api.db import autocommit
from api.errors import InvalidRequest, LeaseHeld, Problem
from api.routes import json_body, json_response
from api.state import AppState, current_state
from handlers.auth import require_task_caller
from handlers.registry import JobContext, Permanent, Retry, UnknownJobType

logger = logging.getLogger(__name__)

bp = Blueprint("handlers", __name__, url_prefix="/handlers")


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


@bp.post("/run")
def run() -> Response:
    """Run the jobs a task names; 2xx when done for good, non-2xx to have the queue retry."""
    state = current_state()
    require_task_caller(request, state)
    ids = job_ids_from(json_body(request))
    outcome = run_jobs(state, ids, delivery_from(request))
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


class RunOutcome:
    """What happened to each job a delivery named."""

    def __init__(self) -> None:
        self.states: dict[str, str] = {}
        self.retry: list[uuid.UUID] = []
        self.lease_held: list[uuid.UUID] = []


def run_jobs(state: AppState, ids: Sequence[uuid.UUID], delivery: store.Delivery) -> RunOutcome:
    """Claim the jobs, run each claimed one, and finish them all in one statement.

    The claim and the finish each commit on their own, one round trip apiece: the claim's
    lease must be visible while the jobs run, and nothing else need commit with either.
    """
    outcome = RunOutcome()
    with autocommit(state.engine) as conn:
        claimed = store.claim_jobs(conn, ids, lease_margin_s=state.config.lease_margin_s)
        unclaimed = [i for i in ids if i not in {r.id for r in claimed}]
        if unclaimed:
            # Cancelled while queued, or while an attempt that has since died held it.
            store.settle_cancelled(conn, unclaimed)
        current = {i: store.get_job(conn, i) for i in unclaimed}
    for job_id, row in current.items():
        if row is None:
            # Purged or never ours: nothing to run, so the task is done.
            logger.warning("task for an unknown job", extra={"job_id": str(job_id)})
            outcome.states[str(job_id)] = "UNKNOWN"
        elif row.state == "RUNNING":
            outcome.lease_held.append(job_id)
            outcome.states[str(job_id)] = row.state
        else:
            # A duplicate of a finished job, or one cancelled before it ran.
            outcome.states[str(job_id)] = row.state
    finishes: list[store.Finish] = []
    timed: dict[uuid.UUID, tuple[Row[Any], observability.AttemptClock]] = {}
    for row in claimed:
        with observability.attempt(job_id=row.id, attempt=row.attempts, queue=row.queue) as clock:
            finishes.append(execute(state, row, delivery))
        timed[row.id] = (row, clock)
    with autocommit(state.engine) as conn:
        moved = store.finish_jobs(conn, finishes)
    for f in finishes:
        # A finish that moved nothing lost its lease to a later attempt, which now owns it.
        new_state = moved.get(f.job_id, "SUPERSEDED")
        ran, clock = timed[f.job_id]
        observability.log_attempt(
            job_type=ran.type, queue=ran.queue, finish=f, state=new_state, seconds=clock.seconds
        )
        outcome.states[str(f.job_id)] = new_state
        if new_state == "QUEUED":
            outcome.retry.append(f.job_id)
    return outcome


def execute(state: AppState, row: Row[Any], delivery: store.Delivery) -> store.Finish:
    """Run one claimed job's function and decide how its attempt ends."""
    attempt = row.attempts
    spec = state.queues.specs.get(row.queue)

    def finish(job_state: str, outcome: str, **kw: Any) -> store.Finish:
        return store.Finish(row.id, attempt, job_state, outcome, delivery=delivery, **kw)

    def failed(code: str, message: str, *, retryable: bool, outcome: str | None = None) -> store.Finish:
        error = {"code": code, "message": message[:2000]}
        if retryable and not is_last_attempt(row, spec, delivery):
            return finish("QUEUED", outcome or "RETRY", error=error)
        return finish("FAILED", outcome or "FAILED", error=error)

    try:
        jt = state.registry[row.type]
        payload = jt.parse(row.payload)
    except UnknownJobType:
        return failed("UNKNOWN_TYPE", f"no job function for type {row.type!r}", retryable=False)
    except ValidationError as e:
        return failed("INVALID_PAYLOAD", f"the payload no longer fits its schema: {e}", retryable=False)

    ctx = JobContext(
        job_id=row.id,
        attempt=attempt,
        deadline=row.attempt_started_time + timedelta(seconds=row.timeout_s),
        _report=lambda fraction, message: _progress(state, row.id, attempt, fraction, message),
        _check_cancel=lambda: _cancel_requested(state, row.id),
    )
    log = {"job_id": str(row.id), "attempt": attempt, "type": row.type, "queue": row.queue}
    try:
        result = jt.fn(payload, ctx)
    except Permanent as e:
        logger.info("job failed permanently", extra=log)
        return failed(e.code or "PERMANENT", e.message or "the job failed", retryable=False)
    except Retry as e:
        logger.info("job asked for a retry", extra=log)
        return failed(e.code or "RETRY", e.message or "the job asked for a retry", retryable=True)
    except Exception as e:  # a job function's bug is the job's failure, not the handler's
        logger.exception("job raised", extra=log)
        return failed("EXCEPTION", f"{type(e).__name__}: {e}", retryable=True)
    try:
        json.dumps(result)
    except (TypeError, ValueError) as e:
        return failed("RESULT_NOT_JSON", f"the job's result is not JSON: {e}", retryable=False)
    if datetime.now(UTC) > ctx.deadline:
        # Its lease may already be another attempt's: an overrun is a timeout, whatever it returned.
        return failed(
            "TIMED_OUT", f"the attempt ran past its {row.timeout_s}s timeout",
            retryable=True, outcome="TIMED_OUT",
        )
    return finish("COMPLETED", "COMPLETED", result=result)


def is_last_attempt(row: Row[Any], spec: Any, delivery: store.Delivery) -> bool:
    """Whether no attempt follows this one: the job's own limit, or the queue's retry config."""
    if row.attempts - row.attempts_base >= row.max_attempts:
        return True
    if spec is None or delivery.retry_count is None:
        return False
    started = row.started_time
    age = (datetime.now(UTC) - started).total_seconds() if started else None
    return bool(spec.attempts_exhausted(delivery.retry_count, age))


def _progress(state: AppState, job_id: uuid.UUID, attempt: int, fraction: float | None, message: str | None) -> None:
    with state.engine.begin() as conn:
        store.set_progress(conn, job_id, attempt, fraction, message)


def _cancel_requested(state: AppState, job_id: uuid.UUID) -> bool:
    with state.engine.connect() as conn:
        return store.cancel_requested(conn, job_id)

"""Creating jobs: validate against the type and queue, insert, commit, then enqueue."""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from google.api_core import exceptions as gexc
from pydantic import ValidationError
from sqlalchemy.engine import Row

from api import store
from api.errors import IdempotencyKeyReused, InvalidRequest, ValidationFailed
from api.resources import CreateJob
from api.state import AppState
from api.tasks import build_task, task_id_for, task_path
from handlers.registry import UnknownJobType

logger = logging.getLogger(__name__)

MAX_SCHEDULE_AHEAD = timedelta(days=30)
MAX_IDEMPOTENCY_KEY = 255


def field_errors(e: ValidationError, prefix: str = "") -> list[dict[str, str]]:
    """Pydantic's errors as problem+json `errors` entries: a dotted field and a message."""
    out = []
    for err in e.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in err["loc"])
        out.append({"field": f"{prefix}{loc}" if loc else prefix.rstrip("."), "message": err["msg"]})
    return out


def parse_create(state: AppState, body: Any) -> CreateJob:
    """Validate a create request against its model, job type and queue; raise 422 if not."""
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    try:
        req = CreateJob.model_validate(body)
    except ValidationError as e:
        raise ValidationFailed("the job is not valid", errors=field_errors(e)) from None
    errors = check_job(state, req)
    if errors:
        raise ValidationFailed("the job is not valid", errors=errors)
    return req


def check_job(state: AppState, req: CreateJob) -> list[dict[str, str]]:
    """Field errors of a job that its model alone cannot see: type, payload, queue, limits."""
    try:
        jt = state.registry[req.type]
    except UnknownJobType:
        known = ", ".join(sorted(state.registry.types))
        return [{"field": "type", "message": f"unknown job type {req.type!r}; known: {known}"}]
    errors: list[dict[str, str]] = []
    try:
        jt.parse(req.payload)
    except ValidationError as e:
        errors += field_errors(e, "payload.")
    queue = req.queue or jt.queue or state.queues.route(req.type)
    if queue not in state.queues:
        known = ", ".join(state.queues.specs)
        return errors + [{"field": "queue", "message": f"unknown queue {queue!r}; known: {known}"}]
    spec = state.queues[queue]
    if req.max_attempts and spec.retry.max_attempts > 0 and req.max_attempts > spec.retry.max_attempts:
        errors.append({
            "field": "max_attempts",
            "message": f"at most {spec.retry.max_attempts}, the queue's max_attempts",
        })
    if req.timeout_s and req.timeout_s > spec.dispatch_deadline:
        errors.append({
            "field": "timeout_s",
            "message": f"at most {spec.dispatch_deadline:g}, the queue's dispatch deadline",
        })
    if req.run_at and req.run_at - datetime.now(UTC) > MAX_SCHEDULE_AHEAD:
        errors.append({"field": "run_at", "message": "at most 30 days ahead"})
    return errors


def new_job(state: AppState, req: CreateJob, *, idempotency_key: str | None = None) -> store.NewJob:
    """The row for a validated request, with its defaults resolved."""
    jt = state.registry[req.type]
    queue = req.queue or jt.queue or state.queues.route(req.type)
    spec = state.queues[queue]
    queue_max = spec.retry.max_attempts if spec.retry.max_attempts > 0 else 1000
    max_attempts = min(req.max_attempts or jt.max_attempts or queue_max, queue_max)
    timeout_s = min(req.timeout_s or jt.timeout_s, int(spec.dispatch_deadline))
    job_id = uuid.uuid4()
    return store.NewJob(
        id=job_id,
        type=req.type,
        queue=queue,
        payload=req.payload,
        max_attempts=max_attempts,
        timeout_s=timeout_s,
        labels=req.labels,
        task_name=task_path(state.config, queue, task_id_for(job_id)),
        scheduled_time=req.run_at,
        idempotency_key=idempotency_key,
        request_hash=request_hash(req) if idempotency_key else None,
    )


def request_hash(req: CreateJob) -> str:
    """A digest of the request, to tell a replay from another request under the same key."""
    canonical = json.dumps(req.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_idempotency_key(key: str | None) -> str | None:
    """The Idempotency-Key header, if any, within its limits."""
    if key is None:
        return None
    if not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY or not key.isprintable():
        raise InvalidRequest(f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable characters")
    return key


def create_job(state: AppState, req: CreateJob, *, idempotency_key: str | None) -> tuple[Row[Any], bool]:
    """Insert and commit the job, then enqueue it; returns the job and whether it is new.

    Commit first, then enqueue: a task must never reach the handler before its row exists.
    If the enqueue fails the job stays CREATED, durable, and the sweeper enqueues it later.
    """
    new = new_job(state, req, idempotency_key=idempotency_key)
    with state.engine.begin() as conn:
        row = store.insert_job(conn, new)
        if row is None:
            existing = store.job_by_idempotency_key(conn, idempotency_key or "")
            if existing is None:  # deleted between the two statements; treat as a conflict
                raise IdempotencyKeyReused("the Idempotency-Key is in use; try again")
            if existing.request_hash != new.request_hash:
                raise IdempotencyKeyReused(
                    "this Idempotency-Key was used with a different request", job_id=str(existing.id)
                )
            return existing, False
    return enqueue(state, [row])[0], True


def enqueue(state: AppState, rows: list[Row[Any]]) -> list[Row[Any]]:
    """Create each job's task, then mark the enqueued ones QUEUED; returns the rows as they are."""
    enqueued = []
    for row in rows:
        task = build_task(
            job_id=row.id,
            task_name=row.task_name,
            config=state.config,
            spec=state.queues[row.queue],
            timeout_s=row.timeout_s,
            schedule_time=row.scheduled_time if row.scheduled_time > datetime.now(UTC) else None,
        )
        try:
            state.tasks.create_task(task, queue=row.queue)  # ALREADY_EXISTS counts as enqueued
        except gexc.GoogleAPIError as e:
            # Not lost: the row is committed as CREATED and the sweeper enqueues it later.
            logger.warning(
                "enqueue failed, job stays CREATED for the sweeper",
                extra={"job_id": str(row.id), "error": type(e).__name__},
            )
            continue
        enqueued.append(row.id)
    if not enqueued:
        return rows
    with state.engine.begin() as conn:
        moved = {r.id: r for r in store.mark_queued(conn, enqueued)}
        missing = [r.id for r in rows if r.id in enqueued and r.id not in moved]
        # A job the handler already claimed moved on from CREATED; read it as it is now.
        for job_id in missing:
            current = store.get_job(conn, job_id)
            if current is not None:
                moved[job_id] = current
    return [moved.get(r.id, r) for r in rows]

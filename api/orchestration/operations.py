"""Bulk cancel and retry as long-running operations (AIP-151): `POST /v1/jobs:batchCancel`,
`:batchRetry`, `GET /v1/operations/{id}` (docs/operations.md).

An operation acts on a filter of GET /v1/jobs (or a list of ids), scoped to its caller, over
the jobs created up to when it started. It is processed in chunks of 500, each one
transaction with the operation's advance (api/store/operations.py): the request that starts
it works for up to a second, then a Cloud Task (`/handlers/operation`) carries on for up to 20
seconds a delivery and hands on to the next; the sweeper resumes one whose processor died. So
a million jobs neither time out a request nor hold long locks, and a rerun changes nothing (a
retried job is no longer FAILED; a cancelled one is already CANCELLED).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from typing import Any

from google.api_core import exceptions as gexc
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import DBAPIError, IntegrityError

from api.cloud.tasks import build_task, task_path
from api.errors import IdempotencyKeyReused
from api.orchestration import lifecycle
from api.state import AppState
from api.store import dependencies
from api.store import jobs as store
from api.store import operations as op_store
from api.store.jobs import JobFilter

logger = logging.getLogger(__name__)

CHUNK = 500
INLINE_S = 1.0  # the starting request works this long, then hands on to Cloud Tasks
TASK_BUDGET_S = 20.0  # one delivery of /handlers/operation works this long
MAX_IDS = 1000


def request_hash(body: dict[str, Any]) -> str:
    """A digest of the starting request, to tell a replay from another under one key."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def start(state: AppState, kind: str, *, flt: JobFilter | None, ids: list[uuid.UUID] | None, principal: str | None,
          scope: str | None, idempotency_key: str | None, body_hash: str, via: str) -> Row[Any]:
    """Record the operation (and its audit entry), then work on it for up to INLINE_S."""
    with state.engine.begin() as conn:
        op = op_store.insert_operation(conn, kind=kind, owner=principal, scope=scope, flt=flt, ids=ids,
                                       idempotency_key=idempotency_key, request_hash=body_hash)
        if op is None:
            existing = op_store.operation_by_key(conn, idempotency_key or "", owner=principal)
            if existing is None or existing.request_hash != body_hash:
                raise IdempotencyKeyReused("this Idempotency-Key was used with a different request")
            return existing
        details = {"filter": flt.to_json()} if flt is not None else {"ids": len(ids or [])}
        op_store.audit(conn, principal=principal, action=f"jobs.{kind}", target=f"operations/{op.id}",
                       jobs_touched=None, via=via, details=details)
    return process(state, op.id, budget_s=INLINE_S)


def process(state: AppState, op_id: uuid.UUID, *, budget_s: float) -> Row[Any]:
    """Work on an operation chunk by chunk for up to `budget_s`; hand the rest to a Cloud Task."""
    deadline = time.monotonic() + budget_s
    while True:
        op, follow_up = _chunk(state, op_id)
        follow_up()
        if op.done or time.monotonic() >= deadline:
            break
    if not op.done:
        continue_later(state, op)
    return op


def _chunk(state: AppState, op_id: uuid.UUID) -> tuple[Row[Any], Any]:
    """One chunk in one transaction: its jobs acted on, the operation advanced; and what to do
    after the commit (enqueue the retried, release and notify for the cancelled)."""
    with state.engine.begin() as conn:
        op = op_store.get_operation(conn, op_id, scope=None, lock=True)
        assert op is not None
        if op.done:
            return op, lambda: None
        chunk = op_store.next_chunk(conn, op, CHUNK)
        ids = [r.id for r in chunk]
        if op.kind == "batchRetry":
            acted, failed = _retry(conn, ids, op.scope)
            released: list[Any] = []
        else:
            acted, failed = store.request_cancels(conn, ids, owner=op.scope), 0
            ended = [r.id for r in acted if r.state == "CANCELLED" and r.has_dependents]
            released = dependencies.release(conn, ended) if ended else []
        op = op_store.advance(conn, op.id, last=chunk[-1] if chunk else None, read=len(chunk),
                              succeeded=len(acted), failed=failed)
        if op.done:
            op_store.audit_done(conn, op)

    def follow_up() -> None:
        if op.kind == "batchRetry":
            created = [r for r in acted if r.state == "CREATED"]
            if created:
                lifecycle.enqueue(state, created)
            lifecycle.enqueue_ready(state, [r for r in acted if r.state == "WAITING"])
        else:
            if released:
                lifecycle.continue_released(state, released)
            # Their tasks are left to be answered as duplicates when they come: deleting them
            # one by one would cost a call per job. Slots free and webhooks go as for a cancel.
            lifecycle.after_ended(state, [r for r in acted if r.state == "CANCELLED"])

    return op, follow_up


def _retry(conn: Connection, ids: list[uuid.UUID], scope: str | None) -> tuple[list[Any], int]:
    """Retry a chunk in one statement; where a unique key another job holds fails it, one by
    one, counting those as failed."""
    if not ids:
        return [], 0
    try:
        with conn.begin_nested():
            return store.retry_jobs(conn, ids, owner=scope), 0
    except IntegrityError:
        pass
    acted, failed = [], 0
    for job_id in ids:
        try:
            with conn.begin_nested():
                acted += store.retry_jobs(conn, [job_id], owner=scope)
        except IntegrityError:
            failed += 1
    return acted, failed


def continue_later(state: AppState, op: Row[Any]) -> None:
    """The next delivery of /handlers/operation for an unfinished operation (named after how far
    it got, so a delivery retried after handing on does not hand on twice). If it cannot be
    created, the sweeper resumes the operation."""
    queue = state.config.operations_queue if state.config.operations_queue in state.queues else next(iter(state.queues.specs))
    spec = state.queues[queue]
    task = build_task(job_id=str(op.id), task_name=task_path(state.config, queue, f"operation-{op.id.hex}-{op.matched}"),
                      config=state.config, spec=spec, timeout_s=int(TASK_BUDGET_S) + 30, path="/handlers/operation",
                      body=json.dumps({"operation_id": str(op.id)}).encode())
    try:
        state.tasks.create_task(task, queue=queue)
    except gexc.GoogleAPIError as e:
        logger.warning("could not hand an operation on; the sweeper will", extra={"operation": str(op.id),
                                                                                  "error": type(e).__name__})


def resume_stalled(state: AppState, *, older_than_s: float, limit: int = 10) -> int:
    """The sweeper's net: work on operations that stopped advancing (their processor died)."""
    with state.engine.connect() as conn:
        stalled = op_store.unfinished(conn, older_than_s=older_than_s, limit=limit)
    for op_id in stalled:
        try:
            process(state, op_id, budget_s=INLINE_S)
        except DBAPIError as e:
            logger.warning("could not resume an operation", extra={"operation": str(op_id), "error": type(e).__name__})
    return len(stalled)

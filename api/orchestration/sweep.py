"""The sweeper: enqueue jobs whose enqueue was lost, settle jobs whose task is gone, admit
keyed jobs left waiting with their key free, send webhook events whose task was never
created, bring the reporting rollups up to date (api/rollups.py), and remove `?wait=`
registrations left by processes that died (api/waiters.py).

Cloud Scheduler calls POST /handlers/sweep (authenticated like /handlers/run) every minute or
so; `cloudjobs sweep` does the same from a shell. Its cost follows the number of live jobs,
not the history: every query runs on the partial index over non-terminal states.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from google.api_core import exceptions as gexc
from sqlalchemy.engine import Row

from api.observability import metrics
from api.orchestration import lifecycle as jobs_service
from api.orchestration import operations, webhooks
from api.reporting import rollups
from api.state import AppState
from api.store import dependencies, flow
from api.store import jobs as store

logger = logging.getLogger(__name__)

@dataclass
class SweepReport:
    """What one sweep did."""

    enqueued: int = 0  # CREATED jobs whose task now exists
    requeued: int = 0  # jobs whose task was gone, sent again as a new run
    failed: int = 0  # jobs whose task was gone with no attempts left
    cancelled: int = 0  # cancel-requested jobs nobody holds any more
    still_owned: int = 0  # checked, and Cloud Tasks still has their task
    rollup_hours: int = 0  # hours of history rolled up (new or changed) for reports
    stale_waiters: int = 0  # ?wait= registrations left by processes that died while waiting
    released: int = 0  # dependents moved on by the sweep (parents it ended, or releases that were missed)
    admitted: int = 0  # keyed jobs admitted that waited with their key free (an admission was missed)
    webhooks_sent: int = 0  # webhook events whose delivery task was never created
    operations_resumed: int = 0  # bulk operations that had stopped advancing (their processor died)


# A wake-up normally follows its commit within milliseconds: a keyed job or an event this old
# was missed (its process died in between).
MISSED_AFTER_S = 10
# A bulk operation's delivery works 20 s at most: one this still is stalled.
OPERATION_STALLED_S = 60


def sweep(state: AppState) -> SweepReport:
    """One pass over the live jobs that need help."""
    cfg = state.config
    report = SweepReport()
    with state.engine.begin() as conn:
        created = store.unshare(conn, store.stale_created(conn, older_than_s=cfg.sweep_created_after_s,
                                                          limit=cfg.sweep_batch))
    if created:
        after = jobs_service.enqueue(state, created)
        report.enqueued = sum(1 for r in after if r.state != "CREATED")

    with state.engine.connect() as conn:
        expired = store.expired_leases(conn, limit=cfg.sweep_batch)
        queued = store.stale_queued(conn, older_than_s=cfg.sweep_queued_after_s, limit=cfg.sweep_batch)
    released = []
    with state.engine.begin() as conn:
        settled = store.settle_cancelled(conn, [r.id for r in expired + queued])
        report.cancelled = len(settled)
        if settled:
            released += dependencies.release(conn, settled)
    requeue: list[Row[Any]] = []
    ended: list[Row[Any]] = []
    for row in expired + queued:
        if row.cancel_requested or _task_exists(state, row.task_name):
            report.still_owned += 0 if row.cancel_requested else 1
            continue
        # Cloud Tasks has no task for it: it gave up (retries exhausted) or lost it.
        left = row.attempts - row.attempts_base < row.max_attempts
        spec = state.queues.specs.get(row.queue)
        if row.state == "QUEUED" and row.attempts > row.attempts_base and spec is not None:
            age = (datetime.now(UTC) - row.started_time).total_seconds() if row.started_time else None
            left = left and not spec.attempts_exhausted(row.attempts - row.attempts_base - 1, age)
        error = (
            {"code": "LEASE_EXPIRED", "message": "the attempt died and Cloud Tasks no longer has the task"}
            if row.state == "RUNNING"
            else {"code": "TASK_LOST", "message": "Cloud Tasks no longer has the job's task"}
        )
        if not left:
            error = {"code": "RETRIES_EXHAUSTED", "message": error["message"] + "; no attempts left"}
        with state.engine.begin() as conn:
            moved = store.abandon_job(conn, row, requeue=left, error=error)
        if moved is None:
            continue  # a delivery got there first
        if moved.has_dependents and moved.state == "FAILED":
            with state.engine.begin() as conn:
                released += dependencies.release(conn, [moved.id])
        if left:
            requeue.append(moved)
            report.requeued += 1
        else:
            ended.append(moved)
            report.failed += 1
    if ended:  # their keys' slots free, their webhooks go
        jobs_service.after_ended(state, ended)
    if requeue:
        jobs_service.enqueue(state, requeue)
    # The net under every path to a terminal state: a dependent still WAITING for a parent
    # that ended without releasing it (its process died in between).
    with state.engine.begin() as conn:
        released += dependencies.release_missed(conn, older_than_s=cfg.sweep_created_after_s, limit=cfg.sweep_batch)
    report.released = len(released)
    if released:
        jobs_service.continue_released(state, released)
    # The net under admissions: a keyed job WAITING while its key has room (a process died
    # between freeing a slot and admitting the next job), and webhook events never sent.
    with state.engine.connect() as conn:
        waiting = flow.waiting_keys(conn, older_than_s=MISSED_AFTER_S, limit=cfg.sweep_batch)
    if waiting:
        report.admitted = len(jobs_service.admit_and_enqueue(state, waiting))
    report.webhooks_sent = webhooks.send(state, older_than_s=MISSED_AFTER_S)
    report.operations_resumed = operations.resume_stalled(state, older_than_s=OPERATION_STALLED_S)
    report.rollup_hours = rollups.refresh(state.engine).hours
    report.stale_waiters = store.purge_stale_waiters(state.engine)
    metrics.swept(asdict(report))
    if any(asdict(report).values()):
        logger.info("sweep", extra=asdict(report))
    return report


def _task_exists(state: AppState, task_name: str) -> bool:
    try:
        state.tasks.client.get_task(name=task_name, timeout=10)
    except gexc.NotFound:
        return False
    except gexc.InvalidArgument:
        # A name Cloud Tasks cannot hold, so not one cloudjobs made (`cloudjobs seed-history`
        # names its live-looking jobs' task 'seed'): left as it is, and the sweep goes on.
        logger.warning("a live job with a task name Cloud Tasks refuses is left alone",
                       extra={"task_name": task_name[:200]})
        return True
    return True

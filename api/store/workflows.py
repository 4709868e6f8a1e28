"""Workflows: the row of each DAG, its steps (jobs with its workflow_id), cancel and retry.

The workflow's `state`, `active`, `failed` and `cancelled` are kept by a trigger on its steps'
state changes (migration 0011), so nothing here writes them after the insert.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection, Row

from api.store.jobs import CANCEL_SET, JobFilter, keyset_page, own_task_name
from api.store.tables import jobs, workflows

_OWNER_KEY = sa.func.coalesce(workflows.c.owner, sa.literal_column("''"))


def insert_workflow(
    conn: Connection, *, workflow_id: uuid.UUID, name: str, labels: dict[str, str], steps: int,
    owner: str | None, idempotency_key: str | None, request_hash: str | None,
) -> Row[Any] | None:
    """The workflow's row (RUNNING, every step active); None when its idempotency key is taken."""
    stmt = (
        pg_insert(workflows)
        .values(id=workflow_id, name=name, labels=labels, steps=steps, active=steps, owner=owner,
                idempotency_key=idempotency_key, request_hash=request_hash)
        .on_conflict_do_nothing(index_elements=[_OWNER_KEY, workflows.c.idempotency_key],
                                index_where=workflows.c.idempotency_key.isnot(None))
        .returning(*workflows.c)
    )
    return conn.execute(stmt).first()


def workflow_by_idempotency_key(conn: Connection, key: str, *, owner: str | None) -> Row[Any] | None:
    """The workflow a caller created under an idempotency key."""
    return conn.execute(
        sa.select(workflows).where(_OWNER_KEY == (owner or ""), workflows.c.idempotency_key == key)  # noqa: SIM300
    ).first()


def get_workflow(conn: Connection, workflow_id: uuid.UUID, *, owner: str | None = None) -> Row[Any] | None:
    """One workflow; with `owner`, only if that principal owns it."""
    stmt = sa.select(workflows).where(workflows.c.id == workflow_id)
    if owner is not None:
        stmt = stmt.where(workflows.c.owner == owner)
    return conn.execute(stmt).first()


_STEPS = sa.text(
    """
    SELECT j.id, j.step, j.state, j.type, j.attempts, j.started_time, j.done_time, j.error,
           coalesce(array_agg(p.step ORDER BY p.step) FILTER (WHERE p.step IS NOT NULL), '{}') AS needs
    FROM jobs j
    LEFT JOIN job_dependencies e ON e.job_id = j.id
    LEFT JOIN jobs p ON p.id = e.parent_id AND p.workflow_id = j.workflow_id
    WHERE j.workflow_id = :id
    GROUP BY j.id
    ORDER BY j.created_time, j.step
    """
)


def steps(conn: Connection, workflow_id: uuid.UUID) -> list[Row[Any]]:
    """A workflow's steps: name, job id, state, and the names of the steps each needs."""
    return list(conn.execute(_STEPS, {"id": workflow_id}))


def list_workflows(
    conn: Connection, flt: JobFilter, *, limit: int, after: tuple[datetime, uuid.UUID] | None = None
) -> list[Row[Any]]:
    """Workflows newest first, `limit` of them after the keyset position `after`."""
    return list(conn.execute(keyset_page(workflows, flt, limit=limit, after=after)))


_CANCEL = sa.text(
    f"""
    UPDATE jobs SET {CANCEL_SET}
    WHERE workflow_id = :id AND state IN ('WAITING', 'CREATED', 'QUEUED', 'RUNNING') AND NOT cancel_requested
    RETURNING id, state, task_name, waiting_on, has_dependents
    """
)


def cancel_steps(conn: Connection, workflow_id: uuid.UUID) -> list[Row[Any]]:
    """Every step not yet terminal: CANCELLED at once, or flagged if it runs (it ends CANCELLED)."""
    return list(conn.execute(_CANCEL, {"id": workflow_id}))


# The failed and cancelled steps and everything downstream of them (within the workflow) start a
# new run: their edges from steps that run again are undone, so each waits for them again;
# the others (no step to wait for) are CREATED and enqueued by the caller.
_RETRY = sa.text(
    f"""
    WITH RECURSIVE redo AS (
        SELECT id FROM jobs WHERE workflow_id = :id AND state IN ('FAILED', 'CANCELLED')
        UNION
        SELECT e.job_id FROM job_dependencies e
        JOIN redo r ON e.parent_id = r.id
        JOIN jobs d ON d.id = e.job_id AND d.workflow_id = :id
    ), undone AS (
        UPDATE job_dependencies e SET done = false
        FROM redo r WHERE e.parent_id = r.id
          AND e.job_id IN (SELECT id FROM redo)
        RETURNING e.job_id
    ), waits AS (
        SELECT job_id, count(*)::int AS n FROM undone GROUP BY job_id
    )
    UPDATE jobs j SET
        state = CASE WHEN coalesce(w.n, 0) > 0 THEN 'WAITING' ELSE 'CREATED' END,
        waiting_on = coalesce(w.n, 0),
        run = j.run + 1,
        attempts_base = j.attempts,
        task_name = {own_task_name('j.run + 1', 'j.')},
        result = NULL, error = NULL, done_time = NULL, progress = NULL,
        cancel_requested = false, lease_expires_time = NULL, next_attempt_time = NULL,
        started_time = NULL, scheduled_time = now(), updated_time = now()
    FROM redo r LEFT JOIN waits w ON w.job_id = r.id
    WHERE j.id = r.id AND j.state IN ('COMPLETED', 'FAILED', 'CANCELLED')
    RETURNING j.*
    """
)


def retry_steps(conn: Connection, workflow_id: uuid.UUID) -> list[Row[Any]]:
    """Start the failed and cancelled steps, and what depends on them, again; the steps moved."""
    return list(conn.execute(_RETRY, {"id": workflow_id}))


def step_counts(conn: Connection, workflow_id: uuid.UUID) -> dict[str, int]:
    """How many of its steps are in each state."""
    rows = conn.execute(
        sa.select(jobs.c.state, sa.func.count()).where(jobs.c.workflow_id == workflow_id).group_by(jobs.c.state)
    )
    return {state: n for state, n in rows}


"""Jobs that wait for jobs: the edges, and the release of dependents when a parent ends.

A dependent is WAITING with `waiting_on` = its edges not yet done. When a parent becomes
terminal, one statement flips its edges to done (each edge once: the flag makes a second
release of the same parent a no-op), counts them per dependent, and moves each dependent on:

- a dependency that did not complete, under `on_dependency_failure` `fail` or `cancel`:
  FAILED or CANCELLED at once, with error DEPENDENCY_FAILED (waiting for its other
  dependencies would change nothing);
- its last edge done: QUEUED, its task created by the caller after the commit (the sweeper
  sends a QUEUED job without a task, as for creates);
- otherwise it keeps WAITING, with fewer edges to go.

The finish of a job carries the release inside its own statement (jobs.py `_FINISH`), so the
last parent's finish and the release of its dependents commit together. Every other path to
a terminal state (cancel, the sweeper, a dependent failed by its policy, which has dependents
of its own) calls `release` with the ids that ended.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from api.errors import ValidationFailed

MAX_DEPENDENCIES = 1000

# `{src}` names a relation of parents with (id, state, has_dependents): the finish's `done`,
# or the jobs named by `release`. Parents that are not terminal (a finish that is a retry)
# release nothing.
RELEASE_CTES = """
    edges AS (
        UPDATE job_dependencies e SET done = true
        FROM {src} p
        WHERE e.parent_id = p.id AND p.has_dependents AND NOT e.done
          AND p.state IN ('COMPLETED', 'FAILED', 'CANCELLED')
        RETURNING e.job_id, e.parent_id, p.state AS parent_state
    ), freed AS (
        SELECT job_id, count(*)::int AS n,
               min(parent_id::text || ' ended ' || parent_state)
                   FILTER (WHERE parent_state <> 'COMPLETED') AS failed_dependency
        FROM edges GROUP BY job_id
    ), released AS (
        UPDATE jobs w SET
            waiting_on = w.waiting_on - f.n,
            state = CASE WHEN f.failed_dependency IS NOT NULL AND w.on_dependency_failure = 'fail' THEN 'FAILED'
                         WHEN f.failed_dependency IS NOT NULL AND w.on_dependency_failure = 'cancel' THEN 'CANCELLED'
                         -- a keyed job goes on waiting, for its key's admission (api/store/flow.py)
                         WHEN w.waiting_on - f.n <= 0 AND w.concurrency_limit IS NULL AND w.throttle_key IS NULL
                         THEN 'QUEUED'
                         ELSE 'WAITING' END,
            ready_time = CASE WHEN w.waiting_on - f.n <= 0 THEN now() ELSE w.ready_time END,
            error = CASE WHEN f.failed_dependency IS NOT NULL AND w.on_dependency_failure <> 'run'
                         THEN jsonb_build_object('code', 'DEPENDENCY_FAILED',
                                                 'message', 'dependency ' || f.failed_dependency)
                         ELSE w.error END,
            done_time = CASE WHEN f.failed_dependency IS NOT NULL AND w.on_dependency_failure <> 'run'
                             THEN now() END,
            -- due now at the earliest: the time it waited is not time spent in the queue
            scheduled_time = CASE WHEN w.waiting_on - f.n <= 0 THEN greatest(w.scheduled_time, now())
                                  ELSE w.scheduled_time END,
            updated_time = now()
        FROM freed f
        WHERE w.id = f.job_id AND (w.state = 'WAITING') IS TRUE  -- a filter, never an index (api.store.jobs)
        RETURNING w.*
    )
"""

# What a statement that releases answers of each job it moved (the finish answers its own
# jobs the same way, with released = false), enough to enqueue the QUEUED ones.
MOVED_COLUMNS = ("id, state, has_dependents, queue, task_name, timeout_s, scheduled_time, workflow_id, "
                 "waiting_on, concurrency_key, concurrency_limit, throttle_key, priority, created_time, callback_url")

_RELEASE = sa.text(
    f"""
    WITH src AS (
        SELECT id, state, has_dependents FROM jobs WHERE id = ANY(CAST(:ids AS uuid[]))
    ), {RELEASE_CTES.format(src="src")}
    SELECT {MOVED_COLUMNS}, true AS released FROM released
    """
)


def release(conn: Connection, parent_ids: Iterable[uuid.UUID]) -> list[Row[Any]]:
    """Release the dependents of jobs that became terminal; the jobs it moved, cascades included.

    A dependent that its policy failed or cancelled may have dependents too: they are
    released in turn (one statement per level, never one per job).
    """
    moved: list[Row[Any]] = []
    ids = [str(i) for i in parent_ids]
    while ids:
        rows = list(conn.execute(_RELEASE, {"ids": ids}))
        moved += rows
        ids = [str(r.id) for r in rows if r.has_dependents and r.state in ("FAILED", "CANCELLED")]
    return moved


def cascade(conn: Connection, moved: Sequence[Row[Any]]) -> list[Row[Any]]:
    """After a statement that released dependents: release theirs, if policy ended them."""
    ended = [r.id for r in moved
             if getattr(r, "released", False) and r.has_dependents and r.state in ("FAILED", "CANCELLED")]
    return release(conn, ended) if ended else []


_LOCK_PARENTS = sa.text(
    """
    UPDATE jobs SET has_dependents = true
    WHERE id = ANY(CAST(:ids AS uuid[])) AND (CAST(:owner AS text) IS NULL OR owner = :owner)
    RETURNING id, state
    """
)


def lock_parents(
    conn: Connection, wanted: Sequence[Sequence[uuid.UUID]], *, owner: str | None, field: str
) -> dict[uuid.UUID, str]:
    """Mark and lock every named parent; their states. A parent that is not there (or not the
    caller's) is a 422 naming it (`depends_on[i]`, or `jobs[k].depends_on[i]` in a batch).

    The row lock orders this with a parent's finish: either the finish sees has_dependents
    and releases the new edges, or this sees the parent terminal and counts it done.
    """
    ids = sorted({i for group in wanted for i in group})
    if not ids:
        return {}
    found = {r.id: r.state for r in conn.execute(_LOCK_PARENTS, {"ids": [str(i) for i in ids], "owner": owner})}
    errors = [
        {"field": field.format(k=k) + f"[{i}]", "message": f"no job {parent} (of yours)"}
        for k, group in enumerate(wanted)
        for i, parent in enumerate(group)
        if parent not in found
    ]
    if errors:
        raise ValidationFailed("a dependency names no job of yours", errors=errors)
    return found


def existing(conn: Connection, ids: Sequence[uuid.UUID], *, owner: str | None) -> set[uuid.UUID]:
    """Which of these jobs exist (and, with `owner`, are that principal's)."""
    stmt = sa.text("SELECT id FROM jobs WHERE id = ANY(CAST(:ids AS uuid[])) "
                   "AND (CAST(:owner AS text) IS NULL OR owner = :owner)")
    return {r.id for r in conn.execute(stmt, {"ids": [str(i) for i in ids], "owner": owner})}


_INSERT_EDGES = sa.text(
    """
    INSERT INTO job_dependencies (job_id, parent_id, done)
    SELECT * FROM unnest(CAST(:jobs AS uuid[]), CAST(:parents AS uuid[]), CAST(:done AS boolean[]))
    """
)


def insert_edges(conn: Connection, edges: Sequence[tuple[uuid.UUID, uuid.UUID, bool]]) -> None:
    """Record (dependent, parent, done) edges in one statement."""
    if edges:
        conn.execute(_INSERT_EDGES, {
            "jobs": [str(j) for j, _, _ in edges],
            "parents": [str(p) for _, p, _ in edges],
            "done": [d for _, _, d in edges],
        })


_PARENTS = sa.text(
    """
    SELECT j.id, j.step, j.state, j.result, j.error
    FROM job_dependencies e JOIN jobs j ON j.id = e.parent_id
    WHERE e.job_id = :id
    ORDER BY j.created_time, j.id
    """
)


def parents(conn: Connection, job_id: uuid.UUID) -> list[Row[Any]]:
    """The jobs a job depends on, with their states and results (what `ctx.parents` shows)."""
    return list(conn.execute(_PARENTS, {"id": job_id}))


def parent_ids(conn: Connection, job_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[uuid.UUID]]:
    """Each job's dependencies, for the job resource."""
    out: dict[uuid.UUID, list[uuid.UUID]] = {}
    if not job_ids:
        return out
    rows = conn.execute(
        sa.text("SELECT job_id, parent_id FROM job_dependencies WHERE job_id = ANY(CAST(:ids AS uuid[])) "
                "ORDER BY job_id, parent_id"),
        {"ids": [str(i) for i in job_ids]},
    )
    for r in rows:
        out.setdefault(r.job_id, []).append(r.parent_id)
    return out


_MISSED = sa.text(
    """
    SELECT DISTINCT e.parent_id
    FROM jobs w
    JOIN job_dependencies e ON e.job_id = w.id AND NOT e.done
    JOIN jobs p ON p.id = e.parent_id AND p.state IN ('COMPLETED', 'FAILED', 'CANCELLED')
    WHERE w.state = 'WAITING' AND w.updated_time < now() - make_interval(secs => :older_than_s)
    LIMIT :limit
    """
)


def release_missed(conn: Connection, *, older_than_s: float, limit: int) -> list[Row[Any]]:
    """The sweeper's net: parents that ended without releasing a waiting dependent (a process
    that died between a terminal transition and its release, on a path outside the finish)."""
    missed = [r.parent_id for r in conn.execute(_MISSED, {"older_than_s": older_than_s, "limit": limit})]
    return release(conn, missed) if missed else []

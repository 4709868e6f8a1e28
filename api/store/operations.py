"""Bulk operations, the audit log, and the queues' live figures in PostgreSQL (migration 0017).

An operation reads its jobs in chunks by a keyset over (created_time, id), oldest first, up to
the time it was started (`cutoff`): jobs created after it are not its business, so it ends.
A chunk's changes and the operation's advance (cursor and counts) commit in one transaction,
under the operation's row lock: two processors of one operation take turns, a process that
dies mid-chunk rolls the whole chunk back, and no job is counted twice.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection, Row

from api.store.jobs import JobFilter, job_conditions
from api.store.tables import audit_log, jobs, operations

# The states each kind acts on: a job in another state is skipped, not failed.
ACTS_ON = {"batchCancel": ("WAITING", "CREATED", "QUEUED", "RUNNING"), "batchRetry": ("FAILED", "CANCELLED")}

_OWNER_KEY = sa.func.coalesce(operations.c.owner, sa.literal_column("''"))


def insert_operation(conn: Connection, *, kind: str, owner: str | None, scope: str | None,
                     flt: JobFilter | None, ids: list[uuid.UUID] | None, idempotency_key: str | None,
                     request_hash: str | None) -> Row[Any] | None:
    """A new operation, started now; None when its Idempotency-Key is taken (read it by key)."""
    stmt = pg_insert(operations).values(
        id=uuid.uuid4(), kind=kind, owner=owner, scope=scope, filter=flt.to_json() if flt is not None else sa.null(),
        ids=ids, cutoff=sa.func.now(), idempotency_key=idempotency_key, request_hash=request_hash,
    ).on_conflict_do_nothing(index_elements=[_OWNER_KEY, operations.c.idempotency_key],
                             index_where=operations.c.idempotency_key.isnot(None)).returning(*operations.c)
    return conn.execute(stmt).first()


def operation_by_key(conn: Connection, key: str, *, owner: str | None) -> Row[Any] | None:
    """The operation a caller started under an Idempotency-Key."""
    return conn.execute(sa.select(operations).where(
        _OWNER_KEY == (owner or ""), operations.c.idempotency_key == key)).first()  # noqa: SIM300


def get_operation(conn: Connection, op_id: uuid.UUID, *, scope: str | None, lock: bool = False) -> Row[Any] | None:
    """One operation (with `scope`, only one of that principal's); with `lock`, row-locked."""
    stmt = sa.select(operations).where(operations.c.id == op_id)
    if scope is not None:
        stmt = stmt.where(operations.c.owner == scope)
    return conn.execute(stmt.with_for_update() if lock else stmt).first()


def _filter_of(op: Row[Any]) -> JobFilter:
    return JobFilter.from_json(op.filter, owner=op.scope)


def next_chunk(conn: Connection, op: Row[Any], limit: int) -> list[Row[Any]]:
    """The next jobs the operation reads (id, created_time), oldest first, after its cursor."""
    c = jobs.c
    stmt = sa.select(c.id, c.created_time).where(c.created_time <= op.cutoff)
    if op.ids is not None:
        stmt = stmt.where(c.id.in_(list(op.ids)))
        if op.scope is not None:
            stmt = stmt.where(c.owner == op.scope)
    else:
        stmt = stmt.where(*job_conditions(_filter_of(op)))
    if op.cursor_time is not None:
        stmt = stmt.where(sa.tuple_(c.created_time, c.id) > sa.tuple_(op.cursor_time, op.cursor_id))
    return list(conn.execute(stmt.order_by(c.created_time, c.id).limit(limit)))


def count_matching(conn: Connection, kind: str, flt: JobFilter | None, ids: list[uuid.UUID] | None,
                   scope: str | None) -> int:
    """How many jobs an operation would act on now (validate_only)."""
    c = jobs.c
    stmt = sa.select(sa.func.count()).select_from(jobs).where(c.state.in_(ACTS_ON[kind]))
    if ids is not None:
        stmt = stmt.where(c.id.in_(ids))
        if scope is not None:
            stmt = stmt.where(c.owner == scope)
    elif flt is not None:
        stmt = stmt.where(*job_conditions(flt))
    return int(conn.execute(stmt).scalar_one())


def advance(conn: Connection, op_id: uuid.UUID, *, last: Row[Any] | None, read: int, succeeded: int,
            failed: int) -> Row[Any]:
    """Record a chunk: the cursor past its last job and its counts; done when it read nothing."""
    done = last is None
    stmt = (
        sa.update(operations).where(operations.c.id == op_id)
        .values(
            cursor_time=last.created_time if last is not None else operations.c.cursor_time,
            cursor_id=last.id if last is not None else operations.c.cursor_id,
            matched=operations.c.matched + read,
            succeeded=operations.c.succeeded + succeeded,
            failed=operations.c.failed + failed,
            skipped=operations.c.skipped + (read - succeeded - failed),
            done=done,
            done_time=sa.func.now() if done else None,
            updated_time=sa.func.now(),
        )
        .returning(*operations.c)
    )
    return conn.execute(stmt).one()


def audit_done(conn: Connection, op: Row[Any]) -> None:
    """An operation that ended: its audit entry gets the number of jobs it touched."""
    conn.execute(sa.update(audit_log).where(audit_log.c.target == f"operations/{op.id}")
                 .values(jobs=op.succeeded, details=audit_log.c.details.op("||")(
                     sa.cast({"matched": op.matched, "skipped": op.skipped, "failed": op.failed}, JSONB))))


def unfinished(conn: Connection, *, older_than_s: float, limit: int) -> list[uuid.UUID]:
    """Operations that have not advanced for a while (their processor died): the sweeper's."""
    stmt = sa.select(operations.c.id).where(
        ~operations.c.done,
        operations.c.updated_time < sa.func.now() - sa.func.make_interval(0, 0, 0, 0, 0, 0, older_than_s),
    ).order_by(operations.c.updated_time).limit(limit)
    return list(conn.execute(stmt).scalars())


# Live jobs by queue and state (the partial index over active jobs), and the oldest job due
# and not yet running.
_LIVE = sa.text(
    """
    SELECT queue, state, count(*) AS n,
           extract(epoch FROM now() - min(scheduled_time) FILTER (
               WHERE state IN ('CREATED', 'QUEUED') AND scheduled_time <= now()))::float8 AS oldest_s
    FROM jobs
    WHERE state IN ('WAITING', 'CREATED', 'QUEUED', 'RUNNING') AND (CAST(:scope AS text) IS NULL OR owner = :scope)
    GROUP BY queue, state
    """
)

# Finished attempts of the last hour by queue (the attempts' covering index, by finish time).
_RECENT = sa.text(
    """
    SELECT queue,
           count(*) FILTER (WHERE outcome = 'COMPLETED' AND finished_time > now() - interval '5 minutes') AS ok_5m,
           count(*) FILTER (WHERE outcome <> 'COMPLETED' AND finished_time > now() - interval '5 minutes') AS bad_5m,
           count(*) FILTER (WHERE outcome = 'COMPLETED') AS ok_1h,
           count(*) FILTER (WHERE outcome <> 'COMPLETED') AS bad_1h
    FROM job_attempts
    WHERE finished_time > now() - interval '1 hour' AND (CAST(:scope AS text) IS NULL OR owner = :scope)
    GROUP BY queue
    """
)




def live_jobs(conn: Connection, *, scope: str | None) -> list[Row[Any]]:
    """Jobs not yet terminal by queue and state (queue, state, n, oldest_s: the oldest due and
    not running); with `scope`, that principal's only (the queues page, the metrics)."""
    return list(conn.execute(_LIVE, {"scope": scope}))


def recent_attempts(conn: Connection, *, scope: str | None) -> dict[str, Row[Any]]:
    """Attempts finished in the last 5 minutes and hour by queue: ok_5m, bad_5m, ok_1h, bad_1h."""
    return {r.queue: r for r in conn.execute(_RECENT, {"scope": scope})}


def audit(conn: Connection, *, principal: str | None, action: str, target: str, jobs_touched: int | None,
          via: str, details: dict[str, Any] | None = None) -> None:
    """Record an operator's action."""
    conn.execute(sa.insert(audit_log).values(principal=principal, action=action, target=target, jobs=jobs_touched,
                                             via=via, details=details))


def audit_entries(conn: Connection, *, limit: int, before: int | None = None,
                  since: datetime | None = None) -> list[Row[Any]]:
    """The audit log, newest first."""
    stmt = sa.select(audit_log)
    if before is not None:
        stmt = stmt.where(audit_log.c.id < before)
    if since is not None:
        stmt = stmt.where(audit_log.c.time >= since)
    return list(conn.execute(stmt.order_by(audit_log.c.id.desc()).limit(limit)))

"""Flow control in PostgreSQL: unique keys, the admission of keyed jobs, throttles.

**Unique keys.** A job created with a `unique_key` holds it (`unique_held`) while it is not
terminal, or with `unique_for_s` until that long after it started. The partial unique index
`jobs_unique_key_idx` on (owner, unique_key) WHERE unique_held is the constraint: of
concurrent creates of one key, one inserts and the others find it (ON CONFLICT DO NOTHING
waits for the inserter's commit). The trigger `jobs_unique_hold` (migration 0016) lets a key
go when its job ends and takes it again on a retry; a window that ran out is let go here, by
the next create of the key.

**Admission.** A keyed job (a concurrency limit, or a throttle) is inserted WAITING with
`waiting_on = 0` and is admitted — QUEUED, its task created after the commit — when its
(queue, concurrency_key) has fewer than its limit of jobs CREATED, QUEUED or RUNNING, best
priority first, then oldest. The count is read from the jobs themselves (no counter that a
crash could leave wrong), under a transaction-scoped advisory lock per key taken before
anything else: each admission sees every admission and every finish committed before it.
Whatever frees a slot (a finish, a cancel, the sweeper) commits first and admits after, in a
transaction of its own, so no wake-up is lost: either the admission of a new job sees the
slot free, or the admission after the finish sees the new job. A process that dies between
the two leaves a job WAITING with its key free; the sweeper's `admit_missed` admits it.

**Throttles.** An admitted job with a `throttle_key` is given the key's next free dispatch
time (`key_throttles.next_time`, then advanced by the key's interval): Cloud Tasks delivers
it then. The row lock on the key's row orders concurrent admissions.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from api.store.tables import jobs

# The states that hold a key's slot: handed to Cloud Tasks, or about to be.
ADMITTED = ("CREATED", "QUEUED", "RUNNING")


def lock_keys(conn: Connection, keys: Sequence[tuple[str, str]]) -> None:
    """Hold the admission lock of each (queue, key) until the transaction ends, in one order."""
    if keys:
        ordered = sorted(set(keys))
        conn.execute(
            sa.text("SELECT pg_advisory_xact_lock(hashtext('cloudjobs.key'), hashtext(q || '/' || k)) "
                    "FROM unnest(CAST(:queues AS text[]), CAST(:keys AS text[])) AS t(q, k)"),
            {"queues": [q for q, _ in ordered], "keys": [k for _, k in ordered]},
        )


_RELEASE_EXPIRED = sa.text(
    """
    UPDATE jobs SET unique_held = false
    WHERE coalesce(owner, '') = :owner AND unique_key = :key AND unique_held
      AND state IN ('COMPLETED', 'FAILED', 'CANCELLED')
      AND coalesce(started_time, created_time) + make_interval(secs => unique_for_s) <= now()
    """
)


def release_expired_keys(conn: Connection, keys: Sequence[str], *, owner: str | None) -> None:
    """Let go of these unique keys where they are held by a job that ended and whose window ran out."""
    for key in dict.fromkeys(keys):
        conn.execute(_RELEASE_EXPIRED, {"owner": owner or "", "key": key})


_HOLDERS = sa.select(jobs).where(
    sa.func.coalesce(jobs.c.owner, sa.literal_column("''")) == sa.bindparam("owner"),
    jobs.c.unique_key == sa.func.any(sa.bindparam("keys", type_=sa.ARRAY(sa.Text))),
    jobs.c.unique_held,
)


def key_holders(conn: Connection, keys: Sequence[str], *, owner: str | None, lock: bool = False) -> dict[str, Row[Any]]:
    """The job holding each of these unique keys (of this owner), by key; with `lock`, row-locked."""
    stmt = _HOLDERS.with_for_update() if lock else _HOLDERS
    return {r.unique_key: r for r in conn.execute(stmt, {"owner": owner or "", "keys": list(dict.fromkeys(keys))})}


_REPLACE = sa.text(
    """
    UPDATE jobs SET state = 'CANCELLED', unique_held = false, cancel_requested = true, done_time = now(),
                    error = jsonb_build_object('code', 'REPLACED', 'message', 'replaced by job ' || :by),
                    updated_time = now()
    WHERE id = :id AND state IN ('WAITING', 'CREATED', 'QUEUED') AND started_time IS NULL
    RETURNING *
    """
)


def replace_holder(conn: Connection, holder: Row[Any], by: uuid.UUID) -> Row[Any] | None:
    """Cancel a key's holder that has not started, for the job `by` that replaces it (REPLACED);
    None if it started meanwhile (it stays the holder)."""
    return conn.execute(_REPLACE, {"id": holder.id, "by": str(by)}).first()


_ADMIT = sa.text(
    """
    WITH k AS (
        SELECT DISTINCT q, k FROM unnest(CAST(:queues AS text[]), CAST(:keys AS text[])) AS t(q, k)
    ), held AS (
        SELECT k.q, k.k,
               (SELECT count(*) FROM jobs a
                WHERE a.queue = k.q AND a.concurrency_key = k.k AND a.concurrency_limit IS NOT NULL
                  AND a.state IN ('CREATED', 'QUEUED', 'RUNNING'))::int AS n,
               -- the key's limit is its first waiting job's (they agree unless a type sets its own)
               (SELECT w.concurrency_limit FROM jobs w
                WHERE w.queue = k.q AND w.concurrency_key = k.k AND w.state = 'WAITING' AND w.waiting_on = 0
                  AND w.concurrency_limit IS NOT NULL
                ORDER BY w.priority DESC, w.created_time, w.ready_time, w.id LIMIT 1) AS lim
        FROM k
    ), chosen AS (
        SELECT c.id FROM held h CROSS JOIN LATERAL (
            SELECT w.id FROM jobs w
            WHERE w.queue = h.q AND w.concurrency_key = h.k AND w.state = 'WAITING' AND w.waiting_on = 0
              AND w.concurrency_limit IS NOT NULL
            ORDER BY w.priority DESC, w.created_time, w.ready_time, w.id
            LIMIT greatest(coalesce(h.lim, 0) - h.n, 0)
        ) c
    )
    UPDATE jobs SET state = 'QUEUED', scheduled_time = greatest(scheduled_time, now()),
                    slot_wait_s = extract(epoch FROM now() - coalesce(ready_time, created_time)),
                    updated_time = now()
    WHERE id IN (SELECT id FROM chosen) AND (state = 'WAITING') IS TRUE
    RETURNING *
    """
)

# Keyed jobs without a concurrency limit (a throttle alone) wait for nothing but their pace.
_ADMIT_UNLIMITED = sa.text(
    """
    UPDATE jobs SET state = 'QUEUED', scheduled_time = greatest(scheduled_time, now()),
                    slot_wait_s = extract(epoch FROM now() - coalesce(ready_time, created_time)),
                    updated_time = now()
    WHERE id = ANY(CAST(:ids AS uuid[])) AND (state = 'WAITING' AND waiting_on = 0
          AND concurrency_limit IS NULL AND throttle_key IS NOT NULL) IS TRUE
    RETURNING *
    """
)


def is_keyed(row: Any) -> bool:
    """Whether a job waits for admission (a concurrency limit or a throttle)."""
    return getattr(row, "concurrency_limit", None) is not None or getattr(row, "throttle_key", None) is not None


def slot_keys(rows: Sequence[Any]) -> list[tuple[str, str]]:
    """The (queue, concurrency_key) of the rows that take a slot."""
    return sorted({(r.queue, r.concurrency_key) for r in rows
                   if r.concurrency_key is not None and r.concurrency_limit is not None})


def admit(conn: Connection, rows: Sequence[Any], *, interval: Callable[[str, str], float | None],
          locked: bool = False) -> list[Row[Any]]:
    """Admit what the keys of these rows have room for: the jobs moved to QUEUED, paced.

    `rows` are jobs that entered a key's line or left a slot; `interval(queue, key)` is a
    throttle key's interval in seconds. Takes the keys' locks first unless `locked`."""
    keys = slot_keys(rows)
    if not locked:
        lock_keys(conn, keys)
    admitted: list[Row[Any]] = []
    if keys:
        admitted += conn.execute(_ADMIT, {"queues": [q for q, _ in keys], "keys": [k for _, k in keys]})
    alone = [str(r.id) for r in rows if r.concurrency_limit is None and r.throttle_key is not None]
    if alone:
        admitted += conn.execute(_ADMIT_UNLIMITED, {"ids": alone})
    return pace(conn, admitted, interval=interval)


_WAITED_FOR = sa.text(
    """
    SELECT DISTINCT k.q, k.k FROM unnest(CAST(:queues AS text[]), CAST(:keys AS text[])) AS k(q, k)
    WHERE EXISTS (SELECT 1 FROM jobs w WHERE w.queue = k.q AND w.concurrency_key = k.k AND w.state = 'WAITING'
                  AND w.waiting_on = 0 AND w.concurrency_limit IS NOT NULL)
    """
)


def waited_for(conn: Connection, rows: Sequence[Any]) -> list[Any]:
    """Of the rows that left a slot, those whose key has a job waiting: the only ones a freed
    slot can admit for. Read without a lock, after the commit that freed the slots: a job that
    began to wait before that commit is seen here, and one that began after it finds the slot
    free in its own admission (the module's docstring)."""
    keys = slot_keys(rows)
    if not keys:
        return []
    found = {(r.q, r.k) for r in conn.execute(_WAITED_FOR, {"queues": [q for q, _ in keys], "keys": [k for _, k in keys]})}
    return [r for r in rows if (r.queue, r.concurrency_key) in found]


_ADVANCE = sa.text(
    """
    INSERT INTO key_throttles AS t (queue, key, next_time)
    VALUES (:queue, :key, now() + make_interval(secs => CAST(:n AS int) * CAST(:interval AS float8)))
    ON CONFLICT (queue, key) DO UPDATE
        SET next_time = greatest(t.next_time, now()) + make_interval(secs => CAST(:n AS int) * CAST(:interval AS float8))
    RETURNING next_time - make_interval(secs => CAST(:n AS int) * CAST(:interval AS float8)) AS first
    """
)

_SCHEDULE = sa.text(
    """
    UPDATE jobs j SET scheduled_time = greatest(j.scheduled_time, s.at),
                      slot_wait_s = extract(epoch FROM greatest(j.scheduled_time, s.at)
                                                       - coalesce(j.ready_time, j.created_time))
    FROM unnest(CAST(:ids AS uuid[]), CAST(:ats AS timestamptz[])) AS s(id, at)
    WHERE j.id = s.id
    RETURNING j.*
    """
)


def pace(conn: Connection, rows: Sequence[Row[Any]], *, interval: Callable[[str, str], float | None]) -> list[Row[Any]]:
    """Give each throttled job of `rows` its key's next free dispatch times, in priority order;
    the rows as they are now."""
    lines: dict[tuple[str, str], list[Row[Any]]] = {}
    for r in rows:
        if r.throttle_key is not None and interval(r.queue, r.throttle_key):
            lines.setdefault((r.queue, r.throttle_key), []).append(r)
    if not lines:
        return list(rows)
    ids, ats = [], []
    for (queue, key), line in sorted(lines.items()):
        step = interval(queue, key) or 0.0
        line.sort(key=lambda r: (-r.priority, r.created_time, r.ready_time or r.created_time, r.id))
        first = conn.execute(_ADVANCE, {"queue": queue, "key": key, "n": len(line), "interval": step}).scalar_one()
        for i, r in enumerate(line):
            ids.append(str(r.id))
            ats.append(first + timedelta(seconds=i * step))
    paced = {r.id: r for r in conn.execute(_SCHEDULE, {"ids": ids, "ats": ats})}
    return [paced.get(r.id, r) for r in rows]


_MISSED = sa.text(
    """
    SELECT queue, concurrency_key, concurrency_limit, throttle_key, id
    FROM jobs
    WHERE state = 'WAITING' AND waiting_on = 0
      AND (concurrency_limit IS NOT NULL OR throttle_key IS NOT NULL)
      AND updated_time < now() - make_interval(secs => :older_than_s)
    LIMIT :limit
    """
)


def waiting_keys(conn: Connection, *, older_than_s: float, limit: int) -> list[Row[Any]]:
    """Keyed jobs that have waited a while: the sweeper admits for their keys, in case a
    process died between freeing a slot and admitting the next job."""
    return list(conn.execute(_MISSED, {"older_than_s": older_than_s, "limit": limit}))

"""Job history at scale: a generator of realistic history, and retention (purge)."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from api.store import driver

# Generated in SQL (INSERT … SELECT generate_series): a driver's executemany may be one round
# trip per row. Creation times are spread evenly over the window; types, queues, outcomes and
# error codes are drawn with fixed weights (90% completed, 6% failed after 3 attempts, 4%
# cancelled, ~12% retried); queue waits and run times are exponential, run times by type.
_SEED_JOBS = sa.text(
    """
    INSERT INTO jobs (id, type, queue, state, payload, result, error, attempts, max_attempts,
                      timeout_s, labels, task_name, owner, created_time, scheduled_time,
                      started_time, attempt_started_time, done_time, updated_time)
    SELECT id, type, queue, state, '{}'::jsonb,
           CASE WHEN state = 'COMPLETED' THEN '{"ok": true}'::jsonb END,
           CASE WHEN state = 'FAILED' THEN jsonb_build_object('code', code, 'message', code || ' on attempt ' || attempts) END,
           attempts, 3, 300, jsonb_build_object('team', team), 'seed', NULL,
           created, created, started, started, done, coalesce(done, started, created)
    FROM (
        SELECT g.id, g.created, g.type, g.queue, g.team, g.code, g.state, g.attempts,
               CASE WHEN g.attempts > 0 THEN g.created + g.wait END AS started,
               CASE WHEN g.state IN ('COMPLETED', 'FAILED', 'CANCELLED')
                    THEN g.created + g.wait + g.run * greatest(g.attempts, 1) END AS done
        FROM (
            SELECT gen_random_uuid() AS id,
                   CAST(:end AS timestamptz) - make_interval(secs => (CAST(:span_s AS float8) * r.t)) AS created,
                   (ARRAY['echo','resize','email','report','sync'])[1 + floor(r.k * 5)::int] AS type,
                   (ARRAY['default','default','default','bulk','urgent'])[1 + floor(r.q * 5)::int] AS queue,
                   (ARRAY['a','b','c'])[1 + floor(r.q * 3)::int] AS team,
                   (ARRAY['UPSTREAM_503','TIMED_OUT','FLAKY','EXCEPTION','INVALID_INPUT'])[1 + floor(power(r.e, 2) * 5)::int] AS code,
                   CASE WHEN r.t * CAST(:span_s AS float8) < 120 AND r.s < 0.5 THEN (ARRAY['QUEUED','RUNNING'])[1 + floor(r.s * 4)::int]
                        WHEN r.s < 0.90 THEN 'COMPLETED' WHEN r.s < 0.96 THEN 'FAILED' ELSE 'CANCELLED' END AS state,
                   CASE WHEN r.t * CAST(:span_s AS float8) < 120 AND r.s < 0.5 THEN floor(r.s * 4)::int
                        WHEN r.s < 0.90 THEN 1 + (r.a < 0.12)::int + (r.a < 0.03)::int
                        WHEN r.s < 0.96 THEN 3
                        ELSE (r.a < 0.5)::int END AS attempts,
                   make_interval(secs => -ln(1 - r.w) * 0.4) AS wait,
                   make_interval(secs => -ln(1 - r.x) * (0.05 + 2 * r.k)) AS run
            FROM generate_series(1, CAST(:n AS int)) AS i,
                 LATERAL (SELECT random() AS t, random() AS k, random() AS q, random() AS s,
                                 random() AS a, random() AS e, random() AS w, random() AS x
                          WHERE i > 0) AS r
        ) AS g
    ) AS j
    """
)

_MARK_HOURS = sa.text(
    """
    INSERT INTO job_rollup_dirty (hour)
    SELECT generate_series(date_trunc('hour', CAST(:start AS timestamptz), 'UTC'), CAST(:end AS timestamptz),
                           interval '1 hour')
    """
)

_SEED_ATTEMPTS = sa.text(
    """
    INSERT INTO job_attempts (job_id, number, outcome, error, started_time, finished_time,
                              task_name, retry_count, execution_count, type, queue, owner)
    SELECT j.id, n,
           CASE WHEN n < j.attempts THEN 'RETRY'
                WHEN j.state IN ('QUEUED', 'RUNNING') THEN 'RETRY'
                WHEN j.state = 'COMPLETED' THEN 'COMPLETED'
                WHEN j.state = 'FAILED' THEN 'FAILED' ELSE 'CANCELLED' END,
           CASE WHEN n < j.attempts OR j.state <> 'COMPLETED'
                THEN coalesce(j.error, jsonb_build_object('code', 'UPSTREAM_503', 'message', 'upstream said 503'))
           END,
           j.started_time + (j.done_time - j.started_time) * (n - 1) / j.attempts,
           j.started_time + (j.done_time - j.started_time) * n / j.attempts,
           'seed', n - 1, n - 1, j.type, j.queue, j.owner
    FROM jobs j, generate_series(1, j.attempts) AS n
    WHERE j.task_name = 'seed' AND j.attempts > 0 AND j.done_time IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM job_attempts a WHERE a.job_id = j.id)
    """
)


def seed_history(engine: Engine, *, jobs: int, days: float, end: datetime | None = None,
                 chunk: int = 250_000) -> float:
    """Insert `jobs` jobs of realistic history over the last `days` (with their attempts).

    Returns the seconds it took. Runs in chunks, each its own transaction.
    """
    started = time.monotonic()
    remaining = jobs
    with engine.connect() as conn:
        until = end or conn.execute(sa.text("SELECT now()")).scalar_one()
    span_s = days * 86400.0
    while remaining > 0:
        n = min(chunk, remaining)
        with engine.begin() as conn:
            # The rollups' dirty-hour trigger would mark every seeded job (all are old): one
            # mark per hour of the window instead, in this same transaction (the DDL is
            # transactional; it holds jobs' lock until the chunk commits).
            conn.exec_driver_sql("ALTER TABLE jobs DISABLE TRIGGER jobs_rollup_dirty_insert")
            conn.execute(_SEED_JOBS, {"n": n, "end": until, "span_s": span_s})
            conn.exec_driver_sql("ALTER TABLE jobs ENABLE TRIGGER jobs_rollup_dirty_insert")
            conn.execute(_MARK_HOURS, {"start": until - timedelta(seconds=span_s), "end": until})
        remaining -= n
    with engine.begin() as conn:
        conn.execute(_SEED_ATTEMPTS)
    # VACUUM too: a history table settles with its visibility map set (index-only scans).
    # It cannot run in a transaction, and the pool's pre-ping leaves one open: end it first.
    raw = engine.raw_connection()
    dbapi = raw.dbapi_connection
    assert dbapi is not None  # a connection just checked out of the pool
    try:
        raw.rollback()
        driver.set_autocommit(dbapi, True)
        raw.cursor().execute("VACUUM ANALYZE jobs, job_attempts")
        driver.set_autocommit(dbapi, False)
    finally:
        raw.close()
    return time.monotonic() - started


_PURGE = sa.text(
    """
    WITH doomed AS (
        -- A job that ended before the cutoff was created before it: walk jobs_report_idx,
        -- which carries done_time and state.
        SELECT id FROM jobs
        WHERE created_time < :cutoff AND done_time < :cutoff AND state IN ('COMPLETED', 'FAILED', 'CANCELLED')
        ORDER BY created_time
        LIMIT :batch
        FOR UPDATE SKIP LOCKED
    )
    DELETE FROM jobs USING doomed WHERE jobs.id = doomed.id
    """
)


def purge(engine: Engine, *, cutoff: datetime, batch: int = 10_000) -> int:
    """Delete finished jobs (and their attempts) that ended before `cutoff`, in small batches.

    Each batch is its own short transaction that skips rows others hold, so purging never
    blocks the API for long. Returns how many jobs were deleted.
    """
    total = 0
    while True:
        with engine.begin() as conn:
            deleted = conn.execute(_PURGE, {"cutoff": cutoff, "batch": batch}).rowcount
        total += deleted
        if deleted < batch:
            return total

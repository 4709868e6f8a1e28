"""Hourly and daily rollups of job history, kept current by a refresher and a dirty-hour trigger

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22

Reports over long windows read `job_rollups` (one row per hour or day, type, queue and owner:
counts, and histograms of queue waits and run times on a fixed log scale) instead of every
job. `api/rollups.py` rolls up hours once they are two hours old. A job row that changes, or
is inserted or deleted, after its hour may have been rolled up marks that hour dirty in
`job_rollup_dirty`; reports read dirty hours from `jobs` until the next refresh rewrites them.
The trigger's WHEN clause is evaluated without calling the function, so the API's own writes
(to jobs created moments ago) cost nothing. See docs/reporting.md.
"""

from __future__ import annotations

from alembic import op

from migrations import set_comments

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

ROLE = "cloudjobs_reporting"

# A job changed more than this long after its creation may touch a rolled-up hour; hours are
# rolled up only once they are older than this plus a margin (api/rollups.py: ROLL_AFTER).
LATE = "30 minutes"

COMMENTS = {
    "TABLE job_rollups": "Jobs per hour or day (of created_time, UTC), type, queue and owner: counts and "
                         "duration histograms. Maintained by api/rollups.py; read by long-window reports.",
    "COLUMN job_rollups.grain": "hour or day.",
    "COLUMN job_rollups.period": "The start of the hour or day (UTC) the jobs were created in.",
    "COLUMN job_rollups.type": "The job type.",
    "COLUMN job_rollups.queue": "The queue.",
    "COLUMN job_rollups.owner": "The owner ('' for jobs created without auth).",
    "COLUMN job_rollups.jobs": "Jobs created.",
    "COLUMN job_rollups.completed": "Of those, COMPLETED.",
    "COLUMN job_rollups.failed": "FAILED.",
    "COLUMN job_rollups.cancelled": "CANCELLED.",
    "COLUMN job_rollups.active": "Not finished when rolled up (CREATED, QUEUED or RUNNING).",
    "COLUMN job_rollups.retries": "Attempts beyond the first, summed.",
    "COLUMN job_rollups.ran": "Jobs with at least one attempt.",
    "COLUMN job_rollups.retried": "Jobs with more than one attempt.",
    "COLUMN job_rollups.wait_buckets": "Queue wait histogram: bucket numbers (see reporting.duration_bucket).",
    "COLUMN job_rollups.wait_counts": "Queue wait histogram: jobs in each of wait_buckets.",
    "COLUMN job_rollups.run_buckets": "Run time histogram (first start to done): bucket numbers.",
    "COLUMN job_rollups.run_counts": "Run time histogram: jobs in each of run_buckets.",
    "TABLE job_rollup_dirty": "Marks (append-only) of hours whose jobs changed after they may have been "
                              "rolled up; the next refresh recomputes them.",
    "COLUMN job_rollup_dirty.hour": "The hour (UTC, of created_time) of a job that changed.",
    "TABLE job_rollup_state": "One row: how far job_rollups reaches.",
    "COLUMN job_rollup_state.id": "Always true: there is one row.",
    "COLUMN job_rollup_state.rolled_until": "Every hour before this is rolled up (unless marked dirty); "
                                            "null: none yet.",
    "COLUMN job_rollup_state.refreshed_time": "When the last refresh finished.",
    "VIEW reporting.job_rollups": "Jobs per hour or day, type, queue and owner, with duration histograms; "
                                  "reporting.histogram_percentile reads a percentile from one.",
    "COLUMN reporting.job_rollups.grain": "hour or day.",
    "COLUMN reporting.job_rollups.period": "The start of the hour or day (UTC).",
    "COLUMN reporting.job_rollups.type": "The job type.",
    "COLUMN reporting.job_rollups.queue": "The queue.",
    "COLUMN reporting.job_rollups.owner": "The owner ('' without auth).",
    "COLUMN reporting.job_rollups.jobs": "Jobs created.",
    "COLUMN reporting.job_rollups.completed": "COMPLETED.",
    "COLUMN reporting.job_rollups.failed": "FAILED.",
    "COLUMN reporting.job_rollups.cancelled": "CANCELLED.",
    "COLUMN reporting.job_rollups.active": "Not finished when rolled up.",
    "COLUMN reporting.job_rollups.retries": "Attempts beyond the first, summed.",
    "COLUMN reporting.job_rollups.ran": "Jobs with at least one attempt.",
    "COLUMN reporting.job_rollups.retried": "Jobs with more than one attempt.",
    "COLUMN reporting.job_rollups.wait_buckets": "Queue wait histogram: bucket numbers.",
    "COLUMN reporting.job_rollups.wait_counts": "Queue wait histogram: counts.",
    "COLUMN reporting.job_rollups.run_buckets": "Run time histogram: bucket numbers.",
    "COLUMN reporting.job_rollups.run_counts": "Run time histogram: counts.",
    "VIEW reporting.job_rollups_current": "When job_rollups was last refreshed and how far it reaches.",
    "COLUMN reporting.job_rollups_current.rolled_until": "Hours before this are rolled up, except dirty ones.",
    "COLUMN reporting.job_rollups_current.refreshed_time": "When the last refresh finished.",
    "COLUMN reporting.job_rollups_current.dirty_hours": "Hours waiting to be rolled up again.",
    "FUNCTION reporting.duration_bucket(float8)": "The histogram bucket of a duration in seconds: 0 below 1 ms, "
                                                 "else 1 + floor(8 * log2(milliseconds)) (8 buckets per doubling).",
    "FUNCTION reporting.bucket_seconds(integer)": "A bucket's representative duration in seconds (its geometric "
                                                 "middle; within 4.4% of every duration in it).",
    "FUNCTION reporting.histogram_percentile(integer[], bigint[], numeric)": "The p-th percentile (0 to 1) of a "
                                                                           "histogram, nearest rank, in seconds.",
    "FUNCTION reporting.histogram_percentiles(integer[], bigint[], numeric[])":
        "Several percentiles (ascending) of a histogram (buckets ascending), in one pass.",
}


def upgrade() -> None:
    # Histogram buckets: 8 per doubling from 1 ms, so a bucket's middle is within 2^(1/16) - 1
    # = 4.4% of anything in it. Written in SQL, so analysts' queries and ours bucket alike.
    op.execute("""
        CREATE FUNCTION reporting.duration_bucket(seconds float8) RETURNS integer
        LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
            SELECT CASE WHEN seconds < 0.001 THEN 0
                        ELSE 1 + floor(8 * ln(seconds * 1000) / ln(2))::integer END
        $$
    """)
    op.execute("""
        CREATE FUNCTION reporting.bucket_seconds(bucket integer) RETURNS float8
        LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
            SELECT CASE WHEN bucket = 0 THEN 0 ELSE power(2, (bucket - 0.5) / 8) / 1000 END
        $$
    """)
    # One pass over a histogram (buckets ascending) for several percentiles (ascending):
    # nearest rank, the first bucket whose running count reaches p of the total.
    op.execute("""
        CREATE FUNCTION reporting.histogram_percentiles(buckets integer[], counts bigint[], ps numeric[])
        RETURNS float8[] LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
        DECLARE
            total bigint := 0;
            running bigint := 0;
            found float8[] := '{}';
            n integer := coalesce(array_length(counts, 1), 0);
            j integer := 1;
        BEGIN
            FOR i IN 1 .. n LOOP
                total := total + counts[i];
            END LOOP;
            IF total = 0 THEN
                RETURN NULL;
            END IF;
            FOR i IN 1 .. n LOOP
                running := running + counts[i];
                WHILE j <= array_length(ps, 1) AND running >= ps[j] * total LOOP
                    found := found || reporting.bucket_seconds(buckets[i]);
                    j := j + 1;
                END LOOP;
                EXIT WHEN j > array_length(ps, 1);
            END LOOP;
            RETURN found;
        END $$
    """)
    op.execute("""
        CREATE FUNCTION reporting.histogram_percentile(buckets integer[], counts bigint[], p numeric)
        RETURNS float8 LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
            SELECT (reporting.histogram_percentiles(buckets, counts, ARRAY[p]))[1]
        $$
    """)
    op.execute("""
        CREATE TABLE job_rollups (
            grain text NOT NULL CONSTRAINT job_rollups_grain_valid CHECK (grain IN ('hour', 'day')),
            period timestamptz NOT NULL,
            type text NOT NULL,
            queue text NOT NULL,
            owner text NOT NULL,
            jobs integer NOT NULL,
            completed integer NOT NULL,
            failed integer NOT NULL,
            cancelled integer NOT NULL,
            active integer NOT NULL,
            retries bigint NOT NULL,
            ran integer NOT NULL,
            retried integer NOT NULL,
            wait_buckets integer[] NOT NULL,
            wait_counts bigint[] NOT NULL,
            run_buckets integer[] NOT NULL,
            run_counts bigint[] NOT NULL,
            CONSTRAINT job_rollups_pkey PRIMARY KEY (grain, period, type, queue, owner)
        )
    """)
    # Append-only: a mark is a plain INSERT (no conflict handling, no lock), so bulk changes
    # stay linear. The refresher deletes the marks it saw and recomputes their hours with a
    # later snapshot; a mark it could not see yet (its transaction still open) stays for the
    # next refresh.
    op.execute("""
        CREATE TABLE job_rollup_dirty (
            hour timestamptz NOT NULL
        )
    """)
    op.execute("CREATE INDEX job_rollup_dirty_hour_idx ON job_rollup_dirty (hour)")
    op.execute("""
        CREATE TABLE job_rollup_state (
            id boolean PRIMARY KEY DEFAULT true CONSTRAINT job_rollup_state_one_row CHECK (id),
            rolled_until timestamptz,
            refreshed_time timestamptz
        )
    """)
    op.execute("INSERT INTO job_rollup_state DEFAULT VALUES")
    op.execute("""
        CREATE FUNCTION cloudjobs_mark_rollup_dirty() RETURNS trigger
        LANGUAGE plpgsql AS $$
        DECLARE
            created timestamptz := CASE WHEN TG_OP = 'INSERT' THEN NEW.created_time ELSE OLD.created_time END;
        BEGIN
            INSERT INTO job_rollup_dirty (hour) VALUES (date_trunc('hour', created, 'UTC'));
            RETURN NULL;
        END $$
    """)
    op.execute(f"""
        CREATE TRIGGER jobs_rollup_dirty_insert AFTER INSERT ON jobs FOR EACH ROW
        WHEN (NEW.created_time < now() - interval '{LATE}')
        EXECUTE FUNCTION cloudjobs_mark_rollup_dirty()
    """)
    op.execute(f"""
        CREATE TRIGGER jobs_rollup_dirty_update AFTER UPDATE ON jobs FOR EACH ROW
        WHEN (OLD.created_time < now() - interval '{LATE}'
              AND (OLD.state, OLD.attempts, OLD.scheduled_time, OLD.started_time, OLD.done_time,
                   OLD.created_time, OLD.type, OLD.queue, OLD.owner)
                  IS DISTINCT FROM
                  (NEW.state, NEW.attempts, NEW.scheduled_time, NEW.started_time, NEW.done_time,
                   NEW.created_time, NEW.type, NEW.queue, NEW.owner))
        EXECUTE FUNCTION cloudjobs_mark_rollup_dirty()
    """)
    op.execute(f"""
        CREATE TRIGGER jobs_rollup_dirty_delete AFTER DELETE ON jobs FOR EACH ROW
        WHEN (OLD.created_time < now() - interval '{LATE}')
        EXECUTE FUNCTION cloudjobs_mark_rollup_dirty()
    """)
    # The failures report reads only failed attempts: this index holds just them, with what
    # the report counts, so a month of failures is an index-only scan.
    op.execute("""
        CREATE INDEX job_attempts_failures_idx ON job_attempts (finished_time)
        INCLUDE (type, queue, owner, error_code, job_id)
        WHERE outcome <> 'COMPLETED' AND error_code IS NOT NULL
    """)
    op.execute("""
        CREATE VIEW reporting.job_rollups AS
        SELECT grain, period, type, queue, owner, jobs, completed, failed, cancelled, active,
               retries, ran, retried, wait_buckets, wait_counts, run_buckets, run_counts
        FROM public.job_rollups
    """)
    op.execute("""
        CREATE VIEW reporting.job_rollups_current AS
        SELECT s.rolled_until, s.refreshed_time,
               (SELECT count(DISTINCT hour) FROM public.job_rollup_dirty) AS dirty_hours
        FROM public.job_rollup_state s
    """)
    set_comments(COMMENTS)
    op.execute(f"GRANT SELECT ON reporting.job_rollups, reporting.job_rollups_current TO {ROLE}")
    op.execute(f"GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA reporting TO {ROLE}")


def downgrade() -> None:
    op.execute("DROP VIEW reporting.job_rollups_current")
    op.execute("DROP VIEW reporting.job_rollups")
    op.execute("DROP INDEX job_attempts_failures_idx")
    for name in ("insert", "update", "delete"):
        op.execute(f"DROP TRIGGER jobs_rollup_dirty_{name} ON jobs")
    op.execute("DROP FUNCTION cloudjobs_mark_rollup_dirty()")
    op.execute("DROP TABLE job_rollup_state")
    op.execute("DROP TABLE job_rollup_dirty")
    op.execute("DROP TABLE job_rollups")
    op.execute("DROP FUNCTION reporting.histogram_percentile(integer[], bigint[], numeric)")
    op.execute("DROP FUNCTION reporting.histogram_percentiles(integer[], bigint[], numeric[])")
    op.execute("DROP FUNCTION reporting.bucket_seconds(integer)")
    op.execute("DROP FUNCTION reporting.duration_bucket(float8)")

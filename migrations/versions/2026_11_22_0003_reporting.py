"""Reporting: complete attempt rows, the reporting schema and views, a read-only role

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from migrations import set_comments

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

ROLE = "cloudjobs_reporting"

PERCENTILES = """
    percentile_cont(0.5) WITHIN GROUP (ORDER BY queue_wait_s) AS queue_wait_p50_s,
    percentile_cont(0.95) WITHIN GROUP (ORDER BY queue_wait_s) AS queue_wait_p95_s,
    percentile_cont(0.99) WITHIN GROUP (ORDER BY queue_wait_s) AS queue_wait_p99_s,
    percentile_cont(0.5) WITHIN GROUP (ORDER BY run_s) AS run_p50_s,
    percentile_cont(0.95) WITHIN GROUP (ORDER BY run_s) AS run_p95_s,
    percentile_cont(0.99) WITHIN GROUP (ORDER BY run_s) AS run_p99_s
"""


def _stats_view(name: str, unit: str) -> str:
    return f"""
    CREATE VIEW reporting.{name} AS
    SELECT date_trunc('{unit}', created_time) AS bucket, type, queue,
           count(*) AS jobs,
           count(*) FILTER (WHERE state = 'COMPLETED') AS completed,
           count(*) FILTER (WHERE state = 'FAILED') AS failed,
           count(*) FILTER (WHERE state = 'CANCELLED') AS cancelled,
           count(*) FILTER (WHERE state IN ('CREATED', 'QUEUED', 'RUNNING')) AS active,
           (count(*) FILTER (WHERE state = 'COMPLETED'))::float8
               / nullif(count(*) FILTER (WHERE state IN ('COMPLETED', 'FAILED', 'CANCELLED')), 0)
               AS success_rate,
           sum(retries) AS retries,
           (count(*) FILTER (WHERE retries > 0))::float8 / nullif(count(*) FILTER (WHERE attempts > 0), 0)
               AS retry_rate,
           {PERCENTILES}
    FROM reporting.job_history
    GROUP BY 1, 2, 3
    """


COMMENTS = {
    "TABLE api_keys": "API keys of callers (AUTH=keys); secrets are stored as hashes only.",
    "COLUMN jobs.id": "The job's id (a UUID; the task name is derived from it).",
    "COLUMN jobs.type": 'The job type: the name its function was registered under with @job.',
    "COLUMN jobs.queue": 'The Cloud Tasks queue it goes to.',
    "COLUMN jobs.state": 'CREATED, QUEUED, RUNNING, COMPLETED, FAILED or CANCELLED.',
    "COLUMN jobs.payload": "The job's input, validated by its type's schema.",
    "COLUMN jobs.result": 'What the job function returned (COMPLETED jobs).',
    "COLUMN jobs.error": 'The last failure: {code, message}.',
    "COLUMN jobs.attempts": 'Attempts started, over every run.',
    "COLUMN jobs.max_attempts": "The attempt budget of each run (at most the queue's).",
    "COLUMN jobs.timeout_s": 'Per-attempt time limit, seconds.',
    "COLUMN jobs.progress": "The running attempt's last report: {fraction, message}.",
    "COLUMN jobs.labels": 'Free-form string labels.',
    "COLUMN jobs.task_name": "The full name of the current run's Cloud Tasks task.",
    "COLUMN jobs.run": 'How many times :retry started the job again.',
    "COLUMN jobs.attempts_base": 'attempts when the current run began (its budget counts from here).',
    "COLUMN jobs.owner": 'The principal that created the job (key:<id>, sa:<email>, or null without auth).',
    "COLUMN jobs.idempotency_key": "The creating request's Idempotency-Key, unique per owner.",
    "COLUMN jobs.request_hash": 'SHA-256 of the creating request, to tell a replay from a different request.',
    "COLUMN jobs.cancel_requested": 'True once a cancel was asked for while the job ran.',
    "COLUMN jobs.lease_expires_time": 'Until when the running attempt holds the job.',
    "COLUMN jobs.attempt_started_time": 'When the current attempt started.',
    "COLUMN jobs.created_time": 'When the job was accepted.',
    "COLUMN jobs.scheduled_time": 'When the job was due (run_at, or its creation).',
    "COLUMN jobs.started_time": "When the current run's first attempt started.",
    "COLUMN jobs.done_time": 'When it reached a terminal state.',
    "COLUMN jobs.updated_time": 'The last change.',
    "COLUMN job_attempts.job_id": 'The job.',
    "COLUMN job_attempts.number": "1 for the job's first attempt, and on across runs.",
    "COLUMN job_attempts.outcome": 'COMPLETED, FAILED, RETRY, CANCELLED, TIMED_OUT or LOST.',
    "COLUMN job_attempts.error": 'The failure: {code, message}.',
    "COLUMN job_attempts.started_time": 'When the attempt started.',
    "COLUMN job_attempts.finished_time": 'When it ended, or was found to have died.',
    "COLUMN job_attempts.task_name": 'The Cloud Tasks task that delivered it.',
    "COLUMN job_attempts.retry_count": 'X-CloudTasks-TaskRetryCount of the delivery.',
    "COLUMN job_attempts.execution_count": 'X-CloudTasks-TaskExecutionCount of the delivery.',
    "COLUMN job_attempts.retry_reason": 'X-CloudTasks-TaskRetryReason of the delivery.',
    "COLUMN job_attempts.type": "The job's type (copied from jobs, so reports need no join).",
    "COLUMN job_attempts.queue": "The job's queue (copied from jobs).",
    "COLUMN job_attempts.owner": 'The principal that owns the job (copied from jobs).',
    "COLUMN job_attempts.duration_ms": 'finished_time - started_time, in milliseconds.',
    "COLUMN job_attempts.error_code": "error->>'code': the failure's code (FLAKY, TIMED_OUT, EXCEPTION, …).",
    "COLUMN api_keys.id": 'The public part of the key: cj_<id>_<secret>.',
    "COLUMN api_keys.name": 'Who the key is for; unique among live keys.',
    "COLUMN api_keys.secret_hash": 'SHA-256 of the secret; the key itself is shown once and never stored.',
    "COLUMN api_keys.admin": 'An admin key sees and acts on every job.',
    "COLUMN api_keys.created_time": 'When the key was made.',
    "COLUMN api_keys.revoked_time": 'When it was revoked; null while it is live.',
    "TABLE jobs": "One row per job: its state, input, output and times. Written only by api/store.py.",
    "TABLE job_attempts": "One row per attempt that reached the handler (append-only): when it ran and how it ended.",
    "SCHEMA reporting": "Stable views over job history for analysts; the role cloudjobs_reporting reads only these.",
    "VIEW reporting.job_history": "One row per job with derived durations; no payload or result (they may hold personal data).",
    "COLUMN reporting.job_history.id": "The job's id.",
    "COLUMN reporting.job_history.type": "The job type (the @job name).",
    "COLUMN reporting.job_history.queue": "The Cloud Tasks queue the job went to.",
    "COLUMN reporting.job_history.state": "CREATED, QUEUED, RUNNING, COMPLETED, FAILED or CANCELLED.",
    "COLUMN reporting.job_history.owner": "The principal that created the job (key:<id>, sa:<email>, or null).",
    "COLUMN reporting.job_history.labels": "The job's labels (a JSON object of strings).",
    "COLUMN reporting.job_history.attempts": "Attempts that reached the handler, over every run.",
    "COLUMN reporting.job_history.retries": "attempts - 1 (0 when the job never ran).",
    "COLUMN reporting.job_history.max_attempts": "The attempt budget per run.",
    "COLUMN reporting.job_history.error_code": "The last error's code, if any.",
    "COLUMN reporting.job_history.error_message": "The last error's message, if any.",
    "COLUMN reporting.job_history.created_time": "When the job was accepted.",
    "COLUMN reporting.job_history.scheduled_time": "When the job was due (run_at, or its creation).",
    "COLUMN reporting.job_history.started_time": "When its first attempt (of the current run) started.",
    "COLUMN reporting.job_history.done_time": "When it reached COMPLETED, FAILED or CANCELLED.",
    "COLUMN reporting.job_history.queue_wait_s": "started_time - scheduled_time, in seconds: how long it waited in the queue.",
    "COLUMN reporting.job_history.run_s": "done_time - started_time, in seconds: first start to done, retries included.",
    "VIEW reporting.job_attempts": "One row per attempt, with its job's type and queue.",
    "COLUMN reporting.job_attempts.job_id": "The job.",
    "COLUMN reporting.job_attempts.number": "1 for the first attempt, and so on across runs.",
    "COLUMN reporting.job_attempts.type": "The job type.",
    "COLUMN reporting.job_attempts.queue": "The queue.",
    "COLUMN reporting.job_attempts.owner": "The job's owner.",
    "COLUMN reporting.job_attempts.outcome": "COMPLETED, FAILED, RETRY, CANCELLED, TIMED_OUT or LOST.",
    "COLUMN reporting.job_attempts.error_code": "The failure's code, if it failed.",
    "COLUMN reporting.job_attempts.error_message": "The failure's message, if it failed.",
    "COLUMN reporting.job_attempts.started_time": "When the attempt started.",
    "COLUMN reporting.job_attempts.finished_time": "When it ended (or was found lost).",
    "COLUMN reporting.job_attempts.duration_s": "finished_time - started_time, in seconds.",
    "COLUMN reporting.job_attempts.retry_count": "X-CloudTasks-TaskRetryCount: the queue's earlier tries of this task.",
    "COLUMN reporting.job_attempts.execution_count": "X-CloudTasks-TaskExecutionCount: earlier responses received.",
    "COLUMN reporting.job_attempts.retry_reason": "X-CloudTasks-TaskRetryReason: why the queue retried.",
    "COLUMN reporting.job_attempts.task_name": "The Cloud Tasks task that delivered it.",
}
for _view, _unit in (("job_stats_hourly", "hour"), ("job_stats_daily", "day")):
    COMMENTS[f"VIEW reporting.{_view}"] = f"Jobs created per {_unit}, type and queue: outcomes, rates and percentiles."
    for col, text in {
        "bucket": f"The {_unit} the jobs were created in (UTC).",
        "type": "The job type.", "queue": "The queue.",
        "jobs": "Jobs created.", "completed": "Of those, COMPLETED.", "failed": "FAILED.",
        "cancelled": "CANCELLED.", "active": "Not finished yet.",
        "success_rate": "completed / (completed + failed + cancelled).",
        "retries": "Attempts beyond the first, summed.",
        "retry_rate": "Share of jobs that ran which needed more than one attempt.",
        "queue_wait_p50_s": "Median queue wait, seconds.", "queue_wait_p95_s": "95th percentile queue wait.",
        "queue_wait_p99_s": "99th percentile queue wait.", "run_p50_s": "Median run time (first start to done).",
        "run_p95_s": "95th percentile run time.", "run_p99_s": "99th percentile run time.",
    }.items():
        COMMENTS[f"COLUMN reporting.{_view}.{col}"] = text


def upgrade() -> None:
    op.add_column("job_attempts", sa.Column("type", sa.Text))
    op.add_column("job_attempts", sa.Column("queue", sa.Text))
    op.add_column("job_attempts", sa.Column("owner", sa.Text))
    op.execute("""
        UPDATE job_attempts a SET type = j.type, queue = j.queue, owner = j.owner
        FROM jobs j WHERE j.id = a.job_id
    """)
    op.execute("""
        ALTER TABLE job_attempts
            ADD COLUMN duration_ms bigint GENERATED ALWAYS AS
                ((extract(epoch FROM finished_time - started_time) * 1000)::bigint) STORED,
            ADD COLUMN error_code text GENERATED ALWAYS AS (error ->> 'code') STORED
    """)
    # Reports read windows of history by time; these let them read only the window, and
    # (INCLUDE) only the index.
    op.create_index(
        "jobs_report_idx", "jobs", ["created_time"],
        postgresql_include=["type", "queue", "state", "owner", "attempts", "scheduled_time",
                            "started_time", "done_time"],
    )
    op.create_index(
        "job_attempts_report_idx", "job_attempts", ["finished_time"],
        postgresql_include=["type", "queue", "owner", "outcome", "error_code", "duration_ms"],
    )
    op.execute("CREATE SCHEMA reporting")
    op.execute("""
        CREATE VIEW reporting.job_history AS
        SELECT id, type, queue, state, owner, labels, attempts,
               greatest(attempts - 1, 0) AS retries, max_attempts,
               error ->> 'code' AS error_code, error ->> 'message' AS error_message,
               created_time, scheduled_time, started_time, done_time,
               extract(epoch FROM started_time - scheduled_time)::float8 AS queue_wait_s,
               extract(epoch FROM done_time - started_time)::float8 AS run_s
        FROM public.jobs
    """)
    op.execute("""
        CREATE VIEW reporting.job_attempts AS
        SELECT job_id, number, type, queue, owner, outcome, error_code,
               error ->> 'message' AS error_message, started_time, finished_time,
               duration_ms / 1000.0 AS duration_s, retry_count, execution_count, retry_reason,
               task_name
        FROM public.job_attempts
    """)
    op.execute(_stats_view("job_stats_hourly", "hour"))
    op.execute(_stats_view("job_stats_daily", "day"))
    set_comments(COMMENTS)
    # Roles are cluster-wide: made once, kept by downgrades (other databases may use it).
    op.execute(f"""
        DO $$ BEGIN
            CREATE ROLE {ROLE} NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
        END $$
    """)
    op.execute(f"GRANT USAGE ON SCHEMA reporting TO {ROLE}")
    op.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA reporting TO {ROLE}")


def downgrade() -> None:
    op.execute(f"""
        DO $$ BEGIN
            IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{ROLE}') THEN
                REVOKE ALL ON ALL TABLES IN SCHEMA reporting FROM {ROLE};
                REVOKE ALL ON SCHEMA reporting FROM {ROLE};
            END IF;
        END $$
    """)
    op.execute("DROP SCHEMA reporting CASCADE")
    op.drop_index("job_attempts_report_idx", table_name="job_attempts")
    op.drop_index("jobs_report_idx", table_name="jobs")
    op.execute("ALTER TABLE job_attempts DROP COLUMN error_code, DROP COLUMN duration_ms")
    op.drop_column("job_attempts", "owner")
    op.drop_column("job_attempts", "queue")
    op.drop_column("job_attempts", "type")

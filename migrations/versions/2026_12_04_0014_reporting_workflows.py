"""Reporting: workflow columns on job_history, WAITING counted active, reporting.workflow_history

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04

`reporting.job_history` gains `workflow_id` and `step` (appended: CREATE OR REPLACE keeps the
columns analysts already select). The hourly and daily stats count WAITING jobs as active,
as every other active state. `reporting.workflow_history` has one row per workflow with its
durations: how long it waited for its first step to start, and how long it took end to end.
"""

from __future__ import annotations

import importlib

from alembic import op

from migrations import set_comments

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

ROLE = "cloudjobs_reporting"

JOB_HISTORY = """
    CREATE OR REPLACE VIEW reporting.job_history AS
    SELECT id, type, queue, state, owner, labels, attempts,
           greatest(attempts - 1, 0) AS retries, max_attempts,
           error ->> 'code' AS error_code, error ->> 'message' AS error_message,
           created_time, scheduled_time, started_time, done_time,
           extract(epoch FROM started_time - scheduled_time)::float8 AS queue_wait_s,
           extract(epoch FROM done_time - started_time)::float8 AS run_s{extra}
    FROM public.jobs
"""

WORKFLOW_HISTORY = """
    CREATE VIEW reporting.workflow_history AS
    SELECT w.id, w.name, w.owner, w.labels, w.state, w.steps, w.failed, w.cancelled,
           w.created_time, s.first_started_time, w.done_time,
           extract(epoch FROM s.first_started_time - w.created_time)::float8 AS start_wait_s,
           extract(epoch FROM w.done_time - w.created_time)::float8 AS duration_s,
           s.step_run_s
    FROM public.workflows w
    LEFT JOIN LATERAL (
        SELECT min(j.started_time) AS first_started_time,
               sum(extract(epoch FROM j.done_time - j.started_time))::float8 AS step_run_s
        FROM public.jobs j WHERE j.workflow_id = w.id
    ) s ON true
"""

COMMENTS = {
    "COLUMN reporting.job_history.workflow_id": "The workflow the job is a step of (null for other jobs).",
    "COLUMN reporting.job_history.step": "The job's step name in its workflow.",
    "VIEW reporting.workflow_history": "One row per workflow with its durations; steps are in job_history by workflow_id.",
    "COLUMN reporting.workflow_history.id": "The workflow's id.",
    "COLUMN reporting.workflow_history.name": "What its submitter called it.",
    "COLUMN reporting.workflow_history.owner": "The principal that created it.",
    "COLUMN reporting.workflow_history.labels": "Free-form string labels.",
    "COLUMN reporting.workflow_history.state": "RUNNING, COMPLETED, FAILED or CANCELLED.",
    "COLUMN reporting.workflow_history.steps": "How many steps it has.",
    "COLUMN reporting.workflow_history.failed": "Steps that ended FAILED.",
    "COLUMN reporting.workflow_history.cancelled": "Steps that ended CANCELLED.",
    "COLUMN reporting.workflow_history.created_time": "When it was accepted.",
    "COLUMN reporting.workflow_history.first_started_time": "When its first step started (null before).",
    "COLUMN reporting.workflow_history.done_time": "When its last step ended (null while RUNNING).",
    "COLUMN reporting.workflow_history.start_wait_s": "Seconds from its creation to its first step's start.",
    "COLUMN reporting.workflow_history.duration_s": "Seconds from its creation to its end (null while RUNNING).",
    "COLUMN reporting.workflow_history.step_run_s": "Seconds its steps ran, summed (each from its run's first attempt to its end).",
}


def _reporting() -> object:
    """Revision 0003, which made the views: their SQL and comments, from one place."""
    return importlib.import_module("migrations.versions.2026_11_22_0003_reporting")


def _stats_view(name: str, unit: str) -> str:
    return _reporting()._stats_view(name, unit).replace("CREATE VIEW", "CREATE OR REPLACE VIEW")  # type: ignore[attr-defined]


def upgrade() -> None:
    op.execute(JOB_HISTORY.format(extra=",\n           workflow_id, step"))
    for name, unit in (("job_stats_hourly", "hour"), ("job_stats_daily", "day")):
        op.execute(_stats_view(name, unit).replace(
            "state IN ('CREATED', 'QUEUED', 'RUNNING')) AS active",
            "state IN ('WAITING', 'CREATED', 'QUEUED', 'RUNNING')) AS active"))
    op.execute(WORKFLOW_HISTORY)
    set_comments(COMMENTS)
    op.execute(f"GRANT SELECT ON reporting.workflow_history TO {ROLE}")


def downgrade() -> None:
    op.execute("DROP VIEW reporting.workflow_history")
    # A view's columns cannot be dropped in place: the stats views read job_history, so all
    # three are made again as 0003 made them.
    op.execute("DROP VIEW reporting.job_stats_hourly, reporting.job_stats_daily, reporting.job_history")
    op.execute(JOB_HISTORY.format(extra="").replace("CREATE OR REPLACE", "CREATE"))
    for name, unit in (("job_stats_hourly", "hour"), ("job_stats_daily", "day")):
        op.execute(_stats_view(name, unit))
    comments = _reporting().COMMENTS  # type: ignore[attr-defined]
    set_comments({k: v for k, v in comments.items() if "reporting.job_history" in k or "reporting.job_stats" in k})
    op.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA reporting TO {ROLE}")

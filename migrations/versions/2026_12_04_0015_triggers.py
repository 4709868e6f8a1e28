"""Triggers: jobs created by schedule fires and Pub/Sub messages, each exactly once

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-04

A schedule's fire (Cloud Scheduler delivers at least once) is a row of `schedule_fires`,
keyed by (schedule, scheduled_for): a second delivery of the same fire finds the row and
answers with its job instead of creating another. A skipped fire (overlap: skip) is a row
too, so a redelivery after the previous job ended does not create one late. A pushed
Pub/Sub message creates its job under a unique (trigger, message_id); a message that creates
no job (no trigger, a payload its type refuses) is recorded in `trigger_rejections`.
`reporting.job_history` gains schedule, scheduled_for, trigger and message_id (appended).
"""

from __future__ import annotations

import importlib

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from migrations import set_comments

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def _previous() -> object:
    return importlib.import_module("migrations.versions.2026_12_04_0014_reporting_workflows")


COMMENTS = {
    "COLUMN reporting.job_history.schedule": "The schedule whose fire created the job (null for other jobs).",
    "COLUMN reporting.job_history.scheduled_for": "The fire time it was created for (X-CloudScheduler-ScheduleTime).",
    "COLUMN reporting.job_history.trigger": "The Pub/Sub trigger whose message created the job.",
    "COLUMN reporting.job_history.message_id": "The Pub/Sub messageId that created the job.",
}


def upgrade() -> None:
    op.add_column("jobs", sa.Column("schedule", sa.Text, comment="The schedule whose fire created the job."))
    op.add_column("jobs", sa.Column("scheduled_for", sa.DateTime(timezone=True),
                                    comment="The schedule time of that fire (X-CloudScheduler-ScheduleTime)."))
    op.add_column("jobs", sa.Column("trigger", sa.Text, comment="The Pub/Sub trigger whose message created the job."))
    op.add_column("jobs", sa.Column("message_id", sa.Text, comment="The Pub/Sub messageId that created the job."))
    op.create_index("jobs_schedule_idx", "jobs", ["schedule", "scheduled_for"],
                    postgresql_where=sa.text("schedule IS NOT NULL"))
    op.create_index("jobs_trigger_message_idx", "jobs", ["trigger", "message_id"], unique=True,
                    postgresql_where=sa.text("message_id IS NOT NULL"))
    op.create_table(
        "schedule_fires",
        sa.Column("schedule", sa.Text, nullable=False, comment="The schedule's name in schedules.yaml."),
        sa.Column("scheduled_for", sa.DateTime(timezone=True), nullable=False,
                  comment="The fire time Cloud Scheduler delivered (X-CloudScheduler-ScheduleTime)."),
        sa.Column("outcome", sa.Text, nullable=False, comment="created, or skipped (overlap: skip)."),
        sa.Column("job_id", postgresql.UUID(as_uuid=True), sa.ForeignKey("jobs.id", ondelete="SET NULL"),
                  comment="The job the fire created."),
        sa.Column("previous_job_id", postgresql.UUID(as_uuid=True),
                  comment="The job still active that made the fire skip, or that it cancelled."),
        sa.Column("fired_time", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now(),
                  comment="When the first delivery of the fire arrived."),
        sa.PrimaryKeyConstraint("schedule", "scheduled_for"),
        sa.CheckConstraint("outcome IN ('created', 'skipped')", name="schedule_fires_outcome_valid"),
        comment="One row per schedule fire: what it did, once, however often it was delivered.",
    )
    op.create_index("schedule_fires_recent_idx", "schedule_fires", ["schedule", sa.text("fired_time DESC")])
    op.create_table(
        "trigger_rejections",
        sa.Column("subscription", sa.Text, nullable=False, comment="The push subscription the message came from."),
        sa.Column("message_id", sa.Text, nullable=False, comment="The Pub/Sub messageId."),
        sa.Column("trigger", sa.Text, comment="The trigger it matched (null: none)."),
        sa.Column("reason", sa.Text, nullable=False, comment="Why no job was created."),
        sa.Column("errors", postgresql.JSONB, comment="The field errors, as a create would answer them."),
        sa.Column("received_time", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now(),
                  comment="When it was first pushed."),
        sa.PrimaryKeyConstraint("subscription", "message_id"),
        comment="Pub/Sub messages acknowledged without a job, and why.",
    )
    job_history = _previous().JOB_HISTORY  # type: ignore[attr-defined]
    op.execute(job_history.format(extra=",\n           workflow_id, step, schedule, scheduled_for, trigger, message_id"))
    set_comments(COMMENTS)


def downgrade() -> None:
    previous = _previous()
    op.execute("DROP VIEW reporting.job_stats_hourly, reporting.job_stats_daily, reporting.job_history")
    op.execute(previous.JOB_HISTORY.format(extra=",\n           workflow_id, step").replace(  # type: ignore[attr-defined]
        "CREATE OR REPLACE", "CREATE"))
    for name, unit in (("job_stats_hourly", "hour"), ("job_stats_daily", "day")):
        op.execute(previous._stats_view(name, unit).replace(  # type: ignore[attr-defined]
            "state IN ('CREATED', 'QUEUED', 'RUNNING')) AS active",
            "state IN ('WAITING', 'CREATED', 'QUEUED', 'RUNNING')) AS active"))
    comments = {**previous._reporting().COMMENTS, **previous.COMMENTS}  # type: ignore[attr-defined]
    set_comments({k: v for k, v in comments.items() if k.split(" ", 1)[1].startswith("reporting.")})
    op.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA reporting TO {previous.ROLE}")  # type: ignore[attr-defined]
    op.drop_table("trigger_rejections")
    op.drop_table("schedule_fires")
    op.drop_index("jobs_trigger_message_idx", "jobs")
    op.drop_index("jobs_schedule_idx", "jobs")
    for column in ("message_id", "trigger", "scheduled_for", "schedule"):
        op.drop_column("jobs", column)

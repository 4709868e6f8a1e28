"""jobs and job_attempts

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

NOW = sa.text("now()")


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("queue", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("payload", JSONB, nullable=False),
        sa.Column("result", JSONB),
        sa.Column("error", JSONB),
        sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("timeout_s", sa.Integer, nullable=False),
        sa.Column("progress", JSONB),
        sa.Column("labels", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("task_name", sa.Text, nullable=False),
        sa.Column("run", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("attempts_base", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("owner", sa.Text),
        sa.Column("idempotency_key", sa.Text),
        sa.Column("request_hash", sa.Text),
        sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.text("false")),
        sa.Column("lease_expires_time", sa.DateTime(timezone=True)),
        sa.Column("attempt_started_time", sa.DateTime(timezone=True)),
        sa.Column("created_time", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        sa.Column("scheduled_time", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        sa.Column("started_time", sa.DateTime(timezone=True)),
        sa.Column("done_time", sa.DateTime(timezone=True)),
        sa.Column("updated_time", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        sa.CheckConstraint(
            "state IN ('CREATED','QUEUED','RUNNING','COMPLETED','FAILED','CANCELLED')",
            name="jobs_state_valid",
        ),
        sa.CheckConstraint("max_attempts >= 1", name="jobs_max_attempts_positive"),
        sa.CheckConstraint("timeout_s >= 1", name="jobs_timeout_positive"),
    )
    op.create_index("jobs_created_idx", "jobs", ["created_time", "id"])
    op.create_index("jobs_state_created_idx", "jobs", ["state", "created_time", "id"])
    op.create_index("jobs_type_created_idx", "jobs", ["type", "created_time", "id"])
    op.create_index("jobs_queue_created_idx", "jobs", ["queue", "created_time", "id"])
    op.create_index(
        "jobs_labels_idx", "jobs", ["labels"],
        postgresql_using="gin", postgresql_ops={"labels": "jsonb_path_ops"},
    )
    op.create_index(
        "jobs_active_idx", "jobs", ["state", "updated_time"],
        postgresql_where=sa.text("state IN ('CREATED','QUEUED','RUNNING')"),
    )
    op.create_index(
        "jobs_idempotency_key_idx", "jobs", ["idempotency_key"], unique=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.create_index("jobs_done_time_idx", "jobs", ["done_time"])

    op.create_table(
        "job_attempts",
        sa.Column("job_id", UUID(as_uuid=True), sa.ForeignKey("jobs.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("outcome", sa.Text, nullable=False),
        sa.Column("error", JSONB),
        sa.Column("started_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("task_name", sa.Text),
        sa.Column("retry_count", sa.Integer),
        sa.Column("execution_count", sa.Integer),
        sa.Column("retry_reason", sa.Text),
        sa.PrimaryKeyConstraint("job_id", "number", name="job_attempts_pkey"),
        sa.CheckConstraint(
            "outcome IN ('COMPLETED','FAILED','RETRY','CANCELLED','TIMED_OUT','LOST')",
            name="job_attempts_outcome_valid",
        ),
    )
    op.create_index("job_attempts_finished_idx", "job_attempts", ["finished_time"])


def downgrade() -> None:
    op.drop_table("job_attempts")
    op.drop_table("jobs")

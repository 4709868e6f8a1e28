"""job_steps: the results of a job's durable steps (ctx.step)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04

`ctx.step("name", fn)` inside a job runs fn once and stores its JSON result here, keyed by
the job and the step's name; a later attempt of the same job gets the stored result without
running fn again, so a job that failed at its fourth step resumes there. The first result
recorded is the step's result (an attempt that lost its lease may have run it too).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "job_steps",
        sa.Column("job_id", postgresql.UUID(as_uuid=True), sa.ForeignKey("jobs.id", ondelete="CASCADE"),
                  nullable=False, comment="The job."),
        sa.Column("name", sa.Text, nullable=False, comment="The step's name in its job."),
        sa.Column("result", postgresql.JSONB, comment="What the step's function returned (JSON)."),
        sa.Column("attempt", sa.Integer, nullable=False, comment="The attempt that ran it."),
        sa.Column("started_time", sa.DateTime(timezone=True), nullable=False, comment="When its function was called."),
        sa.Column("finished_time", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now(),
                  comment="When its result was stored."),
        sa.PrimaryKeyConstraint("job_id", "name"),
        comment="Durable steps: each step's result, recorded once; later attempts reuse it.",
    )


def downgrade() -> None:
    op.drop_table("job_steps")

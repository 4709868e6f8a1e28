"""jobs.next_attempt_time: when the retry of a job waiting to retry is expected

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03

A retryable failure puts the job back in QUEUED; Cloud Tasks then delivers the next attempt
after the queue's backoff. The finish records when that should be (from the queue's retry
settings and the delivery's retry count), so `GET /v1/jobs/{id}` and `cloudjobs watch` can
say when the next attempt comes, beside the last error. Null in every other state.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column(
        "next_attempt_time", sa.DateTime(timezone=True),
        comment="While QUEUED after a retryable failure: when Cloud Tasks should deliver the next attempt "
                "(the queue's backoff after the delivery's retry count). Null otherwise.",
    ))


def downgrade() -> None:
    op.drop_column("jobs", "next_attempt_time")

"""jobs.lease_holder: which process runs the attempt that holds the lease

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04

A gunicorn worker killed mid-attempt leaves its job RUNNING until the lease ends (timeout +
margin, 330 s by default), while Cloud Tasks redelivers in vain. The claim now records the
process (host, boot, pid, start time): a redelivery that lands on the same machine and finds
that process gone takes the job over at once, recording the dead attempt LOST / ATTEMPT_DIED.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column(
        "lease_holder", sa.Text,
        comment="The process that claimed the running attempt: host/boot id/pid/start ticks. "
                "Meaningful while RUNNING.",
    ))


def downgrade() -> None:
    op.drop_column("jobs", "lease_holder")

"""An attempt's traceback: where a job function raised, kept with the attempt (the last 8 kB)

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-04

Only for an attempt whose function raised an unexpected exception (not Retry or Permanent,
which say what they mean). Readable by the job's owner, like the job's error message; logs
get only the frames (handlers/run.py). The reporting views do not carry it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("job_attempts", sa.Column(
        "traceback", sa.Text,
        comment="Where the job function raised (Python's traceback, its last 8 kB); null otherwise."))


def downgrade() -> None:
    op.drop_column("job_attempts", "traceback")

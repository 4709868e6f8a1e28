"""One index fewer on job_attempts: `job_attempts_finished_idx` duplicated the report index

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02

Every finish inserts an attempt row, and every index of job_attempts takes an entry.
`job_attempts_finished_idx (finished_time)` has the same key as
`job_attempts_report_idx (finished_time) INCLUDE (...)`, which serves every query the first
one served (retention, reports by finish time), so it goes.
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("DROP INDEX job_attempts_finished_idx")


def downgrade() -> None:
    op.execute("CREATE INDEX job_attempts_finished_idx ON job_attempts (finished_time)")

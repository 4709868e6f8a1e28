"""Two fewer indexes on jobs: every state change of a job writes to each of them

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23

A transition changes indexed columns (state, attempts, times), so PostgreSQL cannot update
the row in place (HOT): every index of jobs takes a new entry on each create, claim and
finish. Issue #7 measured 1.87 ms of database CPU per `/handlers/run`. Two indexes were
redundant with a third:

- `jobs_created_idx (created_time, id)`, for listing newest first: `jobs_report_idx` becomes
  `(created_time, id) INCLUDE (...)` and serves both listing and reports.
- `jobs_done_time_idx (done_time)`, for retention: purge now walks `jobs_report_idx` by
  created_time (a job that ended before the cutoff was created before it), its `done_time`
  and `state` read from the index.
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

INCLUDE = "type, queue, state, owner, attempts, scheduled_time, started_time, done_time"


def upgrade() -> None:
    op.execute("DROP INDEX jobs_report_idx")
    op.execute(f"CREATE INDEX jobs_report_idx ON jobs (created_time, id) INCLUDE ({INCLUDE})")
    op.execute("DROP INDEX jobs_created_idx")
    op.execute("DROP INDEX jobs_done_time_idx")


def downgrade() -> None:
    op.execute("CREATE INDEX jobs_done_time_idx ON jobs (done_time)")
    op.execute("CREATE INDEX jobs_created_idx ON jobs (created_time, id)")
    op.execute("DROP INDEX jobs_report_idx")
    op.execute(f"CREATE INDEX jobs_report_idx ON jobs (created_time) INCLUDE ({INCLUDE})")

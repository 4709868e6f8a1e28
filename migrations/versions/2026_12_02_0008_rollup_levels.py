"""Rollup rows summed over type, queue and owner too, with their percentiles: a report point is one row

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02

Until now `job_rollups` held one row per hour (or day), type, queue and owner, and a report
by queue merged the rows of every type and owner of each hour: an hourly timeseries over 30
days unnested and regrouped ~136,000 histogram cells of ~10,800 rows and took ~1 s at 1M
jobs on this machine. Now each hour and day also has rows summed over any of the three
(GROUPING SETS), told apart by `level`, the GROUPING(type, queue, owner) bits of what was
summed over: 4 type, 2 queue, 1 owner; 0 for the rows by all three, the only ones
`reporting.job_rollups` shows. A report reads the level that keeps exactly the dimensions it
filters or groups by. A dimension summed over holds ''. Each row also keeps the p50, p95
and p99 of its two histograms (`wait_p`, `run_p`), so a point made of one row (every whole
hour of an hourly timeseries) needs no histogram merged at all.

The existing rows are dropped and `rolled_until` reset: the next refresh (the sweeper's, or
`cloudjobs rollup`) rolls the history up again, levels and all; until then reports read the
jobs themselves (correct, slower).
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

LEVEL_COMMENT = (
    "What the row is summed over, as GROUPING(type, queue, owner) bits: 4 type, 2 queue, 1 owner "
    "(those columns hold ''); 0: one type, queue and owner."
)
PERCENTILE_COMMENTS = {
    "wait_p": "p50, p95 and p99 of the queue wait histogram, in seconds (a report point made of this row alone).",
    "run_p": "p50, p95 and p99 of the run time histogram, in seconds (a report point made of this row alone).",
}
VIEW_COLUMNS = ("grain, period, type, queue, owner, jobs, completed, failed, cancelled, active, retries, ran, "
                "retried, wait_buckets, wait_counts, run_buckets, run_counts")


def upgrade() -> None:
    op.execute("DELETE FROM job_rollups")
    op.execute("DELETE FROM job_rollup_dirty")
    op.execute("UPDATE job_rollup_state SET rolled_until = NULL, refreshed_time = NULL")
    op.execute("ALTER TABLE job_rollups ADD COLUMN level smallint NOT NULL DEFAULT 0")
    op.execute(f"COMMENT ON COLUMN job_rollups.level IS '{LEVEL_COMMENT.replace(chr(39), chr(39) * 2)}'")
    op.execute("ALTER TABLE job_rollups ADD COLUMN wait_p float8[], ADD COLUMN run_p float8[]")
    for column, text in PERCENTILE_COMMENTS.items():
        op.execute(f"COMMENT ON COLUMN job_rollups.{column} IS '{text}'")
    op.execute("ALTER TABLE job_rollups DROP CONSTRAINT job_rollups_pkey")
    op.execute("ALTER TABLE job_rollups ADD CONSTRAINT job_rollups_pkey "
               "PRIMARY KEY (grain, period, level, type, queue, owner)")
    op.execute(f"CREATE OR REPLACE VIEW reporting.job_rollups AS "
               f"SELECT {VIEW_COLUMNS} FROM public.job_rollups WHERE level = 0")


def downgrade() -> None:
    op.execute(f"CREATE OR REPLACE VIEW reporting.job_rollups AS SELECT {VIEW_COLUMNS} FROM public.job_rollups")
    op.execute("DELETE FROM job_rollups WHERE level <> 0")
    op.execute("ALTER TABLE job_rollups DROP CONSTRAINT job_rollups_pkey")
    op.execute("ALTER TABLE job_rollups ADD CONSTRAINT job_rollups_pkey PRIMARY KEY (grain, period, type, queue, owner)")
    op.execute("ALTER TABLE job_rollups DROP COLUMN level, DROP COLUMN wait_p, DROP COLUMN run_p")

"""Operating: long-running bulk operations and the audit log

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-04

`operations` holds each bulk cancel or retry (AIP-151 long-running operations): what it acts
on (a filter, or a list of ids), where it stands (a keyset cursor over created_time and id,
and the jobs created up to `cutoff` only, so that it ends), and its counts. Each chunk's
changes and the operation's advance commit together, so a process that dies mid-way loses
nothing and counts nothing twice. `audit_log` records who did what, when, to how many jobs.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "operations",
        sa.Column("id", postgresql.UUID(as_uuid=True), primary_key=True, comment="The operation's id (operations/<id>)."),
        sa.Column("kind", sa.Text, nullable=False, comment="batchCancel or batchRetry."),
        sa.Column("owner", sa.Text, comment="The principal that started it."),
        sa.Column("scope", sa.Text, comment="Whose jobs it may touch (null: every owner's, an admin's)."),
        sa.Column("filter", postgresql.JSONB, comment="The filter of GET /v1/jobs it acts on (null: ids)."),
        sa.Column("ids", postgresql.ARRAY(postgresql.UUID(as_uuid=True)), comment="The jobs it acts on (null: filter)."),
        sa.Column("cutoff", sa.DateTime(timezone=True), nullable=False,
                  comment="Only jobs created up to this time: the operation's end."),
        sa.Column("cursor_time", sa.DateTime(timezone=True), comment="Keyset position: the last job read."),
        sa.Column("cursor_id", postgresql.UUID(as_uuid=True), comment="Keyset position: the last job read."),
        sa.Column("matched", sa.Integer, nullable=False, server_default=sa.text("0"), comment="Jobs read so far."),
        sa.Column("succeeded", sa.Integer, nullable=False, server_default=sa.text("0"),
                  comment="Jobs cancelled or retried."),
        sa.Column("skipped", sa.Integer, nullable=False, server_default=sa.text("0"),
                  comment="Jobs read that were not in a state to act on (already done, retried, cancelled)."),
        sa.Column("failed", sa.Integer, nullable=False, server_default=sa.text("0"),
                  comment="Jobs it could not act on (a retry whose unique key another job holds)."),
        sa.Column("done", sa.Boolean, nullable=False, server_default=sa.text("false"), comment="True once finished."),
        sa.Column("created_time", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now(),
                  comment="When it was started."),
        sa.Column("updated_time", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now(),
                  comment="Its last chunk."),
        sa.Column("done_time", sa.DateTime(timezone=True), comment="When it finished."),
        sa.Column("idempotency_key", sa.Text, comment="The starting request's Idempotency-Key, unique per owner."),
        sa.Column("request_hash", sa.Text, comment="SHA-256 of the starting request."),
        sa.CheckConstraint("kind IN ('batchCancel', 'batchRetry')", name="operations_kind_valid"),
        sa.CheckConstraint("(filter IS NULL) <> (ids IS NULL)", name="operations_filter_or_ids"),
        comment="Bulk cancels and retries, processed in chunks (AIP-151 long-running operations).",
    )
    op.create_index("operations_owner_idempotency_key_idx", "operations",
                    [sa.text("coalesce(owner, '')"), "idempotency_key"], unique=True,
                    postgresql_where=sa.text("idempotency_key IS NOT NULL"))
    op.create_index("operations_unfinished_idx", "operations", ["updated_time"], postgresql_where=sa.text("NOT done"))
    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True, comment="Its order."),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now(),
                  comment="When it was done."),
        sa.Column("principal", sa.Text, comment="Who did it (key:<id>, sa:<email>, or null without auth)."),
        sa.Column("action", sa.Text, nullable=False,
                  comment="job.cancel, job.retry, jobs.batchCancel, jobs.batchRetry, queue.pause, queue.resume."),
        sa.Column("target", sa.Text, nullable=False, comment="The job, operation or queue it was done to."),
        sa.Column("jobs", sa.Integer, comment="How many jobs it touched (an operation's, once it ended)."),
        sa.Column("via", sa.Text, nullable=False, comment="api or dashboard."),
        sa.Column("details", postgresql.JSONB, comment="The filter, the counts."),
        comment="Who did what, when, to how many jobs: operators' actions through the API and the dashboard.",
    )
    op.create_index("audit_log_time_idx", "audit_log", [sa.text("time DESC")])


def downgrade() -> None:
    op.drop_table("audit_log")
    op.drop_table("operations")

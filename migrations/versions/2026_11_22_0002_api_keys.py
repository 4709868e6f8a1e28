"""API keys; idempotency keys and listing scoped to the job's owner

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("secret_hash", sa.Text, nullable=False),
        sa.Column("admin", sa.Boolean, nullable=False, server_default=sa.text("false")),
        sa.Column("created_time", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
        sa.Column("revoked_time", sa.DateTime(timezone=True)),
    )
    op.create_index("api_keys_name_idx", "api_keys", ["name"], unique=True,
                    postgresql_where=sa.text("revoked_time IS NULL"))
    # An Idempotency-Key belongs to its caller: two callers may use the same key.
    op.drop_index("jobs_idempotency_key_idx", table_name="jobs")
    op.create_index(
        "jobs_owner_idempotency_key_idx", "jobs", [sa.text("coalesce(owner, '')"), "idempotency_key"],
        unique=True, postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.create_index("jobs_owner_created_idx", "jobs", ["owner", "created_time", "id"])


def downgrade() -> None:
    op.drop_index("jobs_owner_created_idx", table_name="jobs")
    op.drop_index("jobs_owner_idempotency_key_idx", table_name="jobs")
    op.create_index("jobs_idempotency_key_idx", "jobs", ["idempotency_key"], unique=True,
                    postgresql_where=sa.text("idempotency_key IS NOT NULL"))
    op.drop_table("api_keys")

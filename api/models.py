"""The tables. Alembic owns the schema; these definitions must match its head."""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID

STATES = ("CREATED", "QUEUED", "RUNNING", "COMPLETED", "FAILED", "CANCELLED")
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED")
ACTIVE = ("CREATED", "QUEUED", "RUNNING")
OUTCOMES = ("COMPLETED", "FAILED", "RETRY", "CANCELLED", "TIMED_OUT", "LOST")

metadata = MetaData()

_now = text("now()")

jobs = Table(
    "jobs",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("type", Text, nullable=False),
    Column("queue", Text, nullable=False),
    Column("state", Text, nullable=False),
    Column("payload", JSONB, nullable=False),
    Column("result", JSONB),
    Column("error", JSONB),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("max_attempts", Integer, nullable=False),
    Column("timeout_s", Integer, nullable=False),
    Column("progress", JSONB),
    Column("labels", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("task_name", Text, nullable=False),
    # Each :retry starts a run: a new task name, and a fresh max_attempts budget counted
    # from attempts_base (attempts go on across runs).
    Column("run", Integer, nullable=False, server_default=text("0")),
    Column("attempts_base", Integer, nullable=False, server_default=text("0")),
    Column("owner", Text),  # the principal that created the job
    Column("idempotency_key", Text),
    Column("request_hash", Text),
    Column("cancel_requested", Boolean, nullable=False, server_default=text("false")),
    Column("lease_expires_time", DateTime(timezone=True)),
    Column("attempt_started_time", DateTime(timezone=True)),
    Column("created_time", DateTime(timezone=True), nullable=False, server_default=_now),
    Column("scheduled_time", DateTime(timezone=True), nullable=False, server_default=_now),
    Column("started_time", DateTime(timezone=True)),
    Column("done_time", DateTime(timezone=True)),
    Column("updated_time", DateTime(timezone=True), nullable=False, server_default=_now),
    CheckConstraint(
        "state IN ('CREATED','QUEUED','RUNNING','COMPLETED','FAILED','CANCELLED')",
        name="jobs_state_valid",
    ),
    CheckConstraint("max_attempts >= 1", name="jobs_max_attempts_positive"),
    CheckConstraint("timeout_s >= 1", name="jobs_timeout_positive"),
    # Listing: newest first, keyset on (created_time, id).
    Index("jobs_created_idx", "created_time", "id"),
    Index("jobs_state_created_idx", "state", "created_time", "id"),
    Index("jobs_type_created_idx", "type", "created_time", "id"),
    Index("jobs_queue_created_idx", "queue", "created_time", "id"),
    Index("jobs_labels_idx", "labels", postgresql_using="gin", postgresql_ops={"labels": "jsonb_path_ops"}),
    # The sweeper looks only at live jobs: its cost follows them, not the history.
    Index(
        "jobs_active_idx",
        "state",
        "updated_time",
        postgresql_where=text("state IN ('CREATED','QUEUED','RUNNING')"),
    ),
    # An Idempotency-Key belongs to its caller.
    Index(
        "jobs_owner_idempotency_key_idx",
        text("coalesce(owner, '')"),
        "idempotency_key",
        unique=True,
        postgresql_where=text("idempotency_key IS NOT NULL"),
    ),
    Index("jobs_owner_created_idx", "owner", "created_time", "id"),
    Index("jobs_done_time_idx", "done_time"),
)

job_attempts = Table(
    "job_attempts",
    metadata,
    Column("job_id", UUID(as_uuid=True), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("number", Integer, nullable=False),
    Column("outcome", Text, nullable=False),
    Column("error", JSONB),
    Column("started_time", DateTime(timezone=True), nullable=False),
    Column("finished_time", DateTime(timezone=True), nullable=False),
    Column("task_name", Text),
    Column("retry_count", Integer),
    Column("execution_count", Integer),
    Column("retry_reason", Text),
    PrimaryKeyConstraint("job_id", "number", name="job_attempts_pkey"),
    CheckConstraint(
        "outcome IN ('COMPLETED','FAILED','RETRY','CANCELLED','TIMED_OUT','LOST')",
        name="job_attempts_outcome_valid",
    ),
    Index("job_attempts_finished_idx", "finished_time"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Text, primary_key=True),  # the public part of the key: cj_<id>_<secret>
    Column("name", Text, nullable=False),
    Column("secret_hash", Text, nullable=False),  # SHA-256 of the secret; the key is shown once
    Column("admin", Boolean, nullable=False, server_default=text("false")),
    Column("created_time", DateTime(timezone=True), nullable=False, server_default=_now),
    Column("revoked_time", DateTime(timezone=True)),
    Index("api_keys_name_idx", "name", unique=True, postgresql_where=text("revoked_time IS NULL")),
)

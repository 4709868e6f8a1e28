"""Flow control and completion webhooks: unique keys, concurrency keys, throttles, callbacks

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-04

- **Unique keys.** A job created with `unique_key` holds it (`unique_held`) while it is not
  terminal, or with `unique_for_s` until that long after it started; a partial unique index on
  (owner, unique_key) WHERE unique_held is the constraint that makes a second create find the
  first, race-free. A BEFORE UPDATE OF state trigger keeps `unique_held` true: it lets the key
  go when the job ends (unless its window still runs), and takes it again on a retry (which
  fails with a unique violation if another job holds it meanwhile). A window that ran out is
  let go by the next create of the key (api/store/flow.py).
- **Concurrency keys and throttles.** A keyed job waits (WAITING, waiting_on = 0) until it is
  admitted: at most `concurrency_limit` jobs of a (queue, concurrency_key) are CREATED, QUEUED
  or RUNNING; `key_throttles` holds each throttled key's next free dispatch time.
  `ready_time` is when it began to wait for its key, `slot_wait_s` how long it waited.
- **Completion webhooks.** A job with a `callback_url` that reaches a terminal state gets one
  `webhook_events` row (a trigger: every path to a terminal state, in its transaction), with
  the job as it was then; each delivery attempt is a `webhook_deliveries` row.
`reporting.job_history` gains concurrency_key, priority and slot_wait_s (appended).
"""

from __future__ import annotations

import importlib

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from migrations import set_comments

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

TERMINAL = "('COMPLETED', 'FAILED', 'CANCELLED')"


def _previous() -> object:
    return importlib.import_module("migrations.versions.2026_12_04_0015_triggers")


def _history() -> object:
    return importlib.import_module("migrations.versions.2026_12_04_0014_reporting_workflows")


HISTORY_EXTRA = ",\n           workflow_id, step, schedule, scheduled_for, trigger, message_id"

COMMENTS = {
    "COLUMN reporting.job_history.concurrency_key": "The job's concurrency key (null: none).",
    "COLUMN reporting.job_history.priority": "Its priority among the jobs waiting for its key (higher first).",
    "COLUMN reporting.job_history.slot_wait_s":
        "Seconds it waited for its concurrency key's slot or its throttle before it was handed to Cloud Tasks.",
}

UNIQUE_HOLD = f"""
    CREATE FUNCTION cloudjobs_unique_hold() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.state IN {TERMINAL} THEN
            IF NEW.unique_for_s IS NULL
               OR coalesce(NEW.started_time, NEW.created_time) + make_interval(secs => NEW.unique_for_s) <= now() THEN
                NEW.unique_held := false;
            END IF;
        ELSIF OLD.state IN {TERMINAL} THEN
            NEW.unique_held := true;
        END IF;
        RETURN NEW;
    END
    $$
"""

WEBHOOK_EVENT = """
    CREATE FUNCTION cloudjobs_webhook_event() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO webhook_events (id, job_id, run, state, url, job)
        VALUES ('msg_' || replace(gen_random_uuid()::text, '-', ''), NEW.id, NEW.run, NEW.state,
                NEW.callback_url, to_jsonb(NEW))
        ON CONFLICT (job_id, run) DO NOTHING;
        RETURN NULL;
    END
    $$
"""


def upgrade() -> None:
    columns = [
        sa.Column("unique_key", sa.Text, comment="While the job holds it, a create with the same key (same owner) "
                                                 "returns this job instead of creating one."),
        sa.Column("unique_for_s", sa.Integer, comment="Hold the unique key this long after the job started, "
                                                      "even once it ended; null: while it is not terminal."),
        sa.Column("unique_held", sa.Boolean, nullable=False, server_default=sa.text("false"),
                  comment="True while the job holds its unique key (the unique index covers these rows)."),
        sa.Column("concurrency_key", sa.Text, comment="Jobs of one queue and key share the key's limit."),
        sa.Column("concurrency_limit", sa.Integer,
                  comment="At most this many jobs of its (queue, concurrency_key) are handed to Cloud Tasks at once; "
                          "null: no limit."),
        sa.Column("priority", sa.Integer, nullable=False, server_default=sa.text("0"),
                  comment="Among the jobs waiting for a key, higher first (then oldest first)."),
        sa.Column("throttle_key", sa.Text, comment="The key whose rate (queues.yaml rate_per_key) paces the job."),
        sa.Column("ready_time", sa.DateTime(timezone=True),
                  comment="When a keyed job began to wait for its key (created, or its dependencies done)."),
        sa.Column("slot_wait_s", sa.Float(precision=53),
                  comment="How long a keyed job waited for its slot or throttle, seconds."),
        sa.Column("callback_url", sa.Text, comment="Where its terminal state is POSTed (a signed webhook)."),
    ]
    for column in columns:
        op.add_column("jobs", column)
    op.create_check_constraint("jobs_concurrency_limit_positive", "jobs", "concurrency_limit >= 1")
    op.create_index("jobs_unique_key_idx", "jobs", [sa.text("coalesce(owner, '')"), "unique_key"], unique=True,
                    postgresql_where=sa.text("unique_held"))
    op.create_index("jobs_key_admitted_idx", "jobs", ["queue", "concurrency_key"],
                    postgresql_where=sa.text("concurrency_limit IS NOT NULL "
                                             "AND state IN ('CREATED', 'QUEUED', 'RUNNING')"))
    op.create_index("jobs_key_waiting_idx", "jobs",
                    ["queue", "concurrency_key", sa.text("priority DESC"), "created_time", "ready_time", "id"],
                    postgresql_where=sa.text("state = 'WAITING' AND waiting_on = 0 "
                                             "AND (concurrency_limit IS NOT NULL OR throttle_key IS NOT NULL)"))
    op.execute(UNIQUE_HOLD)
    op.execute(
        """
        CREATE TRIGGER jobs_unique_hold
        BEFORE UPDATE OF state ON jobs
        FOR EACH ROW
        WHEN (NEW.unique_key IS NOT NULL AND OLD.state IS DISTINCT FROM NEW.state)
        EXECUTE FUNCTION cloudjobs_unique_hold()
        """
    )
    op.create_table(
        "key_throttles",
        sa.Column("queue", sa.Text, nullable=False, comment="The queue."),
        sa.Column("key", sa.Text, nullable=False, comment="The throttle key (or the concurrency key)."),
        sa.Column("next_time", sa.DateTime(timezone=True), nullable=False,
                  comment="The key's next free dispatch time."),
        sa.PrimaryKeyConstraint("queue", "key"),
        comment="Each throttled key's next free dispatch time (rate_per_key in queues.yaml).",
    )
    op.create_table(
        "webhook_events",
        sa.Column("id", sa.Text, primary_key=True, comment="The webhook-id (msg_…), the same on every delivery."),
        sa.Column("job_id", postgresql.UUID(as_uuid=True), sa.ForeignKey("jobs.id", ondelete="CASCADE"),
                  nullable=False, comment="The job that ended."),
        sa.Column("run", sa.Integer, nullable=False, comment="The job's run that ended (each :retry is a run)."),
        sa.Column("state", sa.Text, nullable=False, comment="The terminal state it reached."),
        sa.Column("url", sa.Text, nullable=False, comment="Where it is delivered."),
        sa.Column("job", postgresql.JSONB, nullable=False, comment="The job's row as it was when it ended."),
        sa.Column("created_time", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now(),
                  comment="When the job ended."),
        sa.Column("enqueued_time", sa.DateTime(timezone=True), comment="When its delivery task was created."),
        sa.Column("delivered_time", sa.DateTime(timezone=True), comment="When a delivery was answered 2xx."),
        sa.Column("failed_time", sa.DateTime(timezone=True), comment="When delivery was given up."),
        sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0"), comment="Deliveries tried."),
        sa.UniqueConstraint("job_id", "run", name="webhook_events_job_run_key"),
        comment="One completion event per terminal transition of a job with a callback URL.",
    )
    op.create_index("webhook_events_unsent_idx", "webhook_events", ["created_time"],
                    postgresql_where=sa.text("enqueued_time IS NULL"))
    op.create_table(
        "webhook_deliveries",
        sa.Column("event_id", sa.Text, sa.ForeignKey("webhook_events.id", ondelete="CASCADE"), nullable=False,
                  comment="The event."),
        sa.Column("number", sa.Integer, nullable=False, comment="1 for the first delivery."),
        sa.Column("started_time", sa.DateTime(timezone=True), nullable=False, comment="When the POST began."),
        sa.Column("duration_ms", sa.Integer, nullable=False, comment="How long it took."),
        sa.Column("status_code", sa.Integer, comment="The receiver's HTTP status (null: no answer)."),
        sa.Column("error", sa.Text, comment="Why it failed, when it did."),
        sa.PrimaryKeyConstraint("event_id", "number"),
        comment="Each attempt to deliver a webhook event.",
    )
    op.execute(WEBHOOK_EVENT)
    op.execute(
        f"""
        CREATE TRIGGER jobs_webhook_event
        AFTER UPDATE OF state ON jobs
        FOR EACH ROW
        WHEN (NEW.callback_url IS NOT NULL AND NEW.state IN {TERMINAL} AND OLD.state IS DISTINCT FROM NEW.state)
        EXECUTE FUNCTION cloudjobs_webhook_event()
        """
    )
    op.execute(
        f"""
        CREATE TRIGGER jobs_webhook_event_insert
        AFTER INSERT ON jobs
        FOR EACH ROW
        WHEN (NEW.callback_url IS NOT NULL AND NEW.state IN {TERMINAL})
        EXECUTE FUNCTION cloudjobs_webhook_event()
        """
    )
    job_history = _history().JOB_HISTORY  # type: ignore[attr-defined]
    op.execute(job_history.format(extra=HISTORY_EXTRA + ", concurrency_key, priority, slot_wait_s"))
    set_comments(COMMENTS)


def downgrade() -> None:
    op.execute("DROP VIEW reporting.job_stats_hourly, reporting.job_stats_daily, reporting.job_history")
    history = _history()
    op.execute(history.JOB_HISTORY.format(extra=HISTORY_EXTRA).replace(  # type: ignore[attr-defined]
        "CREATE OR REPLACE", "CREATE"))
    for name, unit in (("job_stats_hourly", "hour"), ("job_stats_daily", "day")):
        op.execute(history._stats_view(name, unit))  # type: ignore[attr-defined]
    previous = _previous()
    comments = {**history._reporting().COMMENTS, **history.COMMENTS, **previous.COMMENTS}  # type: ignore[attr-defined]
    set_comments({k: v for k, v in comments.items() if k.split(" ", 1)[1].startswith("reporting.")})
    op.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA reporting TO {history.ROLE}")  # type: ignore[attr-defined]
    op.execute("DROP TRIGGER IF EXISTS jobs_webhook_event_insert ON jobs")
    op.execute("DROP TRIGGER IF EXISTS jobs_webhook_event ON jobs")
    op.execute("DROP FUNCTION IF EXISTS cloudjobs_webhook_event()")
    op.drop_table("webhook_deliveries")
    op.drop_table("webhook_events")
    op.drop_table("key_throttles")
    op.execute("DROP TRIGGER IF EXISTS jobs_unique_hold ON jobs")
    op.execute("DROP FUNCTION IF EXISTS cloudjobs_unique_hold()")
    for index in ("jobs_key_waiting_idx", "jobs_key_admitted_idx", "jobs_unique_key_idx"):
        op.drop_index(index, "jobs")
    op.drop_constraint("jobs_concurrency_limit_positive", "jobs")
    for column in ("callback_url", "slot_wait_s", "ready_time", "throttle_key", "priority", "concurrency_limit",
                   "concurrency_key", "unique_held", "unique_for_s", "unique_key"):
        op.drop_column("jobs", column)

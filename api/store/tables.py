"""The tables. Alembic owns the schema; these definitions must match its head."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Computed,
    DateTime,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID

STATES = ("WAITING", "CREATED", "QUEUED", "RUNNING", "COMPLETED", "FAILED", "CANCELLED")
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED")
ACTIVE = ("WAITING", "CREATED", "QUEUED", "RUNNING")
DEPENDENCY_POLICIES = ("fail", "cancel", "run")
WORKFLOW_STATES = ("RUNNING", "COMPLETED", "FAILED", "CANCELLED")
OUTCOMES = ("COMPLETED", "FAILED", "RETRY", "CANCELLED", "TIMED_OUT", "LOST")

metadata = MetaData()

_now = text("now()")

jobs = Table(
    "jobs",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True, comment="The job's id (a UUID; the task name is derived from it)."),
    Column("type", Text, nullable=False, comment="The job type: the name its function was registered under with @job."),
    Column("queue", Text, nullable=False, comment="The Cloud Tasks queue it goes to."),
    Column("state", Text, nullable=False, comment="CREATED, QUEUED, RUNNING, COMPLETED, FAILED or CANCELLED."),
    Column("payload", JSONB, nullable=False, comment="The job's input, validated by its type's schema."),
    Column("result", JSONB, comment="What the job function returned (COMPLETED jobs)."),
    Column("error", JSONB, comment="The last failure: {code, message}."),
    Column("attempts", Integer, nullable=False, server_default=text("0"), comment="Attempts started, over every run."),
    Column("max_attempts", Integer, nullable=False, comment="The attempt budget of each run (at most the queue's)."),
    Column("timeout_s", Integer, nullable=False, comment="Per-attempt time limit, seconds."),
    Column("progress", JSONB, comment="The running attempt's last report: {fraction, message}."),
    Column("labels", JSONB, nullable=False, server_default=text("'{}'::jsonb"), comment="Free-form string labels."),
    Column("task_name", Text, nullable=False, comment="The full name of the current run's Cloud Tasks task."),
    # Each :retry starts a run: a new task name, and a fresh max_attempts budget counted
    # from attempts_base (attempts go on across runs).
    Column("run", Integer, nullable=False, server_default=text("0"), comment="How many times :retry started the job again."),
    Column("attempts_base", Integer, nullable=False, server_default=text("0"), comment="attempts when the current run began (its budget counts from here)."),
    Column("owner", Text, comment="The principal that created the job (key:<id>, sa:<email>, or null without auth)."),  # the principal that created the job
    Column("idempotency_key", Text, comment="The creating request's Idempotency-Key, unique per owner."),
    Column("request_hash", Text, comment="SHA-256 of the creating request, to tell a replay from a different request."),
    Column("cancel_requested", Boolean, nullable=False, server_default=text("false"), comment="True once a cancel was asked for while the job ran."),
    Column("lease_expires_time", DateTime(timezone=True), comment="Until when the running attempt holds the job."),
    Column("next_attempt_time", DateTime(timezone=True),
           comment="While QUEUED after a retryable failure: when Cloud Tasks should deliver the next attempt "
                   "(the queue's backoff after the delivery's retry count). Null otherwise."),
    Column("lease_holder", Text, comment="The process that claimed the running attempt: host/boot id/pid/start ticks. "
                                         "Meaningful while RUNNING."),
    Column("attempt_started_time", DateTime(timezone=True), comment="When the current attempt started."),
    Column("created_time", DateTime(timezone=True), nullable=False, server_default=_now, comment="When the job was accepted."),
    Column("scheduled_time", DateTime(timezone=True), nullable=False, server_default=_now, comment="When the job was due (run_at, or its creation)."),
    Column("started_time", DateTime(timezone=True), comment="When the current run's first attempt started."),
    Column("done_time", DateTime(timezone=True), comment="When it reached a terminal state."),
    Column("updated_time", DateTime(timezone=True), nullable=False, server_default=_now, comment="The last change."),
    Column("waiting_on", Integer, nullable=False, server_default=text("0"),
           comment="Dependencies not yet terminal (WAITING until 0)."),
    Column("on_dependency_failure", Text,
           comment="fail, cancel or run: what a failed or cancelled dependency does to this job; null without dependencies."),
    Column("has_dependents", Boolean, nullable=False, server_default=text("false"),
           comment="True once a job depends on this one: its terminal transition releases them."),
    Column("workflow_id", UUID(as_uuid=True), comment="The workflow this job is a step of."),
    Column("step", Text, comment="Its step name in the workflow."),
    Column("schedule", Text, comment="The schedule whose fire created the job."),
    Column("scheduled_for", DateTime(timezone=True),
           comment="The schedule time of that fire (X-CloudScheduler-ScheduleTime)."),
    Column("trigger", Text, comment="The Pub/Sub trigger whose message created the job."),
    Column("message_id", Text, comment="The Pub/Sub messageId that created the job."),
    # Flow control (docs/flow-control.md) and completion webhooks (docs/webhooks.md).
    Column("unique_key", Text, comment="While the job holds it, a create with the same key (same owner) "
                                       "returns this job instead of creating one."),
    Column("unique_for_s", Integer, comment="Hold the unique key this long after the job started, "
                                            "even once it ended; null: while it is not terminal."),
    Column("unique_held", Boolean, nullable=False, server_default=text("false"),
           comment="True while the job holds its unique key (the unique index covers these rows)."),
    Column("concurrency_key", Text, comment="Jobs of one queue and key share the key's limit."),
    Column("concurrency_limit", Integer,
           comment="At most this many jobs of its (queue, concurrency_key) are handed to Cloud Tasks at once; "
                   "null: no limit."),
    Column("priority", Integer, nullable=False, server_default=text("0"),
           comment="Among the jobs waiting for a key, higher first (then oldest first)."),
    Column("throttle_key", Text, comment="The key whose rate (queues.yaml rate_per_key) paces the job."),
    Column("ready_time", DateTime(timezone=True),
           comment="When a keyed job began to wait for its key (created, or its dependencies done)."),
    Column("slot_wait_s", Float(precision=53), comment="How long a keyed job waited for its slot or throttle, seconds."),
    Column("callback_url", Text, comment="Where its terminal state is POSTed (a signed webhook)."),
    CheckConstraint(
        "state IN ('WAITING','CREATED','QUEUED','RUNNING','COMPLETED','FAILED','CANCELLED')",
        name="jobs_state_valid",
    ),
    CheckConstraint("on_dependency_failure IN ('fail','cancel','run')", name="jobs_on_dependency_failure_valid"),
    CheckConstraint("max_attempts >= 1", name="jobs_max_attempts_positive"),
    CheckConstraint("timeout_s >= 1", name="jobs_timeout_positive"),
    CheckConstraint("concurrency_limit >= 1", name="jobs_concurrency_limit_positive"),
    # Listing: newest first, keyset on (created_time, id); unfiltered, jobs_report_idx below.
    Index("jobs_state_created_idx", "state", "created_time", "id"),
    Index("jobs_type_created_idx", "type", "created_time", "id"),
    Index("jobs_queue_created_idx", "queue", "created_time", "id"),
    Index("jobs_labels_idx", "labels", postgresql_using="gin", postgresql_ops={"labels": "jsonb_path_ops"}),
    # The sweeper looks only at live jobs: its cost follows them, not the history.
    Index(
        "jobs_active_idx",
        "state",
        "updated_time",
        postgresql_where=text("state IN ('WAITING','CREATED','QUEUED','RUNNING')"),
    ),
    Index("jobs_workflow_idx", "workflow_id", "step", unique=True, postgresql_where=text("workflow_id IS NOT NULL")),
    Index("jobs_schedule_idx", "schedule", "scheduled_for", postgresql_where=text("schedule IS NOT NULL")),
    # One job per pushed Pub/Sub message, however often Pub/Sub delivers it.
    Index("jobs_trigger_message_idx", "trigger", "message_id", unique=True,
          postgresql_where=text("message_id IS NOT NULL")),
    # An Idempotency-Key belongs to its caller.
    Index(
        "jobs_owner_idempotency_key_idx",
        text("coalesce(owner, '')"),
        "idempotency_key",
        unique=True,
        postgresql_where=text("idempotency_key IS NOT NULL"),
    ),
    Index("jobs_owner_created_idx", "owner", "created_time", "id"),
    # The constraint of unique keys: one holder per (owner, key).
    Index("jobs_unique_key_idx", text("coalesce(owner, '')"), "unique_key", unique=True,
          postgresql_where=text("unique_held")),
    # Admission: the jobs that hold a key's slots, and the line of those waiting for one.
    Index("jobs_key_admitted_idx", "queue", "concurrency_key",
          postgresql_where=text("concurrency_limit IS NOT NULL AND state IN ('CREATED', 'QUEUED', 'RUNNING')")),
    Index("jobs_key_waiting_idx", "queue", "concurrency_key", text("priority DESC"), "created_time", "ready_time", "id",
          postgresql_where=text("state = 'WAITING' AND waiting_on = 0 "
                                "AND (concurrency_limit IS NOT NULL OR throttle_key IS NOT NULL)")),
    Index(
        "jobs_report_idx",
        "created_time",
        "id",
        postgresql_include=["type", "queue", "state", "owner", "attempts", "scheduled_time",
                            "started_time", "done_time"],
    ),
    comment="One row per job: its state, input, output and times. Written only by api/store.py.",
)

job_attempts = Table(
    "job_attempts",
    metadata,
    Column("job_id", UUID(as_uuid=True), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False, comment="The job."),
    Column("number", Integer, nullable=False, comment="1 for the job's first attempt, and on across runs."),
    Column("outcome", Text, nullable=False, comment="COMPLETED, FAILED, RETRY, CANCELLED, TIMED_OUT or LOST."),
    Column("error", JSONB, comment="The failure: {code, message}."),
    Column("started_time", DateTime(timezone=True), nullable=False, comment="When the attempt started."),
    Column("finished_time", DateTime(timezone=True), nullable=False, comment="When it ended, or was found to have died."),
    Column("task_name", Text, comment="The Cloud Tasks task that delivered it."),
    Column("retry_count", Integer, comment="X-CloudTasks-TaskRetryCount of the delivery."),
    Column("execution_count", Integer, comment="X-CloudTasks-TaskExecutionCount of the delivery."),
    Column("retry_reason", Text, comment="X-CloudTasks-TaskRetryReason of the delivery."),
    Column("traceback", Text, comment="Where the job function raised (Python's traceback, its last 8 kB); null otherwise."),
    # Copied from the job so reports need no join.
    Column("type", Text, comment="The job's type (copied from jobs, so reports need no join)."),
    Column("queue", Text, comment="The job's queue (copied from jobs)."),
    Column("owner", Text, comment="The principal that owns the job (copied from jobs)."),
    Column(
        "duration_ms",
        BigInteger,
        Computed("((extract(epoch FROM finished_time - started_time) * 1000)::bigint)", persisted=True),
        comment="finished_time - started_time, in milliseconds.",
    ),
    Column(
        "error_code",
        Text,
        Computed("error ->> 'code'", persisted=True),
        comment="error->>'code': the failure's code (FLAKY, TIMED_OUT, EXCEPTION, …).",
    ),
    PrimaryKeyConstraint("job_id", "number", name="job_attempts_pkey"),
    CheckConstraint(
        "outcome IN ('COMPLETED','FAILED','RETRY','CANCELLED','TIMED_OUT','LOST')",
        name="job_attempts_outcome_valid",
    ),
    Index(
        "job_attempts_report_idx",
        "finished_time",
        postgresql_include=["type", "queue", "owner", "outcome", "error_code", "duration_ms"],
    ),
    # Failed attempts only, with what the failures report counts.
    Index(
        "job_attempts_failures_idx",
        "finished_time",
        postgresql_include=["type", "queue", "owner", "error_code", "job_id"],
        postgresql_where=text("outcome <> 'COMPLETED' AND error_code IS NOT NULL"),
    ),
    comment="One row per attempt that reached the handler (append-only): when it ran and how it ended.",
)

job_dependencies = Table(
    "job_dependencies",
    metadata,
    Column("job_id", UUID(as_uuid=True), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False,
           comment="The dependent job."),
    Column("parent_id", UUID(as_uuid=True), nullable=False, comment="The job it waits for."),
    Column("done", Boolean, nullable=False, server_default=text("false"),
           comment="True once the parent's terminal transition released this edge."),
    PrimaryKeyConstraint("job_id", "parent_id", name="job_dependencies_pkey"),
    Index("job_dependencies_parent_idx", "parent_id"),
    comment="Which job waits for which: one row per dependency.",
)

job_steps = Table(
    "job_steps",
    metadata,
    Column("job_id", UUID(as_uuid=True), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False, comment="The job."),
    Column("name", Text, nullable=False, comment="The step's name in its job."),
    Column("result", JSONB, comment="What the step's function returned (JSON)."),
    Column("attempt", Integer, nullable=False, comment="The attempt that ran it."),
    Column("started_time", DateTime(timezone=True), nullable=False, comment="When its function was called."),
    Column("finished_time", DateTime(timezone=True), nullable=False, server_default=_now,
           comment="When its result was stored."),
    PrimaryKeyConstraint("job_id", "name", name="job_steps_pkey"),
    comment="Durable steps: each step's result, recorded once; later attempts reuse it.",
)

schedule_fires = Table(
    "schedule_fires",
    metadata,
    Column("schedule", Text, nullable=False, comment="The schedule's name in schedules.yaml."),
    Column("scheduled_for", DateTime(timezone=True), nullable=False,
           comment="The fire time Cloud Scheduler delivered (X-CloudScheduler-ScheduleTime)."),
    Column("outcome", Text, nullable=False, comment="created, or skipped (overlap: skip)."),
    Column("job_id", UUID(as_uuid=True), ForeignKey("jobs.id", ondelete="SET NULL"), comment="The job the fire created."),
    Column("previous_job_id", UUID(as_uuid=True),
           comment="The job still active that made the fire skip, or that it cancelled."),
    Column("fired_time", DateTime(timezone=True), nullable=False, server_default=_now,
           comment="When the first delivery of the fire arrived."),
    PrimaryKeyConstraint("schedule", "scheduled_for", name="schedule_fires_pkey"),
    CheckConstraint("outcome IN ('created', 'skipped')", name="schedule_fires_outcome_valid"),
    Index("schedule_fires_recent_idx", "schedule", text("fired_time DESC")),
    comment="One row per schedule fire: what it did, once, however often it was delivered.",
)

trigger_rejections = Table(
    "trigger_rejections",
    metadata,
    Column("subscription", Text, nullable=False, comment="The push subscription the message came from."),
    Column("message_id", Text, nullable=False, comment="The Pub/Sub messageId."),
    Column("trigger", Text, comment="The trigger it matched (null: none)."),
    Column("reason", Text, nullable=False, comment="Why no job was created."),
    Column("errors", JSONB, comment="The field errors, as a create would answer them."),
    Column("received_time", DateTime(timezone=True), nullable=False, server_default=_now,
           comment="When it was first pushed."),
    PrimaryKeyConstraint("subscription", "message_id", name="trigger_rejections_pkey"),
    comment="Pub/Sub messages acknowledged without a job, and why.",
)

workflows = Table(
    "workflows",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True, comment="The workflow's id."),
    Column("name", Text, nullable=False, comment="What its submitter called it."),
    Column("owner", Text, comment="The principal that created it."),
    Column("labels", JSONB, nullable=False, server_default=text("'{}'::jsonb"), comment="Free-form string labels."),
    Column("state", Text, nullable=False, server_default=text("'RUNNING'"),
           comment="RUNNING until every step is terminal; then COMPLETED, FAILED (a step failed) or CANCELLED."),
    Column("steps", Integer, nullable=False, comment="How many steps it has."),
    Column("active", Integer, nullable=False, comment="Steps not yet terminal."),
    Column("failed", Integer, nullable=False, server_default=text("0"), comment="Steps FAILED."),
    Column("cancelled", Integer, nullable=False, server_default=text("0"), comment="Steps CANCELLED."),
    Column("created_time", DateTime(timezone=True), nullable=False, server_default=_now, comment="When it was accepted."),
    Column("done_time", DateTime(timezone=True), comment="When its last step became terminal."),
    Column("updated_time", DateTime(timezone=True), nullable=False, server_default=_now, comment="The last change."),
    Column("idempotency_key", Text, comment="The creating request's Idempotency-Key, unique per owner."),
    Column("request_hash", Text, comment="SHA-256 of the creating request, to tell a replay from another."),
    CheckConstraint("state IN ('RUNNING','COMPLETED','FAILED','CANCELLED')", name="workflows_state_valid"),
    Index("workflows_created_idx", "created_time", "id"),
    Index("workflows_owner_created_idx", "owner", "created_time", "id"),
    Index("workflows_owner_idempotency_key_idx", text("coalesce(owner, '')"), "idempotency_key", unique=True,
          postgresql_where=text("idempotency_key IS NOT NULL")),
    comment="One row per workflow (a DAG of jobs); its steps are jobs with its workflow_id.",
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Text, primary_key=True, comment="The public part of the key: cj_<id>_<secret>."),  # the public part of the key: cj_<id>_<secret>
    Column("name", Text, nullable=False, comment="Who the key is for; unique among live keys."),
    Column("secret_hash", Text, nullable=False, comment="SHA-256 of the secret; the key itself is shown once and never stored."),  # SHA-256 of the secret; the key is shown once
    Column("admin", Boolean, nullable=False, server_default=text("false"), comment="An admin key sees and acts on every job."),
    Column("created_time", DateTime(timezone=True), nullable=False, server_default=_now, comment="When the key was made."),
    Column("revoked_time", DateTime(timezone=True), comment="When it was revoked; null while it is live."),
    Index("api_keys_name_idx", "name", unique=True, postgresql_where=text("revoked_time IS NULL")),
    comment="API keys of callers (AUTH=keys); secrets are stored as hashes only.",
)


# Rollups of job history for long-window reports (api/rollups.py, migration 0005).
job_rollups = Table(
    "job_rollups",
    metadata,
    Column("grain", Text, nullable=False, comment="hour or day."),
    Column("period", DateTime(timezone=True), nullable=False,
           comment="The start of the hour or day (UTC) the jobs were created in."),
    Column("type", Text, nullable=False, comment="The job type."),
    Column("queue", Text, nullable=False, comment="The queue."),
    Column("owner", Text, nullable=False, comment="The owner ('' for jobs created without auth)."),
    Column("jobs", Integer, nullable=False, comment="Jobs created."),
    Column("completed", Integer, nullable=False, comment="Of those, COMPLETED."),
    Column("failed", Integer, nullable=False, comment="FAILED."),
    Column("cancelled", Integer, nullable=False, comment="CANCELLED."),
    Column("active", Integer, nullable=False, comment="Not finished when rolled up (CREATED, QUEUED or RUNNING)."),
    Column("retries", BigInteger, nullable=False, comment="Attempts beyond the first, summed."),
    Column("ran", Integer, nullable=False, comment="Jobs with at least one attempt."),
    Column("retried", Integer, nullable=False, comment="Jobs with more than one attempt."),
    Column("wait_buckets", ARRAY(Integer), nullable=False,
           comment="Queue wait histogram: bucket numbers (see reporting.duration_bucket)."),
    Column("wait_counts", ARRAY(BigInteger), nullable=False, comment="Queue wait histogram: jobs in each of wait_buckets."),
    Column("run_buckets", ARRAY(Integer), nullable=False,
           comment="Run time histogram (first start to done): bucket numbers."),
    Column("run_counts", ARRAY(BigInteger), nullable=False, comment="Run time histogram: jobs in each of run_buckets."),
    Column("level", SmallInteger, nullable=False, server_default=text("0"),
           comment="What the row is summed over, as GROUPING(type, queue, owner) bits: 4 type, 2 queue, 1 owner "
                   "(those columns hold ''); 0: one type, queue and owner."),
    Column("wait_p", ARRAY(Float(precision=53)),
           comment="p50, p95 and p99 of the queue wait histogram, in seconds (a report point made of this row alone)."),
    Column("run_p", ARRAY(Float(precision=53)),
           comment="p50, p95 and p99 of the run time histogram, in seconds (a report point made of this row alone)."),
    PrimaryKeyConstraint("grain", "period", "level", "type", "queue", "owner", name="job_rollups_pkey"),
    CheckConstraint("grain IN ('hour', 'day')", name="job_rollups_grain_valid"),
    comment="Jobs per hour or day (of created_time, UTC), type, queue and owner: counts and duration histograms. "
            "Maintained by api/rollups.py; read by long-window reports.",
)

job_rollup_dirty = Table(
    "job_rollup_dirty",
    metadata,
    Column("hour", DateTime(timezone=True), nullable=False, comment="The hour (UTC, of created_time) of a job that changed."),
    Index("job_rollup_dirty_hour_idx", "hour"),
    comment="Marks (append-only) of hours whose jobs changed after they may have been rolled up; "
            "the next refresh recomputes them.",
)

job_rollup_state = Table(
    "job_rollup_state",
    metadata,
    Column("id", Boolean, primary_key=True, server_default=text("true"), comment="Always true: there is one row."),
    Column("rolled_until", DateTime(timezone=True),
           comment="Every hour before this is rolled up (unless marked dirty); null: none yet."),
    Column("refreshed_time", DateTime(timezone=True), comment="When the last refresh finished."),
    CheckConstraint("id", name="job_rollup_state_one_row"),
    comment="One row: how far job_rollups reaches.",
)

key_throttles = Table(
    "key_throttles",
    metadata,
    Column("queue", Text, nullable=False, comment="The queue."),
    Column("key", Text, nullable=False, comment="The throttle key (or the concurrency key)."),
    Column("next_time", DateTime(timezone=True), nullable=False, comment="The key's next free dispatch time."),
    PrimaryKeyConstraint("queue", "key", name="key_throttles_pkey"),
    comment="Each throttled key's next free dispatch time (rate_per_key in queues.yaml).",
)

webhook_events = Table(
    "webhook_events",
    metadata,
    Column("id", Text, primary_key=True, comment="The webhook-id (msg_…), the same on every delivery."),
    Column("job_id", UUID(as_uuid=True), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False,
           comment="The job that ended."),
    Column("run", Integer, nullable=False, comment="The job's run that ended (each :retry is a run)."),
    Column("state", Text, nullable=False, comment="The terminal state it reached."),
    Column("url", Text, nullable=False, comment="Where it is delivered."),
    Column("job", JSONB, nullable=False, comment="The job's row as it was when it ended."),
    Column("created_time", DateTime(timezone=True), nullable=False, server_default=_now, comment="When the job ended."),
    Column("enqueued_time", DateTime(timezone=True), comment="When its delivery task was created."),
    Column("delivered_time", DateTime(timezone=True), comment="When a delivery was answered 2xx."),
    Column("failed_time", DateTime(timezone=True), comment="When delivery was given up."),
    Column("attempts", Integer, nullable=False, server_default=text("0"), comment="Deliveries tried."),
    UniqueConstraint("job_id", "run", name="webhook_events_job_run_key"),
    Index("webhook_events_unsent_idx", "created_time", postgresql_where=text("enqueued_time IS NULL")),
    comment="One completion event per terminal transition of a job with a callback URL.",
)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("event_id", Text, ForeignKey("webhook_events.id", ondelete="CASCADE"), nullable=False, comment="The event."),
    Column("number", Integer, nullable=False, comment="1 for the first delivery."),
    Column("started_time", DateTime(timezone=True), nullable=False, comment="When the POST began."),
    Column("duration_ms", Integer, nullable=False, comment="How long it took."),
    Column("status_code", Integer, comment="The receiver's HTTP status (null: no answer)."),
    Column("error", Text, comment="Why it failed, when it did."),
    PrimaryKeyConstraint("event_id", "number", name="webhook_deliveries_pkey"),
    comment="Each attempt to deliver a webhook event.",
)

operations = Table(
    "operations",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True, comment="The operation's id (operations/<id>)."),
    Column("kind", Text, nullable=False, comment="batchCancel or batchRetry."),
    Column("owner", Text, comment="The principal that started it."),
    Column("scope", Text, comment="Whose jobs it may touch (null: every owner's, an admin's)."),
    Column("filter", JSONB, comment="The filter of GET /v1/jobs it acts on (null: ids)."),
    Column("ids", ARRAY(UUID(as_uuid=True)), comment="The jobs it acts on (null: filter)."),
    Column("cutoff", DateTime(timezone=True), nullable=False, comment="Only jobs created up to this time: the operation's end."),
    Column("cursor_time", DateTime(timezone=True), comment="Keyset position: the last job read."),
    Column("cursor_id", UUID(as_uuid=True), comment="Keyset position: the last job read."),
    Column("matched", Integer, nullable=False, server_default=text("0"), comment="Jobs read so far."),
    Column("succeeded", Integer, nullable=False, server_default=text("0"), comment="Jobs cancelled or retried."),
    Column("skipped", Integer, nullable=False, server_default=text("0"),
           comment="Jobs read that were not in a state to act on (already done, retried, cancelled)."),
    Column("failed", Integer, nullable=False, server_default=text("0"),
           comment="Jobs it could not act on (a retry whose unique key another job holds)."),
    Column("done", Boolean, nullable=False, server_default=text("false"), comment="True once finished."),
    Column("created_time", DateTime(timezone=True), nullable=False, server_default=_now, comment="When it was started."),
    Column("updated_time", DateTime(timezone=True), nullable=False, server_default=_now, comment="Its last chunk."),
    Column("done_time", DateTime(timezone=True), comment="When it finished."),
    Column("idempotency_key", Text, comment="The starting request's Idempotency-Key, unique per owner."),
    Column("request_hash", Text, comment="SHA-256 of the starting request."),
    CheckConstraint("kind IN ('batchCancel', 'batchRetry')", name="operations_kind_valid"),
    CheckConstraint("(filter IS NULL) <> (ids IS NULL)", name="operations_filter_or_ids"),
    Index("operations_owner_idempotency_key_idx", text("coalesce(owner, '')"), "idempotency_key", unique=True,
          postgresql_where=text("idempotency_key IS NOT NULL")),
    Index("operations_unfinished_idx", "updated_time", postgresql_where=text("NOT done")),
    comment="Bulk cancels and retries, processed in chunks (AIP-151 long-running operations).",
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True, comment="Its order."),
    Column("time", DateTime(timezone=True), nullable=False, server_default=_now, comment="When it was done."),
    Column("principal", Text, comment="Who did it (key:<id>, sa:<email>, or null without auth)."),
    Column("action", Text, nullable=False,
           comment="job.cancel, job.retry, jobs.batchCancel, jobs.batchRetry, queue.pause, queue.resume."),
    Column("target", Text, nullable=False, comment="The job, operation or queue it was done to."),
    Column("jobs", Integer, comment="How many jobs it touched (an operation's, once it ended)."),
    Column("via", Text, nullable=False, comment="api or dashboard."),
    Column("details", JSONB, comment="The filter, the counts."),
    Index("audit_log_time_idx", text("time DESC")),
    comment="Who did what, when, to how many jobs: operators' actions through the API and the dashboard.",
)

job_waiters = Table(
    "job_waiters",
    metadata,
    Column("job_id", UUID(as_uuid=True), nullable=False, comment="The job waited on."),
    Column("waiter", UUID(as_uuid=True), nullable=False, comment="A random id of the waiting request."),
    Column("since", DateTime(timezone=True), nullable=False, server_default=_now,
           comment="When the request registered; the sweeper removes rows left by a process that died."),
    PrimaryKeyConstraint("job_id", "waiter", name="job_waiters_pkey"),
    comment="Requests waiting for a job to end (GET /v1/jobs/{id}?wait=S), one row each while they wait; "
            "a job that ends with a row here is announced on the cloudjobs_job_done channel. Unlogged.",
    prefixes=["UNLOGGED"],
)

"""Every statement that changes a job, each a guarded transition. Callers own the transaction.

A transition that matches no row is a duplicate or a race, and callers treat it so:
`UPDATE … WHERE id = … AND state IN (…) RETURNING` makes each transition happen once.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections import namedtuple
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection, Engine, Row

from api.cloud.tasks import is_shared
from api.store.dependencies import MOVED_COLUMNS, RELEASE_CTES
from api.store.pgfast import PLANNED_ONCE
from api.store.tables import TERMINAL, job_attempts, jobs

# A lease outlives the job's timeout by this much, so a slow finish is not taken over.
LEASE_MARGIN_S = 30

TERMINAL_SQL = "('COMPLETED', 'FAILED', 'CANCELLED')"


@dataclass(frozen=True)
class NewJob:
    """A job about to be inserted."""

    id: uuid.UUID
    type: str
    queue: str
    payload: dict[str, Any]
    max_attempts: int
    timeout_s: int
    labels: dict[str, str]
    task_name: str
    scheduled_time: datetime | None = None
    idempotency_key: str | None = None
    request_hash: str | None = None
    owner: str | None = None
    # Orchestration: what it waits for, and where it stands when inserted.
    depends_on: tuple[uuid.UUID, ...] = ()
    on_dependency_failure: str | None = None  # fail | cancel | run, with depends_on
    workflow_id: uuid.UUID | None = None
    step: str | None = None
    state: str | None = None  # None: the insert's default (QUEUED); WAITING, or FAILED/CANCELLED by policy
    waiting_on: int = 0
    error: dict[str, str] | None = None
    has_dependents: bool = False  # a workflow's step that other steps need
    # Triggers: the schedule fire or the Pub/Sub message that created it.
    schedule: str | None = None
    scheduled_for: datetime | None = None
    trigger: str | None = None
    message_id: str | None = None
    # Flow control (api/store/flow.py) and the completion webhook.
    unique_key: str | None = None
    unique_for_s: int | None = None
    concurrency_key: str | None = None
    concurrency_limit: int | None = None  # resolved from the type and the queue
    priority: int = 0
    throttle_key: str | None = None  # resolved: the job's, or its concurrency key on a throttled queue
    callback_url: str | None = None
    unique_mode: str = "return"  # the create's: return the holder, or replace it (not stored)

    @property
    def flow(self) -> bool:
        """Whether any flow-control or webhook column is set (the plain insert has none)."""
        return (self.unique_key is not None or self.concurrency_key is not None or self.throttle_key is not None
                or self.callback_url is not None or self.priority != 0)

    @property
    def keyed(self) -> bool:
        """Whether it waits for admission: a concurrency limit or a throttle."""
        return self.concurrency_limit is not None or self.throttle_key is not None


@dataclass(frozen=True)
class Delivery:
    """What Cloud Tasks said about one delivery (its X-CloudTasks-* headers)."""

    task_name: str | None = None
    retry_count: int | None = None
    execution_count: int | None = None
    retry_reason: str | None = None


@dataclass(frozen=True)
class Finish:
    """How one attempt ended: the job's next state and the attempt's outcome."""

    job_id: uuid.UUID
    attempt: int
    state: str  # COMPLETED | FAILED | QUEUED (a retry) | CANCELLED
    outcome: str  # COMPLETED | FAILED | RETRY | CANCELLED | TIMED_OUT
    result: Any = None
    error: dict[str, str] | None = None
    delivery: Delivery = Delivery()
    retry_in_s: float | None = None  # QUEUED: when the next attempt should come, from now
    children: tuple[NewJob, ...] = ()  # COMPLETED: jobs it submitted, created with its finish
    traceback: str | None = None  # where the job function raised (an unexpected exception)


def _row_values(job: NewJob, state: str) -> dict[str, Any]:
    values: dict[str, Any] = {
        "id": job.id,
        "type": job.type,
        "queue": job.queue,
        "state": state,
        "payload": job.payload,
        "max_attempts": job.max_attempts,
        "timeout_s": job.timeout_s,
        "labels": job.labels,
        "task_name": job.task_name,
        "idempotency_key": job.idempotency_key,
        "request_hash": job.request_hash,
        "owner": job.owner,
    }
    if job.scheduled_time is not None:
        values["scheduled_time"] = job.scheduled_time
    if job.depends_on or job.workflow_id is not None or job.has_dependents:
        values.update(
            state=job.state or state, waiting_on=job.waiting_on, error=job.error,
            on_dependency_failure=job.on_dependency_failure, workflow_id=job.workflow_id, step=job.step,
            has_dependents=job.has_dependents,
        )
        if values["state"] in TERMINAL:
            values["done_time"] = sa.func.now()
    if job.schedule is not None or job.trigger is not None:
        values.update(schedule=job.schedule, scheduled_for=job.scheduled_for, trigger=job.trigger,
                      message_id=job.message_id)
    if job.flow:
        values.update(
            unique_key=job.unique_key, unique_for_s=job.unique_for_s,
            unique_held=job.unique_key is not None and values["state"] not in TERMINAL,
            concurrency_key=job.concurrency_key, concurrency_limit=job.concurrency_limit,
            priority=job.priority, throttle_key=job.throttle_key, callback_url=job.callback_url,
        )
        if job.keyed and values["state"] == "QUEUED":
            # Keyed: it waits for its key's admission (api/store/flow.py), which the insert's
            # transaction runs next.
            values.update(state="WAITING", ready_time=sa.func.now())
    return values


# The expression of the idempotency index, with '' written into the SQL: as a bound parameter
# it matches the index only when the value is known at planning, which a prepared
# statement's generic plan does not know.
_OWNER_KEY = sa.func.coalesce(jobs.c.owner, sa.literal_column("''"))

# The hot statements are built once, their values bound at execution: building a statement
# and its cache key cost SQLAlchemy about a fifth of a create's CPU (issue #7).
_INSERT_JOB = (
    pg_insert(jobs)
    .on_conflict_do_nothing(
        index_elements=[_OWNER_KEY, jobs.c.idempotency_key],
        index_where=jobs.c.idempotency_key.isnot(None),
    )
    .returning(*jobs.c)
)


# A job with a unique key may conflict on either key: the caller reads which (flow.key_holders,
# job_by_idempotency_key).
_INSERT_ANY_CONFLICT = pg_insert(jobs).on_conflict_do_nothing().returning(*jobs.c)


def insert_job(conn: Connection, job: NewJob, *, state: str = "QUEUED") -> Row[Any] | None:
    """Insert a job (QUEUED: its task is created next; WAITING if keyed); None when its
    idempotency key (or its unique key) is taken."""
    stmt = _INSERT_JOB if job.unique_key is None else _INSERT_ANY_CONFLICT
    return conn.execute(stmt, _row_values(job, state)).first()


_INSERT_MESSAGE_JOB = (
    pg_insert(jobs)
    .on_conflict_do_nothing(index_elements=[jobs.c.trigger, jobs.c.message_id],
                            index_where=jobs.c.message_id.isnot(None))
    .returning(*jobs.c)
)


def insert_message_job(conn: Connection, job: NewJob) -> Row[Any] | None:
    """Insert the job of a pushed message; None when that message already has its job."""
    return conn.execute(_INSERT_MESSAGE_JOB, _row_values(job, "QUEUED")).first()


def job_of_message(conn: Connection, trigger: str, message_id: str) -> Row[Any] | None:
    """The job a trigger created for a message."""
    return conn.execute(sa.select(jobs).where(jobs.c.trigger == trigger, jobs.c.message_id == message_id)).first()


def job_by_idempotency_key(conn: Connection, key: str, *, owner: str | None) -> Row[Any] | None:
    """The job a caller created under an idempotency key."""
    stmt = sa.select(jobs).where(
        _OWNER_KEY == (owner or ""),  # noqa: SIM300 (an SQL expression, not a constant)
        jobs.c.idempotency_key == key,
    )
    return conn.execute(stmt).first()


def jobs_by_idempotency_keys(conn: Connection, keys: Sequence[str], *, owner: str | None) -> list[Row[Any]]:
    """The jobs a caller created under these idempotency keys, in the order of the keys given."""
    stmt = sa.select(jobs).where(
        _OWNER_KEY == (owner or ""),  # noqa: SIM300 (an SQL expression, not a constant)
        jobs.c.idempotency_key == sa.func.any(sa.bindparam("keys", type_=sa.ARRAY(sa.Text))),
    )
    found = {row.idempotency_key: row for row in conn.execute(stmt, {"keys": list(keys)})}
    return [found[k] for k in keys if k in found]


def mark_not_enqueued(conn: Connection, rows: Sequence[Row[Any]]) -> list[Row[Any]]:
    """QUEUED → CREATED for jobs whose task could not be created, so the sweeper sends it.

    Only while the job is still QUEUED under that task (a delivery may have claimed it: the
    task existed after all)."""
    stmt = sa.text(
        """
        UPDATE jobs SET state = 'CREATED', updated_time = now()
        WHERE id = ANY(CAST(:ids AS uuid[])) AND state = 'QUEUED'
          AND task_name = ANY(CAST(:names AS text[]))
        RETURNING *
        """
    ).columns(*jobs.c)
    return list(conn.execute(stmt, {"ids": [r.id for r in rows], "names": [r.task_name for r in rows]}))


def mark_queued(conn: Connection, job_ids: Sequence[uuid.UUID]) -> list[Row[Any]]:
    """CREATED → QUEUED once the task exists in Cloud Tasks."""
    stmt = (
        sa.update(jobs)
        .where(jobs.c.id.in_(job_ids), jobs.c.state == "CREATED")
        .values(state="QUEUED", updated_time=sa.func.now())
        .returning(*jobs.c)
    )
    return list(conn.execute(stmt))


# The claim and the finish are planned once per connection (a generic plan: pgfast's
# PLANNED_ONCE), so no condition on state may be one an index could serve: a plan made from
# statistics that saw no RUNNING job would walk an index by state, through the entries of every
# job that left RUNNING since the last vacuum, on every run. `(…) IS TRUE` keeps a condition a
# filter on the rows found by primary key.
_CLAIM = sa.text(
    PLANNED_ONCE + """
    WITH named AS MATERIALIZED (
        -- By primary key alone: with a condition on state beside it, the planner may walk
        -- an index by state instead, through the entries of every job that left RUNNING
        -- since the last vacuum (thousands, under load), on each claim.
        SELECT id, state, lease_expires_time, lease_holder, attempts, attempts_base, max_attempts,
               attempt_started_time, task_name, type, queue, owner, timeout_s
        FROM jobs
        WHERE id = ANY(CAST(:ids AS uuid[]))
        -- No FOR UPDATE: the UPDATE below locks and re-checks the row, and a row this
        -- statement modifies would be skipped by a lock here. Joined with `claimed`, these
        -- snapshot values are those of the attempt that was taken over.
    ), expired AS (
        -- The lease ran out, or the process holding it is known dead (handlers/holder.py).
        SELECT * FROM named
        WHERE state = 'RUNNING' AND attempts - attempts_base < max_attempts
          AND (lease_expires_time < now() OR lease_holder = ANY(CAST(:dead AS text[])))
    ), claimed AS (
        UPDATE jobs SET
            state = 'RUNNING',
            attempts = attempts + 1,
            started_time = coalesce(started_time, now()),
            attempt_started_time = now(),
            -- The jobs of one delivery run one after another: each holds its lease for as long
            -- as all of them may take (a task of its own: its own timeout).
            lease_expires_time = now() + make_interval(secs => (SELECT sum(timeout_s) FROM named) + :margin),
            lease_holder = :holder,
            next_attempt_time = NULL,
            updated_time = now()
        WHERE id = ANY(CAST(:ids AS uuid[]))
          AND attempts - attempts_base < max_attempts
          AND NOT cancel_requested
          AND (state IN ('CREATED', 'QUEUED')
               OR (state = 'RUNNING' AND (lease_expires_time < now()
                                          OR lease_holder = ANY(CAST(:dead AS text[]))))) IS TRUE
        RETURNING jobs.*
    ), lost AS (
        -- The attempt whose lease ran out, or whose process died, never finished: record it
        -- before the next one.
        INSERT INTO job_attempts (job_id, number, outcome, error, started_time, finished_time,
                                  task_name, type, queue, owner)
        SELECT e.id, e.attempts,
               CASE WHEN e.lease_expires_time < now() THEN 'TIMED_OUT' ELSE 'LOST' END,
               CASE WHEN e.lease_expires_time < now()
                    THEN '{"code": "LEASE_EXPIRED", "message": "the attempt outlived its lease"}'
                    ELSE '{"code": "ATTEMPT_DIED", "message": "the process running the attempt died"}'
               END::jsonb,
               e.attempt_started_time, now(), e.task_name, e.type, e.queue, e.owner
        FROM expired e JOIN claimed c ON c.id = e.id
        ON CONFLICT DO NOTHING
    )
    SELECT id, type, queue, state, payload, attempts, attempts_base, max_attempts, timeout_s,
           started_time, attempt_started_time, lease_expires_time,
           on_dependency_failure, workflow_id, step, owner,
           concurrency_key, concurrency_limit, throttle_key, callback_url,
           -- how long ago the job first started, by the database's clock: the app's may differ
           extract(epoch FROM now() - started_time)::float8 AS started_age_s
    FROM claimed
    """
).columns(  # typed, so SQLAlchemy builds the result's metadata once, not per execution
    jobs.c.id, jobs.c.type, jobs.c.queue, jobs.c.state, jobs.c.payload, jobs.c.attempts,
    jobs.c.attempts_base, jobs.c.max_attempts, jobs.c.timeout_s, jobs.c.started_time,
    jobs.c.attempt_started_time, jobs.c.lease_expires_time, jobs.c.on_dependency_failure,
    jobs.c.workflow_id, jobs.c.step, jobs.c.owner, jobs.c.concurrency_key, jobs.c.concurrency_limit,
    jobs.c.throttle_key, jobs.c.callback_url, sa.column("started_age_s", sa.Float),
)


def claim_jobs(
    conn: Connection, job_ids: Sequence[uuid.UUID], *, lease_margin_s: int = LEASE_MARGIN_S,
    holder: str | None = None, dead: Sequence[str] = (),
) -> list[Row[Any]]:
    """QUEUED (or CREATED, or RUNNING with an expired lease or a holder in `dead`) → RUNNING,
    as a new attempt held by `holder`.

    Each row holds what running the attempt needs (id, type, queue, state, payload, attempts,
    attempts_base, max_attempts, timeout_s and the times), not the whole job: a column is
    parsed by the driver on every claim."""
    rows = conn.execute(_CLAIM, {"ids": [str(i) for i in job_ids], "margin": lease_margin_s,
                                 "holder": holder, "dead": list(dead)})
    return list(rows)


_FINISH = sa.text(
    PLANNED_ONCE + f"""
    WITH f AS (
        SELECT * FROM unnest(
            CAST(:ids AS uuid[]), CAST(:attempts AS int[]), CAST(:states AS text[]),
            CAST(:outcomes AS text[]), CAST(:results AS text[]), CAST(:errors AS text[]),
            CAST(:task_names AS text[]), CAST(:retry_counts AS int[]),
            CAST(:execution_counts AS int[]), CAST(:retry_reasons AS text[]),
            CAST(:retry_ins AS float8[]), CAST(:tracebacks AS text[])
        ) AS f(id, attempt, state, outcome, result, error, task_name, retry_count,
               execution_count, retry_reason, retry_in, traceback)
    ), done AS (
        -- A cancel requested while the attempt ran turns anything but success into
        -- CANCELLED; the SET reads the row as it is when locked, so no request is missed.
        UPDATE jobs j SET
            state = CASE WHEN j.cancel_requested AND f.state <> 'COMPLETED'
                         THEN 'CANCELLED' ELSE f.state END,
            result = CAST(f.result AS jsonb),
            error = CAST(f.error AS jsonb),
            done_time = CASE WHEN f.state IN ('COMPLETED', 'FAILED', 'CANCELLED')
                                  OR (j.cancel_requested AND f.state <> 'COMPLETED')
                             THEN now() END,
            progress = CASE WHEN f.state = 'COMPLETED'
                            THEN jsonb_build_object('fraction', 1.0, 'message',
                                                    j.progress -> 'message')
                            ELSE j.progress END,
            lease_expires_time = NULL,
            next_attempt_time = CASE WHEN f.state = 'QUEUED' AND NOT j.cancel_requested
                                     THEN now() + make_interval(secs => f.retry_in) END,
            updated_time = now()
        FROM f
        WHERE j.id = f.id AND (j.state = 'RUNNING') IS TRUE AND j.attempts = f.attempt
        RETURNING j.*, f.outcome AS f_outcome, f.task_name AS f_task_name,
                  f.retry_count AS f_retry_count, f.execution_count AS f_execution_count,
                  f.retry_reason AS f_retry_reason, f.traceback AS f_traceback
    ), history AS (
        INSERT INTO job_attempts (job_id, number, outcome, error, started_time, finished_time,
                                  task_name, retry_count, execution_count, retry_reason,
                                  type, queue, owner, traceback)
        SELECT d.id, d.attempts,
               CASE WHEN d.state = 'CANCELLED' THEN 'CANCELLED' ELSE d.f_outcome END,
               d.error, d.attempt_started_time, now(),
               d.f_task_name, d.f_retry_count, d.f_execution_count, d.f_retry_reason,
               d.type, d.queue, d.owner, d.f_traceback
        FROM done d
        ON CONFLICT DO NOTHING
    ), {RELEASE_CTES.format(src="done")}
    SELECT {MOVED_COLUMNS}, false AS released FROM done
    UNION ALL
    SELECT {MOVED_COLUMNS}, true AS released FROM released
    """
)


@dataclass
class Finished:
    """What a finish moved: the new state of each job that moved, and the dependents it released."""

    states: dict[uuid.UUID, str]
    released: list[Row[Any]]


def finish_jobs(conn: Connection, finishes: Iterable[Finish]) -> Finished:
    """RUNNING → the attempt's outcome, with its attempt row, and the release of the dependents
    of jobs that ended, all in one statement.

    The guard on the attempt number keeps an attempt whose lease was taken over from
    finishing the job under the attempt that replaced it.
    """
    fs = list(finishes)
    if not fs:
        return Finished({}, [])
    params = {
        "ids": [str(f.job_id) for f in fs],
        "attempts": [f.attempt for f in fs],
        "states": [f.state for f in fs],
        "outcomes": [f.outcome for f in fs],
        "results": [None if f.result is None else _json(f.result) for f in fs],
        "errors": [None if f.error is None else _json(f.error) for f in fs],
        "task_names": [f.delivery.task_name for f in fs],
        "retry_counts": [f.delivery.retry_count for f in fs],
        "execution_counts": [f.delivery.execution_count for f in fs],
        "retry_reasons": [f.delivery.retry_reason for f in fs],
        "retry_ins": [f.retry_in_s for f in fs],
        "tracebacks": [f.traceback for f in fs],
    }
    done = Finished({}, [])
    for row in conn.execute(_FINISH, params):
        if row.released:
            done.released.append(row)
        else:
            done.states[row.id] = row.state
    return done


def set_progress(
    conn: Connection, job_id: uuid.UUID, attempt: int, fraction: float | None, message: str | None
) -> bool:
    """Record a running attempt's progress; False when that attempt no longer holds the job."""
    stmt = (
        sa.update(jobs)
        .where(jobs.c.id == job_id, jobs.c.state == "RUNNING", jobs.c.attempts == attempt)
        .values(progress={"fraction": fraction, "message": message}, updated_time=sa.func.now())
    )
    return conn.execute(stmt).rowcount == 1


def cancel_requested(conn: Connection, job_id: uuid.UUID) -> bool:
    """Whether someone asked to cancel the job."""
    value = conn.execute(
        sa.select(jobs.c.cancel_requested).where(jobs.c.id == job_id)
    ).scalar_one_or_none()
    return bool(value)


# A batch is one statement with one array per column: twelve parameters whatever the batch
# size, where a multi-row VALUES (SQLAlchemy's insertmanyvalues) has twelve per job, each
# converted and sent on its own, and a text that changes with the size (issue #7: the
# INSERT was three fifths of a batchCreate of 500).
_INSERT_JOBS = sa.text(
    """
    INSERT INTO jobs (id, type, queue, state, payload, max_attempts, timeout_s, labels, task_name,
                      idempotency_key, request_hash, owner, scheduled_time)
    SELECT n.id, n.type, n.queue, :state, CAST(n.payload AS jsonb), n.max_attempts, n.timeout_s,
           CAST(n.labels AS jsonb), n.task_name, n.idempotency_key, n.request_hash, n.owner,
           coalesce(n.scheduled_time, now())
    FROM unnest(
        CAST(:ids AS uuid[]), CAST(:types AS text[]), CAST(:queues AS text[]), CAST(:payloads AS text[]),
        CAST(:max_attempts AS int[]), CAST(:timeouts AS int[]), CAST(:labels AS text[]),
        CAST(:task_names AS text[]), CAST(:keys AS text[]), CAST(:hashes AS text[]),
        CAST(:owners AS text[]), CAST(:scheduled AS timestamptz[])
    ) AS n(id, type, queue, payload, max_attempts, timeout_s, labels, task_name, idempotency_key,
           request_hash, owner, scheduled_time)
    -- A job whose idempotency key is taken is left out; a concurrent insert of the same key
    -- is waited for, then left out too: the caller reads what holds the keys (race-free).
    ON CONFLICT (coalesce(owner, ''), idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id, created_time, scheduled_time, updated_time
    """
).columns(jobs.c.id, jobs.c.created_time, jobs.c.scheduled_time, jobs.c.updated_time)

# Jobs that wait, or are steps of a workflow: the same insert with their own columns (the
# plain path above stays as it was measured). A state decided at insertion (WAITING, or
# FAILED/CANCELLED by a dependency's policy) is per job.
_INSERT_ORCHESTRATED = sa.text(
    """
    INSERT INTO jobs (id, type, queue, state, payload, max_attempts, timeout_s, labels, task_name,
                      idempotency_key, request_hash, owner, scheduled_time, waiting_on,
                      on_dependency_failure, workflow_id, step, error, done_time, has_dependents,
                      unique_key, unique_for_s, unique_held, concurrency_key, concurrency_limit, priority,
                      throttle_key, callback_url, ready_time)
    SELECT n.id, n.type, n.queue, n.state, CAST(n.payload AS jsonb), n.max_attempts, n.timeout_s,
           CAST(n.labels AS jsonb), n.task_name, n.idempotency_key, n.request_hash, n.owner,
           coalesce(n.scheduled_time, now()), n.waiting_on, n.policy, n.workflow_id, n.step,
           CAST(n.error AS jsonb),
           CASE WHEN n.state IN ('COMPLETED', 'FAILED', 'CANCELLED') THEN now() END, n.has_dependents,
           n.unique_key, n.unique_for_s,
           n.unique_key IS NOT NULL AND n.state NOT IN ('COMPLETED', 'FAILED', 'CANCELLED'),
           n.concurrency_key, n.concurrency_limit, n.priority, n.throttle_key, n.callback_url,
           -- clock_timestamp(): a batch's keyed jobs wait in its order (their created_time is one)
           CASE WHEN n.concurrency_limit IS NOT NULL OR n.throttle_key IS NOT NULL THEN clock_timestamp() END
    FROM unnest(
        CAST(:ids AS uuid[]), CAST(:types AS text[]), CAST(:queues AS text[]), CAST(:payloads AS text[]),
        CAST(:max_attempts AS int[]), CAST(:timeouts AS int[]), CAST(:labels AS text[]),
        CAST(:task_names AS text[]), CAST(:keys AS text[]), CAST(:hashes AS text[]),
        CAST(:owners AS text[]), CAST(:scheduled AS timestamptz[]), CAST(:states AS text[]),
        CAST(:waitings AS int[]), CAST(:policies AS text[]), CAST(:workflow_ids AS uuid[]),
        CAST(:steps AS text[]), CAST(:errors AS text[]), CAST(:has_dependents AS boolean[]),
        CAST(:unique_keys AS text[]), CAST(:unique_fors AS int[]), CAST(:concurrency_keys AS text[]),
        CAST(:concurrency_limits AS int[]), CAST(:priorities AS int[]), CAST(:throttle_keys AS text[]),
        CAST(:callback_urls AS text[])
    ) AS n(id, type, queue, payload, max_attempts, timeout_s, labels, task_name, idempotency_key,
           request_hash, owner, scheduled_time, state, waiting_on, policy, workflow_id, step, error,
           has_dependents, unique_key, unique_for_s, concurrency_key, concurrency_limit, priority,
           throttle_key, callback_url)
    -- Any conflict: a taken idempotency key, or a unique key held (the caller reads which).
    ON CONFLICT DO NOTHING
    RETURNING *
    """
).columns(*jobs.c)

# A job row built from what was inserted, with the columns' defaults: reading back the whole
# row of each job (JSONB parsed again, 26 columns) was a third of a batch's CPU. The batch's
# payloads and labels are answered as they were sent, not as JSONB normalised them (key order,
# number spelling); the tests read every batched job back through the API and compare.
JobRecord = namedtuple("JobRecord", [c.name for c in jobs.c])  # type: ignore[misc]
_INSERTED_DEFAULTS = {
    "result": None, "error": None, "attempts": 0, "progress": None, "run": 0, "attempts_base": 0,
    "cancel_requested": False, "lease_expires_time": None, "lease_holder": None, "attempt_started_time": None,
    "started_time": None, "done_time": None, "next_attempt_time": None,
    "waiting_on": 0, "on_dependency_failure": None, "has_dependents": False, "workflow_id": None, "step": None,
    "schedule": None, "scheduled_for": None, "trigger": None, "message_id": None,
    "unique_key": None, "unique_for_s": None, "unique_held": False, "concurrency_key": None,
    "concurrency_limit": None, "priority": 0, "throttle_key": None, "ready_time": None, "slot_wait_s": None,
    "callback_url": None,
}


def insert_jobs(conn: Connection, new: Sequence[NewJob], *, state: str = "QUEUED") -> list[Any]:
    """Insert jobs in one statement, one array per column; their rows in the order given.

    A job whose idempotency key (or unique key) is already taken is not inserted and not
    answered: fewer rows than jobs means some keys were taken (see jobs_by_idempotency_keys,
    flow.key_holders)."""
    params = {
        "state": state,
        "ids": [str(j.id) for j in new],
        "types": [j.type for j in new],
        "queues": [j.queue for j in new],
        "payloads": [_json(j.payload) for j in new],
        "max_attempts": [j.max_attempts for j in new],
        "timeouts": [j.timeout_s for j in new],
        "labels": [_json(j.labels) for j in new],
        "task_names": [j.task_name for j in new],
        "keys": [j.idempotency_key for j in new],
        "hashes": [j.request_hash for j in new],
        "owners": [j.owner for j in new],
        "scheduled": [j.scheduled_time for j in new],
    }
    orchestrated = any(j.depends_on or j.workflow_id is not None or j.has_dependents or j.flow for j in new)
    if orchestrated:
        params.update(
            # a keyed job waits for its key's admission, which the caller runs next
            states=[j.state or ("WAITING" if j.keyed else state) for j in new],
            unique_keys=[j.unique_key for j in new],
            unique_fors=[j.unique_for_s for j in new],
            concurrency_keys=[j.concurrency_key for j in new],
            concurrency_limits=[j.concurrency_limit for j in new],
            priorities=[j.priority for j in new],
            throttle_keys=[j.throttle_key for j in new],
            callback_urls=[j.callback_url for j in new],
            waitings=[j.waiting_on for j in new],
            policies=[j.on_dependency_failure for j in new],
            workflow_ids=[None if j.workflow_id is None else str(j.workflow_id) for j in new],
            steps=[j.step for j in new],
            errors=[None if j.error is None else _json(j.error) for j in new],
            has_dependents=[j.has_dependents for j in new],
        )
        params.pop("state")
        # The whole row comes back: its state and columns are the statement's to decide.
        stored_rows = {row.id: row for row in conn.execute(_INSERT_ORCHESTRATED, params)}
        return [stored_rows[j.id] for j in new if j.id in stored_rows]
    stored = {row.id: row for row in conn.execute(_INSERT_JOBS, params)}
    out = []
    for j in new:
        if j.id not in stored:
            continue
        row = stored[j.id]
        values = {
            **_INSERTED_DEFAULTS, **_row_values(j, state), "created_time": row.created_time,
            "scheduled_time": row.scheduled_time, "updated_time": row.updated_time,
        }
        out.append(JobRecord(**values))
    return out


# A cancel's SET: at once unless it runs, then cooperatively (its attempt ends CANCELLED).
CANCEL_SET = """
        state = CASE WHEN state = 'RUNNING' THEN state ELSE 'CANCELLED' END,
        cancel_requested = true,
        done_time = CASE WHEN state = 'RUNNING' THEN NULL ELSE now() END,
        updated_time = now()
"""

_CANCEL = sa.text(
    f"""
    UPDATE jobs SET {CANCEL_SET}
    WHERE id = ANY(CAST(:ids AS uuid[])) AND state IN ('WAITING', 'CREATED', 'QUEUED', 'RUNNING') AND NOT cancel_requested
      AND (CAST(:owner AS text) IS NULL OR owner = :owner)
    RETURNING *
    """
)


def request_cancel(conn: Connection, job_id: uuid.UUID, *, owner: str | None = None) -> Row[Any] | None:
    """WAITING/CREATED/QUEUED → CANCELLED; RUNNING → flagged, so the attempt ends CANCELLED.

    None when the job is not in one of those states (or already flagged)."""
    return conn.execute(_CANCEL, {"ids": [str(job_id)], "owner": owner}).first()


def request_cancels(conn: Connection, job_ids: Sequence[uuid.UUID], *, owner: str | None = None) -> list[Row[Any]]:
    """request_cancel of many jobs in one statement; the rows it moved or flagged."""
    return list(conn.execute(_CANCEL, {"ids": [str(i) for i in job_ids], "owner": owner}))


_SETTLE_CANCELLED = sa.text(
    """
    WITH settled AS (
        UPDATE jobs SET state = 'CANCELLED', done_time = now(), lease_expires_time = NULL,
                        updated_time = now()
        WHERE id = ANY(CAST(:ids AS uuid[])) AND cancel_requested
          AND (state IN ('CREATED', 'QUEUED')
               OR (state = 'RUNNING' AND lease_expires_time < now()))
        RETURNING id, state, attempts, attempt_started_time, task_name, lease_expires_time,
                  type, queue, owner
    ), lost AS (
        INSERT INTO job_attempts (job_id, number, outcome, error, started_time, finished_time,
                                  task_name, type, queue, owner)
        SELECT id, attempts, 'CANCELLED',
               '{"code": "LEASE_EXPIRED", "message": "cancelled; the attempt never finished"}'::jsonb,
               attempt_started_time, now(), task_name, type, queue, owner
        FROM settled WHERE attempt_started_time IS NOT NULL AND attempts > 0
        ON CONFLICT DO NOTHING
    )
    SELECT id FROM settled
    """
)


def settle_cancelled(conn: Connection, job_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    """Cancel-requested jobs that no attempt holds any more → CANCELLED."""
    return {r.id for r in conn.execute(_SETTLE_CANCELLED, {"ids": [str(i) for i in job_ids]})}


def own_task_name(run: str = "run + 1", table: str = "") -> str:
    """SQL for a job's own task name of run `run` (`job-<id>-<run>`, as task_id_for makes it):
    what a new run, and a job leaving a shared task, is sent under."""
    return (f"regexp_replace({table}task_name, '/tasks/.*$', "
            f"'/tasks/job-' || replace({table}id::text, '-', '') || '-' || ({run}))")


_RETRY = sa.text(
    f"""
    UPDATE jobs SET
        -- a keyed job waits for its key's admission again (api/store/flow.py)
        state = CASE WHEN concurrency_limit IS NOT NULL OR throttle_key IS NOT NULL THEN 'WAITING' ELSE 'CREATED' END,
        ready_time = CASE WHEN concurrency_limit IS NOT NULL OR throttle_key IS NOT NULL THEN now() END,
        slot_wait_s = NULL,
        run = run + 1,
        attempts_base = attempts,
        task_name = {own_task_name()},
        result = NULL,
        error = NULL,
        done_time = NULL,
        progress = NULL,
        cancel_requested = false,
        lease_expires_time = NULL,
        next_attempt_time = NULL,
        started_time = NULL,
        scheduled_time = now(),
        updated_time = now()
    WHERE id = ANY(CAST(:ids AS uuid[])) AND state IN ('FAILED', 'CANCELLED')
      AND (CAST(:owner AS text) IS NULL OR owner = :owner)
    RETURNING *
    """
)


def retry_job(conn: Connection, job_id: uuid.UUID, *, owner: str | None = None) -> Row[Any] | None:
    """FAILED/CANCELLED → CREATED as a new run: a new task name, a fresh attempt budget."""
    return conn.execute(_RETRY, {"ids": [str(job_id)], "owner": owner}).first()


def retry_jobs(conn: Connection, job_ids: Sequence[uuid.UUID], *, owner: str | None = None) -> list[Row[Any]]:
    """retry_job of many jobs in one statement; the rows it moved. A unique key another job
    holds raises IntegrityError (jobs_unique_key_idx) for the whole statement."""
    return list(conn.execute(_RETRY, {"ids": [str(i) for i in job_ids], "owner": owner}))


def unshare(conn: Connection, rows: Sequence[Row[Any]], *, state: str = "CREATED") -> list[Row[Any]]:
    """CREATED jobs of a shared task whose creation failed, each given its own task name
    (job-<id>-<run>) before the sweeper sends it: a shared task's other jobs may be missing
    from the rows at hand, and a task created for part of them under the shared name would
    leave the rest to be taken for enqueued (ALREADY_EXISTS). The rows as they are now."""
    shared = [r.id for r in rows if is_shared(r.task_name)]
    if not shared:
        return list(rows)
    moved = {r.id: r for r in conn.execute(sa.text(
        f"""
        UPDATE jobs SET task_name = {own_task_name("run")}
        WHERE id = ANY(CAST(:ids AS uuid[])) AND state = :state
        RETURNING *
        """), {"ids": [str(i) for i in shared], "state": state})}
    return [moved.get(r.id, r) for r in rows if r.id not in shared or r.id in moved]


def stale_created(conn: Connection, *, older_than_s: int, limit: int) -> list[Row[Any]]:
    """CREATED jobs whose enqueue seems lost (the sweeper enqueues them again)."""
    stmt = (
        sa.select(jobs)
        .where(jobs.c.state == "CREATED",
               jobs.c.updated_time < sa.func.now() - sa.func.make_interval(0, 0, 0, 0, 0, 0, older_than_s))
        .order_by(jobs.c.updated_time)
        .limit(limit)
    )
    return list(conn.execute(stmt))


def expired_leases(conn: Connection, *, limit: int) -> list[Row[Any]]:
    """RUNNING jobs whose lease ran out: their attempt died, or is still overrunning."""
    stmt = (
        sa.select(jobs)
        .where(jobs.c.state == "RUNNING", jobs.c.lease_expires_time < sa.func.now())
        .order_by(jobs.c.lease_expires_time)
        .limit(limit)
    )
    return list(conn.execute(stmt))


def stale_queued(conn: Connection, *, older_than_s: int, limit: int) -> list[Row[Any]]:
    """QUEUED jobs due long ago and untouched since: their task may be gone."""
    cutoff = sa.func.now() - sa.func.make_interval(0, 0, 0, 0, 0, 0, older_than_s)
    stmt = (
        sa.select(jobs)
        .where(jobs.c.state == "QUEUED", jobs.c.updated_time < cutoff, jobs.c.scheduled_time < cutoff)
        .order_by(jobs.c.updated_time)
        .limit(limit)
    )
    return list(conn.execute(stmt))


_ABANDON = sa.text(
    f"""
    WITH gone AS (
        UPDATE jobs SET
            state = CASE WHEN :requeue THEN 'CREATED' ELSE 'FAILED' END,
            run = CASE WHEN :requeue THEN run + 1 ELSE run END,
            task_name = CASE WHEN :requeue
                             THEN {own_task_name()}
                             ELSE task_name END,
            error = CAST(:error AS jsonb),
            done_time = CASE WHEN :requeue THEN NULL ELSE now() END,
            lease_expires_time = NULL,
            updated_time = now()
        WHERE id = :id AND state = :state AND attempts = :attempts
          AND (state <> 'RUNNING' OR lease_expires_time < now())
        RETURNING *
    ), lost AS (
        INSERT INTO job_attempts (job_id, number, outcome, error, started_time, finished_time,
                                  task_name, type, queue, owner)
        SELECT id, attempts, 'TIMED_OUT', CAST(:error AS jsonb), attempt_started_time, now(),
               :old_task_name, type, queue, owner
        FROM gone WHERE :state = 'RUNNING'
        ON CONFLICT DO NOTHING
    )
    SELECT * FROM gone
    """
)


def abandon_job(
    conn: Connection, row: Row[Any], *, requeue: bool, error: dict[str, str]
) -> Row[Any] | None:
    """A job whose task Cloud Tasks no longer has: a new run (requeue) or FAILED.

    Guarded on the state and attempt the sweeper saw, so a delivery that raced it wins.
    """
    params = {
        "id": row.id, "state": row.state, "attempts": row.attempts, "requeue": requeue,
        "error": _json(error), "old_task_name": row.task_name,
    }
    return conn.execute(_ABANDON, params).first()


_GET_JOB = sa.select(jobs).where(jobs.c.id == sa.bindparam("id"))
_GET_OWNED_JOB = _GET_JOB.where(jobs.c.owner == sa.bindparam("owner"))


def get_job(conn: Connection, job_id: uuid.UUID, *, owner: str | None = None) -> Row[Any] | None:
    """One job by id; with `owner`, only if that principal owns it."""
    if owner is None:
        return conn.execute(_GET_JOB, {"id": job_id}).first()
    return conn.execute(_GET_OWNED_JOB, {"id": job_id, "owner": owner}).first()


def get_jobs(conn: Connection, job_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Row[Any]]:
    """Jobs by id, in one statement (the ones that exist)."""
    if len(job_ids) == 1:
        row = get_job(conn, job_ids[0])
        return {} if row is None else {row.id: row}
    return {r.id: r for r in conn.execute(sa.select(jobs).where(jobs.c.id.in_(list(job_ids))))}


def job_ids_with_prefix(conn: Connection, prefix: str, *, owner: str | None, limit: int) -> list[uuid.UUID]:
    """The ids that start with `prefix` (hex digits, no dashes), by a range of the primary key."""
    low = uuid.UUID(prefix.ljust(32, "0"))
    high = uuid.UUID(prefix.ljust(32, "f"))
    stmt = sa.select(jobs.c.id).where(jobs.c.id.between(low, high)).order_by(jobs.c.id).limit(limit)
    if owner is not None:
        stmt = stmt.where(jobs.c.owner == owner)
    return list(conn.execute(stmt).scalars())


def list_attempts(conn: Connection, job_id: uuid.UUID) -> list[Row[Any]]:
    """A job's attempts, oldest first."""
    stmt = (
        sa.select(job_attempts)
        .where(job_attempts.c.job_id == job_id)
        .order_by(job_attempts.c.number)
    )
    return list(conn.execute(stmt))


@dataclass(frozen=True)
class JobFilter:
    """The filters of GET /v1/jobs."""

    states: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    queues: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    created_after: datetime | None = None
    created_before: datetime | None = None
    owner: str | None = None  # None: every owner (admins, AUTH=none)
    schedules: tuple[str, ...] = ()
    triggers: tuple[str, ...] = ()
    error_codes: tuple[str, ...] = ()
    workflows: tuple[uuid.UUID, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The filter as JSON (an operation keeps it), without its owner."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "owner" or value in ((), None):
                continue
            if isinstance(value, datetime):
                value = value.isoformat()
            elif f.name == "labels":
                value = [list(pair) for pair in value]
            elif f.name == "workflows":
                value = [str(v) for v in value]
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any], *, owner: str | None) -> JobFilter:
        """A filter kept by to_json, scoped to `owner`."""
        values: dict[str, Any] = {"owner": owner}
        for name, value in data.items():
            if name in ("created_after", "created_before"):
                values[name] = datetime.fromisoformat(value)
            elif name == "labels":
                values[name] = tuple(tuple(pair) for pair in value)
            elif name == "workflows":
                values[name] = tuple(uuid.UUID(v) for v in value)
            else:
                values[name] = tuple(value)
        return cls(**values)


def job_conditions(flt: JobFilter, table: sa.Table = jobs) -> list[Any]:
    """The WHERE conditions of a filter (GET /v1/jobs, bulk operations; owner, state, labels
    and times of workflows too)."""
    c = table.c
    out: list[Any] = []
    if flt.owner is not None:
        out.append(c.owner == flt.owner)
    if flt.states:
        out.append(c.state.in_(flt.states))
    if flt.labels:
        out.append(c.labels.contains(dict(flt.labels)))
    if flt.created_after is not None:
        out.append(c.created_time > flt.created_after)
    if flt.created_before is not None:
        out.append(c.created_time < flt.created_before)
    if table is not jobs:
        return out
    for column, values in ((c.type, flt.types), (c.queue, flt.queues), (c.schedule, flt.schedules),
                           (c.trigger, flt.triggers), (c.workflow_id, flt.workflows)):
        if values:
            out.append(column.in_(values))
    if flt.error_codes:
        out.append(c.error["code"].astext.in_(flt.error_codes))
    return out


def list_jobs(
    conn: Connection,
    flt: JobFilter,
    *,
    limit: int,
    after: tuple[datetime, uuid.UUID] | None = None,
) -> list[Row[Any]]:
    """Jobs newest first, `limit` of them after the keyset position `after`."""
    return list(conn.execute(keyset_page(jobs, flt, limit=limit, after=after)))


def keyset_page(
    table: sa.Table, flt: JobFilter, *, limit: int, after: tuple[datetime, uuid.UUID] | None
) -> sa.Select[Any]:
    """Rows of a table with owner, state, labels and created_time (jobs, workflows), newest
    first, filtered, `limit` of them after the keyset position `after`."""
    c = table.c
    stmt = sa.select(table).where(*job_conditions(flt, table))
    if after is not None:
        stmt = stmt.where(sa.tuple_(c.created_time, c.id) < sa.tuple_(*after))
    return stmt.order_by(c.created_time.desc(), c.id.desc()).limit(limit)


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


# A registration older than this belongs to a process that died while it waited.
STALE_REGISTRATION_S = 600  # ten times the longest ?wait=


def purge_stale_waiters(engine: Engine) -> int:
    """Remove registrations left by processes that died while waiting (the sweeper calls it)."""
    with engine.begin() as conn:
        result = conn.execute(
            sa.text("DELETE FROM job_waiters WHERE since < now() - make_interval(secs => :s)"),
            {"s": STALE_REGISTRATION_S},
        )
    return int(result.rowcount)

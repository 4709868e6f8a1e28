"""The wire format: request models, the job and attempt resources, timestamps."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Literal

from google.cloud import scheduler_v1
from pydantic import BaseModel, Field
from sqlalchemy.engine import Row

from api.cloud.schedules import ScheduleSpec, scheduler_job_name
from api.store.tables import TERMINAL
from api.times import rfc3339

if TYPE_CHECKING:
    from api.state import AppState

State = Literal["WAITING", "CREATED", "QUEUED", "RUNNING", "COMPLETED", "FAILED", "CANCELLED"]


class JobError(BaseModel):
    """Why a job failed."""

    code: str
    message: str


class Progress(BaseModel):
    """How far a running job has got."""

    fraction: float | None
    message: str | None


class Job(BaseModel):
    """A job."""

    id: uuid.UUID
    type: str
    queue: str
    state: State
    done: bool = Field(description="True in COMPLETED, FAILED and CANCELLED.")
    payload: dict[str, Any]
    result: Any = None
    error: JobError | None = None
    attempts: int = Field(description="Attempts started, over every run.")
    max_attempts: int = Field(description="The attempt budget of each run.")
    run: int = Field(0, description="How many times :retry started the job again (0: its first run).")
    run_attempts: int = Field(0, description="Attempts started in the current run (at most max_attempts).")
    next_attempt_time: datetime | None = Field(
        default=None,
        description="While QUEUED after a retryable failure: when the next attempt should come "
                    "(the queue's backoff; Cloud Tasks decides). Null otherwise.",
    )
    timeout_s: int
    progress: Progress | None = None
    labels: dict[str, str]
    created_time: datetime
    scheduled_time: datetime
    started_time: datetime | None = None
    done_time: datetime | None = None
    updated_time: datetime
    depends_on: list[uuid.UUID] | None = Field(
        default=None, description="The jobs it waits for (present when it was created with depends_on).")
    on_dependency_failure: Literal["fail", "cancel", "run"] | None = Field(
        default=None, description="What a failed or cancelled dependency does to it (with depends_on).")
    workflow_id: uuid.UUID | None = Field(default=None, description="The workflow it is a step of.")
    step: str | None = Field(default=None, description="Its step name in that workflow.")
    schedule: str | None = Field(default=None, description="The schedule whose fire created it.")
    scheduled_for: datetime | None = Field(default=None,
                                           description="That fire's time (X-CloudScheduler-ScheduleTime).")
    trigger: str | None = Field(default=None, description="The Pub/Sub trigger whose message created it.")
    message_id: str | None = Field(default=None, description="That message's messageId.")
    waiting_reason: Literal["dependencies", "concurrency", "throttle"] | None = Field(
        default=None, description="While WAITING: for its dependencies, for a slot of its concurrency key, "
                                  "or for its throttle's admission.")
    unique_key: str | None = Field(default=None, description="Its unique key (docs/flow-control.md).")
    unique_for_s: int | None = Field(default=None, description="How long after it started it holds the key.")
    concurrency_key: str | None = Field(default=None, description="Its concurrency key.")
    concurrency_limit: int | None = Field(default=None,
                                          description="At most this many jobs of its queue and key at once.")
    priority: int | None = Field(default=None, description="Its place among jobs waiting for its key (higher first).")
    throttle_key: str | None = Field(default=None, description="The key whose rate paces it.")
    slot_wait_s: float | None = Field(default=None,
                                      description="How long it waited for its key's slot or throttle, seconds.")
    callback_url: str | None = Field(default=None, description="Where its terminal state is POSTed (docs/webhooks.md).")


class CallbackDelivery(BaseModel):
    """One attempt to deliver a webhook event."""

    number: int
    started_time: datetime
    duration_ms: int
    status_code: int | None = Field(default=None, description="The receiver's HTTP status; null: no answer.")
    error: str | None = None


class Callback(BaseModel):
    """A completion webhook event of a job: one per terminal transition, its deliveries."""

    id: str = Field(description="The webhook-id header of every delivery (msg_…).")
    run: int
    type: Literal["job.completed", "job.failed", "job.cancelled"]
    url: str
    state: Literal["PENDING", "DELIVERED", "FAILED"]
    created_time: datetime
    enqueued_time: datetime | None = None
    delivered_time: datetime | None = None
    failed_time: datetime | None = None
    deliveries: list[CallbackDelivery]


class CallbackList(BaseModel):
    """A job's webhook events, oldest first."""

    callbacks: list[Callback]


class JobList(BaseModel):
    """A page of jobs."""

    jobs: list[Job]
    next_page_token: str = Field(description="Empty on the last page.")


class Attempt(BaseModel):
    """One delivery of a job that reached the handler."""

    number: int
    outcome: Literal["RUNNING", "COMPLETED", "FAILED", "RETRY", "CANCELLED", "TIMED_OUT", "LOST"]
    error: JobError | None = None
    started_time: datetime
    finished_time: datetime | None = Field(default=None, description="None while the attempt runs (RUNNING).")
    duration_s: float | None = Field(default=None, description="None while the attempt runs (RUNNING).")
    task_name: str | None = None
    retry_count: int | None = None
    execution_count: int | None = None
    retry_reason: str | None = None
    traceback: str | None = Field(default=None, description="Where the job function raised (its last 8 kB), "
                                                            "for an unexpected exception.")


class AttemptList(BaseModel):
    """A job's attempts, oldest first."""

    attempts: list[Attempt]


class DurableStep(BaseModel):
    """A durable step of a job (ctx.step): its result, recorded once, reused by later attempts."""

    name: str
    attempt: int = Field(description="The attempt that ran it.")
    result: Any = None
    started_time: datetime
    finished_time: datetime
    duration_s: float


class DurableStepList(BaseModel):
    """A job's durable steps, in the order they finished."""

    steps: list[DurableStep]




class WorkflowStepState(BaseModel):
    """One step of a workflow as it stands."""

    name: str
    job_id: uuid.UUID
    state: State
    type: str
    needs: list[str]
    attempts: int
    started_time: datetime | None = None
    done_time: datetime | None = None
    error: JobError | None = None


WorkflowState = Literal["RUNNING", "COMPLETED", "FAILED", "CANCELLED"]


class Workflow(BaseModel):
    """A workflow: a DAG of jobs. `counts` and `steps` come with GET /v1/workflows/{id}."""

    id: uuid.UUID
    name: str
    labels: dict[str, str]
    state: WorkflowState = Field(description="RUNNING until every step is terminal; then COMPLETED, "
                                             "FAILED (a step failed) or CANCELLED.")
    done: bool
    step_count: int
    active: int = Field(description="Steps not yet terminal.")
    failed: int
    cancelled: int
    created_time: datetime
    done_time: datetime | None = None
    updated_time: datetime
    counts: dict[str, int] | None = Field(default=None, description="Steps per state.")
    steps: list[WorkflowStepState] | None = None


class WorkflowList(BaseModel):
    """A page of workflows (without their steps)."""

    workflows: list[Workflow]
    next_page_token: str = Field(description="Empty on the last page.")


class ScheduleFire(BaseModel):
    """One fire of a schedule: what it did, once, however often Cloud Scheduler delivered it."""

    scheduled_for: datetime = Field(description="The fire time (X-CloudScheduler-ScheduleTime).")
    outcome: Literal["created", "skipped"] = Field(description="skipped: overlap `skip` found a job still active.")
    job_id: uuid.UUID | None = None
    job_state: State | None = None
    previous_job_id: uuid.UUID | None = Field(default=None,
                                              description="The active job that made it skip, or that it cancelled.")
    fired_time: datetime


class SchedulerJob(BaseModel):
    """The schedule's Cloud Scheduler job as Cloud Scheduler reports it."""

    name: str
    state: str = Field(description="ENABLED, PAUSED, …; NOT_SYNCED (no job: run `cloudjobs schedules sync`) "
                                   "or UNKNOWN (Cloud Scheduler did not answer).")
    schedule_time: datetime | None = None
    last_attempt_time: datetime | None = None
    status_code: int | None = Field(default=None, description="The last attempt's google.rpc code (0: success).")
    status_message: str | None = None


class Schedule(BaseModel):
    """A schedule of schedules.yaml, as it stands."""

    name: str
    cron: str
    time_zone: str
    description: str
    overlap: Literal["allow", "skip", "cancel_previous"]
    paused: bool
    job: dict[str, Any] = Field(description="The job each fire creates: type, payload, queue, labels, limits.")
    next_fire_times: list[datetime] = Field(description="The next three, unless paused.")
    last_fire: ScheduleFire | None = None
    scheduler: SchedulerJob
    fires: list[ScheduleFire] | None = Field(default=None, description="The latest fires (GET of one schedule).")


class Trigger(BaseModel):
    """A Pub/Sub push trigger of schedules.yaml."""

    name: str
    subscription: str
    topic: str | None = None
    payload: Literal["data", "message"]
    description: str
    job: dict[str, Any]


class ScheduleList(BaseModel):
    """Every schedule and trigger."""

    schedules: list[Schedule]
    triggers: list[Trigger]


def job_resource(row: Row[Any], depends_on: list[uuid.UUID] | None = None) -> dict[str, Any]:
    """A job row as the API shows it; `depends_on` for a job created with dependencies."""
    out = _job_fields(row)
    if row.on_dependency_failure is not None:
        out["depends_on"] = [str(i) for i in depends_on or ()]
        out["on_dependency_failure"] = row.on_dependency_failure
    if row.workflow_id is not None:
        out["workflow_id"] = str(row.workflow_id)
        out["step"] = row.step
    if getattr(row, "schedule", None) is not None:
        out["schedule"] = row.schedule
        out["scheduled_for"] = rfc3339(row.scheduled_for)
    if getattr(row, "trigger", None) is not None:
        out["trigger"] = row.trigger
        out["message_id"] = row.message_id
    if row.state == "WAITING":
        out["waiting_reason"] = waiting_reason(row)
    for name in FLOW_FIELDS:
        if (value := getattr(row, name, None)) is not None:
            out[name] = value
    return out


FLOW_FIELDS = ("unique_key", "unique_for_s", "concurrency_key", "concurrency_limit", "throttle_key", "slot_wait_s",
               "callback_url")


def waiting_reason(row: Any) -> str:
    """Why a WAITING job waits: its dependencies, a slot of its concurrency key, or its throttle."""
    if row.waiting_on > 0:
        return "dependencies"
    return "concurrency" if getattr(row, "concurrency_limit", None) is not None else "throttle"


def _job_fields(row: Row[Any]) -> dict[str, Any]:
    out = {
        "id": str(row.id),
        "type": row.type,
        "queue": row.queue,
        "state": row.state,
        "done": row.state in TERMINAL,
        "payload": row.payload,
        "result": row.result,
        "error": row.error,
        "attempts": row.attempts,
        "max_attempts": row.max_attempts,
        "run": row.run,
        "run_attempts": row.attempts - row.attempts_base,
        "next_attempt_time": rfc3339(row.next_attempt_time) if row.state == "QUEUED" else None,
        "timeout_s": row.timeout_s,
        "progress": row.progress,
        "labels": row.labels,
        "created_time": rfc3339(row.created_time),
        "scheduled_time": rfc3339(row.scheduled_time),
        "started_time": rfc3339(row.started_time),
        "done_time": rfc3339(row.done_time),
        "updated_time": rfc3339(row.updated_time),
    }
    if getattr(row, "priority", 0) or getattr(row, "concurrency_key", None) is not None:
        out["priority"] = row.priority
    return out


_TIME_COLUMNS = ("created_time", "scheduled_time", "started_time", "done_time", "updated_time", "next_attempt_time",
                 "scheduled_for", "lease_expires_time", "attempt_started_time", "ready_time")


def snapshot_resource(job: dict[str, Any], depends_on: list[uuid.UUID] | None = None) -> dict[str, Any]:
    """The job resource of a job row saved as JSON (to_jsonb: a webhook event's snapshot)."""
    values = dict(job)
    for name in _TIME_COLUMNS:
        if isinstance(values.get(name), str):
            values[name] = datetime.fromisoformat(values[name])
    return job_resource(SimpleNamespace(**values), depends_on)  # type: ignore[arg-type]


def callbacks_resource(events: list[tuple[Row[Any], list[Row[Any]]]]) -> list[dict[str, Any]]:
    """A job's webhook events with their deliveries, as GET /v1/jobs/{id}/callbacks shows them."""
    return [{
        "id": e.id, "run": e.run, "type": f"job.{e.state.lower()}", "url": e.url,
        "created_time": rfc3339(e.created_time), "enqueued_time": rfc3339(e.enqueued_time),
        "delivered_time": rfc3339(e.delivered_time), "failed_time": rfc3339(e.failed_time),
        "state": "DELIVERED" if e.delivered_time else "FAILED" if e.failed_time else "PENDING",
        "deliveries": [{"number": d.number, "started_time": rfc3339(d.started_time), "duration_ms": d.duration_ms,
                        "status_code": d.status_code, "error": d.error} for d in deliveries],
    } for e, deliveries in events]


def steps_resource(rows: list[Row[Any]]) -> list[dict[str, Any]]:
    """A job's durable steps as the API shows them."""
    return [{"name": r.name, "attempt": r.attempt, "result": r.result, "started_time": rfc3339(r.started_time),
             "finished_time": rfc3339(r.finished_time),
             "duration_s": round((r.finished_time - r.started_time).total_seconds(), 3)} for r in rows]


def attempts_resource(job: Row[Any], rows: list[Row[Any]]) -> list[dict[str, Any]]:
    """A job's attempts as the API shows them, oldest first: the ended ones (job_attempts),
    then, while the job is RUNNING, the attempt running now (outcome RUNNING, no finish)."""
    out = [attempt_resource(r) for r in rows]
    if job.state == "RUNNING" and job.attempt_started_time is not None:
        out.append({
            "number": job.attempts, "outcome": "RUNNING", "error": None,
            "started_time": rfc3339(job.attempt_started_time), "finished_time": None, "duration_s": None,
            "task_name": job.task_name, "retry_count": None, "execution_count": None, "retry_reason": None,
        })
    return out


def attempt_resource(row: Row[Any]) -> dict[str, Any]:
    """An attempt row as the API shows it."""
    return {
        "number": row.number,
        "outcome": row.outcome,
        "error": row.error,
        "started_time": rfc3339(row.started_time),
        "finished_time": rfc3339(row.finished_time),
        "duration_s": round((row.finished_time - row.started_time).total_seconds(), 6),
        "task_name": row.task_name,
        "retry_count": row.retry_count,
        "execution_count": row.execution_count,
        "retry_reason": row.retry_reason,
        **({"traceback": row.traceback} if getattr(row, "traceback", None) else {}),
    }


def workflow_resource(row: Row[Any], steps: list[Row[Any]] | None) -> dict[str, Any]:
    """A workflow as the API shows it; `steps` and `counts` on the single-workflow read."""
    out: dict[str, Any] = {
        "id": str(row.id),
        "name": row.name,
        "labels": row.labels,
        "state": row.state,
        "done": row.state != "RUNNING",
        "step_count": row.steps,
        "active": row.active,
        "failed": row.failed,
        "cancelled": row.cancelled,
        "created_time": rfc3339(row.created_time),
        "done_time": rfc3339(row.done_time),
        "updated_time": rfc3339(row.updated_time),
    }
    if steps is not None:
        counts: dict[str, int] = {}
        for s in steps:
            counts[s.state] = counts.get(s.state, 0) + 1
        out["counts"] = counts
        out["steps"] = [
            {"name": s.step, "job_id": str(s.id), "state": s.state, "type": s.type, "needs": list(s.needs),
             "attempts": s.attempts, "started_time": rfc3339(s.started_time), "done_time": rfc3339(s.done_time),
             "error": s.error}
            for s in steps
        ]
    return out


NEXT_FIRES = 3
_PAUSED = scheduler_v1.Job.State.PAUSED


def fire_resource(row: Row[Any] | None) -> dict[str, Any] | None:
    """A schedule fire as the API shows it."""
    if row is None:
        return None
    return {"scheduled_for": rfc3339(row.scheduled_for), "outcome": row.outcome,
            "job_id": str(row.job_id) if row.job_id else None, "job_state": row.job_state,
            "previous_job_id": str(row.previous_job_id) if row.previous_job_id else None,
            "fired_time": rfc3339(row.fired_time)}


def schedule_resource(state: AppState, spec: ScheduleSpec, job: scheduler_v1.Job | None, last: Row[Any] | None,
                      *, scheduler_known: bool) -> dict[str, Any]:
    """A schedule as the API shows it: the file's definition, Cloud Scheduler's state, the last fire."""
    if job is not None:
        paused = job.state == _PAUSED
        scheduler = {"name": job.name, "state": job.state.name,
                     "schedule_time": rfc3339(job.schedule_time) if job.schedule_time else None,
                     "last_attempt_time": rfc3339(job.last_attempt_time) if job.last_attempt_time else None,
                     "status_code": job.status.code if job.status else 0,
                     "status_message": job.status.message if job.status else ""}
    else:
        paused = bool(spec.paused)
        scheduler = {"name": scheduler_job_name(state.config, spec.name),
                     "state": "NOT_SYNCED" if scheduler_known else "UNKNOWN"}
    return {
        "name": spec.name, "cron": spec.cron, "time_zone": spec.time_zone, "description": spec.description,
        "overlap": spec.overlap, "paused": paused,
        "job": {**spec.job, "payload": spec.job.get("payload", {})},
        "next_fire_times": [] if paused else [rfc3339(t) for t in spec.next_fire_times(datetime.now(UTC), NEXT_FIRES)],
        "last_fire": fire_resource(last),
        "scheduler": scheduler,
    }

"""The wire format: request models, the job and attempt resources, timestamps."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator
from sqlalchemy.engine import Row

from api.store.tables import TERMINAL
from api.times import rfc3339

LABEL_KEY = re.compile(r"^[a-z][a-z0-9_.-]{0,62}$")
MAX_LABELS = 64
MAX_LABEL_VALUE = 256

State = Literal["CREATED", "QUEUED", "RUNNING", "COMPLETED", "FAILED", "CANCELLED"]


class CreateJob(BaseModel):
    """The body of POST /v1/jobs."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(min_length=1, max_length=128, description="A registered job type.")
    payload: dict[str, Any] = Field(
        default_factory=dict, description="The job's input, validated by its type's schema."
    )
    queue: str | None = Field(
        default=None, max_length=100, description="A queue of queues.yaml; routed by type if absent."
    )
    run_at: AwareDatetime | None = Field(
        default=None, description="Run no earlier than this (RFC 3339, at most 30 days ahead)."
    )
    # Strict, as the document says: an integer, not true or "5" (which pydantic would convert).
    max_attempts: int | None = Field(
        default=None, ge=1, le=1000, strict=True, description="At most the queue's max_attempts."
    )
    timeout_s: int | None = Field(
        default=None, ge=1, le=1800, strict=True,
        description="Per-attempt time limit, within the queue's dispatch deadline.",
    )
    labels: dict[str, str] = Field(default_factory=dict, description="Free-form string labels.")

    @field_validator("run_at", mode="before")
    @classmethod
    def _run_at_is_text(cls, value: Any) -> Any:
        # RFC 3339 text only: pydantic would take a number as Unix seconds.
        if value is not None and not isinstance(value, str):
            raise ValueError("run_at must be an RFC 3339 date-time string")
        return value

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels: dict[str, str]) -> dict[str, str]:
        if len(labels) > MAX_LABELS:
            raise ValueError(f"at most {MAX_LABELS} labels")
        for k, v in labels.items():
            if not LABEL_KEY.match(k):
                raise ValueError(f"label key {k!r} must match {LABEL_KEY.pattern}")
            if len(v) > MAX_LABEL_VALUE:
                raise ValueError(f"label {k!r} is longer than {MAX_LABEL_VALUE} characters")
        return labels


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
    attempts: int
    max_attempts: int
    timeout_s: int
    progress: Progress | None = None
    labels: dict[str, str]
    created_time: datetime
    scheduled_time: datetime
    started_time: datetime | None = None
    done_time: datetime | None = None
    updated_time: datetime


class JobList(BaseModel):
    """A page of jobs."""

    jobs: list[Job]
    next_page_token: str = Field(description="Empty on the last page.")


class Attempt(BaseModel):
    """One delivery of a job that reached the handler."""

    number: int
    outcome: Literal["COMPLETED", "FAILED", "RETRY", "CANCELLED", "TIMED_OUT", "LOST"]
    error: JobError | None = None
    started_time: datetime
    finished_time: datetime
    duration_s: float
    task_name: str | None = None
    retry_count: int | None = None
    execution_count: int | None = None
    retry_reason: str | None = None


class AttemptList(BaseModel):
    """A job's attempts, oldest first."""

    attempts: list[Attempt]




def job_resource(row: Row[Any]) -> dict[str, Any]:
    """A job row as the API shows it."""
    return {
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
        "timeout_s": row.timeout_s,
        "progress": row.progress,
        "labels": row.labels,
        "created_time": rfc3339(row.created_time),
        "scheduled_time": rfc3339(row.scheduled_time),
        "started_time": rfc3339(row.started_time),
        "done_time": rfc3339(row.done_time),
        "updated_time": rfc3339(row.updated_time),
    }


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
    }

"""The job registry: `@job("type", schema=Model)` and what a job function receives."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

JobFunction = Callable[[Any, "JobContext"], Any]


class JobSignal(Exception):
    """Raised by a job function to say how its attempt ended."""

    def __init__(self, message: str = "", *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class Retry(JobSignal):
    """The attempt failed; try again if attempts remain."""


class Permanent(JobSignal):
    """The job failed for good; do not try again."""


class UnknownJobType(Exception):
    """No job function is registered under that type."""


@dataclass(frozen=True)
class JobType:
    """A registered job function and its settings."""

    name: str
    fn: JobFunction
    schema: type[BaseModel] | None = None
    timeout_s: int = 300
    max_attempts: int | None = None
    queue: str | None = None
    # At most this many jobs of this type share one Cloud Task (the queue's jobs_per_task
    # caps it too); None: the queue decides. 1 for jobs that must have a task each.
    jobs_per_task: int | None = None
    # At most this many jobs of this type per concurrency key run at once (over the queue's
    # concurrency_per_key); None: the queue decides (docs/flow-control.md).
    concurrency_per_key: int | None = None
    # Where its jobs' terminal states are POSTed, unless a job names its own (docs/webhooks.md).
    callback_url: str | None = None

    def parse(self, payload: dict[str, Any]) -> Any:
        """The payload as the function receives it: validated by its schema, if any."""
        if self.schema is None:
            return payload
        return self.schema.model_validate(payload)


@dataclass
class Registry:
    """Job types by name."""

    types: dict[str, JobType] = field(default_factory=dict)

    def job(
        self,
        name: str,
        *,
        schema: type[BaseModel] | None = None,
        timeout_s: int = 300,
        max_attempts: int | None = None,
        queue: str | None = None,
        jobs_per_task: int | None = None,
        concurrency_per_key: int | None = None,
        callback_url: str | None = None,
    ) -> Callable[[JobFunction], JobFunction]:
        """Register the decorated function as the job type `name`."""
        if jobs_per_task is not None and jobs_per_task < 1:
            raise ValueError(f"job type {name!r}: jobs_per_task must be at least 1")
        if concurrency_per_key is not None and not 1 <= concurrency_per_key <= 1000:
            raise ValueError(f"job type {name!r}: concurrency_per_key must be 1 to 1000")

        def register(fn: JobFunction) -> JobFunction:
            self.types[name] = JobType(name, fn, schema, timeout_s, max_attempts, queue, jobs_per_task,
                                       concurrency_per_key, callback_url)
            return fn

        return register

    def __getitem__(self, name: str) -> JobType:
        try:
            return self.types[name]
        except KeyError:
            raise UnknownJobType(name) from None

    def __contains__(self, name: object) -> bool:
        return name in self.types

    def merged(self, other: Registry) -> Registry:
        """A registry of both; a type registered in both is this one's."""
        return Registry({**other.types, **self.types})


registry = Registry()
job = registry.job


@dataclass(frozen=True)
class Parent:
    """A job this one depended on, as it ended: `ctx.parents[id or step name]`."""

    job_id: uuid.UUID
    step: str | None
    state: str  # COMPLETED, FAILED or CANCELLED (a job runs once every dependency is terminal)
    result: Any
    error: dict[str, str] | None

    @property
    def succeeded(self) -> bool:
        """Whether it COMPLETED."""
        return self.state == "COMPLETED"


@dataclass
class JobContext:
    """What a running job can know and do: its id, attempt, deadline, progress, cancellation,
    and the results of the jobs it depended on (`parents`)."""

    job_id: uuid.UUID
    attempt: int
    deadline: datetime
    _report: Callable[[float | None, str | None], None]
    _check_cancel: Callable[[], bool]
    # Each dependency under its job id (as text) and, for a workflow's steps, its step name too.
    parents: Mapping[str, Parent] = field(default_factory=dict)
    workflow_id: uuid.UUID | None = None
    step_name: str | None = None  # its name in its workflow (ctx.step is for durable steps)
    # ctx.submit: validates a child and keeps it for the finish; returns its id.
    _submit: Callable[[str, dict[str, Any], dict[str, Any]], str] | None = None
    # ctx.step: the recorded results (read on first use) and how to record one.
    _load_steps: Callable[[], dict[str, Any]] | None = None
    _record_step: Callable[[str, Any, datetime], Any] | None = None
    _steps: dict[str, Any] | None = None
    _children: list[str] = field(default_factory=list)
    # Cancellation is polled from the database; a job that asks in a tight loop should not
    # cost a query each time.
    _cancel_poll_s: float = 1.0
    _cancelled: bool = False
    _checked_at: float = float("-inf")
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def progress(self, fraction: float | None = None, message: str | None = None) -> None:
        """Record how far the job has got (fraction 0..1) and what it is doing."""
        if fraction is not None and not 0.0 <= fraction <= 1.0:
            raise ValueError("fraction must be between 0 and 1")
        self._report(fraction, message)

    def submit(self, type: str, payload: dict[str, Any] | None = None, **options: Any) -> str:
        """Create a child job when this attempt completes; its id now (to depend on, or return).

        The children are inserted in the same transaction as this job's COMPLETED finish:
        an attempt that fails, retries or loses its lease creates none, so a job retried
        until it completes creates its children exactly once. `options` are those of
        POST /v1/jobs (queue, run_at, max_attempts, timeout_s, labels, depends_on — ids of
        earlier children or of existing jobs of the same owner — and on_dependency_failure).
        An invalid child raises ValueError here.
        """
        if self._submit is None:
            raise RuntimeError("ctx.submit is available while a job runs under /handlers/run")
        job_id = self._submit(type, dict(payload or {}), options)
        self._children.append(job_id)
        return job_id

    def then(self, type: str, payload: dict[str, Any] | None = None, **options: Any) -> str:
        """A continuation: a child that depends on every child submitted so far (a fan-in)."""
        depends = [*options.pop("depends_on", ()), *self._children]
        return self.submit(type, payload, depends_on=depends, **options)

    def step(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run `fn(*args, **kwargs)` once for this job and keep its result.

        The result (JSON, within the payload size limit) is stored as soon as `fn` returns,
        under `name`; a later attempt of this job — after a failure, a retry, a crash — gets
        the stored result back without calling `fn`, so a job resumes at the step it had
        not finished. Give each step its own name; a step that raises records nothing and
        runs again on the next attempt. Make each step idempotent all the same: a process
        killed after `fn` returned but before its result was stored runs it again.
        """
        if self._record_step is None or self._load_steps is None:
            raise RuntimeError("ctx.step is available while a job runs under /handlers/run")
        if not isinstance(name, str) or not 1 <= len(name) <= 200:
            raise ValueError("a step's name is a string of 1 to 200 characters")
        if self._steps is None:
            self._steps = self._load_steps()
        if name in self._steps:
            return self._steps[name]
        started = datetime.now(UTC)
        result = fn(*args, **kwargs)
        self._steps[name] = self._record_step(name, result, started)
        return self._steps[name]

    def cancelled(self) -> bool:
        """Whether the job was asked to stop; a job should return soon after this is True."""
        with self._lock:
            now = time.monotonic()
            if not self._cancelled and now - self._checked_at >= self._cancel_poll_s:
                self._checked_at = now
                self._cancelled = self._check_cancel()
            return self._cancelled

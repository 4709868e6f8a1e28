"""Problems (RFC 9457): every error the API returns, each named for what happened.

Pure exceptions: api/web/problems.py turns them into responses, in one place."""

from __future__ import annotations

from typing import Any

PROBLEM_BASE = "https://cloudjobs.dev/problems/"


class Problem(Exception):
    """An error the client should see, as application/problem+json."""

    status = 400
    title = "Bad request"
    slug = "bad-request"

    def __init__(
        self,
        detail: str,
        *,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.headers = headers or {}
        self.extra = extra

    def body(self) -> dict[str, Any]:
        """The problem document."""
        doc: dict[str, Any] = {
            "type": PROBLEM_BASE + self.slug,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if self.errors is not None:
            doc["errors"] = self.errors
        doc.update(self.extra)
        return doc


class InvalidRequest(Problem):
    """The request is malformed: not JSON, not an object, a bad query parameter."""


class ValidationFailed(Problem):
    """The request is well formed but its fields are not acceptable."""

    status = 422
    title = "Validation failed"
    slug = "validation-failed"


class JobNotFound(Problem):
    """No such job (or not one the caller may see)."""

    status = 404
    title = "Job not found"
    slug = "job-not-found"


class IdempotencyKeyReused(Problem):
    """The Idempotency-Key was used before with another request body."""

    status = 409
    title = "Idempotency key reused"
    slug = "idempotency-key-reused"


class WorkflowNotFound(Problem):
    """No such workflow (or not one the caller may see)."""

    status = 404
    title = "Workflow not found"
    slug = "workflow-not-found"


class JobStateConflict(Problem):
    """The job's state does not allow that operation."""

    status = 409
    title = "Job state conflict"
    slug = "job-state-conflict"


class OperationNotFound(Problem):
    """No such operation (or not one the caller may see)."""

    status = 404
    title = "Operation not found"
    slug = "operation-not-found"


class UniqueKeyTaken(Problem):
    """Another job holds the unique key this one needs (a retry of a job whose key was taken)."""

    status = 409
    title = "Unique key taken"
    slug = "unique-key-taken"


class Unauthenticated(Problem):
    """The caller did not prove who it is."""

    status = 401
    title = "Unauthenticated"
    slug = "unauthenticated"


class Forbidden(Problem):
    """The caller is known but may not do this."""

    status = 403
    title = "Forbidden"
    slug = "forbidden"


class LeaseHeld(Problem):
    """Another attempt holds the job; the queue should deliver this one again later."""

    status = 409
    title = "Job is running under another attempt"
    slug = "lease-held"


class Busy(Problem):
    """This process runs as many job attempts as it may; the queue should deliver again later."""

    status = 429
    title = "Busy"
    slug = "busy"


class DatabaseUnavailable(Problem):
    """PostgreSQL cannot be reached; the request changed nothing and may be retried."""

    status = 503
    title = "Database unavailable"
    slug = "database-unavailable"


class ScheduleNotFound(Problem):
    """No schedule of that name in schedules.yaml."""

    status = 404
    title = "Schedule not found"
    slug = "schedule-not-found"


class SchedulerUnavailable(Problem):
    """Cloud Scheduler did not answer; nothing was changed and the request may be retried."""

    status = 503
    title = "Cloud Scheduler unavailable"
    slug = "scheduler-unavailable"


class QueueNotFound(Problem):
    """No queue of that name in queues.yaml (or not yet in Cloud Tasks)."""

    status = 404
    title = "Queue not found"
    slug = "queue-not-found"


class TasksUnavailable(Problem):
    """Cloud Tasks did not answer; nothing was changed and the request may be retried."""

    status = 503
    title = "Cloud Tasks unavailable"
    slug = "tasks-unavailable"

"""Problems (RFC 9457): every error the API returns, mapped in one place."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, json
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException

logger = logging.getLogger(__name__)

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


class JobStateConflict(Problem):
    """The job's state does not allow that operation."""

    status = 409
    title = "Job state conflict"
    slug = "job-state-conflict"


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


class DatabaseUnavailable(Problem):
    """PostgreSQL cannot be reached; the request changed nothing and may be retried."""

    status = 503
    title = "Database unavailable"
    slug = "database-unavailable"


def problem_response(problem: Problem) -> Response:
    """A Flask response for a problem."""
    resp = Response(
        json.dumps(problem.body()), status=problem.status, mimetype="application/problem+json"
    )
    for k, v in problem.headers.items():
        resp.headers[k] = v
    return resp


def _http_problem(e: HTTPException) -> Response:
    slug = (e.name or "error").lower().replace(" ", "-")
    p = Problem(e.description or e.name)
    p.status, p.title, p.slug = e.code or 500, e.name, slug
    resp = problem_response(p)
    if e.code == 405 and e.valid_methods:  # type: ignore[attr-defined]
        resp.headers["Allow"] = ", ".join(e.valid_methods)  # type: ignore[attr-defined]
    return resp


def _is_outage(e: BaseException) -> bool:
    if isinstance(e, OperationalError | InterfaceError | PoolTimeout):
        return True
    # pg8000 reports a lost connection as InterfaceError; SQLAlchemy flags it.
    return isinstance(e, DBAPIError) and bool(e.connection_invalidated)


def register(app: Flask) -> None:
    """Map every exception to problem+json; nothing else reaches the client."""

    @app.errorhandler(Problem)
    def _problem(e: Problem) -> Response:
        return problem_response(e)

    @app.errorhandler(HTTPException)
    def _http(e: HTTPException) -> Response:
        return _http_problem(e)

    @app.errorhandler(Exception)
    def _unexpected(e: Exception) -> Response:
        if _is_outage(e):
            logger.error("database unavailable: %s", type(e).__name__)
            return problem_response(
                DatabaseUnavailable(
                    "the database did not answer; nothing was changed, try again",
                    headers={"Retry-After": "5"},
                )
            )
        logger.exception("unhandled error")
        p = Problem("an unexpected error occurred; it has been logged")
        p.status, p.title, p.slug = 500, "Internal server error", "internal"
        return problem_response(p)

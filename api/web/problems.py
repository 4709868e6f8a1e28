"""Every error the API returns, as application/problem+json (RFC 9457), mapped in one place."""

from __future__ import annotations

import logging

from flask import Flask, Response, json
from werkzeug.exceptions import HTTPException

from api.errors import DatabaseUnavailable, Problem
from api.store import driver
from api.store.engine import is_outage

logger = logging.getLogger(__name__)


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
        if is_outage(e):
            logger.error("database unavailable: %s %s", type(e).__name__, driver.sqlstate(e) or "")
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

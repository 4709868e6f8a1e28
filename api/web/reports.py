"""GET /v1/reports/{summary,timeseries,failures}: reports over the caller's jobs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Blueprint, Response, request

from api.errors import InvalidRequest, Problem
from api.reporting.reports import REPORTS, ReportQuery, run_report
from api.times import rfc3339
from api.web.http import REPORT_PARAMS, authenticate, check_params, current_state, json_response, parse_time, principal

bp = Blueprint("reports", __name__)
bp.before_request(authenticate)


def query_from_args(args: Any, *, owner: str | None) -> ReportQuery:
    end = parse_time(args, "to") or datetime.now(UTC)
    start = parse_time(args, "from") or end - timedelta(hours=24)
    try:
        limit = int(args.get("limit", "20"))
    except ValueError:
        raise InvalidRequest("limit must be a whole number") from None
    for name in ("type", "queue", "group_by", "bucket"):
        value = args.get(name)
        if value is not None and ("\x00" in value or len(value) > 200):
            raise InvalidRequest(f"{name} is not valid")
    return ReportQuery(
        start=start, end=end, type=args.get("type") or None, queue=args.get("queue") or None,
        owner=owner, group_by=args.get("group_by", "none"), bucket=args.get("bucket", "hour"), limit=limit,
    )


@bp.get("/v1/reports/<name>")
def report(name: str) -> Response:
    """One report over the caller's jobs (an admin's: everyone's)."""
    if name not in REPORTS:
        p = Problem(f"no report {name!r}; reports: {', '.join(REPORTS)}")
        p.status, p.title, p.slug = 404, "Not found", "not-found"
        raise p
    state = current_state()
    check_params(request.args, REPORT_PARAMS)
    q = query_from_args(request.args, owner=principal().scope)
    rows = run_report(state.reporting_engine, name, q)
    return json_response({
        "report": name, "from": rfc3339(q.start), "to": rfc3339(q.end), "group_by": q.group_by,
        **({"bucket": q.bucket} if name == "timeseries" else {}), "rows": rows,
    })

"""Reports over job history: GET /v1/reports/{summary,timeseries,failures} and their queries.

The SQL lives in api/sql/reports.sql, one named block per report, loaded once. Reports read
through the reporting engine (REPORTING_DATABASE_URL, a read replica) when one is set.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from flask import Blueprint, Response, request
from sqlalchemy.engine import Engine

from api.errors import InvalidRequest
from api.resources import rfc3339
from api.routes import _time, json_response, principal
from api.state import current_state

bp = Blueprint("reports", __name__)


@bp.before_request
def _authenticate() -> None:
    from flask import g

    g.principal = current_state().authenticator.principal(request)

REPORTS = ("summary", "timeseries", "failures")
BUCKETS = {"minute": 60, "hour": 3600, "day": 86400}
MAX_WINDOW = timedelta(days=400)
MAX_BUCKETS = 10_000
GROUPS = ("type", "queue", "none")


@cache
def queries() -> dict[str, sa.TextClause]:
    """The named blocks of reports.sql."""
    text = (Path(__file__).parent / "sql" / "reports.sql").read_text()
    blocks = re.split(r"^-- name: (\w+)\n", text, flags=re.M)
    return {name: sa.text(body.strip().rstrip(";")) for name, body in zip(blocks[1::2], blocks[2::2], strict=True)}


@dataclass(frozen=True)
class ReportQuery:
    """A report's window, filters and grouping."""

    start: datetime
    end: datetime
    type: str | None = None
    queue: str | None = None
    owner: str | None = None
    group_by: str = "none"
    bucket: str = "hour"
    limit: int = 20

    def params(self) -> dict[str, Any]:
        """The bind parameters of the report queries."""
        return {
            "from": self.start, "to": self.end, "type": self.type, "queue": self.queue,
            "owner": self.owner, "group_by": self.group_by, "bucket": self.bucket, "limit": self.limit,
        }


def validate(q: ReportQuery, report: str) -> None:
    """Refuse windows and groupings that make no sense or cost too much (400)."""
    if q.start >= q.end:
        raise InvalidRequest("from must be before to")
    if q.end - q.start > MAX_WINDOW:
        raise InvalidRequest(f"the window is at most {MAX_WINDOW.days} days")
    if q.group_by not in GROUPS:
        raise InvalidRequest(f"group_by must be one of {', '.join(GROUPS)}")
    if q.bucket not in BUCKETS:
        raise InvalidRequest(f"bucket must be one of {', '.join(BUCKETS)}")
    if report == "timeseries" and (q.end - q.start).total_seconds() / BUCKETS[q.bucket] > MAX_BUCKETS:
        raise InvalidRequest(f"at most {MAX_BUCKETS} buckets: choose a larger bucket or a shorter window")
    if not 1 <= q.limit <= 100:
        raise InvalidRequest("limit must be 1 to 100")


def run_report(engine: Engine, report: str, q: ReportQuery) -> list[dict[str, Any]]:
    """Run one report; rows as plain dicts with RFC 3339 times."""
    validate(q, report)
    with engine.connect() as conn:
        rows = conn.execute(queries()[report], q.params()).mappings().all()
    return [{k: rfc3339(v) if isinstance(v, datetime) else v for k, v in row.items()} for row in rows]


def _query_from_args(args: Any, *, owner: str | None) -> ReportQuery:
    end = _time(args, "to") or datetime.now(UTC)
    start = _time(args, "from") or end - timedelta(hours=24)
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
    from api.errors import Problem

    if name not in REPORTS:
        p = Problem(f"no report {name!r}; reports: {', '.join(REPORTS)}")
        p.status, p.title, p.slug = 404, "Not found", "not-found"
        raise p
    state = current_state()
    q = _query_from_args(request.args, owner=principal().scope)
    rows = run_report(state.reporting_engine, name, q)
    return json_response({
        "report": name, "from": rfc3339(q.start), "to": rfc3339(q.end), "group_by": q.group_by,
        **({"bucket": q.bucket} if name == "timeseries" else {}), "rows": rows,
    })

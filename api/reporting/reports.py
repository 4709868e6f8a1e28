"""Reports over job history: summary, timeseries and failures, and their queries.

The SQL lives in api/reporting/sql/reports.sql, one named block per report, loaded once. Reports read
through the reporting engine (REPORTING_DATABASE_URL, a read replica) when one is set.

Windows up to EXACT_WINDOW read the jobs themselves (exact percentiles). Longer summaries and
hourly or daily timeseries read the rollups (api/rollups.py) for the whole hours and days they
cover and the jobs for the rest, so their cost follows the window in days, not in jobs; their
counts are exact and their percentiles come from histograms (within 4.4%). Failures always
read the failed attempts themselves, from an index that holds only them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from api.errors import InvalidRequest
from api.reporting import rollups
from api.store import driver
from api.times import rfc3339

REPORTS = ("summary", "timeseries", "failures")
BUCKETS = {"minute": 60, "hour": 3600, "day": 86400}
MAX_WINDOW = timedelta(days=400)
MAX_BUCKETS = 10_000
GROUPS = ("type", "queue", "none")
# Up to this window, summary and timeseries read every job; beyond it, the rollups.
EXACT_WINDOW = timedelta(days=2)
SUMMARY_COLUMNS = ("key", "jobs", "completed", "failed", "cancelled", "active", "success_rate", "retries",
                   "retry_rate", "queue_wait_p50_s", "queue_wait_p95_s", "queue_wait_p99_s", "run_p50_s",
                   "run_p95_s", "run_p99_s")
TIMESERIES_COLUMNS = ("bucket", "key", "jobs", "completed", "failed", "cancelled", "retries", "run_p50_s", "run_p95_s")


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


def uses_rollups(report: str, q: ReportQuery) -> bool:
    """Whether this report reads the rollups (long windows of summary and timeseries)."""
    if report == "failures" or q.end - q.start <= EXACT_WINDOW:
        return False
    return not (report == "timeseries" and q.bucket == "minute")


def run_report(engine: Engine, report: str, q: ReportQuery) -> list[dict[str, Any]]:
    """Run one report; rows as plain dicts with RFC 3339 times."""
    validate(q, report)
    with engine.connect() as conn, driver.planned_each_time(conn.connection.dbapi_connection):
        if uses_rollups(report, q):
            rows = _from_rollups(conn, report, q)
        else:
            rows = [dict(r) for r in conn.execute(queries()[report], q.params()).mappings()]
    return [{k: rfc3339(v) if isinstance(v, datetime) else v for k, v in row.items()} for row in rows]


def _from_rollups(conn: Connection, report: str, q: ReportQuery) -> list[dict[str, Any]]:
    # One snapshot for the rollup state, the dirty marks, the rollups and the jobs: a refresh
    # commits its rows and removes its marks together, so every hour is counted exactly once.
    conn.execution_options(isolation_level="REPEATABLE READ")
    # The histograms of a month of hours are merged in memory, not in temporary files.
    conn.execute(sa.text("SET LOCAL work_mem = '64MB'"))
    rolled_until = conn.execute(sa.text("SELECT rolled_until FROM job_rollup_state")).scalar_one()
    dirty = set(conn.execute(
        sa.text("SELECT DISTINCT hour FROM job_rollup_dirty WHERE hour >= :lo AND hour < :hi"),
        {"lo": rollups.floor_hour(q.start), "hi": q.end},
    ).scalars())
    timeseries = report == "timeseries"
    p = rollups.plan(q.start, q.end, rolled_until=rolled_until, dirty=dirty,
                     days=not timeseries or q.bucket == "day")
    params = {
        **q.params(), "bucket": q.bucket if timeseries else None, "with_waits": not timeseries,
        "days": p.days, "hours": p.hours,
        "starts": [s for s, _ in p.live], "ends": [e for _, e in p.live],
        "level": rollups.level_for(type=q.type is not None or q.group_by == "type",
                                   queue=q.queue is not None or q.group_by == "queue",
                                   owner=q.owner is not None),
    }
    rows = conn.execute(queries()["rollup"], params).mappings().all()
    conn.rollback()  # end the read-only transaction (and SET LOCAL)
    if timeseries:
        return [{c: r[c] for c in TIMESERIES_COLUMNS} for r in sorted(rows, key=lambda r: (r["bucket"], r["key"]))]
    return [{c: r[c] for c in SUMMARY_COLUMNS} for r in sorted(rows, key=lambda r: (-r["jobs"], r["key"]))]

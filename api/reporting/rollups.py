"""Rollups of job history: what reports over long windows read instead of every job.

`job_rollups` holds, per hour and per day (UTC, of created_time), type, queue and owner, the
counts the reports show and log-scale histograms of queue waits and run times (migration
0005), and the same summed over any of type, queue and owner (`level`, migration 0008),
each row with the p50/p95/p99 of its histograms. `refresh()` rolls up each hour once it is
ROLL_AFTER old, recomputes the hours that the trigger marked dirty (a job in them changed
late: it finished, was retried, was purged), and rebuilds a day's row from its hours once
the whole day is rolled up. `plan()` splits a
report's window into days and hours read from the rollups and ranges read live from `jobs`.

Callers: the sweeper (Cloud Scheduler, every minute), `cloudjobs rollup`, `seed-history`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

logger = logging.getLogger(__name__)

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
# An hour is rolled up once it ended this long ago. The trigger marks changes to jobs created
# over 30 minutes ago, so a job whose change was not marked is never in a rolled-up hour
# unless a transaction stayed open for more than 90 minutes.
ROLL_AFTER = timedelta(hours=2)
# One transaction rolls up at most this much new history (the first refresh of a big table).
STEP = timedelta(days=7)
# A refresh that rolled up at least this many hours analyzes job_rollups when it is done.
ANALYZE_AFTER_HOURS = 24 * 7

_COUNTS = """
    count(*) AS jobs,
    count(*) FILTER (WHERE state = 'COMPLETED') AS completed,
    count(*) FILTER (WHERE state = 'FAILED') AS failed,
    count(*) FILTER (WHERE state = 'CANCELLED') AS cancelled,
    count(*) FILTER (WHERE state IN ('CREATED', 'QUEUED', 'RUNNING')) AS active,
    coalesce(sum(greatest(attempts - 1, 0)), 0) AS retries,
    count(*) FILTER (WHERE attempts > 0) AS ran,
    count(*) FILTER (WHERE attempts > 1) AS retried
"""

_COLUMNS = ("grain, period, level, type, queue, owner, jobs, completed, failed, cancelled, active, retries, ran, "
            "retried, wait_buckets, wait_counts, run_buckets, run_counts, wait_p, run_p")
_PERCENTILES = "'{0.5,0.95,0.99}'"  # wait_p and run_p, as api/reporting/sql/reports.sql reads them
_KEY = "period, level, type, queue, owner"

# Levels (migration 0008): a row summed over some of type, queue and owner has level =
# GROUPING(type, queue, owner), 4 for type, 2 for queue, 1 for owner, and '' in those columns.
TYPE_LEVEL, QUEUE_LEVEL, OWNER_LEVEL = 4, 2, 1
_SUMMED_SETS = "GROUPING SETS ((type, queue), (type, owner), (queue, owner), (type), (queue), (owner), ())"
_LEVEL_KEY = """GROUPING(type, queue, owner) AS level,
               CASE WHEN GROUPING(type) = 1 THEN '' ELSE type END AS type,
               CASE WHEN GROUPING(queue) = 1 THEN '' ELSE queue END AS queue,
               CASE WHEN GROUPING(owner) = 1 THEN '' ELSE owner END AS owner"""
_SUM_COUNTS = """sum(jobs) AS jobs, sum(completed) AS completed, sum(failed) AS failed,
               sum(cancelled) AS cancelled, sum(active) AS active, sum(retries)::bigint AS retries,
               sum(ran) AS ran, sum(retried) AS retried"""


def level_for(*, type: bool, queue: bool, owner: bool) -> int:
    """The level of the rows that keep exactly the dimensions given (True: kept)."""
    return (0 if type else TYPE_LEVEL) + (0 if queue else QUEUE_LEVEL) + (0 if owner else OWNER_LEVEL)


def _rollup_insert(grain: str, source: str, counts: str, cells: str) -> sa.TextClause:
    """INSERT rollup rows of `grain` from a `source` CTE: per-group `counts`, and the wait and
    run histograms built from `cells` (rows of period, level, type, queue, owner, b, n), a
    query written once with a {metric} placeholder."""

    def histogram(metric: str) -> str:
        return f"""
        SELECT {_KEY}, array_agg(b ORDER BY b) AS buckets, array_agg(n ORDER BY b) AS counts
        FROM ({cells.format(metric=metric)}) AS x
        GROUP BY 1, 2, 3, 4, 5"""

    return sa.text(f"""
    INSERT INTO job_rollups ({_COLUMNS})
    WITH {source},
    counts AS ({counts}),
    wait AS ({histogram("wait")}),
    run AS ({histogram("run")})
    SELECT '{grain}', c.period, c.level, c.type, c.queue, c.owner, c.jobs, c.completed, c.failed,
           c.cancelled, c.active, c.retries, c.ran, c.retried,
           coalesce(w.buckets, '{{}}'), coalesce(w.counts, '{{}}'),
           coalesce(r.buckets, '{{}}'), coalesce(r.counts, '{{}}'),
           reporting.histogram_percentiles(w.buckets, w.counts, {_PERCENTILES}),
           reporting.histogram_percentiles(r.buckets, r.counts, {_PERCENTILES})
    FROM counts c
    LEFT JOIN wait w USING ({_KEY})
    LEFT JOIN run r USING ({_KEY})
    """)


# Hours of created_time, from jobs, for the given ranges (each a whole number of hours).
_ROLL_HOURS = _rollup_insert(
    "hour",
    source="""j AS MATERIALIZED (
        SELECT date_trunc('hour', j.created_time, 'UTC') AS period, j.type, j.queue,
               coalesce(j.owner, '') AS owner, j.state, j.attempts,
               reporting.duration_bucket(extract(epoch FROM j.started_time - j.scheduled_time)::float8) AS wait,
               reporting.duration_bucket(extract(epoch FROM j.done_time - j.started_time)::float8) AS run
        FROM unnest(CAST(:starts AS timestamptz[]), CAST(:ends AS timestamptz[])) AS r(s, e)
        CROSS JOIN LATERAL (
            SELECT * FROM jobs WHERE jobs.created_time >= r.s AND jobs.created_time < r.e
            OFFSET 0  -- a subquery per range (an index range scan), not a join over all jobs
        ) AS j
    )""",
    counts=f"SELECT period, 0 AS level, type, queue, owner, {_COUNTS} FROM j GROUP BY 1, 3, 4, 5",
    cells="SELECT period, 0 AS level, type, queue, owner, {metric} AS b, count(*) AS n FROM j "
          "WHERE {metric} IS NOT NULL GROUP BY 1, 3, 4, 5, 6",
)

# The same hours summed over type, queue or owner (the other levels), from their level-0 rows.
_ROLL_HOUR_LEVELS = _rollup_insert(
    "hour",
    source="""h AS MATERIALIZED (
        SELECT r.* FROM unnest(CAST(:starts AS timestamptz[]), CAST(:ends AS timestamptz[])) AS x(s, e)
        JOIN job_rollups r ON r.grain = 'hour' AND r.level = 0 AND r.period >= x.s AND r.period < x.e
    )""",
    counts=f"SELECT period, {_LEVEL_KEY}, {_SUM_COUNTS} FROM h GROUP BY period, {_SUMMED_SETS}",
    cells=f"SELECT period, {_LEVEL_KEY}, u.b, sum(u.n)::bigint AS n "
          "FROM h, unnest(h.{metric}_buckets, h.{metric}_counts) AS u(b, n) "
          f"GROUP BY period, u.b, {_SUMMED_SETS}",
)

# Days, from their 24 hour rows, level by level.
_ROLL_DAYS = _rollup_insert(
    "day",
    source="""h AS MATERIALIZED (
        SELECT d.day AS period, r.level, r.type, r.queue, r.owner, r.jobs, r.completed, r.failed, r.cancelled,
               r.active, r.retries, r.ran, r.retried, r.wait_buckets, r.wait_counts, r.run_buckets, r.run_counts
        FROM unnest(CAST(:days AS timestamptz[])) AS d(day)
        JOIN job_rollups r ON r.grain = 'hour' AND r.period >= d.day AND r.period < d.day + interval '24 hours'
    )""",
    counts=f"SELECT {_KEY}, {_SUM_COUNTS} FROM h GROUP BY 1, 2, 3, 4, 5",
    cells="SELECT period, level, type, queue, owner, u.b, sum(u.n)::bigint AS n "
          "FROM h, unnest(h.{metric}_buckets, h.{metric}_counts) AS u(b, n) GROUP BY 1, 2, 3, 4, 5, 6",
)

_DELETE_HOURS = sa.text("""
    DELETE FROM job_rollups r
    USING unnest(CAST(:starts AS timestamptz[]), CAST(:ends AS timestamptz[])) AS x(s, e)
    WHERE r.grain = 'hour' AND r.period >= x.s AND r.period < x.e
""")
_DELETE_DAYS = sa.text("DELETE FROM job_rollups WHERE grain = 'day' AND period = ANY(CAST(:days AS timestamptz[]))")


def floor_hour(t: datetime) -> datetime:
    """The start of t's hour, in UTC."""
    return t.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def floor_day(t: datetime) -> datetime:
    """The start of t's day, in UTC."""
    return floor_hour(t).replace(hour=0)


def ceil_hour(t: datetime) -> datetime:
    """The first hour boundary at or after t."""
    f = floor_hour(t)
    return f if f == t else f + HOUR


def merge_ranges(ranges: list[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    """Sorted, with touching and overlapping ranges joined; empty ones dropped."""
    out: list[tuple[datetime, datetime]] = []
    for s, e in sorted(r for r in ranges if r[0] < r[1]):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


@dataclass
class RefreshReport:
    """What one refresh did."""

    hours: int = 0  # hours recomputed (new or dirty)
    days: int = 0  # day rows rebuilt
    rolled_until: datetime | None = None


def refresh(engine: Engine, *, now: datetime | None = None) -> RefreshReport:
    """Bring the rollups up to date: new hours, dirty hours, and the days they complete.

    Safe to run at any time and from several places at once (they take turns on the state
    row). Each transaction covers at most STEP of new history, so the first refresh of a
    large table does not hold one transaction for long.
    """
    report = RefreshReport()
    while True:
        with engine.begin() as conn:
            done = _refresh_step(conn, now, report)
        if done:
            break
    if report.hours >= ANALYZE_AFTER_HOURS:
        # A first rollup (or a big catch-up) writes most of the table at once: without fresh
        # statistics the reports' plans take the few rows they had for all there are (the
        # hourly timeseries over 30 days ran 5x slower until autovacuum came by).
        with engine.connect() as conn:
            conn.execute(sa.text("ANALYZE job_rollups"))
            conn.commit()
    if report.hours:
        until = report.rolled_until.isoformat() if report.rolled_until else None
        logger.info("rollups refreshed", extra={"hours": report.hours, "days": report.days, "rolled_until": until})
    return report


def _refresh_step(conn: Connection, now: datetime | None, report: RefreshReport) -> bool:
    rolled_until, db_now = conn.execute(sa.text(
        "SELECT rolled_until, now() FROM job_rollup_state FOR UPDATE")).one()
    target = floor_hour((now or db_now) - ROLL_AFTER)
    if rolled_until is None:  # the first refresh: from the first day of history
        first = conn.execute(sa.text("SELECT min(created_time) FROM jobs")).scalar_one()
        rolled_until = floor_day(first) if first is not None else target
    upto = max(rolled_until, min(target, rolled_until + STEP))
    # Marks this transaction can see; hours at or past `upto` are not rolled up yet and are
    # computed afresh when they are.
    dirty = conn.execute(sa.text(
        "WITH d AS (DELETE FROM job_rollup_dirty WHERE hour < :upto RETURNING hour) SELECT DISTINCT hour FROM d"),
        {"upto": upto}).scalars().all()
    ranges = merge_ranges([(h, h + HOUR) for h in dirty if h < rolled_until] + [(rolled_until, upto)])
    if ranges:
        params = {"starts": [s for s, _ in ranges], "ends": [e for _, e in ranges]}
        conn.execute(_DELETE_HOURS, params)
        conn.execute(_ROLL_HOURS, params)
        conn.execute(_ROLL_HOUR_LEVELS, params)
        days = sorted({
            d for s, e in ranges for d in _days_touching(s, e) if d + DAY <= upto
        })
        if days:
            conn.execute(_DELETE_DAYS, {"days": days})
            conn.execute(_ROLL_DAYS, {"days": days})
        report.hours += sum(int((e - s) / HOUR) for s, e in ranges)
        report.days += len(days)
    conn.execute(sa.text("UPDATE job_rollup_state SET rolled_until = :u, refreshed_time = now()"), {"u": upto})
    report.rolled_until = upto
    return upto >= target


def _days_touching(start: datetime, end: datetime) -> list[datetime]:
    days, d = [], floor_day(start)
    while d < end:
        days.append(d)
        d += DAY
    return days


@dataclass
class Plan:
    """Where each part of a report's window is read from."""

    days: list[datetime] = field(default_factory=list)  # day rows
    hours: list[datetime] = field(default_factory=list)  # hour rows
    live: list[tuple[datetime, datetime]] = field(default_factory=list)  # ranges of created_time, from jobs


def plan(start: datetime, end: datetime, *, rolled_until: datetime | None, dirty: set[datetime],
         days: bool = True) -> Plan:
    """Split [start, end) into rolled-up days and hours and live ranges.

    Whole hours before `rolled_until` and not dirty come from hour rows; whole days of them
    (when `days`) from day rows; the rest, the partial hours at the edges, the hours not yet
    rolled up and the dirty ones, is read live.
    """
    p = Plan()
    if rolled_until is None:
        p.live = [(start, end)]
        return p
    lo, hi = ceil_hour(start), min(floor_hour(end), rolled_until)
    if lo >= hi:
        p.live = [(start, end)]
        return p
    live = [(start, lo), (hi, end)]
    h = lo
    while h < hi:
        day = floor_day(h)
        whole_day = days and h == day and day + DAY <= hi and not any(day <= d < day + DAY for d in dirty)
        if whole_day:
            p.days.append(day)
            h += DAY
            continue
        if h in dirty:
            live.append((h, h + HOUR))
        else:
            p.hours.append(h)
        h += HOUR
    p.live = merge_ranges(live)
    return p

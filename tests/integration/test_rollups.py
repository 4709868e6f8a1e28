"""Long-window reports from the rollups: values by hand, agreement with the jobs, late changes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy.engine import Engine

from api.reporting import rollups
from api.reporting.history import purge, seed_history
from api.reporting.reports import ReportQuery, queries, run_report, uses_rollups
from api.times import rfc3339
from tests.conftest import ROOT
from tests.integration.test_reports import _as_reporting_role, _attempt, _job

T0 = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
MIDNIGHT = T0.replace(hour=0)
WINDOW = {"start": MIDNIGHT, "end": MIDNIGHT + timedelta(days=5)}  # five whole days
S, H, D = timedelta(seconds=1), timedelta(hours=1), timedelta(days=1)


def mid(bucket: int) -> float:
    """The middle of a histogram bucket, in seconds: bucket b >= 1 holds [2^((b-1)/8), 2^(b/8)) ms."""
    return 2 ** ((bucket - 0.5) / 8) / 1000


@pytest.fixture
def history(db: Engine) -> dict[str, uuid.UUID]:
    """The five jobs of test_reports, spread over four days so that day rows are used."""
    with db.begin() as c:
        j1 = _job(c, type="echo", queue="default", state="COMPLETED", attempts=1, created=T0, wait=1, run=2)
        j2 = _job(c, type="echo", queue="default", state="COMPLETED", attempts=2, created=T0 + D, wait=3, run=10)
        j3 = _job(c, type="sleep", queue="slow", state="FAILED", attempts=3, created=T0 + 2 * D, wait=2, run=6,
                  error="FLAKY")
        j4 = _job(c, type="sleep", queue="slow", state="CANCELLED", attempts=0, created=T0 + 3 * D, done_after=1)
        j5 = _job(c, type="echo", queue="default", state="QUEUED", attempts=0, created=T0 + 3 * D + H)
        _job(c, type="echo", queue="default", state="COMPLETED", attempts=1, created=MIDNIGHT - H, wait=1, run=1)
        _attempt(c, j3, 3, "FAILED", T0 + 2 * D + 5 * S, 1, "FLAKY", "sleep", "slow")
    return {"j1": j1, "j2": j2, "j3": j3, "j4": j4, "j5": j5}


def _dirty(db: Engine) -> set[datetime]:
    with db.connect() as conn:
        return set(conn.execute(sa.text("SELECT DISTINCT hour FROM job_rollup_dirty")).scalars())


def test_a_long_window_reads_the_rollups_with_hand_computed_values(db: Engine, history: dict[str, uuid.UUID]) -> None:
    report = rollups.refresh(db)
    assert report.days >= 5 and report.rolled_until > WINDOW["end"]
    q = ReportQuery(**WINDOW)
    assert uses_rollups("summary", q)
    [row] = run_report(db, "summary", q)
    # Counts are exact, as from the jobs.
    assert (row["jobs"], row["completed"], row["failed"], row["cancelled"], row["active"]) == (5, 2, 1, 1, 1)
    assert row["success_rate"] == pytest.approx(2 / 4) and row["retries"] == 3
    assert row["retry_rate"] == pytest.approx(2 / 3)
    # Percentiles: nearest rank, read as the middle of the bucket. Waits 1, 2, 3 s: the median
    # is 2 s, in bucket 1 + floor(8 * log2(2000)) = 88; p95 and p99 are 3 s, bucket 93.
    assert row["queue_wait_p50_s"] == pytest.approx(mid(88))
    assert row["queue_wait_p95_s"] == row["queue_wait_p99_s"] == pytest.approx(mid(93))
    # Run times 2, 6, 10 s: the median 6 s is in bucket 101; p95 and p99, 10 s, in bucket 107.
    assert row["run_p50_s"] == pytest.approx(mid(101))
    assert row["run_p95_s"] == row["run_p99_s"] == pytest.approx(mid(107))
    for estimate, true in ((row["queue_wait_p50_s"], 2), (row["run_p50_s"], 6), (row["run_p99_s"], 10)):
        assert abs(estimate - true) / true < 0.044


def test_daily_and_hourly_timeseries_from_the_rollups(db: Engine, history: dict[str, uuid.UUID]) -> None:
    rollups.refresh(db)
    days = run_report(db, "timeseries", ReportQuery(**WINDOW, bucket="day", group_by="type"))
    assert [(r["bucket"][:10], r["key"], r["jobs"], r["completed"], r["failed"]) for r in days] == [
        ("2026-01-01", "echo", 1, 1, 0), ("2026-01-02", "echo", 1, 1, 0), ("2026-01-03", "sleep", 1, 0, 1),
        ("2026-01-04", "echo", 1, 0, 0), ("2026-01-04", "sleep", 1, 0, 0)]
    assert days[2]["retries"] == 2 and days[2]["run_p50_s"] == pytest.approx(mid(101))
    hours = run_report(db, "timeseries", ReportQuery(**WINDOW, bucket="hour"))
    assert [(r["bucket"][:13], r["jobs"]) for r in hours] == [
        ("2026-01-01T10", 1), ("2026-01-02T10", 1), ("2026-01-03T10", 1), ("2026-01-04T10", 1), ("2026-01-04T11", 1)]


def test_rollups_agree_with_the_jobs_on_seeded_history(db: Engine) -> None:
    seed_history(db, jobs=4000, days=8, end=T0 + 8 * D)
    rollups.refresh(db)
    # A window with ragged edges: partial hours live, whole hours and days rolled up.
    q = ReportQuery(start=T0 + timedelta(minutes=17), end=T0 + 7 * D + timedelta(minutes=41), group_by="type")
    assert uses_rollups("summary", q)
    fast = {r["key"]: r for r in run_report(db, "summary", q)}
    with db.connect() as conn:
        exact = {r["key"]: dict(r) for r in conn.execute(queries()["summary"], q.params()).mappings()}
        disc = {r.type: r for r in conn.execute(sa.text("""
            SELECT type,
                   percentile_disc(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM done_time - started_time)) p50,
                   percentile_disc(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM done_time - started_time)) p95,
                   percentile_disc(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM started_time - scheduled_time)) w99
            FROM jobs WHERE created_time >= :from AND created_time < :to GROUP BY type"""), q.params())}
    assert set(fast) == set(exact) == {"echo", "resize", "email", "report", "sync"}
    for key, row in fast.items():
        for col in ("jobs", "completed", "failed", "cancelled", "active", "retries"):
            assert row[col] == exact[key][col], (key, col)
        assert row["success_rate"] == pytest.approx(exact[key]["success_rate"])
        assert row["retry_rate"] == pytest.approx(exact[key]["retry_rate"])
        # The estimate is the middle of the bucket of the exact nearest-rank percentile.
        d = disc[key]
        for col, true in (("run_p50_s", d.p50), ("run_p95_s", d.p95), ("queue_wait_p99_s", d.w99)):
            bucket = 0 if true < 0.001 else 1 + math.floor(8 * math.log2(float(true) * 1000))
            assert row[col] == pytest.approx(mid(bucket) if bucket else 0.0), (key, col)


def test_a_late_change_is_read_live_until_the_next_refresh(db: Engine, history: dict[str, uuid.UUID]) -> None:
    rollups.refresh(db)
    assert _dirty(db) == set()
    with db.begin() as conn:  # j5, queued since Jan 4, finally runs
        conn.execute(sa.text("""
            UPDATE jobs SET state = 'COMPLETED', attempts = 1, started_time = created_time + interval '4 s',
                            done_time = created_time + interval '5 s' WHERE id = :id"""), {"id": history["j5"]})
    assert _dirty(db) == {T0 + 3 * D + H}
    q = ReportQuery(**WINDOW)
    [row] = run_report(db, "summary", q)
    assert (row["completed"], row["active"]) == (3, 0)  # the dirty hour was read from the jobs
    assert rollups.refresh(db).hours == 1
    assert _dirty(db) == set()
    assert run_report(db, "summary", q) == [row]
    assert rollups.refresh(db).hours == 0  # nothing left to do


def test_purged_jobs_leave_the_rollups(db: Engine, history: dict[str, uuid.UUID]) -> None:
    rollups.refresh(db)
    assert purge(db, cutoff=T0 + D + 20 * S) == 3  # j1, j2 and the job before the window
    [row] = run_report(db, "summary", ReportQuery(**WINDOW))
    assert row["jobs"] == 3
    rollups.refresh(db)
    [again] = run_report(db, "summary", ReportQuery(**WINDOW))
    assert again == row
    with db.connect() as conn:
        echo_days = conn.execute(sa.text(
            "SELECT count(*) FROM job_rollups WHERE grain = 'day' AND type = 'echo' AND period < :t"),
            {"t": T0 + 2 * D}).scalar_one()
    assert echo_days == 0


def test_new_jobs_mark_nothing(make_app: Callable[..., Flask], db: Engine) -> None:
    client = make_app().test_client()
    resp = client.post("/v1/jobs", data=json.dumps({"type": "echo"}), content_type="application/json")
    assert resp.status_code == 202
    assert _dirty(db) == set()  # the trigger's WHEN skips jobs created moments ago


def test_the_sweeper_refreshes_the_rollups(make_app: Callable[..., Flask], db: Engine) -> None:
    from api.orchestration.sweep import sweep

    with db.begin() as c:  # finished history only: live jobs would send the sweeper to Cloud Tasks
        _job(c, type="echo", queue="default", state="COMPLETED", attempts=1, created=T0, wait=1, run=2)
    report = sweep(make_app().extensions["cloudjobs"])
    assert report.rollup_hours > 24 * 4
    with db.connect() as conn:
        rolled_until, refreshed = conn.execute(sa.text(
            "SELECT rolled_until, refreshed_time FROM job_rollup_state")).one()
    assert refreshed is not None
    assert rolled_until == rollups.floor_hour(datetime.now(UTC) - rollups.ROLL_AFTER)


def test_analysts_read_rollups_and_their_percentiles(db: Engine, history: dict[str, uuid.UUID]) -> None:
    rollups.refresh(db)
    [(p50, jobs)] = _as_reporting_role(db, """
        SELECT reporting.histogram_percentile(run_buckets, run_counts, 0.5), jobs
        FROM reporting.job_rollups WHERE grain = 'day' AND type = 'sleep' AND period = '2026-01-03'""")
    assert (p50, jobs) == (pytest.approx(mid(101)), 1)
    [(until, dirty)] = _as_reporting_role(db, "SELECT rolled_until, dirty_hours FROM reporting.job_rollups_current")
    assert until is not None and dirty == 0
    with pytest.raises(sa.exc.DBAPIError, match="permission denied"):
        _as_reporting_role(db, "DELETE FROM job_rollups")


def test_rollup_cli(migrated_url: str, db: Engine, history: dict[str, uuid.UUID]) -> None:
    env = {**os.environ, "DATABASE_URL": migrated_url}
    out = subprocess.run([sys.executable, "-m", "api.cli.main", "rollup"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("rolled up ") and " 0 hours" not in out.stdout
    again = subprocess.run([sys.executable, "-m", "api.cli.main", "rollup"], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=60)
    assert again.stdout.startswith("rolled up 0 hours and 0 days")


def test_a_long_report_through_the_api(make_app: Callable[..., Flask], db: Engine,
                                       history: dict[str, uuid.UUID]) -> None:
    rollups.refresh(db)
    client = make_app().test_client()
    resp = client.get("/v1/reports/summary?from=2026-01-01T00:00:00Z&to=2026-01-06T00:00:00Z&group_by=queue")
    assert resp.status_code == 200
    rows: list[dict[str, Any]] = resp.get_json()["rows"]
    assert {r["key"]: r["jobs"] for r in rows} == {"default": 3, "slow": 2}


def test_histogram_percentiles_by_nearest_rank(db: Engine) -> None:
    with db.connect() as conn:
        got = conn.execute(sa.text(
            "SELECT reporting.histogram_percentiles('{1,5,9}', '{1,1,2}', '{0.25,0.5,0.75,1}')")).scalar_one()
        empty = conn.execute(sa.text("SELECT reporting.histogram_percentiles('{}', '{}', '{0.5}')")).scalar_one()
        zero = conn.execute(sa.text("SELECT reporting.duration_bucket(0.0005), reporting.bucket_seconds(0)")).one()
    # four values: ranks 1, 2, 3, 4 fall in buckets 1, 5, 9, 9
    assert got == [pytest.approx(mid(1)), pytest.approx(mid(5)), pytest.approx(mid(9)), pytest.approx(mid(9))]
    assert empty is None and tuple(zero) == (0, 0.0)


@pytest.mark.parametrize(("group_by", "filters"), [
    ("none", {}), ("type", {}), ("queue", {}), ("queue", {"type": "email"}), ("type", {"queue": "bulk"}),
    ("none", {"owner": "team-a"}), ("queue", {"owner": "team-b", "type": "sync"}),
    ("type", {"owner": "team-a", "queue": "default"}),
])
def test_every_level_of_the_rollups_counts_as_the_jobs_do(db: Engine, group_by: str, filters: dict[str, str]) -> None:
    # Each report reads the rows summed over what it neither filters nor groups by (level);
    # the counts of each must be those of the jobs themselves, by day and by hour.
    seed_history(db, jobs=3000, days=4, end=T0 + 4 * D)
    with db.begin() as conn:
        conn.execute(sa.text("UPDATE jobs SET owner = CASE WHEN random() < 0.3 THEN NULL "
                             "WHEN random() < 0.5 THEN 'team-a' ELSE 'team-b' END"))
    rollups.refresh(db)
    window = {"start": T0 + timedelta(minutes=5), "end": T0 + 3 * D + timedelta(minutes=50)}
    for report, extra in (("summary", {}), ("timeseries", {"bucket": "day"}), ("timeseries", {"bucket": "hour"})):
        q = ReportQuery(**window, group_by=group_by, **filters, **extra)  # type: ignore[arg-type]
        assert uses_rollups(report, q)
        fast = run_report(db, report, q)
        with db.connect() as conn:
            exact = [dict(r) for r in conn.execute(queries()[report], q.params()).mappings()]
        key = ("bucket", "key") if report == "timeseries" else ("key",)
        assert _counts(fast, key) == _counts(exact, key) and _counts(fast, key), (report, extra)


def _counts(rows: list[dict[str, Any]], key: tuple[str, ...]) -> dict[tuple[str, ...], tuple[Any, ...]]:
    """A report's counts by its key (times as RFC 3339), rows with jobs only."""

    def text(v: Any) -> str:
        return rfc3339(v) if isinstance(v, datetime) else str(v)  # type: ignore[return-value]

    cols = ("jobs", "completed", "failed", "cancelled", "retries")
    return {tuple(text(r[k]) for k in key): tuple(r[c] for c in cols) for r in rows if r["jobs"]}


def test_an_hourly_point_from_one_rollup_row_has_the_percentiles_of_its_jobs(db: Engine) -> None:
    # Whole hours take the percentiles stored with their rollup row (no histogram merged): they
    # must be the middle of the bucket of each hour's exact nearest-rank percentile.
    seed_history(db, jobs=4000, days=4, end=T0 + 4 * D)
    rollups.refresh(db)
    q = ReportQuery(start=T0 + timedelta(hours=3), end=T0 + 3 * D + timedelta(hours=3), group_by="queue", bucket="hour")
    assert uses_rollups("timeseries", q)
    fast = {(r["bucket"], r["key"]): r for r in run_report(db, "timeseries", q)}
    with db.connect() as conn:
        exact = conn.execute(sa.text("""
            SELECT date_trunc('hour', created_time, 'UTC') AS hour, queue,
                   percentile_disc(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM done_time - started_time)) p50,
                   percentile_disc(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM done_time - started_time)) p95
            FROM jobs WHERE created_time >= :from AND created_time < :to AND done_time IS NOT NULL
            GROUP BY 1, 2"""), q.params()).all()
    assert len(exact) >= 3 * 24 * 3 - 10
    for hour, queue, p50, p95 in exact:
        point = fast[(rfc3339(hour), queue)]
        for col, true in (("run_p50_s", p50), ("run_p95_s", p95)):
            bucket = 0 if true < 0.001 else 1 + math.floor(8 * math.log2(float(true) * 1000))
            assert point[col] == pytest.approx(mid(bucket) if bucket else 0.0), (hour, queue, col)


def _owned_counts(db: Engine, owner: str | None, start: datetime, end: datetime) -> dict[str, int]:
    with db.connect() as conn:
        row = conn.execute(sa.text("""
            SELECT count(*) AS jobs, count(*) FILTER (WHERE state = 'COMPLETED') AS completed,
                   count(*) FILTER (WHERE state = 'FAILED') AS failed
            FROM jobs WHERE created_time >= :s AND created_time < :e
              AND (CAST(:o AS text) IS NULL OR owner = :o)"""), {"s": start, "e": end, "o": owner}).one()
    return dict(row._mapping)


def test_reports_from_the_rollups_are_scoped_like_reports_from_the_rows(db: Engine) -> None:
    """Issue #21: a principal's long-window reports counted another principal's jobs.

    Two principals write in turns into hours that were already rolled up, with a refresh
    between writes; after each, every report of each principal (and of an admin) must equal
    the figures computed from that principal's own rows."""
    import random

    rng = random.Random(21)
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    start, end = now - 30 * D, now + H
    owners = ["key:a", "key:b"]
    for step in range(12):
        owner = owners[step % 2]
        created = now - rng.randrange(3, 30 * 24) * H + rng.randrange(3600) * S
        with db.begin() as c:
            for _ in range(rng.randrange(1, 4)):
                _job(c, type=rng.choice(["echo", "sleep"]), queue="default", state=rng.choice(["COMPLETED", "FAILED"]),
                     attempts=1, created=created, wait=1, run=1, owner=owner)
        if step % 3 != 2:
            rollups.refresh(db)
        for scope in [*owners, None]:
            want = _owned_counts(db, scope, start, end)
            q = ReportQuery(start=start, end=end, owner=scope)
            assert uses_rollups("summary", q)
            rows = run_report(db, "summary", q)
            got = {k: sum(r[k] for r in rows) for k in want}
            assert got == want, f"summary for {scope} after step {step}"
            for bucket in ("day", "hour"):
                series = run_report(db, "timeseries", ReportQuery(start=start, end=end, owner=scope, bucket=bucket))
                got = {k: sum(r[k] for r in series) for k in want}
                assert got == want, f"{bucket} timeseries for {scope} after step {step}"
            by_type = run_report(db, "summary", ReportQuery(start=start, end=end, owner=scope, group_by="type"))
            assert sum(r["jobs"] for r in by_type) == want["jobs"], f"summary by type for {scope} after step {step}"


def test_each_key_sees_only_its_own_jobs_in_long_window_reports_over_http(make_app: Callable[..., Flask],
                                                                         db: Engine) -> None:
    """The same through the API: keys, jobs created by each, history rolled up between writes."""
    from api.web import auth

    with db.begin() as conn:
        keys = {"a": auth.create_key(conn, "tenant-a"), "b": auth.create_key(conn, "tenant-b")}
    client = make_app(api_auth="keys").test_client()
    headers = {name: {"Authorization": f"Bearer {k}"} for name, k in keys.items()}
    owners = {}
    for name, count in (("a", 1), ("b", 2)):
        for _ in range(count):
            resp = client.post("/v1/jobs", json={"type": "echo", "payload": {}}, headers=headers[name])
            assert resp.status_code == 202, resp.get_json()
        with db.connect() as conn:
            owners[name] = conn.execute(sa.text("SELECT owner FROM jobs ORDER BY created_time DESC LIMIT 1")).scalar()
        with db.begin() as c:  # and a job in an hour already rolled up
            _job(c, type="echo", queue="default", state="COMPLETED", attempts=1,
                 created=datetime.now(UTC) - 5 * D, wait=1, run=1, owner=owners[name])
        rollups.refresh(db)
    now = datetime.now(UTC) + H
    for days in (1, 30):
        q = f"from={rfc3339(now - days * D)}&to={rfc3339(now)}"
        for name, created in (("a", 1), ("b", 2)):
            want = created + (1 if days == 30 else 0)
            summary = client.get(f"/v1/reports/summary?{q}", headers=headers[name]).get_json()
            assert sum(r["jobs"] for r in summary["rows"]) == want, (name, days, summary)
            series = client.get(f"/v1/reports/timeseries?{q}&bucket=day", headers=headers[name]).get_json()
            assert sum(r["jobs"] for r in series["rows"]) == want, (name, days, series)

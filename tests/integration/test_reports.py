"""Reports checked against a fixture whose values were computed by hand."""

from __future__ import annotations

import json
import os
import re
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

from api.reporting.history import purge, seed_history
from api.reporting.reports import ReportQuery, run_report
from api.web import auth
from tests.conftest import ROOT

T0 = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
WINDOW = {"start": T0, "end": T0 + timedelta(days=1)}
S = timedelta(seconds=1)
H = timedelta(hours=1)


def _job(conn: Any, *, type: str, queue: str, state: str, attempts: int, created: datetime,
         wait: int | None = None, run: int | None = None, done_after: int | None = None,
         error: str | None = None, owner: str | None = None) -> uuid.UUID:
    jid = uuid.uuid4()
    started = created + wait * S if wait is not None else None
    done = started + run * S if run is not None and started else (created + done_after * S if done_after else None)
    conn.execute(sa.text("""
        INSERT INTO jobs (id, type, queue, state, payload, attempts, max_attempts, timeout_s, task_name,
                          owner, created_time, scheduled_time, started_time, done_time, updated_time, error)
        VALUES (:id, :type, :queue, :state, '{}', :attempts, 3, 60, 't', :owner, :created, :created,
                :started, :done, :created, CAST(:error AS jsonb))"""),
        {"id": jid, "type": type, "queue": queue, "state": state, "attempts": attempts, "owner": owner,
         "created": created, "started": started, "done": done,
         "error": json.dumps({"code": error, "message": f"{error} happened"}) if error else None})
    return jid


def _attempt(conn: Any, job_id: uuid.UUID, n: int, outcome: str, at: datetime, secs: int, code: str | None,
             type: str, queue: str, owner: str | None = None) -> None:
    conn.execute(sa.text("""
        INSERT INTO job_attempts (job_id, number, outcome, error, started_time, finished_time, type, queue, owner)
        VALUES (:j, :n, :o, CAST(:e AS jsonb), :s, :f, :t, :q, :ow)"""),
        {"j": job_id, "n": n, "o": outcome, "e": json.dumps({"code": code, "message": f"{code} #{n}"}) if code else None,
         "s": at, "f": at + secs * S, "t": type, "q": queue, "ow": owner})


@pytest.fixture
def history(db: Engine) -> dict[str, uuid.UUID]:
    """Five jobs in the window (one outside), with attempts; see each test for the arithmetic."""
    with db.begin() as c:
        j1 = _job(c, type="echo", queue="default", state="COMPLETED", attempts=1, created=T0, wait=1, run=2, owner="key:a")
        j2 = _job(c, type="echo", queue="default", state="COMPLETED", attempts=2, created=T0 + H, wait=3, run=10, owner="key:a")
        j3 = _job(c, type="sleep", queue="slow", state="FAILED", attempts=3, created=T0 + 2 * H, wait=2, run=6,
                  error="FLAKY", owner="key:b")
        j4 = _job(c, type="sleep", queue="slow", state="CANCELLED", attempts=0, created=T0 + 3 * H, done_after=1, owner="key:b")
        j5 = _job(c, type="echo", queue="default", state="QUEUED", attempts=0, created=T0 + 4 * H, owner="key:a")
        _job(c, type="echo", queue="default", state="COMPLETED", attempts=1, created=T0 - 24 * H, wait=1, run=1)
        _attempt(c, j1, 1, "COMPLETED", T0 + S, 2, None, "echo", "default", "key:a")
        _attempt(c, j2, 1, "RETRY", T0 + H + 3 * S, 2, "UPSTREAM_503", "echo", "default", "key:a")
        _attempt(c, j2, 2, "COMPLETED", T0 + H + 8 * S, 5, None, "echo", "default", "key:a")
        for n in (1, 2):
            _attempt(c, j3, n, "RETRY", T0 + 2 * H + n * S, 1, "FLAKY", "sleep", "slow", "key:b")
        _attempt(c, j3, 3, "FAILED", T0 + 2 * H + 5 * S, 1, "FLAKY", "sleep", "slow", "key:b")
    return {"j1": j1, "j2": j2, "j3": j3, "j4": j4, "j5": j5}


def test_summary_matches_the_hand_computed_values(db: Engine, history: dict[str, uuid.UUID]) -> None:
    [row] = run_report(db, "summary", ReportQuery(**WINDOW))
    assert (row["key"], row["jobs"], row["completed"], row["failed"], row["cancelled"], row["active"]) == ("all", 5, 2, 1, 1, 1)
    assert row["success_rate"] == pytest.approx(2 / 4)  # completed / terminal
    assert row["retries"] == 3  # (2 - 1) + (3 - 1)
    assert row["retry_rate"] == pytest.approx(2 / 3)  # j2 and j3 of the three that ran
    # queue waits 1, 3, 2 s; percentile_cont: p95 = 2 + 0.9 * (3 - 2)
    assert (row["queue_wait_p50_s"], row["queue_wait_p95_s"]) == (pytest.approx(2.0), pytest.approx(2.9))
    # run times 2, 10, 6 s (j4 never started): p50 = 6, p95 = 6 + 0.9 * (10 - 6), p99 = 6 + 0.98 * 4
    assert row["run_p50_s"] == pytest.approx(6.0)
    assert row["run_p95_s"] == pytest.approx(9.6)
    assert row["run_p99_s"] == pytest.approx(9.92)


def test_summary_by_type_and_filters(db: Engine, history: dict[str, uuid.UUID]) -> None:
    rows = {r["key"]: r for r in run_report(db, "summary", ReportQuery(**WINDOW, group_by="type"))}
    assert set(rows) == {"echo", "sleep"}
    assert (rows["echo"]["jobs"], rows["echo"]["completed"], rows["echo"]["success_rate"]) == (3, 2, 1.0)
    assert (rows["sleep"]["jobs"], rows["sleep"]["failed"], rows["sleep"]["cancelled"], rows["sleep"]["success_rate"]) == (2, 1, 1, 0.0)
    [slow] = run_report(db, "summary", ReportQuery(**WINDOW, queue="slow"))
    assert slow["jobs"] == 2
    [mine] = run_report(db, "summary", ReportQuery(**WINDOW, owner="key:a"))
    assert mine["jobs"] == 3
    assert run_report(db, "summary", ReportQuery(**WINDOW, owner="key:nobody")) == []


def test_timeseries_buckets_by_hour_and_day(db: Engine, history: dict[str, uuid.UUID]) -> None:
    hours = run_report(db, "timeseries", ReportQuery(**WINDOW, bucket="hour"))
    assert [(r["bucket"], r["jobs"]) for r in hours] == [
        ((T0 + n * H).isoformat(timespec="microseconds").replace("+00:00", "Z"), 1) for n in range(5)]
    assert hours[2]["failed"] == 1 and hours[2]["retries"] == 2
    [day] = run_report(db, "timeseries", ReportQuery(**WINDOW, bucket="day"))
    assert (day["jobs"], day["completed"], day["run_p50_s"]) == (5, 2, pytest.approx(6.0))


def test_failures_rank_error_codes(db: Engine, history: dict[str, uuid.UUID]) -> None:
    rows = run_report(db, "failures", ReportQuery(**WINDOW))
    assert [(r["error_code"], r["attempts"], r["jobs"]) for r in rows] == [("FLAKY", 3, 1), ("UPSTREAM_503", 1, 1)]
    assert rows[0]["latest_message"] == "FLAKY #3"
    by_queue = run_report(db, "failures", ReportQuery(**WINDOW, group_by="queue"))
    assert {(r["key"], r["error_code"]) for r in by_queue} == {("slow", "FLAKY"), ("default", "UPSTREAM_503")}


def test_the_api_serves_reports_scoped_to_the_caller(make_app: Callable[..., Flask], db: Engine,
                                                      history: dict[str, uuid.UUID]) -> None:
    with db.begin() as conn:
        key = auth.create_key(conn, "reader")
        admin = auth.create_key(conn, "boss", admin=True)
    client = make_app(api_auth="keys").test_client()
    q = f"from={T0.isoformat().replace('+00:00', 'Z')}&to={(T0 + 24 * H).isoformat().replace('+00:00', 'Z')}"
    resp = client.get(f"/v1/reports/summary?{q}&group_by=type", headers={"Authorization": f"Bearer {admin}"})
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["report"] == "summary" and {r["key"] for r in body["rows"]} == {"echo", "sleep"}
    # A key sees only its own jobs: this one owns none.
    mine = client.get(f"/v1/reports/summary?{q}", headers={"Authorization": f"Bearer {key}"}).get_json()
    assert mine["rows"] == []
    ts = client.get(f"/v1/reports/timeseries?{q}&bucket=hour", headers={"Authorization": f"Bearer {admin}"}).get_json()
    assert ts["bucket"] == "hour" and len(ts["rows"]) == 5
    assert client.get("/v1/reports/summary").status_code == 401


@pytest.mark.parametrize("query", [
    "summary?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z",
    "summary?from=2020-01-01T00:00:00Z&to=2026-01-01T00:00:00Z",
    "summary?group_by=color",
    "timeseries?bucket=week",
    "timeseries?bucket=minute&from=2026-01-01T00:00:00Z&to=2026-03-01T00:00:00Z",
    "failures?limit=0",
    "failures?limit=lots",
    "summary?from=yesterday",
])
def test_bad_report_parameters_are_400(client: Any, query: str) -> None:
    resp = client.get(f"/v1/reports/{query}")
    assert resp.status_code == 400, resp.get_json()
    assert resp.content_type == "application/problem+json"


def test_an_unknown_report_is_404(client: Any) -> None:
    assert client.get("/v1/reports/everything").status_code == 404


def test_the_views_agree_with_the_reports(db: Engine, history: dict[str, uuid.UUID]) -> None:
    with db.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT type, sum(jobs) AS jobs, sum(completed) AS completed, sum(retries) AS retries "
            "FROM reporting.job_stats_daily WHERE bucket = :d GROUP BY type ORDER BY type"), {"d": T0.replace(hour=0)}).all()
        assert [tuple(r) for r in rows] == [("echo", 3, 2, 1), ("sleep", 2, 0, 2)]
        hist = conn.execute(sa.text("SELECT queue_wait_s, run_s FROM reporting.job_history WHERE id = :i"),
                            {"i": history["j2"]}).one()
        assert (hist.queue_wait_s, hist.run_s) == (3.0, 10.0)
        att = conn.execute(sa.text("SELECT duration_s, error_code FROM reporting.job_attempts "
                                   "WHERE job_id = :i AND number = 1"), {"i": history["j2"]}).one()
        assert (float(att.duration_s), att.error_code) == (2.0, "UPSTREAM_503")


def _as_reporting_role(db: Engine, sql: str) -> Any:
    with db.begin() as conn:
        conn.exec_driver_sql("SET LOCAL ROLE cloudjobs_reporting")
        return conn.exec_driver_sql(sql).all() if sql.lstrip().upper().startswith(("SELECT", "WITH")) else conn.exec_driver_sql(sql)


def test_the_reporting_role_reads_the_views(db: Engine, history: dict[str, uuid.UUID]) -> None:
    assert _as_reporting_role(db, "SELECT count(*) FROM reporting.job_history")[0][0] == 6
    assert _as_reporting_role(db, "SELECT count(*) FROM reporting.job_stats_hourly")[0][0] > 0


@pytest.mark.parametrize("sql", [
    "SELECT * FROM public.jobs",
    "SELECT * FROM public.api_keys",
    "INSERT INTO jobs (id, type, queue, state, payload, max_attempts, timeout_s, task_name) "
    "VALUES (gen_random_uuid(), 'x', 'q', 'QUEUED', '{}', 1, 1, 't')",
    "UPDATE jobs SET state = 'FAILED'",
    "DELETE FROM job_attempts",
    "CREATE TABLE reporting.mine (x int)",
    "CREATE TABLE public.mine (x int)",
    "CREATE VIEW reporting.mine AS SELECT 1",
])
def test_the_reporting_role_cannot_write_or_read_beyond_the_views(db: Engine, sql: str) -> None:
    with pytest.raises(sa.exc.DBAPIError, match="permission denied"):
        _as_reporting_role(db, sql)


def test_every_table_view_and_column_is_commented(db: Engine) -> None:
    with db.connect() as conn:
        missing = conn.exec_driver_sql("""
            SELECT c.relname || '.' || a.attname
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
            WHERE (n.nspname = 'reporting' OR (n.nspname = 'public' AND c.relname IN ('jobs', 'job_attempts', 'api_keys', 'job_rollups', 'job_rollup_dirty', 'job_rollup_state')))
              AND c.relkind IN ('r', 'v') AND col_description(c.oid, a.attnum) IS NULL""").scalars().all()
        uncommented = conn.exec_driver_sql("""
            SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE (n.nspname = 'reporting' OR (n.nspname = 'public' AND c.relname IN ('jobs', 'job_attempts', 'api_keys', 'job_rollups', 'job_rollup_dirty', 'job_rollup_state')))
              AND c.relkind IN ('r', 'v') AND obj_description(c.oid, 'pg_class') IS NULL""").scalars().all()
    assert missing == [] and uncommented == []


def test_the_documented_questions_run(db: Engine, history: dict[str, uuid.UUID]) -> None:
    doc = (ROOT / "docs" / "reporting.md").read_text()
    blocks = re.findall(r"```sql\n(.*?)```", doc, flags=re.S)
    questions = [b for b in blocks if "reporting." in b]
    assert len(questions) >= 10
    for sql in questions:
        _as_reporting_role(db, sql)  # each runs, as the analysts' role


def test_seed_history_is_consistent(db: Engine) -> None:
    seed_history(db, jobs=3000, days=2)
    with db.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM jobs").scalar_one() == 3000
        bad = conn.exec_driver_sql("""
            SELECT count(*) FROM jobs j WHERE j.state IN ('COMPLETED', 'FAILED', 'CANCELLED')
              AND j.attempts <> (SELECT count(*) FROM job_attempts a WHERE a.job_id = j.id)""").scalar_one()
        assert bad == 0
        gaps = conn.exec_driver_sql("""
            SELECT count(*) FROM (SELECT job_id FROM job_attempts GROUP BY job_id
                                  HAVING max(number) <> count(*) OR min(number) <> 1) x""").scalar_one()
        assert gaps == 0
        states = dict(conn.exec_driver_sql("SELECT state, count(*) FROM jobs GROUP BY state").all())
    assert states["COMPLETED"] > 2400 and states["FAILED"] > 60


def test_purge_deletes_only_old_finished_jobs_in_batches(db: Engine, history: dict[str, uuid.UUID]) -> None:
    cutoff = T0 + 2 * H + 5 * S  # after j1 and j2 finished; before j3 (T0+2h+8s)
    assert purge(db, cutoff=cutoff, batch=1) == 3  # j1, j2 and the job from the day before
    with db.connect() as conn:
        left = set(conn.exec_driver_sql("SELECT id FROM jobs").scalars())
        attempts_left = set(conn.exec_driver_sql("SELECT DISTINCT job_id FROM job_attempts").scalars())
    assert left == {history["j3"], history["j4"], history["j5"]}
    assert attempts_left == {history["j3"]}


def test_report_cli_formats(migrated_url: str, db: Engine, history: dict[str, uuid.UUID]) -> None:
    env = {**os.environ, "DATABASE_URL": migrated_url}
    base = [sys.executable, "-m", "api.cli.main", "report", "summary", "--from", T0.isoformat(),
            "--to", (T0 + 24 * H).isoformat(), "--by", "type"]
    table = subprocess.run(base, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["key", "jobs", "completed"] and set(lines[1]) <= {"-", " "}
    assert any(line.startswith("echo") for line in lines)
    as_json = json.loads(subprocess.run(base + ["--format", "json"], cwd=ROOT, env=env, capture_output=True,
                                        text=True, timeout=60).stdout)
    assert {r["key"]: r["jobs"] for r in as_json} == {"echo": 3, "sleep": 2}
    csv_out = subprocess.run(base + ["--format", "csv"], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=60).stdout.splitlines()
    assert csv_out[0].startswith("key,jobs,completed") and len(csv_out) == 3


def test_workflows_are_in_the_reporting_schema_with_their_durations(make_app: Callable[..., Flask], db: Engine) -> None:
    client = make_app(handler_auth="none").test_client()
    wf = client.post("/v1/workflows", data=json.dumps({"name": "nightly", "steps": [
        {"name": "a", "type": "echo"}, {"name": "b", "type": "echo", "needs": ["a"]},
        {"name": "c", "type": "echo", "needs": ["a"]},
    ]}), content_type="application/json").get_json()
    steps = {s["name"]: s["job_id"] for s in wf["steps"]}
    waiting = _as_reporting_role(db, "SELECT count(*) FROM reporting.job_stats_hourly WHERE active = 3")
    assert waiting[0][0] == 1  # a QUEUED, b and c WAITING: all three active
    for name in ("a", "b", "c"):
        assert client.post("/handlers/run", data=json.dumps({"job_id": steps[name]}),
                           content_type="application/json").status_code == 200
    [row] = _as_reporting_role(db, "SELECT name, state, steps, failed, first_started_time IS NOT NULL, "
                                   "duration_s >= start_wait_s, step_run_s >= 0 FROM reporting.workflow_history")
    assert tuple(row) == ("nightly", "COMPLETED", 3, 0, True, True, True)
    rows = _as_reporting_role(db, "SELECT step, workflow_id::text FROM reporting.job_history ORDER BY step")
    assert [tuple(r) for r in rows] == [("a", wf["id"]), ("b", wf["id"]), ("c", wf["id"])]


def test_schedule_and_trigger_jobs_are_told_apart_in_the_reporting_schema(
        make_app: Callable[..., Flask], db: Engine) -> None:
    import base64

    from tests.conftest import ROOT

    client = make_app(handler_auth="none", schedules_file=ROOT / "tests" / "schedules.yaml").test_client()
    fired = client.post("/handlers/schedule", data=json.dumps({"schedule": "nightly"}), content_type="application/json",
                        headers={"X-CloudScheduler-ScheduleTime": "2026-12-04T01:00:00Z"}).get_json()
    pushed = client.post("/handlers/pubsub", content_type="application/json", data=json.dumps({
        "message": {"messageId": "m-1", "data": base64.b64encode(b'{"k": 1}').decode()},
        "subscription": "projects/p/subscriptions/uploads-push"})).get_json()
    rows = _as_reporting_role(db, "SELECT id::text, schedule, scheduled_for, trigger, message_id "
                                  "FROM reporting.job_history ORDER BY schedule NULLS LAST")
    assert [(r[0], r[1], r[2].isoformat() if r[2] else None, r[3], r[4]) for r in rows] == [
        (fired["job"]["id"], "nightly", "2026-12-04T01:00:00+00:00", None, None),
        (pushed["job"]["id"], None, None, "uploads", "m-1"),
    ]

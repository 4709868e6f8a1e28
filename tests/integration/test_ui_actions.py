"""The dashboard's actions: cancel and retry a job, act on every job a filter matches (after a
confirmation with the count), pause and resume queues, the audit log — CSRF-protected, scoped
and audited (docs/dashboard.md)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.engine import Engine

from api.web.auth import create_key

ORIGIN = {"Origin": "http://localhost"}


def token(client: FlaskClient, path: str = "/ui/jobs") -> str:
    """The CSRF token of a page (its first GET sets the cookie it is tied to)."""
    html = client.get(path).get_data(as_text=True)
    found = re.search(r'name="csrf_token" value="([0-9a-f]+)"', html)
    assert found, html[:2000]
    return found.group(1)


def create(client: FlaskClient, body: dict[str, Any]) -> str:
    return str(client.post("/v1/jobs", data=json.dumps(body), content_type="application/json").get_json()["id"])


def run(client: FlaskClient, job_id: str) -> None:
    client.post("/handlers/run", data=json.dumps({"job_id": job_id}), content_type="application/json")


def state(client: FlaskClient, job_id: str) -> str:
    return str(client.get(f"/v1/jobs/{job_id}").get_json()["state"])


def audit(db: Engine) -> list[tuple[str, str, int | None, str]]:
    with db.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text("SELECT action, target, jobs, via FROM audit_log ORDER BY id"))]


def test_retry_and_cancel_from_the_job_page_are_audited(make_app: Callable[..., Flask], db: Engine,
                                                         tasks_client: Any) -> None:
    client = make_app(handler_auth="none").test_client()
    failed = create(client, {"type": "flaky", "payload": {"failures": 9}, "max_attempts": 1})
    run(client, failed)
    page = client.get(f"/ui/jobs/{failed}").get_data(as_text=True)
    assert 'id="retry-job"' in page and 'id="cancel-job"' not in page
    t = token(client, f"/ui/jobs/{failed}")
    resp = client.post(f"/ui/jobs/{failed}/retry", data={"csrf_token": t}, headers=ORIGIN)
    assert resp.status_code == 303 and "notice=" in resp.headers["Location"]
    assert state(client, failed) == "QUEUED"
    resp = client.post(f"/ui/jobs/{failed}/cancel", data={"csrf_token": t}, headers=ORIGIN)
    assert state(client, failed) == "CANCELLED"
    assert audit(db) == [("job.retry", f"jobs/{failed}", 1, "dashboard"), ("job.cancel", f"jobs/{failed}", 1, "dashboard")]


def test_csrf_refused_without_the_token_or_from_another_origin(make_app: Callable[..., Flask], db: Engine,
                                                                tasks_client: Any) -> None:
    client = make_app(handler_auth="none").test_client()
    job = create(client, {"type": "echo"})
    t = token(client)
    for data, headers in (({}, ORIGIN), ({"csrf_token": "0" * 64}, ORIGIN), ({"csrf_token": t}, {}),
                          ({"csrf_token": t}, {"Origin": "https://evil.example"})):
        resp = client.post(f"/ui/jobs/{job}/cancel", data=data, headers=headers)
        assert resp.status_code == 403, (data, headers)
    other = make_app(handler_auth="none").test_client()  # another browser: its own cookie
    other.get("/ui/jobs")
    assert other.post(f"/ui/jobs/{job}/cancel", data={"csrf_token": t}, headers=ORIGIN).status_code == 403
    assert state(client, job) == "QUEUED" and audit(db) == []


def test_bulk_retry_shows_the_count_then_runs_an_operation(make_app: Callable[..., Flask], db: Engine,
                                                           tasks_client: Any) -> None:
    client = make_app(handler_auth="none").test_client()
    ids = [create(client, {"type": "flaky", "payload": {"failures": 9}, "max_attempts": 1}) for _ in range(3)]
    for i in ids:
        run(client, i)
    listing = client.get("/ui/jobs?state=FAILED&error_code=FLAKY").get_data(as_text=True)
    assert listing.count('href="/ui/jobs?error_code=FLAKY"') == 3  # each row's error code links to its jobs
    t = token(client, "/ui/jobs?state=FAILED")
    form = {"csrf_token": t, "action": "retry", "state": "FAILED", "error_code": "FLAKY"}
    confirm = client.post("/ui/jobs/bulk", data=form, headers=ORIGIN)
    assert confirm.status_code == 200 and "Retry 3 jobs" in confirm.get_data(as_text=True)
    assert all(state(client, i) == "FAILED" for i in ids)  # the confirmation changed nothing
    done = client.post("/ui/jobs/bulk", data={**form, "confirm": "yes"}, headers=ORIGIN)
    assert done.status_code == 303 and "/ui/operations/" in done.headers["Location"]
    page = client.get(done.headers["Location"]).get_data(as_text=True)
    assert 'id="operation-succeeded">3<' in page
    assert all(state(client, i) == "QUEUED" for i in ids)
    assert audit(db)[0][0] == "jobs.batchRetry" and audit(db)[0][2] == 3


def test_queues_page_pauses_and_resumes_for_admins_only(make_app: Callable[..., Flask], db: Engine,
                                                         tasks_client: Any) -> None:
    app = make_app(api_auth="keys", handler_auth="none")
    with db.begin() as conn:
        user, admin = create_key(conn, "user"), create_key(conn, "ops", admin=True)
    client = app.test_client()
    client.set_cookie("cloudjobs_key", user, path="/ui")
    page = client.get("/ui/queues").get_data(as_text=True)
    assert "PAUSED" in page and "Resume</button>" not in page  # a user sees, cannot act
    client.post("/v1/jobs", data=json.dumps({"type": "echo"}), content_type="application/json",
                headers={"Authorization": f"Bearer {user}"})
    t = token(client, "/ui/jobs")  # a page with a form: its list's bulk actions
    assert client.post("/ui/queues/default/resume", data={"csrf_token": t}, headers=ORIGIN).status_code == 403
    assert client.get("/ui/audit").status_code == 403
    client.set_cookie("cloudjobs_key", admin, path="/ui")
    assert "Resume</button>" in client.get("/ui/queues").get_data(as_text=True)
    resp = client.post("/ui/queues/default/resume", data={"csrf_token": t}, headers=ORIGIN)
    assert resp.status_code == 303
    assert "RUNNING" in client.get("/ui/queues").get_data(as_text=True)
    client.post("/ui/queues/default/pause", data={"csrf_token": t}, headers=ORIGIN)
    log = client.get("/ui/audit").get_data(as_text=True)
    assert "queue.resume" in log and "queue.pause" in log


def test_find_a_job_by_its_id_or_prefix(make_app: Callable[..., Flask], tasks_client: Any) -> None:
    client = make_app(handler_auth="none").test_client()
    job = create(client, {"type": "echo"})
    assert client.get(f"/ui/find?id={job}").headers["Location"].endswith(f"/ui/jobs/{job}")
    assert client.get(f"/ui/find?id={job[:8]}").headers["Location"].endswith(f"/ui/jobs/{job}")
    assert client.get("/ui/find?id=zz").status_code == 400


def test_a_failing_attempt_keeps_its_traceback_and_the_page_shows_it(make_app: Callable[..., Flask],
                                                                     tasks_client: Any) -> None:
    client = make_app(handler_auth="none").test_client()
    job = create(client, {"type": "boom"})
    run(client, job)
    [attempt] = client.get(f"/v1/jobs/{job}/attempts").get_json()["attempts"]
    assert attempt["traceback"].startswith("Traceback (most recent call last)")
    assert "tests/jobs.py" in attempt["traceback"] and attempt["traceback"].rstrip().endswith("KeyError: 'missing'")
    page = client.get(f"/ui/jobs/{job}").get_data(as_text=True)
    assert "<summary>Traceback</summary>" in page and 'id="logs-link"' in page


def test_a_traceback_is_kept_to_its_last_8_kb() -> None:
    from handlers.run import MAX_TRACEBACK_CHARS, kept_traceback

    def deep(n: int) -> None:
        if n == 0:
            raise ValueError("x" * 20_000)
        deep(n - 1)

    try:
        deep(50)
    except ValueError as e:
        kept = kept_traceback(e)
    assert len(kept) == MAX_TRACEBACK_CHARS + 1 and kept.startswith("…") and kept.endswith("x\n")


def test_reports_narrow_by_type_and_queue_and_a_failure_links_to_its_jobs(make_app: Callable[..., Flask],
                                                                         tasks_client: Any) -> None:
    client = make_app(handler_auth="none").test_client()
    for body in ({"type": "flaky", "payload": {"failures": 9}, "max_attempts": 1}, {"type": "echo"}):
        run(client, create(client, body))
    page = client.get("/ui/reports?window=1h&type=flaky&queue=default").get_data(as_text=True)
    assert 'href="/ui/jobs?error_code=FLAKY&amp;type=flaky&amp;queue=default"' in page
    assert '<option value="flaky" selected>' in page
    echo_only = client.get("/ui/reports?window=1h&type=echo").get_data(as_text=True)
    assert "FLAKY" not in echo_only  # narrowed to echo: no flaky failure
    listing = client.get("/ui/jobs").get_data(as_text=True)
    assert 'http-equiv="refresh"' not in listing  # both ended: nothing in flight
    create(client, {"type": "echo"})
    assert 'http-equiv="refresh"' in client.get("/ui/jobs").get_data(as_text=True)

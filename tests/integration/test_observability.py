"""Request and attempt log lines, and the trace a job's task carries from its creation."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from google.cloud import tasks_v2
from sqlalchemy.engine import Engine

from api.observability.logs import JsonFormatter
from api.observability.traces import SPAN_ID, TRACE, TRACE_SAMPLED
from api.orchestration.sweep import sweep
from api.store import jobs as store

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"
CLOUD_TRACE = f"{TRACE_ID}/13219015330193367857;o=1"


class JsonLines(logging.Handler):
    """The JSON lines the app writes, formatted as they are emitted (context and all)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.text: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.text.append(self.format(record))

    @property
    def entries(self) -> list[dict[str, Any]]:
        return [json.loads(t) for t in self.text]

    def requests(self) -> list[dict[str, Any]]:
        return [e for e in self.entries if "httpRequest" in e]


@pytest.fixture
def lines() -> Iterator[JsonLines]:
    handler = JsonLines()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield handler
    root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture
def open_app(make_app: Any) -> Flask:
    return make_app(handler_auth="none")


def task_headers(client: tasks_v2.CloudTasksClient, db: Engine, job_id: str) -> dict[str, str]:
    with db.connect() as conn:
        row = store.get_job(conn, uuid.UUID(job_id))
    assert row is not None
    task = client.get_task(
        request={"name": row.task_name, "response_view": tasks_v2.Task.View.FULL}
    )
    return dict(task.http_request.headers)


def post(app: Flask, path: str, body: Any, **headers: str) -> Any:
    return app.test_client().post(
        path, data=json.dumps(body), content_type="application/json", headers=headers
    )


def test_a_created_jobs_task_carries_the_requests_trace_headers(
    open_app: Flask, tasks_client: tasks_v2.CloudTasksClient, db: Engine
) -> None:
    resp = post(
        open_app,
        "/v1/jobs",
        {"type": "echo"},
        traceparent=TRACEPARENT,
        **{"X-Cloud-Trace-Context": CLOUD_TRACE},
    )
    assert resp.status_code == 202
    headers = task_headers(tasks_client, db, resp.get_json()["id"])
    assert headers["traceparent"] == TRACEPARENT
    assert headers["X-Cloud-Trace-Context"] == CLOUD_TRACE


def test_a_job_created_without_a_trace_gets_no_trace_headers(
    open_app: Flask, tasks_client: tasks_v2.CloudTasksClient, db: Engine
) -> None:
    resp = post(open_app, "/v1/jobs", {"type": "echo"}, traceparent="00-malformed")
    headers = task_headers(tasks_client, db, resp.get_json()["id"])
    assert "traceparent" not in headers and "X-Cloud-Trace-Context" not in headers
    # and nothing of one request leaks into the next
    again = post(open_app, "/v1/jobs", {"type": "echo"})
    assert "traceparent" not in task_headers(tasks_client, db, again.get_json()["id"])


def test_a_batchs_tasks_carry_the_trace(
    open_app: Flask, tasks_client: tasks_v2.CloudTasksClient, db: Engine
) -> None:
    resp = post(
        open_app, "/v1/jobs:batchCreate", {"jobs": [{"type": "echo"}] * 3}, traceparent=TRACEPARENT
    )
    assert resp.status_code == 202
    for j in resp.get_json()["jobs"]:
        assert task_headers(tasks_client, db, j["id"])["traceparent"] == TRACEPARENT


def test_the_sweepers_re_enqueue_carries_the_sweep_requests_trace(
    make_app: Any, open_app: Flask, tasks_client: tasks_v2.CloudTasksClient, db: Engine
) -> None:
    down = make_app(emulator_host="127.0.0.1:1", handler_auth="none")
    j = post(down, "/v1/jobs", {"type": "echo"}).get_json()
    assert j["state"] == "CREATED"
    with db.begin() as conn:
        conn.execute(
            sa.text("UPDATE jobs SET updated_time = now() - interval '5 minutes' WHERE id = :i"),
            {"i": j["id"]},
        )
    resp = post(open_app, "/handlers/sweep", {}, traceparent=TRACEPARENT)
    assert resp.status_code == 200 and resp.get_json()["enqueued"] == 1
    assert task_headers(tasks_client, db, j["id"])["traceparent"] == TRACEPARENT
    # `cloudjobs sweep` runs outside any request: its tasks carry no trace
    j2 = post(down, "/v1/jobs", {"type": "echo"}).get_json()
    with db.begin() as conn:
        conn.execute(
            sa.text("UPDATE jobs SET updated_time = now() - interval '5 minutes' WHERE id = :i"),
            {"i": j2["id"]},
        )
    assert sweep(open_app.extensions["cloudjobs"]).enqueued == 1
    assert "traceparent" not in task_headers(tasks_client, db, j2["id"])


def test_one_line_per_request_in_cloud_loggings_http_request_format(
    open_app: Flask, lines: JsonLines
) -> None:
    client = open_app.test_client()
    resp = client.get(
        "/v1/jobs?page_size=5&state=QUEUED",
        headers={
            "traceparent": TRACEPARENT,
            "Authorization": "Bearer top-secret-token",
            "User-Agent": "probe/1.0",
        },
    )
    assert resp.status_code == 200
    [entry] = lines.requests()
    assert entry["message"] == "GET /v1/jobs 200"
    assert entry["severity"] == "INFO"
    http = entry["httpRequest"]
    assert http["requestMethod"] == "GET"
    assert http["requestUrl"] == "/v1/jobs"  # the path; no query string
    assert http["status"] == 200
    assert http["latency"].endswith("s") and float(http["latency"][:-1]) >= 0
    assert http["userAgent"] == "probe/1.0"
    assert http["responseSize"] == str(len(resp.data))
    assert entry[TRACE] == f"projects/local-project/traces/{TRACE_ID}"
    assert entry[SPAN_ID] == "b7ad6b7169203331"
    assert entry[TRACE_SAMPLED] is True
    assert "top-secret-token" not in "".join(lines.text)


def test_a_requests_lines_carry_its_job_id_and_errors_are_logged_too(
    open_app: Flask, lines: JsonLines
) -> None:
    job_id = str(uuid.uuid4())
    resp = open_app.test_client().get(
        f"/v1/jobs/{job_id}", headers={"X-Cloud-Trace-Context": CLOUD_TRACE}
    )
    assert resp.status_code == 404
    [entry] = lines.requests()
    assert entry["job_id"] == job_id
    assert entry["httpRequest"]["status"] == 404
    assert entry[TRACE] == f"projects/local-project/traces/{TRACE_ID}"
    assert entry[SPAN_ID] == f"{13219015330193367857:016x}"


def test_an_attempt_logs_one_line_under_its_trace_and_no_payload(
    open_app: Flask, tasks_client: tasks_v2.CloudTasksClient, db: Engine, lines: JsonLines
) -> None:
    created = post(
        open_app,
        "/v1/jobs",
        {"type": "echo", "payload": {"card": "4242-4242-secret"}},
        traceparent=TRACEPARENT,
    )
    job_id = created.get_json()["id"]
    # Deliver as Cloud Tasks would: with the headers the task carries.
    headers = {
        k: v for k, v in task_headers(tasks_client, db, job_id).items() if k != "Content-Type"
    }
    resp = post(
        open_app,
        "/handlers/run",
        {"job_id": job_id},
        **headers,
        **{"X-CloudTasks-QueueName": "default", "X-CloudTasks-TaskRetryCount": "0"},
    )
    assert resp.status_code == 200
    [attempt] = [e for e in lines.entries if e.get("outcome")]
    assert attempt["job_id"] == job_id
    assert (attempt["type"], attempt["queue"], attempt["attempt"]) == ("echo", "default", 1)
    assert (attempt["outcome"], attempt["state"]) == ("COMPLETED", "COMPLETED")
    assert attempt["duration_s"] >= 0
    assert attempt[TRACE] == f"projects/local-project/traces/{TRACE_ID}"
    run_line = [e for e in lines.requests() if e["httpRequest"]["requestUrl"] == "/handlers/run"]
    assert run_line[0]["queue"] == "default" and run_line[0][TRACE] == attempt[TRACE]
    assert "4242-4242-secret" not in "".join(lines.text)


def test_lines_logged_during_an_attempt_carry_the_job_and_the_trace(
    open_app: Flask, tasks_client: tasks_v2.CloudTasksClient, lines: JsonLines
) -> None:
    job_id = post(open_app, "/v1/jobs", {"type": "boom"}).get_json()["id"]
    resp = post(
        open_app,
        "/handlers/run",
        {"job_id": job_id},
        traceparent=TRACEPARENT,
        **{"X-CloudTasks-TaskRetryCount": "0"},
    )
    assert resp.status_code == 500
    [raised] = [e for e in lines.entries if e["message"] == "job raised"]
    assert (raised["job_id"], raised["attempt"], raised["queue"]) == (job_id, 1, "default")
    assert raised[TRACE] == f"projects/local-project/traces/{TRACE_ID}"
    assert "KeyError" in raised["stack_trace"]
    [attempt] = [e for e in lines.entries if e.get("outcome")]
    assert (attempt["outcome"], attempt["state"], attempt["error_code"]) == (
        "RETRY",
        "QUEUED",
        "EXCEPTION",
    )
    assert attempt["severity"] == "WARNING"


@pytest.mark.parametrize("log_payloads", [False, True])
def test_a_job_exception_is_logged_without_the_payload_unless_asked(
    make_app: Any, tasks_client: tasks_v2.CloudTasksClient, lines: JsonLines, log_payloads: bool
) -> None:
    """Issue #21 finding 3: a job function's exception message (which quotes its input) was logged whole."""
    app = make_app(handler_auth="none", log_payloads=log_payloads)
    marker = "pii-4242-4242-marker"
    job_id = post(app, "/v1/jobs", {"type": "quoting", "payload": {"card": marker, "n": 12345678}}).get_json()["id"]
    assert post(app, "/handlers/run", {"job_id": job_id}, **{"X-CloudTasks-TaskRetryCount": "0"}).status_code == 500
    [raised] = [e for e in lines.entries if e["message"] == "job raised"]
    assert "ValueError" in raised["stack_trace"] and "tests/jobs.py" in raised["stack_trace"]
    text = "".join(lines.text)
    if log_payloads:
        assert marker in text
    else:
        assert marker not in text and "12345678" not in text
        assert raised["error_message"].startswith("no card like [payload] in [payload]")
        assert len(raised["error_message"]) <= 201
    # The job's own error keeps the message whole: only its owner reads it.
    job = app.test_client().get(f"/v1/jobs/{job_id}").get_json()
    assert marker in job["error"]["message"]

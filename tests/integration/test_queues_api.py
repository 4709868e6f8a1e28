"""GET /v1/queues, and pausing and resuming a queue in Cloud Tasks (the emulator)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from flask import Flask
from google.cloud import tasks_v2
from sqlalchemy.engine import Engine

from api.cloud.tasks import queue_path
from api.web.auth import create_key


def test_queues_show_cloud_tasks_state_jobs_by_state_oldest_and_recent_failures(make_app: Callable[..., Flask],
                                                                                  tasks_client: Any) -> None:
    client = make_app(handler_auth="none").test_client()
    for body in ({"type": "echo"}, {"type": "echo"}, {"type": "flaky", "payload": {"failures": 9}, "max_attempts": 1}):
        job = client.post("/v1/jobs", data=json.dumps(body), content_type="application/json").get_json()
    client.post("/handlers/run", data=json.dumps({"job_id": job["id"]}), content_type="application/json")
    queues = {q["name"]: q for q in client.get("/v1/queues").get_json()["queues"]}
    assert set(queues) >= {"default", "keyed", "webhooks"}
    default = queues["default"]
    assert default["cloud_tasks"] == "PAUSED"  # the test queues are paused
    assert default["jobs"] == {"WAITING": 0, "CREATED": 0, "QUEUED": 2, "RUNNING": 0}
    assert default["oldest_waiting_s"] is not None and default["oldest_waiting_s"] >= 0
    assert default["last_5m"] == {"completed": 0, "failed": 1, "failure_rate": 1.0}
    assert default["rate_limits"]["max_dispatches_per_second"] == 500.0
    assert queues["keyed"]["concurrency_per_key"] == 2


def test_pause_holds_dispatches_and_resume_releases_them(make_app: Callable[..., Flask],
                                                         tasks_client: tasks_v2.CloudTasksClient, db: Engine) -> None:
    app = make_app(handler_auth="none")
    client = app.test_client()
    config = app.extensions["cloudjobs"].config
    client.post("/v1/queues/slow:resume")
    assert tasks_client.get_queue(name=queue_path(config, "slow")).state == tasks_v2.Queue.State.RUNNING
    resp = client.post("/v1/queues/slow:pause")
    assert resp.status_code == 200 and resp.get_json()["cloud_tasks"] == "PAUSED"
    assert tasks_client.get_queue(name=queue_path(config, "slow")).state == tasks_v2.Queue.State.PAUSED
    with db.connect() as conn:
        actions = [r.action for r in conn.execute(sa.text("SELECT action FROM audit_log ORDER BY id"))]
    assert actions == ["queue.resume", "queue.pause"]


def test_an_unknown_queue_is_404_and_a_non_admin_403(make_app: Callable[..., Flask], tasks_client: Any,
                                                      db: Engine) -> None:
    app = make_app(api_auth="keys", handler_auth="none")
    with db.begin() as conn:
        user, admin = create_key(conn, "user"), create_key(conn, "ops", admin=True)
    client = app.test_client()
    assert client.post("/v1/queues/nope:pause", headers={"Authorization": f"Bearer {admin}"}).status_code == 404
    resp = client.post("/v1/queues/default:pause", headers={"Authorization": f"Bearer {user}"})
    assert resp.status_code == 403
    assert client.post("/v1/queues/default:resume", headers={"Authorization": f"Bearer {admin}"}).status_code == 200
    with db.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM audit_log")).scalar_one() == 1

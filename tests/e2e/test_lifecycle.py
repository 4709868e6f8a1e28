"""A job's whole life through gunicorn, the emulator and the real Cloud Tasks client."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import requests
from google.api_core.exceptions import NotFound
from google.cloud import tasks_v2
from sqlalchemy.engine import Engine

from api.cloud.tasks import queue_path
from tests.e2e.conftest import Stack


def create(stack: Stack, body: dict[str, Any]) -> dict[str, Any]:
    resp = stack.post("/v1/jobs", json=body)
    assert resp.status_code == 202, resp.text
    return resp.json()


def attempts(stack: Stack, job_id: str) -> list[dict[str, Any]]:
    return stack.get(f"/v1/jobs/{job_id}/attempts").json()["attempts"]


def test_a_job_goes_queued_running_completed(stack: Stack, db: Engine) -> None:
    job = create(stack, {"type": "sleep", "payload": {"worktime": 1.5}})
    assert job["state"] in ("QUEUED", "RUNNING")
    running = stack.wait_for(job["id"], lambda j: j["state"] == "RUNNING")
    assert running["attempts"] == 1 and running["started_time"]
    done = stack.wait_for(job["id"], lambda j: j["done"])
    assert done["state"] == "COMPLETED"
    assert done["result"]["slept_s"] >= 1.5
    assert done["done_time"] >= done["started_time"]
    assert done["progress"]["fraction"] == 1.0
    [a] = attempts(stack, job["id"])
    assert a["outcome"] == "COMPLETED" and a["retry_count"] == 0


def test_flaky_is_retried_through_the_queue_and_completes_on_the_right_attempt(stack: Stack, db: Engine) -> None:
    job = create(stack, {"type": "flaky", "payload": {"failures": 2}})
    done = stack.wait_for(job["id"], lambda j: j["done"])
    assert done["state"] == "COMPLETED"
    assert done["result"] == {"succeeded_on_attempt": 3}
    rows = attempts(stack, job["id"])
    assert [(a["number"], a["outcome"], a["retry_count"]) for a in rows] == [
        (1, "RETRY", 0), (2, "RETRY", 1), (3, "COMPLETED", 2)
    ]
    # after an answer (the 500 of a retry), Cloud Tasks sends an empty retry reason to an HTTP
    # target (recorded from the real service; the emulator does the same), stored as none
    assert rows[1]["retry_reason"] is None and rows[1]["retry_count"] == 1


def test_exhausted_retries_fail_the_job_with_every_attempt_recorded(stack: Stack, db: Engine) -> None:
    job = create(stack, {"type": "flaky", "payload": {"failures": 99}})
    done = stack.wait_for(job["id"], lambda j: j["done"])
    assert done["state"] == "FAILED"
    assert done["error"]["code"] == "FLAKY" and "fails on purpose" in done["error"]["message"]
    assert done["attempts"] == 3
    assert [a["outcome"] for a in attempts(stack, job["id"])] == ["RETRY", "RETRY", "FAILED"]


def test_a_duplicate_delivery_of_a_finished_job_changes_nothing(stack: Stack, db: Engine) -> None:
    job = create(stack, {"type": "echo", "payload": {"k": "v"}})
    done = stack.wait_for(job["id"], lambda j: j["done"])
    # The same job delivered again, as at-least-once delivery may: a second task, same body.
    parent = queue_path(stack.config, "default")
    dup = stack.tasks.create_task(parent=parent, task=tasks_v2.Task(
        name=f"{parent}/tasks/dup-{uuid.uuid4().hex}",
        http_request=tasks_v2.HttpRequest(
            http_method=tasks_v2.HttpMethod.POST, url=f"{stack.url}/handlers/run",
            headers={"Content-Type": "application/json"},
            body=json.dumps({"job_id": job["id"]}).encode(),
            oidc_token=tasks_v2.OidcToken(service_account_email=stack.config.tasks_service_account,
                                          audience=stack.config.audience),
        ),
    ))
    deadline = time.monotonic() + 10
    while True:  # the emulator deletes a task once the handler answers 2xx
        try:
            stack.tasks.get_task(name=dup.name)
        except NotFound:
            break
        assert time.monotonic() < deadline, "the duplicate was never acknowledged"
        time.sleep(0.05)
    assert stack.get(f"/v1/jobs/{job['id']}").json() == done
    assert len(attempts(stack, job["id"])) == 1


def test_an_unsigned_callback_is_refused(stack: Stack, db: Engine) -> None:
    job = create(stack, {"type": "echo"})
    resp = requests.post(f"{stack.url}/handlers/run", json={"job_id": job["id"]}, timeout=5)
    assert resp.status_code == 401
    assert resp.headers["Content-Type"] == "application/problem+json"

"""Durable steps (ctx.step): run once, stored, reused by later attempts of the job."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy.engine import Engine

from api.store import steps
from tests.integration.test_children import create, deliver, job
from tests.jobs import STEP_RUNS


@pytest.fixture
def open_client(make_app: Any) -> FlaskClient:
    return make_app(handler_auth="none").test_client()


def test_a_job_failing_in_its_third_step_resumes_there_without_running_the_first_two(
        open_client: FlaskClient) -> None:
    j = create(open_client, {"type": "three_steps", "payload": {"fail_third": True}})
    assert deliver(open_client, j["id"]) >= 400  # the third step raised: retried
    assert job(open_client, j["id"])["state"] == "QUEUED"
    assert deliver(open_client, j["id"], retry_count=1) == 200
    done = job(open_client, j["id"])
    assert done["state"] == "COMPLETED" and done["result"] == {"steps": [1, 2, 3]}
    runs = {name: STEP_RUNS[(j["id"], name)] for name in ("one", "two", "three")}
    assert runs == {"one": 1, "two": 1, "three": 2}
    listed = open_client.get(f"/v1/jobs/{j['id']}/steps").get_json()["steps"]
    assert [(s["name"], s["attempt"], s["result"]) for s in listed] == [
        ("one", 1, {"n": 1}), ("two", 1, 2), ("three", 2, 3)]
    assert all(s["duration_s"] >= 0 and s["finished_time"] >= s["started_time"] for s in listed)
    assert deliver(open_client, j["id"], retry_count=2) == 200  # a duplicate runs nothing
    assert STEP_RUNS[(j["id"], "three")] == 2


@pytest.mark.parametrize(("payload", "message"), [
    ({}, "the result of step 'set' is not JSON"),
    ({"big": 300_000}, "the result of step 'big' is 300002 bytes; at most 262144"),
])
def test_a_step_result_that_is_not_json_or_too_big_fails_the_attempt_and_stores_nothing(
        open_client: FlaskClient, payload: dict[str, Any], message: str) -> None:
    j = create(open_client, {"type": "bad_step", "payload": payload, "max_attempts": 1})
    deliver(open_client, j["id"])
    ended = job(open_client, j["id"])
    assert ended["state"] == "FAILED" and message in ended["error"]["message"]
    assert open_client.get(f"/v1/jobs/{j['id']}/steps").get_json() == {"steps": []}


def test_the_first_result_recorded_stands(open_client: FlaskClient, db: Engine) -> None:
    """Two attempts (a zombie and its successor) ran the same step: both get the first's result."""
    j = create(open_client, {"type": "echo"})
    jid, now = uuid.UUID(j["id"]), datetime.now(UTC)
    with db.begin() as conn:
        assert steps.record(conn, jid, "s", attempt=1, result={"from": 1}, started=now) == {"from": 1}
        assert steps.record(conn, jid, "s", attempt=2, result={"from": 2}, started=now) == {"from": 1}
        assert steps.results(conn, jid) == {"s": {"from": 1}}


def test_the_steps_of_an_unknown_job_are_a_404(open_client: FlaskClient) -> None:
    resp = open_client.get(f"/v1/jobs/{uuid.uuid4()}/steps")
    assert resp.status_code == 404 and resp.content_type == "application/problem+json"
    assert json.loads(resp.data)["status"] == 404

"""ctx.submit and ctx.then: children created with the parent's COMPLETED finish, exactly once."""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient
from sqlalchemy.engine import Engine


@pytest.fixture
def open_client(make_app: Any) -> FlaskClient:
    return make_app(handler_auth="none").test_client()


def create(client: FlaskClient, body: dict[str, Any]) -> dict[str, Any]:
    resp = client.post("/v1/jobs", data=json.dumps(body), content_type="application/json")
    assert resp.status_code == 202, resp.get_json()
    return resp.get_json()


def deliver(client: FlaskClient, job_id: str, retry_count: int = 0) -> int:
    return client.post("/handlers/run", data=json.dumps({"job_id": job_id}), content_type="application/json",
                       headers={"X-CloudTasks-TaskRetryCount": str(retry_count)}).status_code


def job(client: FlaskClient, job_id: str) -> dict[str, Any]:
    return client.get(f"/v1/jobs/{job_id}").get_json()


def count(db: Engine, role: str) -> int:
    with db.connect() as conn:
        return conn.execute(sa.text("SELECT count(*) FROM jobs WHERE labels->>'role' = :r"), {"r": role}).scalar_one()


def test_children_and_a_continuation_are_created_once_by_the_completing_attempt(
    open_client: FlaskClient, db: Engine
) -> None:
    parent = create(open_client, {"type": "spawner", "payload": {"n": 3, "fail_first": True}})
    assert deliver(open_client, parent["id"], 0) == 500  # submitted, then failed: nothing created
    assert count(db, "child") == 0 and count(db, "continuation") == 0
    assert deliver(open_client, parent["id"], 1) == 200
    done = job(open_client, parent["id"])
    assert done["state"] == "COMPLETED" and count(db, "child") == 3 and count(db, "continuation") == 1
    deliver(open_client, parent["id"], 2)  # a duplicate delivery of the completed parent
    assert count(db, "child") == 3 and count(db, "continuation") == 1
    children, then = done["result"]["children"], done["result"]["then"]
    assert {job(open_client, c)["state"] for c in children} == {"QUEUED"}
    cont = job(open_client, then)
    assert cont["state"] == "WAITING" and sorted(cont["depends_on"]) == sorted(children)
    for c in children:
        deliver(open_client, c)
    assert job(open_client, then)["state"] == "QUEUED"
    deliver(open_client, then)
    seen = job(open_client, then)["result"]
    assert seen == {c: ["COMPLETED", {"i": i}] for i, c in enumerate(children)}


def test_an_invalid_child_fails_the_attempt_and_creates_nothing(open_client: FlaskClient, db: Engine) -> None:
    parent = create(open_client, {"type": "bad_spawner", "max_attempts": 1})
    deliver(open_client, parent["id"])
    failed = job(open_client, parent["id"])
    assert failed["state"] == "FAILED" and "no-such-type" in failed["error"]["message"]
    with db.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM jobs")).scalar_one() == 1

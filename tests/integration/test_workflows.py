"""Workflows: a DAG in one request, its validation, its state as steps end, cancel and retry."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient
from sqlalchemy.engine import Engine


@pytest.fixture
def open_client(make_app: Any) -> FlaskClient:
    return make_app(handler_auth="none").test_client()


def submit(client: FlaskClient, body: dict[str, Any], status: int = 202, **headers: str) -> dict[str, Any]:
    resp = client.post("/v1/workflows", data=json.dumps(body), content_type="application/json", headers=headers)
    assert resp.status_code == status, resp.get_json()
    return resp.get_json()


def deliver(client: FlaskClient, job_id: str, retry_count: int = 0) -> int:
    return client.post("/handlers/run", data=json.dumps({"job_id": job_id}), content_type="application/json",
                       headers={"X-CloudTasks-TaskRetryCount": str(retry_count)}).status_code


def get(client: FlaskClient, wid: str) -> dict[str, Any]:
    return client.get(f"/v1/workflows/{wid}").get_json()


def step(wf: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in wf["steps"] if s["name"] == name)


DIAMOND = {
    "name": "diamond",
    "labels": {"team": "data"},
    "steps": [
        {"name": "a", "type": "echo", "payload": {"x": "a"}},
        {"name": "b", "type": "echo", "payload": {"x": "b"}, "needs": ["a"]},
        {"name": "c", "type": "echo", "payload": {"x": "c"}, "needs": ["a"]},
        {"name": "d", "type": "parents", "needs": ["b", "c"]},
    ],
}


def test_a_diamond_runs_in_order_and_the_join_sees_both_by_step_name(open_client: FlaskClient) -> None:
    wf = submit(open_client, DIAMOND)
    assert wf["state"] == "RUNNING" and wf["step_count"] == 4 and wf["labels"] == {"team": "data"}
    assert {s["name"]: s["state"] for s in wf["steps"]} == {"a": "QUEUED", "b": "WAITING", "c": "WAITING", "d": "WAITING"}
    assert step(wf, "d")["needs"] == ["b", "c"] and wf["counts"] == {"QUEUED": 1, "WAITING": 3}
    job = open_client.get(f"/v1/jobs/{step(wf, 'd')['job_id']}").get_json()
    assert job["workflow_id"] == wf["id"] and job["step"] == "d"
    for name in ("a", "b"):
        deliver(open_client, step(wf, name)["job_id"])
    assert step(get(open_client, wf["id"]), "d")["state"] == "WAITING"
    deliver(open_client, step(wf, "c")["job_id"])
    deliver(open_client, step(wf, "d")["job_id"])
    done = get(open_client, wf["id"])
    assert done["state"] == "COMPLETED" and done["done"] and done["done_time"] and done["active"] == 0
    result = open_client.get(f"/v1/jobs/{step(wf, 'd')['job_id']}").get_json()["result"]
    assert result["b"] == ["COMPLETED", {"x": "b"}] and result["c"] == ["COMPLETED", {"x": "c"}]
    assert result[step(wf, "b")["job_id"]] == result["b"]


def test_a_failed_step_fails_the_workflow_and_retry_reruns_it_and_what_follows(open_client: FlaskClient) -> None:
    wf = submit(open_client, {"name": "w", "steps": [
        {"name": "a", "type": "echo"},
        {"name": "b", "type": "flaky", "payload": {"failures": 1}, "max_attempts": 1, "needs": ["a"]},
        {"name": "c", "type": "echo", "needs": ["b"]},
        {"name": "side", "type": "echo", "needs": ["a"]},
    ]})
    for name in ("a", "b", "side"):
        deliver(open_client, step(wf, name)["job_id"])
    failed = get(open_client, wf["id"])
    assert failed["state"] == "FAILED" and failed["failed"] == 2  # b, and c by its policy
    assert step(failed, "c")["error"]["code"] == "DEPENDENCY_FAILED"
    retried = open_client.post(f"/v1/workflows/{wf['id']}:retry").get_json()
    assert retried["state"] == "RUNNING" and retried["done_time"] is None
    states = {s["name"]: s["state"] for s in retried["steps"]}
    assert states == {"a": "COMPLETED", "side": "COMPLETED", "b": "QUEUED", "c": "WAITING"}
    # flaky fails once per attempt number; the new run's attempt 2 succeeds
    deliver(open_client, step(wf, "b")["job_id"])
    deliver(open_client, step(wf, "c")["job_id"])
    done = get(open_client, wf["id"])
    assert done["state"] == "COMPLETED" and done["failed"] == 0
    assert open_client.post(f"/v1/workflows/{wf['id']}:retry").status_code == 409


def test_cancel_stops_what_has_not_ended(open_client: FlaskClient) -> None:
    wf = submit(open_client, DIAMOND)
    deliver(open_client, step(wf, "a")["job_id"])
    cancelled = open_client.post(f"/v1/workflows/{wf['id']}:cancel").get_json()
    assert cancelled["state"] == "CANCELLED" and cancelled["cancelled"] == 3
    assert {s["name"]: s["state"] for s in cancelled["steps"]}["a"] == "COMPLETED"
    assert open_client.post(f"/v1/workflows/{wf['id']}:cancel").status_code == 200  # idempotent
    retried = open_client.post(f"/v1/workflows/{wf['id']}:retry").get_json()
    assert {s["name"]: s["state"] for s in retried["steps"]} == {
        "a": "COMPLETED", "b": "QUEUED", "c": "QUEUED", "d": "WAITING"}


@pytest.mark.parametrize(("steps", "field", "says"), [
    ([{"name": "a", "type": "echo", "needs": ["zz"]}], "steps[0].needs[0]", "no step named 'zz'"),
    ([{"name": "a", "type": "echo"}, {"name": "a", "type": "echo"}], "steps[1].name", "named twice"),
    ([{"name": "a", "type": "echo", "needs": ["b"]}, {"name": "b", "type": "echo", "needs": ["a"]}],
     "needs", "cycle"),
    ([{"name": "a", "type": "nope"}], "steps[0].type", "unknown job type"),
    ([{"name": "a b", "type": "echo"}], "steps[0].name", "must match"),
    ([{"name": "a", "type": "echo", "depends_on": [str(uuid.uuid4())]}], "steps[0].depends_on", "needs"),
    ([], "steps", "at least 1"),
])
def test_bad_workflows_are_named_and_nothing_is_stored(
    open_client: FlaskClient, db: Engine, steps: list[Any], field: str, says: str
) -> None:
    resp = open_client.post("/v1/workflows", json={"name": "bad", "steps": steps})
    assert resp.status_code == 422, resp.get_json()
    [err, *_] = resp.get_json()["errors"]
    assert err["field"].endswith(field) and says in err["message"], err
    with db.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM workflows")).scalar() == 0
        assert conn.execute(sa.text("SELECT count(*) FROM jobs")).scalar() == 0


def test_an_idempotent_replay_returns_the_workflow(open_client: FlaskClient) -> None:
    first = submit(open_client, DIAMOND, **{"Idempotency-Key": "wf-1"})
    again = submit(open_client, DIAMOND, 200, **{"Idempotency-Key": "wf-1"})
    assert again["id"] == first["id"]
    resp = open_client.post("/v1/workflows", json={**DIAMOND, "name": "other"}, headers={"Idempotency-Key": "wf-1"})
    assert resp.status_code == 409


def test_list_filters_and_pages(open_client: FlaskClient) -> None:
    ids = [submit(open_client, {**DIAMOND, "labels": {"n": str(i)}})["id"] for i in range(3)]
    page = open_client.get("/v1/workflows?page_size=2").get_json()
    assert [w["id"] for w in page["workflows"]] == ids[::-1][:2] and "steps" not in page["workflows"][0]
    rest = open_client.get(f"/v1/workflows?page_size=2&page_token={page['next_page_token']}").get_json()
    assert [w["id"] for w in rest["workflows"]] == [ids[0]] and rest["next_page_token"] == ""
    assert [w["id"] for w in open_client.get("/v1/workflows?label=n:1").get_json()["workflows"]] == [ids[1]]
    assert open_client.get("/v1/workflows?state=COMPLETED").get_json()["workflows"] == []
    assert open_client.get("/v1/workflows?state=WAITING").status_code == 400
    assert open_client.get("/v1/workflows?stat=RUNNING").status_code == 400


def test_another_principals_workflow_is_404(make_app: Any, db: Engine) -> None:
    from api.web import auth

    client = make_app(api_auth="keys").test_client()
    with db.begin() as conn:
        a = {"Authorization": f"Bearer {auth.create_key(conn, 'a')}"}
        b = {"Authorization": f"Bearer {auth.create_key(conn, 'b')}"}
    wf = client.post("/v1/workflows", json=DIAMOND, headers=a).get_json()
    assert client.get(f"/v1/workflows/{wf['id']}", headers=b).status_code == 404
    assert client.post(f"/v1/workflows/{wf['id']}:cancel", headers=b).status_code == 404
    assert client.get("/v1/workflows", headers=b).get_json()["workflows"] == []
    assert client.get(f"/v1/workflows/{wf['id']}", headers=a).status_code == 200


def test_wait_answers_when_the_workflow_ends(open_client: FlaskClient) -> None:
    wf = submit(open_client, {"name": "one", "steps": [{"name": "a", "type": "echo"}]})
    assert open_client.get(f"/v1/workflows/{wf['id']}?wait=0.3").get_json()["state"] == "RUNNING"
    deliver(open_client, step(wf, "a")["job_id"])
    assert open_client.get(f"/v1/workflows/{wf['id']}?wait=5").get_json()["state"] == "COMPLETED"

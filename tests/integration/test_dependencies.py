"""Jobs that depend on jobs: WAITING, the release in the finish's statement, the policies,
the limits, and the sweeper's net. Deliveries go through /handlers/run; the emulator's queues
are paused, so a task's existence says whether a job was enqueued."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient
from google.api_core import exceptions as gexc
from google.cloud import tasks_v2
from sqlalchemy.engine import Engine

from api.orchestration.sweep import sweep
from api.store import dependencies


@pytest.fixture
def open_client(make_app: Any) -> FlaskClient:
    return make_app(handler_auth="none").test_client()


def create(client: FlaskClient, body: dict[str, Any], status: int = 202) -> dict[str, Any]:
    resp = client.post("/v1/jobs", data=json.dumps(body), content_type="application/json")
    assert resp.status_code == status, resp.get_json()
    return resp.get_json()


def deliver(client: FlaskClient, job_id: str, retry_count: int = 0) -> int:
    resp = client.post("/handlers/run", data=json.dumps({"job_id": job_id}), content_type="application/json",
                       headers={"X-CloudTasks-TaskRetryCount": str(retry_count)})
    return resp.status_code


def job(client: FlaskClient, job_id: str) -> dict[str, Any]:
    return client.get(f"/v1/jobs/{job_id}").get_json()


def has_task(tasks_client: tasks_v2.CloudTasksClient, client: FlaskClient, job_id: str) -> bool:
    with client.application.app_context():
        from api.store import jobs as store
        from api.web.http import current_state

        with current_state().engine.connect() as conn:
            name = store.get_job(conn, uuid.UUID(job_id)).task_name
    try:
        tasks_client.get_task(name=name)
    except gexc.NotFound:
        return False
    return True


def test_a_chain_waits_then_runs_with_its_parents_result(open_client: FlaskClient, tasks_client: Any) -> None:
    a = create(open_client, {"type": "echo", "payload": {"n": 1}})
    b = create(open_client, {"type": "parents", "depends_on": [a["id"]]})
    assert b["state"] == "WAITING" and b["depends_on"] == [a["id"]] and b["on_dependency_failure"] == "fail"
    assert not has_task(tasks_client, open_client, b["id"])
    # b's delivery before a finished runs nothing: WAITING is not claimable
    assert deliver(open_client, b["id"]) == 200 and job(open_client, b["id"])["state"] == "WAITING"
    assert deliver(open_client, a["id"]) == 200
    assert job(open_client, b["id"])["state"] == "QUEUED"
    assert has_task(tasks_client, open_client, b["id"])  # enqueued after the release committed
    assert deliver(open_client, b["id"]) == 200
    done = job(open_client, b["id"])
    assert done["state"] == "COMPLETED" and done["result"] == {a["id"]: ["COMPLETED", {"n": 1}]}


def test_a_diamond_joins_only_after_both_branches(open_client: FlaskClient) -> None:
    a = create(open_client, {"type": "echo", "payload": {"x": "a"}})
    b = create(open_client, {"type": "echo", "payload": {"x": "b"}, "depends_on": [a["id"]]})
    c = create(open_client, {"type": "echo", "payload": {"x": "c"}, "depends_on": [a["id"]]})
    d = create(open_client, {"type": "parents", "depends_on": [b["id"], c["id"]]})
    deliver(open_client, a["id"])
    assert job(open_client, b["id"])["state"] == job(open_client, c["id"])["state"] == "QUEUED"
    deliver(open_client, b["id"])
    assert job(open_client, d["id"])["state"] == "WAITING"  # c has not finished
    deliver(open_client, c["id"])
    assert job(open_client, d["id"])["state"] == "QUEUED"
    deliver(open_client, d["id"])
    assert job(open_client, d["id"])["result"] == {
        b["id"]: ["COMPLETED", {"x": "b"}], c["id"]: ["COMPLETED", {"x": "c"}],
    }


@pytest.mark.parametrize(("policy", "state"), [("fail", "FAILED"), ("cancel", "CANCELLED"), ("run", "QUEUED")])
def test_a_failed_dependency_applies_the_policy(open_client: FlaskClient, policy: str, state: str) -> None:
    ok = create(open_client, {"type": "echo"})
    bad = create(open_client, {"type": "flaky", "payload": {"failures": 9}, "max_attempts": 1})
    child = create(open_client, {"type": "parents", "depends_on": [ok["id"], bad["id"]],
                                 "on_dependency_failure": policy})
    grandchild = create(open_client, {"type": "echo", "depends_on": [child["id"]]})
    deliver(open_client, bad["id"])
    assert job(open_client, bad["id"])["state"] == "FAILED"
    after = job(open_client, child["id"])
    if policy == "run":
        # it still waits for `ok`, then runs and sees the failure
        assert after["state"] == "WAITING"
        deliver(open_client, ok["id"])
        assert job(open_client, child["id"])["state"] == state
        deliver(open_client, child["id"])
        seen = job(open_client, child["id"])["result"]
        assert seen[bad["id"]][0] == "FAILED" and seen[ok["id"]] == ["COMPLETED", {}]
        return
    # fail and cancel decide at once, without waiting for `ok`, and never run it
    assert after["state"] == state and after["error"]["code"] == "DEPENDENCY_FAILED"
    assert bad["id"] in after["error"]["message"] and after["done"] and after["attempts"] == 0
    # and the grandchild (policy fail) follows in the same release
    gc = job(open_client, grandchild["id"])
    assert gc["state"] == "FAILED" and child["id"] in gc["error"]["message"]


def test_a_dependency_already_failed_is_decided_at_creation(open_client: FlaskClient) -> None:
    bad = create(open_client, {"type": "flaky", "payload": {"failures": 9}, "max_attempts": 1})
    deliver(open_client, bad["id"])
    failed = create(open_client, {"type": "echo", "depends_on": [bad["id"]]})
    assert failed["state"] == "FAILED" and failed["error"]["code"] == "DEPENDENCY_FAILED"
    cancelled = create(open_client, {"type": "echo", "depends_on": [bad["id"]], "on_dependency_failure": "cancel"})
    assert cancelled["state"] == "CANCELLED"
    runs = create(open_client, {"type": "echo", "depends_on": [bad["id"]], "on_dependency_failure": "run"})
    assert runs["state"] == "QUEUED"
    done = create(open_client, {"type": "echo"})
    deliver(open_client, done["id"])
    assert create(open_client, {"type": "echo", "depends_on": [done["id"]]})["state"] == "QUEUED"


def test_cancelling_a_dependency_releases_its_dependents_and_a_waiting_job_cancels(
    open_client: FlaskClient,
) -> None:
    a = create(open_client, {"type": "echo"})
    b = create(open_client, {"type": "echo", "depends_on": [a["id"]]})
    c = create(open_client, {"type": "echo", "depends_on": [a["id"]], "on_dependency_failure": "run"})
    assert open_client.post(f"/v1/jobs/{a['id']}:cancel").get_json()["state"] == "CANCELLED"
    assert job(open_client, b["id"])["state"] == "FAILED"
    assert job(open_client, c["id"])["state"] == "QUEUED"
    w = create(open_client, {"type": "echo", "depends_on": [create(open_client, {"type": "echo"})["id"]]})
    assert open_client.post(f"/v1/jobs/{w['id']}:cancel").get_json()["state"] == "CANCELLED"


def test_bad_dependencies_are_named_and_nothing_is_stored(open_client: FlaskClient, db: Engine,
                                                         make_app: Any) -> None:
    a = create(open_client, {"type": "echo"})
    before = _count(db)
    unknown = str(uuid.uuid4())
    resp = open_client.post("/v1/jobs", json={"type": "echo", "depends_on": [a["id"], unknown]})
    assert resp.status_code == 422
    assert resp.get_json()["errors"] == [{"field": "depends_on[1]", "message": f"no job {unknown} (of yours)"}]
    for body, field in (
        ({"type": "echo", "depends_on": ["not-a-uuid"]}, "depends_on.0"),
        ({"type": "echo", "depends_on": [a["id"], a["id"]]}, "depends_on"),
        ({"type": "echo", "depends_on": [str(uuid.uuid4()) for _ in range(1001)]}, "depends_on"),
        ({"type": "echo", "depends_on": [a["id"]], "on_dependency_failure": "ignore"}, "on_dependency_failure"),
    ):
        resp = open_client.post("/v1/jobs", json=body)
        assert resp.status_code == 422 and resp.get_json()["errors"][0]["field"] == field, resp.get_json()
    batch = open_client.post("/v1/jobs:batchCreate", json={"jobs": [
        {"type": "echo"}, {"type": "echo", "depends_on": [unknown]},
    ]})
    assert batch.status_code == 422 and batch.get_json()["errors"][0]["field"] == "jobs[1].depends_on[0]"
    assert _count(db) == before
    assert job(open_client, a["id"])["state"] == "QUEUED"


def test_another_principals_job_is_no_dependency(make_app: Any, db: Engine) -> None:
    from api.web import auth

    app = make_app(api_auth="keys", handler_auth="none")
    with db.begin() as conn:
        key_a = auth.create_key(conn, "a")
        key_b = auth.create_key(conn, "b")
    client = app.test_client()
    a = client.post("/v1/jobs", json={"type": "echo"}, headers={"Authorization": f"Bearer {key_a}"}).get_json()
    resp = client.post("/v1/jobs", json={"type": "echo", "depends_on": [a["id"]]},
                       headers={"Authorization": f"Bearer {key_b}"})
    assert resp.status_code == 422 and resp.get_json()["errors"][0]["field"] == "depends_on[0]"


def test_a_fan_out_of_a_thousand_is_released_in_one_finish(open_client: FlaskClient, db: Engine) -> None:
    root = create(open_client, {"type": "echo"})
    for _ in range(2):
        resp = open_client.post("/v1/jobs:batchCreate", json={"jobs": [
            {"type": "echo", "depends_on": [root["id"]]} for _ in range(500)
        ]})
        assert resp.status_code == 202 and {j["state"] for j in resp.get_json()["jobs"]} == {"WAITING"}
    deliver(open_client, root["id"])
    with db.connect() as conn:
        states = dict(conn.execute(sa.text(
            "SELECT state, count(*) FROM jobs WHERE id <> :id GROUP BY state"), {"id": root["id"]}).all())
    assert states == {"QUEUED": 1000}


def test_a_fan_in_of_a_thousand_waits_for_the_last(open_client: FlaskClient, db: Engine) -> None:
    parents = []
    for _ in range(2):
        resp = open_client.post("/v1/jobs:batchCreate", json={"jobs": [{"type": "echo"} for _ in range(500)]})
        parents += [j["id"] for j in resp.get_json()["jobs"]]
    child = create(open_client, {"type": "echo", "depends_on": parents[:1000]})
    assert child["state"] == "WAITING"
    with db.connect() as conn:
        assert conn.execute(sa.text("SELECT waiting_on FROM jobs WHERE id = :id"), {"id": child["id"]}).scalar() == 1000
    for p in parents[:999]:
        deliver(open_client, p)
    assert job(open_client, child["id"])["state"] == "WAITING"
    deliver(open_client, parents[999])
    assert job(open_client, child["id"])["state"] == "QUEUED"


def test_a_release_counts_each_edge_once(open_client: FlaskClient, db: Engine) -> None:
    a = create(open_client, {"type": "echo"})
    b = create(open_client, {"type": "echo"})
    c = create(open_client, {"type": "echo", "depends_on": [a["id"], b["id"]]})
    deliver(open_client, a["id"])
    deliver(open_client, a["id"])  # a duplicate delivery of a finished job
    with db.begin() as conn:
        assert dependencies.release(conn, [uuid.UUID(a["id"])]) == []  # a second release: nothing
    assert job(open_client, c["id"])["state"] == "WAITING"
    deliver(open_client, b["id"])
    assert job(open_client, c["id"])["state"] == "QUEUED"


def test_the_sweeper_releases_a_dependent_whose_release_was_missed(
    open_client: FlaskClient, db: Engine, app: Any
) -> None:
    a = create(open_client, {"type": "echo"})
    b = create(open_client, {"type": "echo", "depends_on": [a["id"]]})
    # a ends by a path that released nothing (a process that died between the two)
    with db.begin() as conn:
        conn.execute(sa.text("UPDATE jobs SET state = 'COMPLETED', done_time = now() WHERE id = :id"), {"id": a["id"]})
        conn.execute(sa.text("UPDATE jobs SET updated_time = now() - interval '1 hour' WHERE id = :id"),
                     {"id": b["id"]})
    report = sweep(open_client.application.extensions["cloudjobs"])
    assert report.released == 1 and job(open_client, b["id"])["state"] == "QUEUED"


def _count(db: Engine) -> tuple[int, int]:
    with db.connect() as conn:
        return (conn.execute(sa.text("SELECT count(*) FROM jobs")).scalar_one(),
                conn.execute(sa.text("SELECT count(*) FROM job_dependencies")).scalar_one())

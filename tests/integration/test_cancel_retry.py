"""Cancel and retry through the API; the run logic through /handlers/run."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from flask.testing import FlaskClient
from google.api_core.exceptions import NotFound
from google.cloud import tasks_v2
from sqlalchemy.engine import Engine

from api.store import jobs as store
from tests.integration.test_handlers import attempts, create, deliver, job


@pytest.fixture
def open_client(make_app: Any) -> FlaskClient:
    return make_app(handler_auth="none").test_client()


def test_cancel_a_queued_job_deletes_its_task_and_is_idempotent(
    open_client: FlaskClient, tasks_client: tasks_v2.CloudTasksClient, db: Engine
) -> None:
    j = create(open_client, {"type": "echo"})
    with db.connect() as conn:
        task_name = store.get_job(conn, uuid.UUID(j["id"])).task_name
    tasks_client.get_task(name=task_name)  # exists
    resp = open_client.post(f"/v1/jobs/{j['id']}:cancel")
    assert resp.status_code == 200
    assert resp.get_json()["state"] == "CANCELLED" and resp.get_json()["done"] is True
    with pytest.raises(NotFound):
        tasks_client.get_task(name=task_name)
    again = open_client.post(f"/v1/jobs/{j['id']}:cancel")
    assert again.status_code == 200 and again.get_json() == resp.get_json()
    # A delivery that was already in flight is acknowledged and runs nothing.
    assert deliver(open_client, j["id"]).status_code == 200
    assert job(open_client, j["id"])["state"] == "CANCELLED"
    assert attempts(open_client, j["id"]) == []


def test_cancel_a_running_job_ends_its_attempt_cancelled(open_client: FlaskClient, db: Engine) -> None:
    j = create(open_client, {"type": "flaky", "payload": {"failures": 5}})
    with db.begin() as conn:
        [row] = store.claim_jobs(conn, [uuid.UUID(j["id"])])
    resp = open_client.post(f"/v1/jobs/{j['id']}:cancel")
    assert resp.status_code == 200 and resp.get_json()["state"] == "RUNNING"
    # The attempt fails (as a cancelled job does) and the job ends CANCELLED, not retried.
    with db.begin() as conn:
        moved = store.finish_jobs(conn, [store.Finish(row.id, 1, "QUEUED", "RETRY",
                                                      error={"code": "CANCELLED", "message": "stopped"})]).states
    assert moved == {row.id: "CANCELLED"}
    assert [a["outcome"] for a in attempts(open_client, j["id"])] == ["CANCELLED"]
    assert job(open_client, j["id"])["done_time"]


def test_a_cancelled_running_job_that_completes_anyway_is_completed(open_client: FlaskClient, db: Engine) -> None:
    j = create(open_client, {"type": "echo"})
    with db.begin() as conn:
        [row] = store.claim_jobs(conn, [uuid.UUID(j["id"])])
    open_client.post(f"/v1/jobs/{j['id']}:cancel")
    with db.begin() as conn:
        assert store.finish_jobs(conn, [store.Finish(row.id, 1, "COMPLETED", "COMPLETED", result=1)]).states == {row.id: "COMPLETED"}


@pytest.mark.parametrize("final", ["COMPLETED", "FAILED"])
def test_cancel_a_finished_job_is_409(open_client: FlaskClient, final: str) -> None:
    body = {"type": "echo"} if final == "COMPLETED" else {"type": "flaky", "payload": {"failures": 9}, "max_attempts": 1}
    j = create(open_client, body)
    deliver(open_client, j["id"])
    resp = open_client.post(f"/v1/jobs/{j['id']}:cancel")
    assert resp.status_code == 409
    assert resp.get_json()["state"] == final


def test_cancel_and_retry_unknown_jobs_are_404(open_client: FlaskClient) -> None:
    for op in ("cancel", "retry"):
        assert open_client.post(f"/v1/jobs/{uuid.uuid4()}:{op}").status_code == 404
        assert open_client.post(f"/v1/jobs/nope:{op}").status_code == 404


def test_retry_a_failed_job_runs_it_again_under_a_new_task(
    open_client: FlaskClient, tasks_client: tasks_v2.CloudTasksClient, db: Engine
) -> None:
    j = create(open_client, {"type": "flaky", "payload": {"failures": 1}, "max_attempts": 1})
    deliver(open_client, j["id"])
    assert job(open_client, j["id"])["state"] == "FAILED"
    resp = open_client.post(f"/v1/jobs/{j['id']}:retry")
    assert resp.status_code == 200
    again = resp.get_json()
    assert again["state"] == "QUEUED" and again["error"] is None and again["done_time"] is None
    assert again["attempts"] == 1  # attempts go on
    with db.connect() as conn:
        row = store.get_job(conn, uuid.UUID(j["id"]))
    assert row.run == 1 and row.task_name.endswith(f"job-{uuid.UUID(j['id']).hex}-1")
    tasks_client.get_task(name=row.task_name)
    # The retried run has its own budget of one attempt; flaky succeeds on attempt 2.
    assert deliver(open_client, j["id"]).status_code == 200
    done = job(open_client, j["id"])
    assert done["state"] == "COMPLETED" and done["attempts"] == 2
    assert [a["number"] for a in attempts(open_client, j["id"])] == [1, 2]
    assert open_client.post(f"/v1/jobs/{j['id']}:retry").status_code == 409  # COMPLETED


def test_retry_is_idempotent(open_client: FlaskClient) -> None:
    j = create(open_client, {"type": "echo"})
    open_client.post(f"/v1/jobs/{j['id']}:cancel")
    first = open_client.post(f"/v1/jobs/{j['id']}:retry")
    second = open_client.post(f"/v1/jobs/{j['id']}:retry")
    assert first.status_code == second.status_code == 200
    assert second.get_json()["state"] == "QUEUED"
    assert second.get_json()["updated_time"] == first.get_json()["updated_time"]


def test_an_attempt_that_overruns_its_timeout_is_recorded_timed_out(open_client: FlaskClient) -> None:
    j = create(open_client, {"type": "overrun"})
    assert deliver(open_client, j["id"]).status_code == 500  # retried
    assert job(open_client, j["id"])["error"]["code"] == "TIMED_OUT"
    assert deliver(open_client, j["id"], retry_count=1).status_code == 200
    assert [a["outcome"] for a in attempts(open_client, j["id"])] == ["TIMED_OUT", "COMPLETED"]


@pytest.mark.parametrize(("job_type", "code", "status", "state"), [
    ("not_json", "RESULT_NOT_JSON", 200, "FAILED"),
    ("boom", "EXCEPTION", 500, "QUEUED"),
])
def test_broken_job_functions_fail_the_job_not_the_handler(
    open_client: FlaskClient, job_type: str, code: str, status: int, state: str
) -> None:
    j = create(open_client, {"type": job_type})
    assert deliver(open_client, j["id"]).status_code == status
    after = job(open_client, j["id"])
    assert (after["state"], after["error"]["code"]) == (state, code)

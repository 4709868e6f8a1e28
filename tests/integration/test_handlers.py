"""/handlers/run through Flask's test client: claim, run, finish, and the reply to the queue."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient
from sqlalchemy.engine import Engine

from api.store import jobs as store
from handlers import holder


@pytest.fixture
def open_client(make_app: Any) -> FlaskClient:
    """The app with handler authentication off, to exercise the run logic alone."""
    return make_app(handler_auth="none").test_client()


def create(client: FlaskClient, body: dict[str, Any]) -> dict[str, Any]:
    resp = client.post("/v1/jobs", data=json.dumps(body), content_type="application/json")
    assert resp.status_code == 202
    return resp.get_json()


def deliver(client: FlaskClient, job_id: str, retry_count: int = 0, **headers: str) -> Any:
    return client.post(
        "/handlers/run",
        data=json.dumps({"job_id": job_id}),
        content_type="application/json",
        headers={"X-CloudTasks-TaskRetryCount": str(retry_count),
                 "X-CloudTasks-TaskExecutionCount": str(retry_count),
                 "X-CloudTasks-TaskName": f"task-{job_id}", **headers},
    )


def job(client: FlaskClient, job_id: str) -> dict[str, Any]:
    return client.get(f"/v1/jobs/{job_id}").get_json()


def attempts(client: FlaskClient, job_id: str) -> list[dict[str, Any]]:
    return client.get(f"/v1/jobs/{job_id}/attempts").get_json()["attempts"]


def test_a_delivery_runs_the_job_to_completed(open_client: FlaskClient) -> None:
    j = create(open_client, {"type": "echo", "payload": {"hello": "world"}})
    resp = deliver(open_client, j["id"])
    assert resp.status_code == 200
    done = job(open_client, j["id"])
    assert done["state"] == "COMPLETED" and done["done"] is True
    assert done["result"] == {"hello": "world"}
    assert done["attempts"] == 1 and done["done_time"] and done["started_time"]
    [a] = attempts(open_client, j["id"])
    assert a["outcome"] == "COMPLETED" and a["retry_count"] == 0 and a["task_name"] == f"task-{j['id']}"


def test_a_retryable_failure_answers_non_2xx_and_requeues(open_client: FlaskClient) -> None:
    j = create(open_client, {"type": "flaky", "payload": {"failures": 1}})
    first = deliver(open_client, j["id"], retry_count=0)
    assert first.status_code == 500
    assert first.content_type == "application/problem+json"
    mid = job(open_client, j["id"])
    assert mid["state"] == "QUEUED" and mid["error"]["code"] == "FLAKY" and mid["done"] is False
    second = deliver(open_client, j["id"], retry_count=1, **{"X-CloudTasks-TaskRetryReason": "HTTP 500"})
    assert second.status_code == 200
    done = job(open_client, j["id"])
    assert done["state"] == "COMPLETED" and done["result"] == {"succeeded_on_attempt": 2}
    assert done["error"] is None
    outcomes = [(a["number"], a["outcome"], a["retry_reason"]) for a in attempts(open_client, j["id"])]
    assert outcomes == [(1, "RETRY", None), (2, "COMPLETED", "HTTP 500")]


def test_a_job_waiting_to_retry_says_when_its_next_attempt_comes(open_client: FlaskClient, db: Engine) -> None:
    # The test queue: min_backoff 100ms, 2 doublings, max 500ms. Retry count 1 failed, so
    # the next delivery is retry 2, 200 ms after the failure.
    j = create(open_client, {"type": "flaky", "payload": {"failures": 5}})
    assert job(open_client, j["id"])["next_attempt_time"] is None
    assert deliver(open_client, j["id"], retry_count=0).status_code == 500
    assert deliver(open_client, j["id"], retry_count=1).status_code == 500
    mid = job(open_client, j["id"])
    assert mid["state"] == "QUEUED" and mid["error"]["code"] == "FLAKY"
    with db.connect() as conn:
        updated, due = conn.execute(
            sa.text("SELECT updated_time, next_attempt_time FROM jobs WHERE id = :id"), {"id": j["id"]}
        ).one()
    assert (due - updated).total_seconds() == pytest.approx(0.2)
    assert mid["next_attempt_time"] is not None and mid["run_attempts"] == 2 and mid["run"] == 0
    # The next claim clears it: a running or finished job has no next attempt to wait for.
    assert deliver(open_client, j["id"], retry_count=2).status_code == 200
    assert job(open_client, j["id"])["next_attempt_time"] is None


def test_after_a_retry_the_runs_attempts_count_afresh(open_client: FlaskClient) -> None:
    j = create(open_client, {"type": "flaky", "payload": {"failures": 10}})
    for n in range(3):
        deliver(open_client, j["id"], retry_count=n)
    failed = job(open_client, j["id"])
    assert (failed["state"], failed["attempts"], failed["run_attempts"], failed["run"]) == ("FAILED", 3, 3, 0)
    assert open_client.post(f"/v1/jobs/{j['id']}:retry").status_code == 200
    deliver(open_client, j["id"], retry_count=0)
    again = job(open_client, j["id"])
    # total 4, but attempt 1 of 3 in the second run: never "4/3"
    assert (again["attempts"], again["run_attempts"], again["max_attempts"], again["run"]) == (4, 1, 3, 1)


def test_the_last_attempt_fails_the_job_and_answers_2xx(open_client: FlaskClient) -> None:
    # The default test queue allows 3 attempts: retry counts 0, 1, 2.
    j = create(open_client, {"type": "flaky", "payload": {"failures": 10}})
    assert [deliver(open_client, j["id"], retry_count=n).status_code for n in range(3)] == [500, 500, 200]
    done = job(open_client, j["id"])
    assert done["state"] == "FAILED" and done["error"]["code"] == "FLAKY" and done["attempts"] == 3
    assert [a["outcome"] for a in attempts(open_client, j["id"])] == ["RETRY", "RETRY", "FAILED"]


def test_the_queues_retry_config_decides_the_last_attempt(open_client: FlaskClient) -> None:
    # The job allows 3 attempts, but Cloud Tasks says this is its third try of 3 (retry count 2).
    j = create(open_client, {"type": "flaky", "payload": {"failures": 10}, "max_attempts": 3})
    assert deliver(open_client, j["id"], retry_count=2).status_code == 200
    assert job(open_client, j["id"])["state"] == "FAILED"


def test_the_jobs_own_max_attempts_is_honoured(open_client: FlaskClient) -> None:
    j = create(open_client, {"type": "flaky", "payload": {"failures": 10}, "max_attempts": 1})
    assert deliver(open_client, j["id"]).status_code == 200
    assert job(open_client, j["id"])["state"] == "FAILED"


def test_permanent_failure_and_unexpected_exceptions(open_client: FlaskClient, app: Any) -> None:
    j = create(open_client, {"type": "sleep", "payload": {"seconds": 0}})
    assert deliver(open_client, j["id"]).status_code == 200
    assert job(open_client, j["id"])["state"] == "COMPLETED"


def test_a_duplicate_delivery_of_a_finished_job_changes_nothing(open_client: FlaskClient, db: Engine) -> None:
    j = create(open_client, {"type": "echo", "payload": {"x": 1}})
    assert deliver(open_client, j["id"]).status_code == 200
    before = job(open_client, j["id"])
    again = deliver(open_client, j["id"], retry_count=1)
    assert again.status_code == 200
    assert again.get_json()["jobs"] == {j["id"]: "COMPLETED"}
    assert job(open_client, j["id"]) == before
    assert len(attempts(open_client, j["id"])) == 1


def test_a_delivery_while_another_attempt_holds_the_lease_is_409(open_client: FlaskClient, db: Engine) -> None:
    j = create(open_client, {"type": "echo"})
    with db.begin() as conn:
        store.claim_jobs(conn, [uuid.UUID(j["id"])])
    resp = deliver(open_client, j["id"])
    assert resp.status_code == 409
    assert resp.get_json()["title"].startswith("Job is running")
    assert job(open_client, j["id"])["attempts"] == 1


def _holder_of_a_process_that_ended() -> str:
    """The holder name a process of this machine had, taken while it ran; it has exited since."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c",
                             "from handlers.holder import this_process; print(this_process(), flush=True); input()"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdin is not None
    name = proc.stdout.readline().strip()
    assert holder.is_dead(name) is False  # alive: never taken over
    proc.stdin.close()
    proc.wait(timeout=30)
    assert holder.is_dead(name) is True
    return name


def test_a_job_whose_attempts_process_died_on_this_machine_is_taken_over_at_once(
        open_client: FlaskClient, db: Engine) -> None:
    j = create(open_client, {"type": "echo", "payload": {"n": 1}})
    with db.begin() as conn:  # claimed by a worker that was then killed: its lease has 330 s to run
        store.claim_jobs(conn, [uuid.UUID(j["id"])], holder=_holder_of_a_process_that_ended())
    resp = deliver(open_client, j["id"], retry_count=1)
    assert resp.status_code == 200 and resp.get_json()["jobs"] == {j["id"]: "COMPLETED"}
    first, second = attempts(open_client, j["id"])
    assert (first["outcome"], first["error"]["code"]) == ("LOST", "ATTEMPT_DIED")
    assert second["outcome"] == "COMPLETED" and job(open_client, j["id"])["attempts"] == 2


def test_a_holder_alive_or_on_another_machine_keeps_its_lease(open_client: FlaskClient, db: Engine) -> None:
    for name in (holder.this_process(), "elsewhere/0f1e/12345/678"):
        j = create(open_client, {"type": "echo"})
        with db.begin() as conn:
            store.claim_jobs(conn, [uuid.UUID(j["id"])], holder=name)
        assert holder.is_dead(name) is False
        assert deliver(open_client, j["id"], retry_count=1).status_code == 409
        assert job(open_client, j["id"])["attempts"] == 1


def test_a_task_for_an_unknown_job_is_acknowledged(open_client: FlaskClient) -> None:
    ghost = str(uuid.uuid4())
    resp = deliver(open_client, ghost)
    assert resp.status_code == 200
    assert resp.get_json()["jobs"] == {ghost: "UNKNOWN"}


@pytest.mark.parametrize("body", ["{}", '{"job_id": "nope"}', "[]", '{"job_ids": []}', "garbage"])
def test_a_malformed_callback_is_400(open_client: FlaskClient, body: str) -> None:
    resp = open_client.post("/handlers/run", data=body, content_type="application/json")
    assert resp.status_code == 400


def test_a_job_type_no_longer_registered_fails_for_good(open_client: FlaskClient, db: Engine) -> None:
    j = create(open_client, {"type": "echo"})
    with db.begin() as conn:
        conn.execute(sa.text("UPDATE jobs SET type = 'retired' WHERE id = :i"), {"i": j["id"]})
    assert deliver(open_client, j["id"]).status_code == 200
    assert job(open_client, j["id"])["error"]["code"] == "UNKNOWN_TYPE"


def test_an_unsigned_callback_is_401(client: FlaskClient) -> None:
    j = create(client, {"type": "echo"})
    resp = deliver(client, j["id"])
    assert resp.status_code == 401
    assert resp.content_type == "application/problem+json"
    assert job(client, j["id"])["state"] == "QUEUED"
    resp = deliver(client, j["id"], Authorization="Bearer not-a-jwt")
    assert resp.status_code == 401
    assert "not-a-jwt" not in resp.get_data(as_text=True)


def test_a_run_is_two_round_trips_claim_and_finish(proxied_app: Any, db: Engine) -> None:
    from bench.pgwire import counting

    app, proxy = proxied_app
    client = app.test_client()
    job_id = create(client, {"type": "echo", "payload": {"x": 1}})["id"]
    with counting(proxy) as c:
        resp = deliver(client, job_id)
    assert resp.status_code == 200 and resp.get_json()["jobs"] == {job_id: "COMPLETED"}
    # the claim and the finish (with its attempt row) each commit on their own; the
    # connection, last used by the create, switches to generic plans for them with two SETs sent
    # in the claim's own write (api/store/pgfast.py)
    assert (c.round_trips, dict(c.kinds)) == (2, {"with": 2, "set": 2}), c.kinds
    assert [a["outcome"] for a in attempts(client, job_id)] == ["COMPLETED"]

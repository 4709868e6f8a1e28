"""Shared tasks (queues.yaml's jobs_per_task): a batch's jobs grouped into few Cloud Tasks, each
job keeping the semantics of a job with a task of its own — attempts, retries, cancel, retry,
duplicates, the sweeper."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from google.cloud import tasks_v2
from sqlalchemy.engine import Engine

from api.cloud.tasks import queue_path


@pytest.fixture
def client(make_app: Callable[..., Flask]) -> FlaskClient:
    return make_app(handler_auth="none").test_client()


def batch(client: FlaskClient, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    resp = client.post("/v1/jobs:batchCreate", data=json.dumps({"jobs": jobs}), content_type="application/json")
    assert resp.status_code == 202, resp.get_json()
    return list(resp.get_json()["jobs"])


def tasks_of(client: FlaskClient, tasks: tasks_v2.CloudTasksClient, queue: str = "shared") -> dict[str, list[str]]:
    """The queue's tasks: name → the job ids its body names."""
    config = client.application.extensions["cloudjobs"].config
    out = {}
    for t in tasks.list_tasks(request={"parent": queue_path(config, queue), "response_view": tasks_v2.Task.View.FULL}):
        body = json.loads(t.http_request.body)
        out[t.name] = body.get("job_ids") or [body["job_id"]]
    return out


def deliver(client: FlaskClient, ids: list[str], retry_count: int = 0) -> Any:
    return client.post("/handlers/run", data=json.dumps({"job_ids": ids}), content_type="application/json",
                       headers={"X-CloudTasks-TaskRetryCount": str(retry_count)})


def task_names(db: Engine, ids: list[str]) -> dict[str, str]:
    with db.connect() as conn:
        rows = conn.execute(sa.text("SELECT id::text, task_name FROM jobs WHERE id = ANY(CAST(:i AS uuid[]))"), {"i": ids})
        return dict(rows.all())


def test_a_batch_creates_its_shared_tasks_in_one_call(client: FlaskClient, tasks_client: Any, emulator: Any) -> None:
    # 250 jobs in tasks of 20 are 13 tasks: one BatchCreateTasks, not one call per 100 jobs
    counts = emulator.state.operation_counts
    before = dict(counts)
    jobs = batch(client, [{"type": "echo", "queue": "shared", "payload": {"i": i}} for i in range(250)])
    assert len(tasks_of(client, tasks_client)) == 13 and len(jobs) == 250
    assert counts["BatchCreateTasks"] - before.get("BatchCreateTasks", 0) == 1
    assert counts["CreateTask"] == before.get("CreateTask", 0)


def test_a_batch_shares_tasks_of_up_to_jobs_per_task(client: FlaskClient, tasks_client: Any, db: Engine) -> None:
    jobs = batch(client, [{"type": "echo", "queue": "shared", "payload": {"i": i}} for i in range(45)])
    tasks = tasks_of(client, tasks_client)
    assert sorted(len(v) for v in tasks.values()) == [5, 20, 20]
    assert sorted(i for v in tasks.values() for i in v) == sorted(j["id"] for j in jobs)
    names = task_names(db, [j["id"] for j in jobs])
    assert all(names[i] == name for name, ids in tasks.items() for i in ids)  # each job knows its task
    assert all("/tasks/jobs-" in n for n in names.values())


def test_what_may_not_share_a_task_does_not(client: FlaskClient, tasks_client: Any, db: Engine) -> None:
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    [parent] = batch(client, [{"type": "echo", "queue": "shared"}])
    jobs = batch(client, [
        {"type": "echo", "queue": "shared"}, {"type": "echo", "queue": "shared"},
        {"type": "echo", "queue": "shared", "run_at": later}, {"type": "echo", "queue": "shared", "run_at": later},
        {"type": "echo", "queue": "shared", "depends_on": [parent["id"]]},
        {"type": "alone", "queue": "shared"}, {"type": "alone", "queue": "shared"},
        {"type": "echo", "queue": "default"}, {"type": "echo", "queue": "default"},
    ])
    sizes = sorted(len(v) for v in tasks_of(client, tasks_client).values())
    # the parent alone; the two now; the two later; each `alone` on its own; the dependent waits
    assert sizes == [1, 1, 1, 2, 2]
    assert len(tasks_of(client, tasks_client, "default")) == 2  # jobs_per_task 1: a task each
    assert jobs[4]["state"] == "WAITING"


def test_a_shared_task_runs_each_job_once_with_an_attempt_each(client: FlaskClient, db: Engine) -> None:
    ids = [j["id"] for j in batch(client, [{"type": "echo", "queue": "shared", "payload": {"i": i}} for i in range(5)])]
    resp = deliver(client, ids)
    assert resp.status_code == 200 and set(resp.get_json()["jobs"].values()) == {"COMPLETED"}
    for i in ids:
        job = client.get(f"/v1/jobs/{i}").get_json()
        assert job["state"] == "COMPLETED" and job["attempts"] == 1
        assert [a["outcome"] for a in client.get(f"/v1/jobs/{i}/attempts").get_json()["attempts"]] == ["COMPLETED"]
    again = deliver(client, ids)  # a duplicate of the whole task
    assert again.status_code == 200 and set(again.get_json()["jobs"].values()) == {"COMPLETED"}
    assert {client.get(f"/v1/jobs/{i}").get_json()["attempts"] for i in ids} == {1}


def test_one_job_asking_for_a_retry_never_runs_its_finished_neighbours_again(client: FlaskClient) -> None:
    flaky, echo = batch(client, [{"type": "flaky", "queue": "shared", "payload": {"failures": 1}},
                                 {"type": "echo", "queue": "shared"}])
    first = deliver(client, [flaky["id"], echo["id"]])
    assert first.status_code == 500 and first.get_json()["jobs"] == [flaky["id"]]  # the queue retries the task
    assert client.get(f"/v1/jobs/{echo['id']}").get_json()["state"] == "COMPLETED"
    second = deliver(client, [flaky["id"], echo["id"]], retry_count=1)
    assert second.status_code == 200
    assert client.get(f"/v1/jobs/{flaky['id']}").get_json()["attempts"] == 2
    assert client.get(f"/v1/jobs/{echo['id']}").get_json()["attempts"] == 1


def test_each_job_spends_its_own_attempts_and_fails_on_its_own(client: FlaskClient) -> None:
    bad, good = batch(client, [{"type": "flaky", "queue": "shared", "payload": {"failures": 9}},
                               {"type": "echo", "queue": "shared"}])
    for n in range(3):  # the queue's max_attempts
        resp = deliver(client, [bad["id"], good["id"]], retry_count=n)
    assert resp.status_code == 200  # the last attempt failed for good: nothing left to retry
    failed = client.get(f"/v1/jobs/{bad['id']}").get_json()
    assert (failed["state"], failed["attempts"]) == ("FAILED", 3)
    assert client.get(f"/v1/jobs/{good['id']}").get_json()["attempts"] == 1


def test_cancel_leaves_the_shared_task_to_the_others_and_retry_gives_a_task_of_its_own(
        client: FlaskClient, tasks_client: Any, db: Engine) -> None:
    a, b, c = batch(client, [{"type": "echo", "queue": "shared"} for _ in range(3)])
    [(shared, _)] = tasks_of(client, tasks_client).items()
    assert client.post(f"/v1/jobs/{b['id']}:cancel").get_json()["state"] == "CANCELLED"
    assert shared in tasks_of(client, tasks_client)  # not deleted: it carries a and c
    resp = deliver(client, [a["id"], b["id"], c["id"]])
    assert resp.get_json()["jobs"] == {a["id"]: "COMPLETED", b["id"]: "CANCELLED", c["id"]: "COMPLETED"}
    retried = client.post(f"/v1/jobs/{b['id']}:retry").get_json()
    own = task_names(db, [b["id"]])[b["id"]]
    assert own.endswith(f"/tasks/job-{b['id'].replace('-', '')}-1") and retried["run"] == 1
    assert tasks_of(client, tasks_client)[own] == [b["id"]]


def test_a_shared_delivery_holds_each_lease_for_all_of_its_jobs(client: FlaskClient, db: Engine) -> None:
    from api.store import jobs as store
    from api.store.engine import autocommit

    ids = [j["id"] for j in batch(client, [{"type": "echo", "queue": "shared"} for _ in range(4)])]
    engine = client.application.extensions["cloudjobs"].engine
    with autocommit(engine) as conn:
        claimed = store.claim_jobs(conn, [__import__("uuid").UUID(i) for i in ids], lease_margin_s=30, holder="t")
    with db.connect() as conn:
        leases = conn.execute(sa.text("SELECT extract(epoch FROM lease_expires_time - attempt_started_time) "
                                      "FROM jobs WHERE id = ANY(CAST(:i AS uuid[]))"), {"i": ids}).scalars().all()
    assert len(claimed) == 4 and {round(x) for x in leases} == {4 * 10 + 30}  # four 10 s timeouts, one after another


def test_the_sweeper_sends_jobs_of_a_shared_task_that_was_never_created_each_in_its_own(
        client: FlaskClient, tasks_client: Any, db: Engine) -> None:
    from api.orchestration.sweep import sweep

    jobs = batch(client, [{"type": "echo", "queue": "shared"} for _ in range(3)])
    [(shared, _)] = tasks_of(client, tasks_client).items()
    tasks_client.delete_task(name=shared)
    with db.begin() as conn:  # as if CreateTask had failed: CREATED, for a while
        conn.execute(sa.text("UPDATE jobs SET state = 'CREATED', updated_time = now() - interval '1 hour'"))
    state = client.application.extensions["cloudjobs"]
    assert sweep(state).enqueued == 3
    tasks = tasks_of(client, tasks_client)
    assert sorted(tasks.values()) == sorted([j["id"]] for j in jobs)
    assert all(f"/tasks/job-{i[0].replace('-', '')}-0" in name for name, i in tasks.items())



def create(client: FlaskClient, body: dict[str, Any], **headers: str) -> dict[str, Any]:
    resp = client.post("/v1/jobs", data=json.dumps(body), content_type="application/json", headers=headers)
    assert resp.status_code in (200, 202), resp.get_json()
    return dict(resp.get_json())


def test_single_creates_arriving_together_share_a_task(make_app: Callable[..., Flask], tasks_client: Any,
                                                       db: Engine) -> None:
    import threading

    app = make_app(handler_auth="none", create_coalesce_ms=50.0)  # a wide window: threads start unevenly
    barrier, made = threading.Barrier(8), []

    def one(i: int) -> None:
        c = app.test_client()
        barrier.wait()
        made.append(create(c, {"type": "echo", "queue": "shared", "payload": {"i": i}}))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    client = app.test_client()
    tasks = tasks_of(client, tasks_client)
    ids = sorted(j["id"] for j in made)
    assert sorted(i for v in tasks.values() for i in v) == ids  # each job in exactly one task
    assert len(tasks) < 8 and {j["state"] for j in made} == {"QUEUED"}
    names = task_names(db, ids)
    assert all(names[i] == name for name, members in tasks.items() for i in members)
    resp = deliver(client, max(tasks.values(), key=len))
    assert resp.status_code == 200 and set(resp.get_json()["jobs"].values()) == {"COMPLETED"}


def test_a_create_alone_still_gets_its_task_and_a_replay_no_second(make_app: Callable[..., Flask],
                                                                   tasks_client: Any) -> None:
    client = make_app(handler_auth="none").test_client()
    job = create(client, {"type": "echo", "queue": "shared"}, **{"Idempotency-Key": "k1"})
    again = create(client, {"type": "echo", "queue": "shared"}, **{"Idempotency-Key": "k1"})
    assert again["id"] == job["id"]
    assert list(tasks_of(client, tasks_client).values()) == [[job["id"]]]


def test_coalescing_off_gives_each_create_its_own_task(make_app: Callable[..., Flask], tasks_client: Any,
                                                       db: Engine) -> None:
    client = make_app(handler_auth="none", create_coalesce_ms=0.0).test_client()
    jobs = [create(client, {"type": "echo", "queue": "shared"}) for _ in range(3)]
    names = task_names(db, [j["id"] for j in jobs])
    assert all(f"/tasks/job-{i.replace('-', '')}-0" in n for i, n in names.items())
    assert len(tasks_of(client, tasks_client)) == 3

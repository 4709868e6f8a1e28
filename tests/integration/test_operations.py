"""Bulk cancel and retry as long-running operations (docs/operations.md).

The operation's continuation is a Cloud Task to /handlers/operation; the test queues are
paused, so the tests deliver it as Cloud Tasks would, and read the operation as a client does."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.engine import Engine

from api.orchestration import operations
from api.orchestration.sweep import sweep
from api.web.auth import create_key


@pytest.fixture
def client(make_app: Callable[..., Flask]) -> FlaskClient:
    return make_app(handler_auth="none").test_client()


def failed_jobs(db: Engine, n: int, *, code: str = "HTTP_503", owner: str | None = None, type: str = "echo") -> None:
    """n FAILED jobs, as an overnight outage leaves them (inserted in one statement)."""
    with db.begin() as conn:
        conn.execute(sa.text(
            """
            INSERT INTO jobs (id, type, queue, state, payload, max_attempts, timeout_s, task_name, attempts, owner,
                              error, done_time, created_time)
            SELECT gen_random_uuid(), :type, 'default', 'FAILED', '{}'::jsonb, 3, 30,
                   'projects/local-project/locations/us-central1/queues/default/tasks/x' || g, 3, :owner,
                   jsonb_build_object('code', CAST(:code AS text), 'message', 'downstream down'), now(),
                   now() - make_interval(secs => g / 1000.0)
            FROM generate_series(1, :n) g
            """), {"n": n, "code": code, "owner": owner, "type": type})


def post(client: FlaskClient, path: str, body: dict[str, Any], status: int = 200, **headers: str) -> dict[str, Any]:
    resp = client.post(path, data=json.dumps(body), content_type="application/json", headers=headers)
    assert resp.status_code == status, resp.get_json()
    return dict(resp.get_json())


def run_to_done(client: FlaskClient, op: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """Deliver the operation's continuation until it is done, as Cloud Tasks would; the
    operation as GET /v1/operations/{id} says, and how many deliveries it took."""
    op_id = op["name"].split("/")[1]
    deliveries = 0
    while not op["done"]:
        resp = client.post("/handlers/operation", data=json.dumps({"operation_id": op_id}),
                           content_type="application/json")
        assert resp.status_code == 200
        deliveries += 1
        op = client.get(f"/v1/operations/{op_id}").get_json()
        assert deliveries < 500
    return op, deliveries


def states(db: Engine) -> dict[str, int]:
    with db.connect() as conn:
        return dict(conn.execute(sa.text("SELECT state, count(*) FROM jobs GROUP BY state")).all())


def test_a_filtered_batch_retry_of_20000_failed_jobs_runs_in_chunks_to_exact_counts(client: FlaskClient,
                                                                                     db: Engine, tasks_client: Any,
                                                                                     monkeypatch: Any) -> None:
    monkeypatch.setattr(operations, "INLINE_S", 0.0)  # one chunk in the request, the rest by its tasks
    monkeypatch.setattr(operations, "TASK_BUDGET_S", 1.0)  # so that it takes several deliveries
    failed_jobs(db, 20_000, code="HTTP_503")
    failed_jobs(db, 300, code="BAD_INPUT")  # another failure: not this redrive's
    dry = post(client, "/v1/jobs:batchRetry", {"filter": {"state": "FAILED", "error_code": "HTTP_503"},
                                               "validate_only": True})
    assert dry == {"validate_only": True, "matched": 20_000}
    assert states(db) == {"FAILED": 20_300}  # a dry run changes nothing
    started = time.monotonic()
    op = post(client, "/v1/jobs:batchRetry", {"filter": {"state": ["FAILED"], "error_code": ["HTTP_503"]}})
    assert op["name"].startswith("operations/") and not op["done"] and op["metadata"]["matched"] == 500
    op, deliveries = run_to_done(client, op)
    assert op["response"] == {"matched": 20_000, "succeeded": 20_000, "skipped": 0, "failed": 0}
    assert deliveries >= 2  # chunks, not one request
    assert states(db) == {"QUEUED": 20_000, "FAILED": 300}
    with db.connect() as conn:
        runs = conn.execute(sa.text("SELECT min(run), max(run) FROM jobs WHERE state = 'QUEUED'")).one()
    assert tuple(runs) == (1, 1)
    # rerunning it changes nothing: nothing it matches is FAILED any more
    again, _ = run_to_done(client, post(client, "/v1/jobs:batchRetry",
                                        {"filter": {"state": "FAILED", "error_code": "HTTP_503"}}))
    assert again["response"] == {"matched": 0, "succeeded": 0, "skipped": 0, "failed": 0}
    assert states(db) == {"QUEUED": 20_000, "FAILED": 300}
    print(f"20,000 retried in {time.monotonic() - started:.1f} s, {deliveries} deliveries")


def test_cancel_by_filter_cancels_what_matches_and_skips_the_rest(client: FlaskClient, db: Engine) -> None:
    ids = [post(client, "/v1/jobs", {"type": "echo", "labels": {"batch": "nightly"}}, status=202)["id"] for _ in range(5)]
    other = post(client, "/v1/jobs", {"type": "echo", "labels": {"batch": "daily"}}, status=202)
    client.post("/handlers/run", data=json.dumps({"job_id": ids[0]}), content_type="application/json")
    op = post(client, "/v1/jobs:batchCancel", {"filter": {"label": "batch:nightly"}})
    assert op["done"] and op["response"] == {"matched": 5, "succeeded": 4, "skipped": 1, "failed": 0}
    assert [client.get(f"/v1/jobs/{i}").get_json()["state"] for i in ids] == ["COMPLETED"] + ["CANCELLED"] * 4
    assert client.get(f"/v1/jobs/{other['id']}").get_json()["state"] == "QUEUED"


def test_by_ids_and_idempotent_by_key(client: FlaskClient, db: Engine) -> None:
    ids = [post(client, "/v1/jobs", {"type": "echo"}, status=202)["id"] for _ in range(3)]
    first = post(client, "/v1/jobs:batchCancel", {"ids": ids}, **{"Idempotency-Key": "cancel-3"})
    again = post(client, "/v1/jobs:batchCancel", {"ids": ids}, **{"Idempotency-Key": "cancel-3"})
    assert again["name"] == first["name"] and first["response"]["succeeded"] == 3
    post(client, "/v1/jobs:batchCancel", {"ids": ids[:1]}, status=409, **{"Idempotency-Key": "cancel-3"})


def test_a_filter_that_matches_nothing_is_an_operation_with_zero(client: FlaskClient) -> None:
    op = post(client, "/v1/jobs:batchRetry", {"filter": {"type": "no-such-type"}})
    assert op["done"] and op["response"] == {"matched": 0, "succeeded": 0, "skipped": 0, "failed": 0}


def test_a_keys_bulk_action_never_touches_another_principals_jobs(make_app: Callable[..., Flask], db: Engine) -> None:
    app = make_app(api_auth="keys", handler_auth="none")
    with db.begin() as conn:
        alice, bob = create_key(conn, "alice"), create_key(conn, "bob")
        alice_id = conn.execute(sa.text("SELECT id FROM api_keys WHERE name = 'alice'")).scalar_one()
    failed_jobs(db, 10, owner=f"key:{alice_id}")
    failed_jobs(db, 7, owner="key:someone-else")
    client = app.test_client()
    op = post(client, "/v1/jobs:batchRetry", {"filter": {"state": "FAILED"}}, Authorization=f"Bearer {alice}")
    assert op["response"]["succeeded"] == 10
    assert states(db) == {"QUEUED": 10, "FAILED": 7}
    op_id = op["name"].split("/")[1]
    assert client.get(f"/v1/operations/{op_id}", headers={"Authorization": f"Bearer {bob}"}).status_code == 404
    with db.connect() as conn:
        entry = conn.execute(sa.text("SELECT * FROM audit_log")).one()
    assert entry.action == "jobs.batchRetry" and entry.jobs == 10 and entry.principal == f"key:{alice_id}"


def test_the_sweeper_resumes_an_operation_whose_processor_died(client: FlaskClient, db: Engine,
                                                               monkeypatch: Any) -> None:
    monkeypatch.setattr(operations, "INLINE_S", 0.0)
    monkeypatch.setattr(operations, "CHUNK", 10)
    failed_jobs(db, 35)
    op = post(client, "/v1/jobs:batchRetry", {"filter": {"state": "FAILED"}})
    assert not op["done"]
    with db.begin() as conn:  # its continuation was lost with its process
        conn.execute(sa.text("UPDATE operations SET updated_time = now() - interval '5 minutes'"))
    report = sweep(client.application.extensions["cloudjobs"])
    assert report.operations_resumed == 1
    op, _ = run_to_done(client, client.get(f"/v1/{op['name']}").get_json())
    assert op["response"]["succeeded"] == 35 and states(db) == {"QUEUED": 35}


@pytest.mark.parametrize(("body", "field"), [
    ({}, "filter"),
    ({"filter": {}, "ids": []}, "filter"),
    ({"ids": []}, "ids"),
    ({"ids": ["not-a-uuid"]}, "ids"),
    ({"filter": {"colour": "red"}}, "filter.colour"),
    ({"filter": {"state": 3}}, "filter.state"),
    ({"filter": {}, "validate_only": "yes"}, "validate_only"),
    ({"filter": {}, "extra": 1}, "extra"),
])
def test_bad_bulk_requests_are_422_naming_the_field(client: FlaskClient, db: Engine, body: dict[str, Any],
                                                    field: str) -> None:
    resp = client.post("/v1/jobs:batchCancel", data=json.dumps(body), content_type="application/json")
    assert resp.status_code == 422, resp.get_json()
    assert field in [e["field"] for e in resp.get_json()["errors"]]
    with db.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM operations")).scalar_one() == 0


def test_an_unknown_state_in_a_filter_is_400_and_an_unknown_operation_404(client: FlaskClient) -> None:
    resp = client.post("/v1/jobs:batchCancel", data=json.dumps({"filter": {"state": "DONE"}}),
                       content_type="application/json")
    assert resp.status_code == 400
    assert client.get("/v1/operations/00000000-0000-0000-0000-000000000000").status_code == 404
    assert client.get("/v1/operations/nope").status_code == 404

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient
from google.cloud import tasks_v2
from sqlalchemy.engine import Engine

from api.cloud.tasks import queue_path
from tests.integration.test_api import count_jobs


def batch(client: FlaskClient, body: Any, **headers: str) -> Any:
    return client.post("/v1/jobs:batchCreate", data=json.dumps(body), content_type="application/json", headers=headers)


def test_batch_creates_every_job_in_order_and_enqueues_them(
    client: FlaskClient, tasks_client: tasks_v2.CloudTasksClient, db: Engine
) -> None:
    jobs = [{"type": "echo", "payload": {"i": i}} for i in range(250)] + [{"type": "sleep", "payload": {"seconds": 1}}]
    resp = batch(client, {"jobs": jobs})
    assert resp.status_code == 202
    out = resp.get_json()["jobs"]
    assert [j["payload"] for j in out] == [j["payload"] for j in jobs]
    assert {j["state"] for j in out} == {"QUEUED"}
    config = client.application.extensions["cloudjobs"].config
    assert len(list(tasks_client.list_tasks(parent=queue_path(config, "default")))) == 250
    assert len(list(tasks_client.list_tasks(parent=queue_path(config, "slow")))) == 1
    assert count_jobs(db) == 251


def test_one_invalid_job_refuses_the_batch_and_names_its_index(client: FlaskClient, db: Engine) -> None:
    resp = batch(client, {"jobs": [{"type": "echo"}, {"type": "sleep", "payload": {"seconds": "x"}}, {"type": "nope"}]})
    assert resp.status_code == 422
    fields = [e["field"] for e in resp.get_json()["errors"]]
    assert "jobs[1].payload.seconds" in fields and "jobs[2].type" in fields
    assert "jobs[1]" in resp.get_json()["detail"]
    assert count_jobs(db) == 0


@pytest.mark.parametrize("body", [{"jobs": []}, {"jobs": [{"type": "echo"}] * 501}, {"jobs": [1]}, {"jobs": [], "x": 1}])
def test_batch_limits(client: FlaskClient, db: Engine, body: Any) -> None:
    assert batch(client, body).status_code == 422
    assert count_jobs(db) == 0


@pytest.mark.parametrize("body", [[], {"jobs": "many"}, {}])
def test_malformed_batches_are_400(client: FlaskClient, body: Any) -> None:
    assert batch(client, body).status_code == 400


def test_a_batch_replay_with_the_same_key_returns_the_originals(client: FlaskClient, db: Engine) -> None:
    body = {"jobs": [{"type": "echo", "payload": {"i": i}} for i in range(3)]}
    first = batch(client, body, **{"Idempotency-Key": "b1"})
    again = batch(client, body, **{"Idempotency-Key": "b1"})
    assert (first.status_code, again.status_code) == (202, 200)
    assert [j["id"] for j in again.get_json()["jobs"]] == [j["id"] for j in first.get_json()["jobs"]]
    other = batch(client, {"jobs": [{"type": "echo"}]}, **{"Idempotency-Key": "b1"})
    assert other.status_code == 409
    assert count_jobs(db) == 3


def test_batch_insert_is_one_statement(client: FlaskClient, db: Engine) -> None:
    engine = client.application.extensions["cloudjobs"].engine
    inserts: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda *a: inserts.append(a[2]) if a[2].lstrip().upper().startswith("INSERT") else None)
    batch(client, {"jobs": [{"type": "echo"} for _ in range(100)]})
    assert len(inserts) == 1


def test_a_batched_job_is_stored_and_shown_as_a_single_create_would(client: FlaskClient, db: Engine) -> None:
    later = (datetime.now(UTC) + timedelta(days=1)).isoformat(timespec="microseconds").replace("+00:00", "Z")
    spec = {"type": "echo", "payload": {"b": [1, "x", None], "a": {"é": "\u00a0"}}, "labels": {"team": "a b"},
            "max_attempts": 2, "timeout_s": 30}
    alone = client.post("/v1/jobs", data=json.dumps({**spec, "run_at": later}), content_type="application/json",
                        headers={"Idempotency-Key": "one"}).get_json()
    batched = batch(client, {"jobs": [spec, {**spec, "run_at": later}]}, **{"Idempotency-Key": "two"})
    batched = batched.get_json()["jobs"]
    moving = {"id", "created_time", "scheduled_time", "updated_time"}
    same = {k: v for k, v in alone.items() if k not in moving}
    assert {k: v for k, v in batched[1].items() if k not in moving} == same
    assert batched[1]["scheduled_time"] == alone["scheduled_time"] == later
    assert batched[0]["scheduled_time"] == batched[0]["created_time"]  # no run_at: due now
    with db.connect() as conn:
        cols = ("type, queue, state, payload, labels, max_attempts, timeout_s, attempts, run, attempts_base, owner, "
                "request_hash IS NOT NULL AS hashed, idempotency_key, "
                "task_name LIKE '%' || replace(id::text, '-', '') || '%'")
        one = conn.execute(sa.text(f"SELECT {cols} FROM jobs WHERE id = :i"), {"i": alone["id"]}).one()
        two = conn.execute(sa.text(f"SELECT {cols} FROM jobs WHERE id = :i"), {"i": batched[1]["id"]}).one()
    assert one[:-2] == two[:-2] and (one[-2], two[-2]) == ("one", "two:1") and one[-1] and two[-1]
    for job in batched:  # and the API reads back what the batch answered
        assert client.get(f"/v1/jobs/{job['id']}").get_json() == job


def test_concurrent_replays_of_a_batch_create_it_once(client: FlaskClient, db: Engine) -> None:
    """Issue #21 finding 7: 8 replays at once under one key gave 409s and 500s (unique violations)."""
    import threading
    from collections import Counter

    app = client.application
    outcomes: Counter[int] = Counter()
    for round_no in range(10):
        body = {"jobs": [{"type": "echo", "payload": {"round": round_no, "i": i}} for i in range(5)]}
        start = threading.Barrier(8)
        answers: list[tuple[int, list[str]]] = []

        def replay(body: dict[str, Any] = body, start: threading.Barrier = start,
                   answers: list[tuple[int, list[str]]] = answers, key: str = f"batch-{round_no}") -> None:
            own = app.test_client()
            start.wait()
            resp = batch(own, body, **{"Idempotency-Key": key})
            answers.append((resp.status_code, [j["id"] for j in (resp.get_json() or {}).get("jobs", [])]))

        threads = [threading.Thread(target=replay) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        codes = Counter(code for code, _ in answers)
        outcomes.update(codes)
        assert codes == Counter({202: 1, 200: 7}), (round_no, answers)
        assert len({tuple(ids) for _, ids in answers}) == 1  # every replay answers the same jobs
    assert count_jobs(db) == 50 and outcomes == Counter({202: 10, 200: 70})


def test_a_batch_whose_keys_are_partly_taken_inserts_nothing(client: FlaskClient, db: Engine) -> None:
    first = batch(client, {"jobs": [{"type": "echo"}, {"type": "echo"}]}, **{"Idempotency-Key": "k"})
    assert first.status_code == 202
    longer = batch(client, {"jobs": [{"type": "echo"}, {"type": "echo"}, {"type": "echo"}]}, **{"Idempotency-Key": "k"})
    assert longer.status_code == 409
    assert count_jobs(db) == 2
    assert batch(client, {"jobs": [{"type": "echo"}, {"type": "echo"}]}, **{"Idempotency-Key": "k"}).status_code == 200

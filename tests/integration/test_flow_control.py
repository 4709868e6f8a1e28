"""Flow control: unique keys, concurrency keys with priority, throttles (docs/flow-control.md).

Against real PostgreSQL and the emulator's queues (paused: the tests deliver by hand)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.engine import Engine

from api.orchestration.sweep import sweep
from api.web.auth import create_key


@pytest.fixture
def client(make_app: Callable[..., Flask]) -> FlaskClient:
    return make_app(handler_auth="none").test_client()


def create(client: FlaskClient, body: dict[str, Any], status: int = 202, **headers: str) -> dict[str, Any]:
    resp = client.post("/v1/jobs", data=json.dumps(body), content_type="application/json", headers=headers)
    assert resp.status_code == status, resp.get_json()
    return dict(resp.get_json())


def deliver(client: FlaskClient, job_id: str, retry_count: int = 0) -> Any:
    return client.post("/handlers/run", data=json.dumps({"job_id": job_id}), content_type="application/json",
                       headers={"X-CloudTasks-TaskRetryCount": str(retry_count)})


def get(client: FlaskClient, job_id: str) -> dict[str, Any]:
    return dict(client.get(f"/v1/jobs/{job_id}").get_json())


def count_jobs(db: Engine, where: str = "true") -> int:
    with db.connect() as conn:
        return int(conn.execute(sa.text(f"SELECT count(*) FROM jobs WHERE {where}")).scalar_one())


# --- unique keys ---------------------------------------------------------------------------

def test_a_second_create_with_the_key_returns_the_first_job_with_200(client: FlaskClient, db: Engine) -> None:
    first = create(client, {"type": "echo", "payload": {"n": 1}, "unique_key": "report-42"})
    again = create(client, {"type": "echo", "payload": {"n": 2}, "unique_key": "report-42"}, status=200)
    assert again["id"] == first["id"] and again["payload"] == {"n": 1} and again["unique_key"] == "report-42"
    assert count_jobs(db) == 1


def test_the_key_is_free_again_once_its_job_ends(client: FlaskClient) -> None:
    first = create(client, {"type": "echo", "unique_key": "k"})
    assert deliver(client, first["id"]).status_code == 200
    second = create(client, {"type": "echo", "unique_key": "k"})
    assert second["id"] != first["id"]


def test_unique_for_holds_the_key_after_the_job_ended(client: FlaskClient, db: Engine) -> None:
    first = create(client, {"type": "echo", "unique_key": "w", "unique_for_s": 3600})
    deliver(client, first["id"])
    assert get(client, first["id"])["state"] == "COMPLETED"
    assert create(client, {"type": "echo", "unique_key": "w", "unique_for_s": 3600}, status=200)["id"] == first["id"]
    # the window ran out (moved back an hour): the next create lets the key go and takes it
    with db.begin() as conn:
        conn.execute(sa.text("UPDATE jobs SET started_time = started_time - interval '2 hours', "
                             "created_time = created_time - interval '2 hours'"))
    assert create(client, {"type": "echo", "unique_key": "w", "unique_for_s": 3600})["id"] != first["id"]


def test_keys_belong_to_their_caller(make_app: Callable[..., Flask], db: Engine) -> None:
    app = make_app(api_auth="keys", handler_auth="none")
    with db.begin() as conn:
        keys = [create_key(conn, name) for name in ("alice", "bob")]
    client = app.test_client()
    ids = [create(client, {"type": "echo", "unique_key": "same"}, Authorization=f"Bearer {k}")["id"] for k in keys]
    assert ids[0] != ids[1]


def test_concurrent_creates_with_one_key_make_exactly_one_job(make_app: Callable[..., Flask], db: Engine) -> None:
    app = make_app(handler_auth="none")
    answers: list[tuple[int, str]] = []
    barrier = threading.Barrier(16)

    def one(i: int) -> None:
        client = app.test_client()
        barrier.wait()
        resp = client.post("/v1/jobs", data=json.dumps({"type": "echo", "payload": {"i": i}, "unique_key": "race"}),
                           content_type="application/json")
        answers.append((resp.status_code, resp.get_json()["id"]))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert count_jobs(db) == 1
    assert sorted(s for s, _ in answers) == [200] * 15 + [202]
    assert len({i for _, i in answers}) == 1


def test_replace_cancels_a_holder_that_has_not_started_and_the_latest_payload_wins(client: FlaskClient) -> None:
    first = create(client, {"type": "echo", "payload": {"v": 1}, "unique_key": "debounce", "unique_mode": "replace"})
    second = create(client, {"type": "echo", "payload": {"v": 2}, "unique_key": "debounce", "unique_mode": "replace"})
    assert second["id"] != first["id"] and second["payload"] == {"v": 2}
    old = get(client, first["id"])
    assert old["state"] == "CANCELLED" and old["error"]["code"] == "REPLACED" and second["id"] in old["error"]["message"]
    assert deliver(client, first["id"]).get_json()["jobs"][first["id"]] == "CANCELLED"  # its task finds it so


def test_replace_returns_a_holder_that_already_started(client: FlaskClient, db: Engine) -> None:
    first = create(client, {"type": "echo", "unique_key": "r", "unique_mode": "replace"})
    with db.begin() as conn:  # as if its attempt had begun
        conn.execute(sa.text("UPDATE jobs SET state = 'RUNNING', started_time = now(), attempts = 1, "
                             "lease_expires_time = now() + interval '1 minute'"))
    again = create(client, {"type": "echo", "unique_key": "r", "unique_mode": "replace"}, status=200)
    assert again["id"] == first["id"]


def test_a_batch_answers_a_taken_key_with_its_holder(client: FlaskClient, db: Engine) -> None:
    first = create(client, {"type": "echo", "unique_key": "a"})
    resp = client.post("/v1/jobs:batchCreate", content_type="application/json", data=json.dumps({"jobs": [
        {"type": "echo", "unique_key": "a"}, {"type": "echo", "unique_key": "b"}, {"type": "echo", "unique_key": "b"},
        {"type": "echo"},
    ]}))
    assert resp.status_code == 202
    jobs = resp.get_json()["jobs"]
    assert jobs[0]["id"] == first["id"] and jobs[1]["id"] == jobs[2]["id"] and len({j["id"] for j in jobs}) == 3
    assert count_jobs(db) == 3


def test_retry_of_a_job_whose_key_another_took_is_409(client: FlaskClient) -> None:
    first = create(client, {"type": "echo", "unique_key": "x"})
    client.post(f"/v1/jobs/{first['id']}:cancel")
    second = create(client, {"type": "echo", "unique_key": "x"})
    resp = client.post(f"/v1/jobs/{first['id']}:retry")
    assert resp.status_code == 409 and resp.get_json()["type"].endswith("unique-key-taken")
    assert get(client, first["id"])["state"] == "CANCELLED" and get(client, second["id"])["state"] == "QUEUED"


# --- concurrency keys -----------------------------------------------------------------------

def states(client: FlaskClient, ids: list[str]) -> list[str]:
    return [get(client, i)["state"] for i in ids]


def test_jobs_over_the_keys_limit_wait_and_are_admitted_as_slots_free(client: FlaskClient) -> None:
    ids = [create(client, {"type": "echo", "queue": "keyed", "concurrency_key": "acme", "payload": {"i": i}})["id"]
           for i in range(4)]
    assert states(client, ids) == ["QUEUED", "QUEUED", "WAITING", "WAITING"]
    job = get(client, ids[2])
    assert job["concurrency_key"] == "acme" and job["concurrency_limit"] == 2 and job["waiting_reason"] == "concurrency"
    deliver(client, ids[0])
    assert states(client, ids) == ["COMPLETED", "QUEUED", "QUEUED", "WAITING"]
    assert get(client, ids[2])["slot_wait_s"] >= 0


def test_a_delivery_of_a_waiting_job_does_not_run_it_or_spend_an_attempt(client: FlaskClient) -> None:
    ids = [create(client, {"type": "echo", "queue": "keyed", "concurrency_key": "k"})["id"] for _ in range(3)]
    resp = deliver(client, ids[2])  # a stray task: its job waits for its slot
    assert resp.status_code == 200 and resp.get_json()["jobs"][ids[2]] == "WAITING"
    assert get(client, ids[2])["attempts"] == 0


def test_priority_then_age_orders_the_line(client: FlaskClient) -> None:
    def make(priority: int) -> str:
        return create(client, {"type": "echo", "queue": "keyed", "concurrency_key": "p", "priority": priority})["id"]

    running = [make(0), make(0)]
    low, high, mid, high2 = make(-5), make(10), make(3), make(10)
    deliver(client, running[0])
    assert states(client, [high, high2, mid, low]) == ["QUEUED", "WAITING", "WAITING", "WAITING"]
    deliver(client, running[1])
    deliver(client, high)
    assert states(client, [high2, mid, low]) == ["QUEUED", "QUEUED", "WAITING"]


def test_a_busy_key_does_not_hold_back_another_key(client: FlaskClient) -> None:
    for _ in range(5):
        create(client, {"type": "echo", "queue": "keyed", "concurrency_key": "busy"})
    other = create(client, {"type": "echo", "queue": "keyed", "concurrency_key": "quiet"})
    assert other["state"] == "QUEUED"


def test_limits_come_from_the_override_the_type_and_the_queue(client: FlaskClient) -> None:
    big = [create(client, {"type": "echo", "queue": "keyed", "concurrency_key": "big"}) for _ in range(6)]
    assert [j["state"] for j in big].count("QUEUED") == 5 and big[0]["concurrency_limit"] == 5
    typed = [create(client, {"type": "one_at_a_time", "queue": "keyed", "concurrency_key": "t"}) for _ in range(2)]
    assert [j["state"] for j in typed] == ["QUEUED", "WAITING"] and typed[0]["concurrency_limit"] == 1


def test_cancel_and_failure_free_the_slot_and_retry_waits_in_line(client: FlaskClient) -> None:
    ids = [create(client, {"type": "echo", "queue": "keyed", "concurrency_key": "c"})["id"] for _ in range(4)]
    client.post(f"/v1/jobs/{ids[0]}:cancel")
    assert states(client, ids) == ["CANCELLED", "QUEUED", "QUEUED", "WAITING"]
    retried = client.post(f"/v1/jobs/{ids[0]}:retry").get_json()
    assert retried["state"] == "WAITING"  # in its key's line again, not past it
    client.post(f"/v1/jobs/{ids[1]}:cancel")
    # the line goes by priority, then creation: the retried job was created first
    assert states(client, ids) == ["QUEUED", "CANCELLED", "QUEUED", "WAITING"]


def test_a_dependent_with_a_key_waits_for_its_parent_then_for_its_key(client: FlaskClient) -> None:
    parent = create(client, {"type": "echo"})
    holders = [create(client, {"type": "echo", "queue": "keyed", "concurrency_key": "d"})["id"] for _ in range(2)]
    child = create(client, {"type": "echo", "queue": "keyed", "concurrency_key": "d", "depends_on": [parent["id"]]})
    assert child["state"] == "WAITING" and child["waiting_reason"] == "dependencies"
    deliver(client, parent["id"])
    assert get(client, child["id"])["waiting_reason"] == "concurrency"
    deliver(client, holders[0])
    assert get(client, child["id"])["state"] == "QUEUED"


def test_the_sweeper_admits_a_job_left_waiting_with_its_key_free(client: FlaskClient, db: Engine) -> None:
    ids = [create(client, {"type": "echo", "queue": "keyed", "concurrency_key": "s"})["id"] for _ in range(3)]
    with db.begin() as conn:  # the first job ended, but the process died before admitting the next
        conn.execute(sa.text("UPDATE jobs SET state = 'COMPLETED', done_time = now() WHERE id = :i"), {"i": ids[0]})
        conn.execute(sa.text("UPDATE jobs SET updated_time = now() - interval '1 minute' WHERE id = :i"), {"i": ids[2]})
    sweep(client.application.extensions["cloudjobs"])
    assert get(client, ids[2])["state"] == "QUEUED"


def test_a_slot_held_by_a_dead_attempt_is_freed_when_its_lease_runs_out(client: FlaskClient, db: Engine,
                                                                       tasks_client: Any) -> None:
    ids = [create(client, {"type": "echo", "queue": "keyed", "concurrency_key": "dead", "max_attempts": 1})["id"]
           for _ in range(3)]
    # the first job's worker died mid-attempt: RUNNING, its lease out, its task given up on
    with db.begin() as conn:
        task = conn.execute(sa.text("UPDATE jobs SET state = 'RUNNING', attempts = 1, started_time = now(), "
                                    "attempt_started_time = now(), lease_expires_time = now() - interval '1 second' "
                                    "WHERE id = :i RETURNING task_name"), {"i": ids[0]}).scalar_one()
    tasks_client.delete_task(name=task)
    assert states(client, ids) == ["RUNNING", "QUEUED", "WAITING"]  # the dead attempt still holds its slot
    sweep(client.application.extensions["cloudjobs"])
    assert states(client, ids) == ["FAILED", "QUEUED", "QUEUED"]


# --- throttles ---------------------------------------------------------------------------------

def test_a_throttle_spaces_a_keys_jobs_at_its_rate(client: FlaskClient) -> None:
    # 10/m: one every 6 s, whatever arrives at once; over a minute, at most 10 (+0%)
    jobs = [create(client, {"type": "echo", "queue": "throttled", "concurrency_key": "api"}) for _ in range(25)]
    times = [datetime.fromisoformat(get(client, j["id"])["scheduled_time"]) for j in jobs]
    assert all(j["state"] == "QUEUED" for j in [get(client, j["id"]) for j in jobs])
    gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:], strict=False)]
    assert all(abs(g - 6.0) < 0.01 for g in gaps), gaps
    for start in times:
        in_minute = [t for t in times if 0 <= (t - start).total_seconds() < 60]
        assert len(in_minute) <= 10
    assert get(client, jobs[-1]["id"])["slot_wait_s"] == pytest.approx(144, abs=1)


def test_a_throttle_key_of_its_own_and_an_override(client: FlaskClient) -> None:
    # One after another: never closer than the override's 20/s (a slow machine may space the
    # creates themselves further apart, and then the later one goes at once).
    a = [create(client, {"type": "echo", "queue": "throttled", "throttle_key": "fast"}) for _ in range(3)]
    times = [datetime.fromisoformat(get(client, j["id"])["scheduled_time"]) for j in a]
    assert all(round((b - t).total_seconds(), 3) >= 0.05 for t, b in zip(times, times[1:], strict=False)), times
    # Created together (one batch, one clock reading): exactly 1/20 s apart.
    resp = client.post("/v1/jobs:batchCreate", content_type="application/json", data=json.dumps({"jobs": [
        {"type": "echo", "queue": "throttled", "throttle_key": "fast"} for _ in range(3)]}))
    assert resp.status_code == 202, resp.get_json()
    times = [datetime.fromisoformat(j["scheduled_time"]) for j in resp.get_json()["jobs"]]
    assert [round((b - t).total_seconds(), 3) for t, b in zip(times, times[1:], strict=False)] == [0.05, 0.05]


def test_a_batch_of_keyed_jobs_is_admitted_and_paced_in_order(client: FlaskClient) -> None:
    resp = client.post("/v1/jobs:batchCreate", content_type="application/json", data=json.dumps({"jobs": [
        {"type": "echo", "queue": "keyed", "concurrency_key": "paced"} for _ in range(3)]}))
    jobs = resp.get_json()["jobs"]
    assert [j["state"] for j in jobs] == ["QUEUED", "QUEUED", "WAITING"]
    t0, t1 = (datetime.fromisoformat(j["scheduled_time"]) for j in jobs[:2])
    assert (t1 - t0).total_seconds() == pytest.approx(1.0, abs=0.01)  # 60/m


# --- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "field"), [
    ({"type": "echo", "unique_key": "x" * 256}, "unique_key"),
    ({"type": "echo", "concurrency_key": ""}, "concurrency_key"),
    ({"type": "echo", "concurrency_key": "a\nb"}, "concurrency_key"),
    ({"type": "echo", "unique_for_s": 60}, "unique_for_s"),
    ({"type": "echo", "unique_key": "k", "unique_for_s": -5}, "unique_for_s"),
    ({"type": "echo", "unique_mode": "replace"}, "unique_mode"),
    ({"type": "echo", "unique_key": "k", "unique_mode": "merge"}, "unique_mode"),
    ({"type": "echo", "priority": 1001}, "priority"),
    ({"type": "echo", "priority": "1"}, "priority"),
    ({"type": "echo", "concurrency_key": "k"}, "concurrency_key"),  # the default queue limits no key
    ({"type": "echo", "throttle_key": "k"}, "throttle_key"),
])
def test_bad_flow_options_are_422_naming_the_field_and_store_nothing(client: FlaskClient, db: Engine,
                                                                     body: dict[str, Any], field: str) -> None:
    resp = client.post("/v1/jobs", data=json.dumps(body), content_type="application/json")
    assert resp.status_code == 422, resp.get_json()
    assert field in [e["field"] for e in resp.get_json()["errors"]]
    assert count_jobs(db) == 0


def test_a_negative_limit_in_queues_yaml_is_refused() -> None:
    from api.cloud.queues import Queues, QueuesInvalid

    for bad in ({"concurrency_per_key": -1}, {"concurrency_per_key": 0}, {"rate_per_key": "-5/m"},
                {"rate_per_key": "fast"}, {"key_overrides": {"a": {"concurrency_per_key": True}}}):
        with pytest.raises(QueuesInvalid, match="per_key"):
            Queues.parse({"queues": {"q": bad}})


def test_a_replayed_batch_answers_as_the_first_did_even_for_items_its_holders_answered(client: FlaskClient,
                                                                                      db: Engine) -> None:
    holder = create(client, {"type": "echo", "unique_key": "held"})
    body = json.dumps({"jobs": [{"type": "echo", "unique_key": "held"}, {"type": "echo", "payload": {"n": 1}},
                                {"type": "echo", "unique_key": "mine"}]})

    def send() -> Any:
        return client.post("/v1/jobs:batchCreate", data=body, content_type="application/json",
                           headers={"Idempotency-Key": "batch-1"})

    first = send()
    assert first.status_code == 202
    again = send()
    assert again.status_code == 200
    assert [j["id"] for j in again.get_json()["jobs"]] == [j["id"] for j in first.get_json()["jobs"]]
    assert first.get_json()["jobs"][0]["id"] == holder["id"]
    # the holder ended: a replay still answers every item, the freed one with a job of its own now
    deliver(client, holder["id"])
    third = send().get_json()["jobs"]
    assert third[1:] == again.get_json()["jobs"][1:] and third[0]["id"] != holder["id"]
    assert count_jobs(db) == 4
    other = client.post("/v1/jobs:batchCreate", content_type="application/json", headers={"Idempotency-Key": "batch-1"},
                        data=json.dumps({"jobs": [{"type": "echo", "unique_key": "held"}, {"type": "echo"}]}))
    assert other.status_code == 409 and count_jobs(db) == 4


def test_the_types_endpoint_shows_a_types_concurrency_limit(client: FlaskClient) -> None:
    types = {t["name"]: t for t in client.get("/v1/types").get_json()["types"]}
    assert types["one_at_a_time"]["concurrency_per_key"] == 1
    assert types["echo"]["concurrency_per_key"] is None and types["echo"]["callback_url"] is None

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from api.store import jobs as store
from api.store.jobs import Delivery, Finish, JobFilter, NewJob
from api.store.tables import jobs


def new_job(**kw: Any) -> NewJob:
    job_id = kw.pop("id", uuid.uuid4())
    values: dict[str, Any] = dict(
        id=job_id, type="echo", queue="default", payload={"n": 1}, max_attempts=3,
        timeout_s=60, labels={"team": "a"}, task_name=f"projects/p/locations/l/queues/default/tasks/{job_id}",
    )
    values.update(kw)
    return NewJob(**values)


def insert(db: Engine, state: str = "CREATED", **kw: Any) -> Any:
    with db.begin() as conn:
        return store.insert_job(conn, new_job(**kw), state=state)


def claim(db: Engine, *ids: uuid.UUID) -> list[Any]:
    with db.begin() as conn:
        return store.claim_jobs(conn, list(ids))


def finish(db: Engine, *fs: Finish) -> dict[uuid.UUID, str]:
    with db.begin() as conn:
        return store.finish_jobs(conn, fs).states


def get(db: Engine, job_id: uuid.UUID) -> Any:
    with db.connect() as conn:
        return store.get_job(conn, job_id)


def attempts(db: Engine, job_id: uuid.UUID) -> list[Any]:
    with db.connect() as conn:
        return store.list_attempts(conn, job_id)


def test_insert_creates_a_queued_job_unless_told_otherwise(db: Engine) -> None:
    with db.begin() as conn:
        assert store.insert_job(conn, new_job()).state == "QUEUED"  # its task is created next
    row = insert(db)
    assert row.state == "CREATED" and row.attempts == 0
    assert row.created_time.tzinfo is not None
    assert row.payload == {"n": 1} and row.labels == {"team": "a"}


def test_a_job_whose_task_could_not_be_created_goes_back_to_created(db: Engine) -> None:
    a, b, c = insert(db, state="QUEUED"), insert(db, state="QUEUED"), insert(db, state="QUEUED")
    claim(db, b.id)  # its task existed after all: a delivery claimed it
    with db.begin() as conn:
        conn.execute(sa.text("UPDATE jobs SET task_name = 'later-run' WHERE id = :id"), {"id": c.id})
        moved = store.mark_not_enqueued(conn, [a, b, c])
    assert [(r.id, r.state) for r in moved] == [(a.id, "CREATED")]  # c is in another run now
    assert get(db, b.id).state == "RUNNING" and get(db, c.id).state == "QUEUED"


def test_idempotency_key_insert_returns_none_for_a_taken_key(db: Engine) -> None:
    first = insert(db, idempotency_key="k1", request_hash="h")
    assert insert(db, idempotency_key="k1", request_hash="h") is None
    with db.connect() as conn:
        assert store.job_by_idempotency_key(conn, "k1", owner=None).id == first.id


def test_mark_queued_moves_only_created_jobs(db: Engine) -> None:
    a, b = insert(db), insert(db)
    claim(db, b.id)
    with db.begin() as conn:
        moved = store.mark_queued(conn, [a.id, b.id])
    assert [r.id for r in moved] == [a.id]
    assert get(db, b.id).state == "RUNNING"


@pytest.mark.parametrize("start", ["CREATED", "QUEUED"])
def test_claim_starts_an_attempt(db: Engine, start: str) -> None:
    row = insert(db)
    if start == "QUEUED":
        with db.begin() as conn:
            store.mark_queued(conn, [row.id])
    [claimed] = claim(db, row.id)
    assert claimed.state == "RUNNING" and claimed.attempts == 1
    assert claimed.started_time is not None and claimed.lease_expires_time > claimed.attempt_started_time


def test_claim_is_set_based(db: Engine) -> None:
    ids = [insert(db).id for _ in range(5)]
    assert {r.id for r in claim(db, *ids)} == set(ids)


def test_a_second_claim_while_the_lease_holds_gets_nothing(db: Engine) -> None:
    row = insert(db)
    assert claim(db, row.id)
    assert claim(db, row.id) == []
    assert get(db, row.id).attempts == 1


def test_concurrent_claims_of_one_job_start_one_attempt(db: Engine) -> None:
    row = insert(db)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: claim(db, row.id), range(8)))
    assert sum(len(r) for r in results) == 1
    assert get(db, row.id).attempts == 1


def test_an_expired_lease_is_taken_over_and_the_lost_attempt_recorded(db: Engine) -> None:
    row = insert(db)
    claim(db, row.id)
    with db.begin() as conn:
        conn.execute(sa.text("UPDATE jobs SET lease_expires_time = now() - interval '1 s' WHERE id = :i"), {"i": row.id})
    [again] = claim(db, row.id)
    assert again.attempts == 2
    [lost] = attempts(db, row.id)
    assert (lost.number, lost.outcome, lost.error["code"]) == (1, "TIMED_OUT", "LEASE_EXPIRED")
    # The first attempt finishing late changes nothing: attempt 2 holds the job.
    assert finish(db, Finish(row.id, 1, "COMPLETED", "COMPLETED", result={"late": True})) == {}
    assert get(db, row.id).state == "RUNNING"


def test_claim_refuses_terminal_and_cancel_requested_jobs(db: Engine) -> None:
    done, cancelled = insert(db), insert(db)
    claim(db, done.id)
    finish(db, Finish(done.id, 1, "COMPLETED", "COMPLETED", result=1))
    with db.begin() as conn:
        conn.execute(sa.text("UPDATE jobs SET cancel_requested = true WHERE id = :i"), {"i": cancelled.id})
    assert claim(db, done.id, cancelled.id) == []


def test_finish_completes_and_records_the_attempt(db: Engine) -> None:
    row = insert(db)
    claim(db, row.id)
    delivery = Delivery(task_name="t1", retry_count=0, execution_count=0, retry_reason=None)
    assert finish(db, Finish(row.id, 1, "COMPLETED", "COMPLETED", result={"ok": True}, delivery=delivery)) == {row.id: "COMPLETED"}
    job = get(db, row.id)
    assert (job.state, job.result, job.error) == ("COMPLETED", {"ok": True}, None)
    assert job.done_time is not None and job.lease_expires_time is None
    assert job.progress["fraction"] == 1.0
    [a] = attempts(db, row.id)
    assert (a.number, a.outcome, a.task_name, a.retry_count) == (1, "COMPLETED", "t1", 0)
    assert a.finished_time >= a.started_time


def test_finish_happens_once(db: Engine) -> None:
    row = insert(db)
    claim(db, row.id)
    f = Finish(row.id, 1, "COMPLETED", "COMPLETED", result=1)
    assert finish(db, f) == {row.id: "COMPLETED"}
    assert finish(db, f) == {}
    assert finish(db, Finish(row.id, 1, "FAILED", "FAILED", error={"code": "X", "message": "m"})) == {}
    assert get(db, row.id).state == "COMPLETED"
    assert len(attempts(db, row.id)) == 1


def test_a_retry_goes_back_to_queued_and_the_next_claim_is_attempt_two(db: Engine) -> None:
    row = insert(db)
    claim(db, row.id)
    err = {"code": "FLAKY", "message": "again"}
    finish(db, Finish(row.id, 1, "QUEUED", "RETRY", error=err))
    job = get(db, row.id)
    assert (job.state, job.error, job.done_time) == ("QUEUED", err, None)
    [second] = claim(db, row.id)
    assert second.attempts == 2


def test_finish_is_set_based(db: Engine) -> None:
    a, b = insert(db), insert(db)
    claim(db, a.id, b.id)
    moved = finish(db, Finish(a.id, 1, "COMPLETED", "COMPLETED", result=1),
                   Finish(b.id, 1, "FAILED", "FAILED", error={"code": "E", "message": "m"}))
    assert moved == {a.id: "COMPLETED", b.id: "FAILED"}
    assert (get(db, a.id).state, get(db, b.id).state) == ("COMPLETED", "FAILED")


def test_progress_is_recorded_only_for_the_holding_attempt(db: Engine) -> None:
    row = insert(db)
    claim(db, row.id)
    with db.begin() as conn:
        assert store.set_progress(conn, row.id, 1, 0.5, "half")
        assert not store.set_progress(conn, row.id, 2, 0.9, "stale attempt")
    assert get(db, row.id).progress == {"fraction": 0.5, "message": "half"}


def test_list_jobs_filters_and_pages_newest_first(db: Engine) -> None:
    ids = [insert(db, type="echo" if i % 2 else "sleep", labels={"n": str(i)}).id for i in range(7)]
    with db.connect() as conn:
        everything = store.list_jobs(conn, JobFilter(), limit=100)
        assert [r.id for r in everything] == list(reversed(ids))
        page1 = store.list_jobs(conn, JobFilter(), limit=3)
        last = page1[-1]
        page2 = store.list_jobs(conn, JobFilter(), limit=3, after=(last.created_time, last.id))
        assert [r.id for r in page1 + page2] == list(reversed(ids))[:6]
        assert {r.type for r in store.list_jobs(conn, JobFilter(types=("echo",)), limit=100)} == {"echo"}
        [labelled] = store.list_jobs(conn, JobFilter(labels=(("n", "3"),)), limit=100)
        assert labelled.id == ids[3]
        assert store.list_jobs(conn, JobFilter(states=("COMPLETED",)), limit=100) == []


def test_insert_jobs_answers_the_rows_as_the_table_holds_them(db: Engine) -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    new = [new_job(payload={"b": 1, "a": [None, "x"]}, labels={"k": "v"}, owner="team-a"),
           new_job(scheduled_time=later, idempotency_key="k:1", request_hash="h")]
    with db.begin() as conn:
        answered = store.insert_jobs(conn, new)
    with db.connect() as conn:
        stored = [conn.execute(sa.select(jobs).where(jobs.c.id == j.id)).one() for j in new]
    assert [a._asdict() for a in answered] == [dict(s._mapping) for s in stored]
    assert answered[1].scheduled_time == later and answered[0].scheduled_time == answered[0].created_time

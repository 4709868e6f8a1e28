"""GET /v1/jobs/{id}?wait=S: woken by NOTIFY, bounded by S, backed by a slow fallback."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.engine import Engine

from api.store import driver
from api.store import jobs as store
from api.web.waiting import JobWaiters

Transition = Callable[[Engine, uuid.UUID], None]


@pytest.fixture
def build(make_app: Callable[..., Flask]) -> Iterator[Callable[..., Flask]]:
    """Apps whose listeners are stopped after the test."""
    apps: list[Flask] = []

    def make(**changes: Any) -> Flask:
        app = make_app(**changes)
        apps.append(app)
        return app

    yield make
    for app in apps:
        if (w := app.extensions.get("cloudjobs.waiters")) is not None:
            w.close()


@pytest.fixture
def app(build: Callable[..., Flask]) -> Flask:
    return build()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def create(client: FlaskClient, body: dict[str, Any] | None = None) -> uuid.UUID:
    resp = client.post(
        "/v1/jobs", data=json.dumps(body or {"type": "echo"}), content_type="application/json"
    )
    assert resp.status_code == 202, resp.get_json()
    return uuid.UUID(resp.get_json()["id"])


def waiters_of(app: Flask) -> JobWaiters:
    return app.extensions["cloudjobs.waiters"]  # type: ignore[no-any-return]


def timed_get(client: FlaskClient, job_id: uuid.UUID, wait: float) -> tuple[float, Any]:
    start = time.monotonic()
    resp = client.get(f"/v1/jobs/{job_id}?wait={wait}")
    assert resp.status_code == 200, resp.get_json()
    return time.monotonic() - start, resp.get_json()


def once_waiting(app: Flask, fn: Callable[[], None]) -> threading.Thread:
    """Run fn in another thread, as another request or process would, once a `?wait=` request
    of this app is registered and waiting (the race each test names, not a guess at timing)."""

    def run() -> None:
        deadline = time.monotonic() + 10
        while "cloudjobs.waiters" not in app.extensions or waiters_of(app).waiting == 0:
            assert time.monotonic() < deadline, "nobody ever waited"
            time.sleep(0.005)
        fn()

    t = threading.Thread(target=run)
    t.start()
    return t


# Every store transition that can end a job, run from another connection.


def complete(db: Engine, job_id: uuid.UUID) -> None:
    with db.begin() as conn:
        store.claim_jobs(conn, [job_id])
    with db.begin() as conn:
        store.finish_jobs(
            conn, [store.Finish(job_id, 1, "COMPLETED", "COMPLETED", result={"ok": 1})]
        )


def fail(db: Engine, job_id: uuid.UUID) -> None:
    with db.begin() as conn:
        store.claim_jobs(conn, [job_id])
    with db.begin() as conn:
        store.finish_jobs(
            conn,
            [store.Finish(job_id, 1, "FAILED", "FAILED", error={"code": "X", "message": "no"})],
        )


def cancel_queued(db: Engine, job_id: uuid.UUID) -> None:
    with db.begin() as conn:
        assert store.request_cancel(conn, job_id) is not None


def settle_cancelled(db: Engine, job_id: uuid.UUID) -> None:
    with db.begin() as conn:
        store.claim_jobs(conn, [job_id], lease_margin_s=-3600)  # a lease that has run out
        store.request_cancel(conn, job_id)  # RUNNING: only flagged
    with db.begin() as conn:
        assert store.settle_cancelled(conn, [job_id]) == {job_id}


def abandon(db: Engine, job_id: uuid.UUID) -> None:
    with db.begin() as conn:
        row = store.get_job(conn, job_id)
        assert (
            store.abandon_job(
                conn, row, requeue=False, error={"code": "RETRIES_EXHAUSTED", "message": "gone"}
            )
            is not None
        )


@pytest.mark.parametrize(
    ("transition", "final"),
    [
        (complete, "COMPLETED"),
        (fail, "FAILED"),
        (cancel_queued, "CANCELLED"),
        (settle_cancelled, "CANCELLED"),
        (abandon, "FAILED"),
    ],
)
def test_a_waiter_wakes_as_soon_as_another_connection_ends_the_job(
    app: Flask, client: FlaskClient, db: Engine, transition: Transition, final: str
) -> None:
    job_id = create(client)
    t = once_waiting(app, lambda: transition(db, job_id))
    elapsed, job = timed_get(client, job_id, 20)
    t.join()
    assert job["state"] == final and job["done"] is True
    assert elapsed < 2.5, elapsed  # woken by NOTIFY, long before S or the 5 s fallback


def test_a_job_that_is_not_done_is_returned_as_it_is_after_s(client: FlaskClient) -> None:
    job_id = create(client)
    elapsed, job = timed_get(client, job_id, 0.8)
    assert job["state"] == "QUEUED" and job["done"] is False
    assert 0.8 <= elapsed < 2.0, elapsed


def test_a_done_job_is_returned_at_once(client: FlaskClient, db: Engine) -> None:
    job_id = create(client)
    complete(db, job_id)
    elapsed, job = timed_get(client, job_id, 30)
    assert job["state"] == "COMPLETED" and elapsed < 1.0


@pytest.mark.parametrize("raw", ["0", "-1", "60.5", "61", "abc", "", "nan", "inf", "1e3"])
def test_a_bad_wait_is_400_problem(client: FlaskClient, raw: str) -> None:
    resp = client.get(f"/v1/jobs/{uuid.uuid4()}?wait={raw}")  # checked before the job is read
    assert resp.status_code == 400
    assert resp.content_type == "application/problem+json"
    assert "wait" in resp.get_json()["detail"]


def test_a_wait_on_an_unknown_job_is_404(client: FlaskClient) -> None:
    assert client.get(f"/v1/jobs/{uuid.uuid4()}?wait=5").status_code == 404


def test_a_waiter_does_not_query_the_database_while_it_waits(
    app: Flask, client: FlaskClient
) -> None:
    job_id = create(client)
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    engine = app.extensions["cloudjobs"].engine
    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        elapsed, _ = timed_get(client, job_id, 1)
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    assert elapsed >= 1
    # The first read, the registration, a read after it, one at the end and the registration's
    # removal: not one per few milliseconds.
    assert len(statements) <= 5, statements


def test_without_a_notification_the_fallback_still_returns_the_job(
    build: Callable[..., Flask], db: Engine
) -> None:
    app = build(wait_fallback_s=0.5)
    client = app.test_client()
    job_id = create(client)

    def finish_without_notify() -> None:
        with db.begin() as conn:
            # Triggers off for this transaction: the job ends and nobody is told.
            conn.execute(sa.text("SET LOCAL session_replication_role = replica"))
            conn.execute(
                sa.text("UPDATE jobs SET state = 'COMPLETED', done_time = now() WHERE id = :id"),
                {"id": job_id},
            )

    t = once_waiting(app, finish_without_notify)
    elapsed, job = timed_get(client, job_id, 20)
    t.join()
    assert job["state"] == "COMPLETED"
    assert elapsed < 0.5 + 1.0, elapsed  # the fallback interval, plus a margin


def test_a_listener_whose_connection_is_killed_reconnects_and_still_wakes_waiters(
    app: Flask, client: FlaskClient, db: Engine
) -> None:
    job_id = create(client)
    timed_get(client, job_id, 0.1)  # starts the listener
    w = waiters_of(app)
    old_pid = w.listener_pid
    assert old_pid is not None

    def kill_then_complete() -> None:
        with db.connect() as conn:
            conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": old_pid})
        deadline = time.monotonic() + 5
        while w.listener_pid in (None, old_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        complete(db, job_id)

    t = once_waiting(app, kill_then_complete)
    elapsed, job = timed_get(client, job_id, 20)
    t.join()
    assert job["state"] == "COMPLETED"
    assert w.listener_pid not in (None, old_pid)
    assert elapsed < 4.0, elapsed  # the new connection's NOTIFY, not the 5 s fallback


def test_past_the_cap_a_wait_returns_at_once(build: Callable[..., Flask]) -> None:
    app = build(wait_max_per_process=1)
    client = app.test_client()
    first, second = create(client), create(client)
    t = threading.Thread(target=lambda: app.test_client().get(f"/v1/jobs/{first}?wait=1"))
    t.start()
    deadline = time.monotonic() + 5
    while (
        "cloudjobs.waiters" not in app.extensions or waiters_of(app).waiting == 0
    ) and time.monotonic() < deadline:
        time.sleep(0.02)
    elapsed, job = timed_get(client, second, 5)
    t.join()
    assert job["state"] == "QUEUED" and elapsed < 0.9, elapsed


def test_nothing_listens_until_someone_waits_and_close_stops_it(
    app: Flask, client: FlaskClient, db: Engine
) -> None:
    others = [t for t in threading.enumerate() if t.name == "cloudjobs-waiters"]
    job_id = create(client)
    client.get(f"/v1/jobs/{job_id}")
    assert "cloudjobs.waiters" not in app.extensions
    timed_get(client, job_id, 0.1)
    w = waiters_of(app)
    pid = w.listener_pid

    def listening() -> bool:
        with db.connect() as conn:
            return bool(
                conn.execute(
                    sa.text("SELECT count(*) FROM pg_stat_activity WHERE pid = :p"), {"p": pid}
                ).scalar_one()
            )

    assert listening()
    w.close()
    deadline = time.monotonic() + 5
    while listening() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not listening()
    # This app's listener thread is gone (any other is another app's).
    assert [t for t in threading.enumerate() if t.name == "cloudjobs-waiters"] == others


def _notifications_during(db: Engine, action: Callable[[], None]) -> list[str]:
    """The cloudjobs_job_done payloads a listening connection hears while `action` runs."""
    raw = db.raw_connection()
    try:
        dbapi: Any = raw.dbapi_connection
        seam = driver.of(dbapi)
        seam.listen(dbapi, "cloudjobs_job_done", read_timeout_s=10)
        action()
        notifications, _ = seam.notifications(dbapi, ping=True)  # pings: what came before its reply
        heard = [payload for channel, payload in notifications if channel == "cloudjobs_job_done"]
        dbapi.cursor().execute("UNLISTEN *")
        driver.set_autocommit(dbapi, False)
        return heard
    finally:
        raw.close()


def test_a_job_nobody_waits_on_ends_without_a_notification_and_one_waited_on_with_one(
    client: FlaskClient, db: Engine
) -> None:
    quiet, watched = create(client), create(client)
    assert _notifications_during(db, lambda: complete(db, quiet)) == []
    with db.begin() as conn:
        conn.execute(sa.text("INSERT INTO job_waiters (job_id, waiter) VALUES (:j, :w)"),
                     {"j": watched, "w": uuid.uuid4()})
    assert _notifications_during(db, lambda: complete(db, watched)) == [str(watched)]


def test_a_waiter_that_registers_while_the_job_is_ending_is_not_left_waiting(
    build: Callable[..., Flask], db: Engine
) -> None:
    # The ending transaction's trigger runs before the waiter registers, and it commits only
    # after: without the registration's share lock the waiter would sleep until the fallback.
    client = build(wait_fallback_s=30).test_client()
    job_id = create(client)
    with db.begin() as conn:
        store.claim_jobs(conn, [job_id])
    result: dict[str, Any] = {}
    with db.connect() as ending:
        store.finish_jobs(ending, [store.Finish(job_id, 1, "COMPLETED", "COMPLETED", result={})])
        def wait() -> None:
            result["elapsed"], result["job"] = timed_get(client, job_id, 20)

        waiter = threading.Thread(target=wait)
        waiter.start()
        # Commit only once the registration waits on the row lock the ending UPDATE holds: the
        # race this test names, seen in pg_stat_activity rather than assumed after a sleep.
        deadline = time.monotonic() + 5
        while not _waiting_on_a_lock(db):
            assert time.monotonic() < deadline, "the registration never waited on the ending job's row"
            time.sleep(0.01)
        ending.commit()
    waiter.join(25)
    assert result["job"]["state"] == "COMPLETED"
    assert result["elapsed"] < 5, result["elapsed"]  # not the 30 s fallback
    assert not _registered(db, job_id)  # the registration is removed when the wait ends


def _waiting_on_a_lock(db: Engine) -> bool:
    """Whether a registration (its INSERT … FOR SHARE) is blocked on a row lock right now."""
    with db.connect() as conn:
        return bool(conn.execute(sa.text(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%job_waiters%'"
        )).scalar_one())


def _registered(db: Engine, job_id: uuid.UUID) -> bool:
    """Whether a registration for the job exists, committed or not (pg_locks sees an open one)."""
    with db.connect() as conn:
        committed = conn.execute(
            sa.text("SELECT count(*) FROM job_waiters WHERE job_id = :j"), {"j": job_id}
        ).scalar_one()
    return bool(committed) or _waiting_on_a_lock(db)


def test_the_sweeper_removes_registrations_a_dead_process_left(db: Engine) -> None:
    from api.store.jobs import STALE_REGISTRATION_S, purge_stale_waiters

    old, fresh = uuid.uuid4(), uuid.uuid4()
    with db.begin() as conn:
        conn.execute(sa.text("""
            INSERT INTO job_waiters (job_id, waiter, since)
            VALUES (:old, gen_random_uuid(), now() - make_interval(secs => :age)),
                   (:fresh, gen_random_uuid(), now())"""),
            {"old": old, "fresh": fresh, "age": STALE_REGISTRATION_S + 1},
        )
    assert purge_stale_waiters(db) == 1
    with db.connect() as conn:
        assert conn.execute(sa.text("SELECT array_agg(job_id) FROM job_waiters")).scalar_one() == [fresh]

"""The app on each driver: psycopg 3 and pg8000 with pgfast side by side, and plain pg8000.

The rest of the suite runs on TEST_DRIVER (pg8000 unless set); these run on both drivers
whatever it says, through the driver seam (api/store/driver.py): create, claim, finish, a
waiting GET woken by its notification, a report, error codes, autocommit, a connection the
server closed, prepared statements. The last test runs the app in a process whose pg8000
reports a version pgfast was not tested on, to show the guard leaves pg8000 as it is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
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

from api.config import Config
from api.store import driver
from api.store.engine import autocommit, create_engine
from emulator import Emulator
from tests.conftest import ROOT
from tests.integration.conftest import TEST_QUEUES

DRIVERS = ["pg8000", "psycopg"]


@pytest.fixture(params=DRIVERS)
def driver_url(request: pytest.FixtureRequest, migrated_url: str) -> str:
    """The test database's URL for each driver in turn."""
    return driver.with_driver(migrated_url, request.param)


@pytest.fixture
def engine_on(driver_url: str) -> Iterator[Callable[..., Engine]]:
    """Engines on the driver's URL, disposed afterwards."""
    made: list[Engine] = []

    def make(**changes: Any) -> Engine:
        eng = create_engine(Config().replace(**changes), url=driver_url, pool_size=1)
        made.append(eng)
        return eng

    yield make
    for eng in made:
        eng.dispose()


@pytest.fixture
def client_on(make_app: Callable[..., Flask], driver_url: str, db: Engine) -> FlaskClient:
    """The app on the driver; /handlers/run open; waits woken only by notifications (no fallback)."""
    app = make_app(database_url=driver_url, handler_auth="none", wait_fallback_s=60)
    assert app.extensions["cloudjobs"].engine.dialect.driver == driver.name_of_url(driver_url)
    return app.test_client()


def create(client: FlaskClient) -> str:
    resp = client.post("/v1/jobs", json={"type": "echo", "payload": {"n": 1, "s": "x"}})
    assert resp.status_code == 202, resp.get_json()
    return str(resp.get_json()["id"])


def deliver(client: FlaskClient, job_id: str) -> Any:
    return client.post(
        "/handlers/run",
        json={"job_id": job_id},
        headers={"X-CloudTasks-TaskRetryCount": "0", "X-CloudTasks-TaskName": f"task-{job_id}"},
    )


def start_waiting(client: FlaskClient, job_id: str, db: Engine) -> tuple[threading.Thread, dict[str, Any]]:
    """A GET ?wait=30 of the job in a thread, once its registration is committed.

    The thread puts the job it was answered ("job") and how long that took ("took") in the dict.
    (tests/integration/plain_pg8000.py uses it too.)"""
    answer: dict[str, Any] = {}

    def wait() -> None:
        started = time.monotonic()
        answer["job"] = client.get(f"/v1/jobs/{job_id}?wait=30").get_json()
        answer["took"] = time.monotonic() - started

    waiting = threading.Thread(target=wait)
    waiting.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # until the waiter's job_waiters row is committed
        with db.connect() as conn:
            if conn.execute(sa.text("SELECT count(*) FROM job_waiters")).scalar_one():
                break
        time.sleep(0.02)
    return waiting, answer


def test_a_job_is_created_claimed_finished_and_read_back(client_on: FlaskClient) -> None:
    for _ in range(3):  # the third run of each statement uses what the connection prepared
        job_id = create(client_on)
        assert client_on.get(f"/v1/jobs/{job_id}").get_json()["state"] == "QUEUED"
        resp = deliver(client_on, job_id)
        assert resp.status_code == 200 and resp.get_json()["jobs"] == {job_id: "COMPLETED"}
        done = client_on.get(f"/v1/jobs/{job_id}").get_json()
        assert done["state"] == "COMPLETED" and done["result"] == {"n": 1, "s": "x"}
        [attempt] = client_on.get(f"/v1/jobs/{job_id}/attempts").get_json()["attempts"]
        assert attempt["outcome"] == "COMPLETED" and attempt["task_name"] == f"task-{job_id}"
        listed = client_on.get("/v1/jobs?state=COMPLETED").get_json()["jobs"]
        assert job_id in [j["id"] for j in listed]


def test_a_waiting_get_is_woken_by_the_jobs_notification(client_on: FlaskClient, db: Engine) -> None:
    job_id = create(client_on)
    waiting, answer = start_waiting(client_on, job_id, db)
    assert deliver(client_on, job_id).status_code == 200
    waiting.join(timeout=30)
    # The fallback re-reads after 60 s: only the notification can have ended it this soon.
    assert answer["job"]["state"] == "COMPLETED" and answer["took"] < 10, answer


def test_a_report_counts_the_finished_jobs(client_on: FlaskClient) -> None:
    ids = [create(client_on) for _ in range(3)]
    for job_id in ids[:2]:
        assert deliver(client_on, job_id).status_code == 200
    body = client_on.get("/v1/reports/summary?group_by=type").get_json()
    [row] = body["rows"]
    assert (row["key"], row["jobs"], row["completed"], row["active"]) == ("echo", 3, 2, 1), row


def test_error_codes_are_read_the_same_on_each_driver(engine_on: Callable[..., Engine]) -> None:
    eng = engine_on()
    with pytest.raises(sa.exc.DBAPIError) as missing, eng.connect() as conn:
        conn.execute(sa.text("SELECT * FROM no_such_table"))
    assert driver.sqlstate(missing.value) == "42P01"
    assert driver.sqlstate(missing.value.orig) == "42P01"  # the driver's own exception too
    with pytest.raises(sa.exc.DBAPIError) as bad, eng.connect() as conn:  # the class differs by driver
        conn.execute(sa.text("SELECT CAST(:x AS int)"), {"x": "not a number"})
    assert driver.sqlstate(bad.value) == "22P02"
    assert driver.sqlstate(ValueError("no code")) is None


def test_autocommit_commits_each_statement_and_is_cleared_on_return(engine_on: Callable[..., Engine]) -> None:
    eng = engine_on()
    with autocommit(eng) as conn:
        # no transaction is open between statements: each has its own start time
        assert conn.execute(sa.text("SELECT now() = statement_timestamp()")).scalar_one() is True
        assert conn.connection.dbapi_connection.autocommit is True  # type: ignore[union-attr]
    with eng.connect() as conn:  # the same pooled connection, transactional again
        assert conn.connection.dbapi_connection.autocommit is False  # type: ignore[union-attr]
        conn.execute(sa.text("SELECT 1"))
        assert conn.execute(sa.text("SELECT now() = statement_timestamp()")).scalar_one() is False


def test_a_connection_the_server_closed_is_replaced_on_checkout(
    engine_on: Callable[..., Engine], db: Engine
) -> None:
    eng = engine_on()
    with eng.connect() as conn:
        first = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        idle = conn.connection.dbapi_connection  # back in the pool, idle, after the block
    assert not driver.closed_by_server(idle)
    with db.connect() as conn:
        assert conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": first}).scalar_one()
    deadline = time.monotonic() + 5
    while not driver.closed_by_server(idle) and time.monotonic() < deadline:
        time.sleep(0.01)  # the server's goodbye reaches the idle socket a moment later
    assert driver.closed_by_server(idle)
    with eng.connect() as conn:  # replaced on checkout, not failed
        second = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
    assert second != first


@pytest.mark.parametrize("prepared", [True, False])
def test_prepared_statements_and_custom_plans_follow_the_setting(
    engine_on: Callable[..., Engine], prepared: bool
) -> None:
    eng = engine_on(db_prepared_statements=prepared)
    marker = f"SELECT CAST(:x AS int) + 1 AS probe_{uuid.uuid4().hex[:8]}"
    with eng.connect() as conn:
        for x in range(3):
            assert conn.execute(sa.text(marker), {"x": x}).scalar_one() == x + 1
        mode = conn.execute(sa.text("SHOW plan_cache_mode")).scalar_one()
        names = conn.execute(
            sa.text("SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE :m"),
            {"m": f"%{marker.rsplit(' ', 1)[1]}%"},
        ).scalar_one()
        with driver.planned_each_time(conn.connection.dbapi_connection):
            conn.execute(sa.text(marker.replace("+ 1", "+ 2")), {"x": 0})
            conn.execute(sa.text(marker.replace("+ 1", "+ 2")), {"x": 0})
        unplanned = conn.execute(
            sa.text("SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE '%+ 2%'")
        ).scalar_one()
    assert (mode, names) == (("force_custom_plan", 1) if prepared else ("auto", 0))
    assert unplanned == 0


def test_an_untested_pg8000_runs_unpatched_with_one_warning(
    migrated_url: str, emulator: Emulator, tasks_client: Any, db: Engine
) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "tests.integration.plain_pg8000",
         driver.with_driver(migrated_url, "pg8000"), emulator.address, str(TEST_QUEUES)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen["functions_unchanged"] is True and seen["installed"] is False
    [warning] = seen["warnings"]  # one, though two engines were made
    assert "pg8000 1.31.99 is not a version" in warning and "1.31.6" in warning
    assert "unpatched" in warning and "slower" in warning
    assert seen["states"] == ["QUEUED", "COMPLETED"]
    assert seen["waited"]["job"]["state"] == "COMPLETED" and seen["waited"]["took"] < 10
    assert seen["report_total"] == 1

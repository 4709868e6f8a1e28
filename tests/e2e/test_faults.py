"""Real faults: PostgreSQL stopped, the emulator stopped, a worker SIGKILLed, a duplicate
delivered at the same moment. Each asserts that nothing was lost or done twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.cloud import tasks_v2

from api.cli.devdb import start_embedded_postgres
from api.cloud.queues import Queues
from api.cloud.tasks import make_client, queue_path, sync_queues
from api.config import Config
from api.store import migrate
from api.store.engine import create_engine
from emulator import Emulator
from tests.conftest import ROOT
from tests.e2e.conftest import SERVICE_ACCOUNT, TEST_QUEUES, free_port, start_gunicorn, wait_healthy


@dataclass
class FaultStack:
    """A stack whose PostgreSQL and emulator the test may stop and start again."""

    url: str
    env: dict[str, str]
    pg_dir: Path
    key_file: Path
    emu_port: int
    emu_http_port: int
    database_url: str
    pg: Any = None
    emu: Emulator | None = None
    gunicorn: subprocess.Popen[bytes] | None = None
    config: Config = field(init=False)

    def __post_init__(self) -> None:
        self.config = Config.from_env(self.env)

    # PostgreSQL
    def start_pg(self) -> None:
        # pgserver checks the postmaster's status right after `pg_ctl -w start` returns; on a
        # busy machine the status file may still say "starting". Ask again: it reuses the
        # server that is coming up.
        for attempt in range(5):
            try:
                self.pg = start_embedded_postgres(self.pg_dir)[1]
                return
            except AssertionError:
                if attempt == 4:
                    raise
                time.sleep(1.0)

    def stop_pg(self) -> None:
        self.pg.cleanup()
        self.pg = None

    def sql(self, statement: str, **params: Any) -> list[Any]:
        engine = create_engine(self.config, url=self.database_url, pool_size=1)
        try:
            with engine.begin() as conn:
                result = conn.execute(sa.text(statement), params)
                return list(result) if result.returns_rows else []
        finally:
            engine.dispose()

    # The emulator
    def start_emulator(self) -> None:
        self.emu = Emulator(host="127.0.0.1", port=self.emu_port, http_port=self.emu_http_port,
                            key_file=self.key_file).start()
        sync_queues(self.tasks(), self.config, list(Queues.load(TEST_QUEUES).specs.values()))

    def stop_emulator(self) -> None:
        assert self.emu is not None
        self.emu.stop()
        self.emu = None

    def tasks(self) -> tasks_v2.CloudTasksClient:
        return make_client(self.config)

    # HTTP
    def post(self, path: str, body: Any = None, **kw: Any) -> requests.Response:
        return requests.post(self.url + path, json=body, timeout=15, **kw)

    def get(self, path: str) -> requests.Response:
        return requests.get(self.url + path, timeout=15)

    def wait_for(self, job_id: str, predicate: Any, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                resp = self.get(f"/v1/jobs/{job_id}")
                job = resp.json()
                # Right after PostgreSQL comes back, the first request on a connection the
                # outage killed is a 503 (the pool then reconnects): not the job yet.
                if resp.status_code == 200 and predicate(job):
                    return job
            except (requests.ConnectionError, ValueError):
                job = None
            if time.monotonic() > deadline:
                raise AssertionError(f"job never reached the expected state: {job}")
            time.sleep(0.05)

    def attempts(self, job_id: str) -> list[dict[str, Any]]:
        return self.get(f"/v1/jobs/{job_id}/attempts").json()["attempts"]


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    tmp = tmp_path_factory.mktemp("faults")
    key_file = tmp / "emulator-key.pem"
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    database_url, pg = start_embedded_postgres(tmp / "pg")
    engine = create_engine(Config(), url=database_url, pool_size=1)
    migrate.upgrade(engine)
    engine.dispose()
    port, emu_port, emu_http_port = free_port(), free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "GOOGLE_CLOUD_PROJECT": "faults-project",
        "CLOUD_TASKS_EMULATOR_HOST": f"127.0.0.1:{emu_port}",
        "HANDLER_BASE_URL": url,
        "HANDLER_AUTH": "oidc",
        "DEMO_JOB_TYPES": "true",
        "AUTH": "none",
        "TASKS_SERVICE_ACCOUNT": SERVICE_ACCOUNT,
        "OIDC_CERTS_URL": f"http://127.0.0.1:{emu_http_port}/oauth2/v1/certs",
        "QUEUES_FILE": str(TEST_QUEUES),
        "LEASE_MARGIN_S": "1",
        "SWEEP_CREATED_AFTER_S": "0",
        "LOG_LEVEL": "ERROR",
    }
    stack = FaultStack(url, env, tmp / "pg", key_file, emu_port, emu_http_port, database_url, pg=pg)
    stack.start_emulator()
    stack.gunicorn = start_gunicorn(env, port)
    try:
        wait_healthy(url, stack.gunicorn)
        yield stack
    finally:
        stack.gunicorn.terminate()
        stack.gunicorn.wait(timeout=30)
        if stack.emu is not None:
            stack.stop_emulator()
        if stack.pg is None:
            stack.start_pg()
        stack.pg.cleanup()


def count_jobs(stack: FaultStack) -> int:
    return stack.sql("SELECT count(*) FROM jobs")[0][0]


def task_count(stack: FaultStack, queue: str) -> int:
    return len(list(stack.tasks().list_tasks(parent=queue_path(stack.config, queue))))


def test_postgres_down_during_create_is_503_and_nothing_is_half_written(faults: FaultStack) -> None:
    before = count_jobs(faults)
    tasks_before = task_count(faults, "default")
    faults.stop_pg()
    try:
        resp = faults.post("/v1/jobs", {"type": "echo", "payload": {"n": 1}})
        assert resp.status_code == 503
        assert resp.headers["Content-Type"] == "application/problem+json"
        assert resp.json()["title"] == "Database unavailable"
        assert "Retry-After" in resp.headers
        assert faults.get("/readyz").status_code == 503
        assert faults.get("/healthz").status_code == 200
    finally:
        faults.start_pg()
    assert count_jobs(faults) == before
    assert task_count(faults, "default") == tasks_before  # no task for a job that does not exist
    # The service recovers by itself once the database is back.
    job = faults.post("/v1/jobs", {"type": "echo", "payload": {"n": 2}}).json()
    assert faults.wait_for(job["id"], lambda j: j["done"])["state"] == "COMPLETED"


def test_emulator_down_during_create_is_202_and_the_sweeper_enqueues_later(faults: FaultStack) -> None:
    faults.stop_emulator()
    try:
        resp = faults.post("/v1/jobs", {"type": "echo", "payload": {"lost": "enqueue"}})
        assert resp.status_code == 202
        job = resp.json()
        assert job["state"] == "CREATED"  # durable, and visibly pending
        assert faults.get(f"/v1/jobs/{job['id']}").json()["state"] == "CREATED"
    finally:
        faults.start_emulator()
    proc = subprocess.run([sys.executable, "-m", "api.cli.main", "sweep"], cwd=ROOT, env=faults.env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["enqueued"] >= 1
    done = faults.wait_for(job["id"], lambda j: j["done"])
    assert done["state"] == "COMPLETED" and done["result"] == {"lost": "enqueue"}
    assert len(faults.attempts(job["id"])) == 1


def test_a_worker_killed_mid_job_is_retried_and_the_job_completes(faults: FaultStack) -> None:
    job = faults.post("/v1/jobs", {"type": "sleep", "payload": {"seconds": 1.5}, "queue": "unlimited",
                                   "timeout_s": 3}).json()
    faults.wait_for(job["id"], lambda j: j["state"] == "RUNNING")
    assert faults.gunicorn is not None
    workers = psutil.Process(faults.gunicorn.pid).children()
    assert workers
    for w in workers:
        w.send_signal(signal.SIGKILL)
    done = faults.wait_for(job["id"], lambda j: j["done"], timeout=40)
    assert done["state"] == "COMPLETED"
    rows = faults.attempts(job["id"])
    assert [a["outcome"] for a in rows] == ["TIMED_OUT", "COMPLETED"]
    assert rows[0]["error"]["code"] == "LEASE_EXPIRED"
    assert done["attempts"] == 2


def test_the_same_task_delivered_twice_at_once_runs_one_attempt(faults: FaultStack) -> None:
    client = faults.tasks()
    parent = queue_path(faults.config, "unlimited")
    client.pause_queue(name=parent)
    try:
        job = faults.post("/v1/jobs", {"type": "sleep", "payload": {"seconds": 0.5}, "queue": "unlimited"}).json()
        row = faults.sql("SELECT task_name FROM jobs WHERE id = :i", i=job["id"])[0]
        original = client.get_task(request={"name": row.task_name, "response_view": tasks_v2.Task.View.FULL})
        duplicate = tasks_v2.Task(name=f"{parent}/tasks/dup-{uuid.uuid4().hex}", http_request=original.http_request)
        client.create_task(parent=parent, task=duplicate)
    finally:
        client.resume_queue(name=parent)  # both are dispatched at the same moment
    done = faults.wait_for(job["id"], lambda j: j["done"])
    # Both deliveries have been answered 2xx (so the loser's retry too) once Cloud Tasks holds
    # neither task: only then is "one attempt" the final count.
    names = {row.task_name, duplicate.name}
    deadline = time.monotonic() + 20
    while {t.name for t in client.list_tasks(parent=parent)} & names:
        assert time.monotonic() < deadline, "a delivery was never acknowledged"
        time.sleep(0.05)
    assert done["state"] == "COMPLETED" and done["attempts"] == 1
    assert len(faults.attempts(job["id"])) == 1
    assert faults.get(f"/v1/jobs/{job['id']}").json() == done


def test_postgres_down_during_a_callback_is_retried_and_nothing_is_lost(faults: FaultStack) -> None:
    client = faults.tasks()
    parent = queue_path(faults.config, "unlimited")
    client.pause_queue(name=parent)
    job = faults.post("/v1/jobs", {"type": "echo", "payload": {"survives": True}, "queue": "unlimited"}).json()
    faults.stop_pg()
    try:
        client.resume_queue(name=parent)
        deadline = time.monotonic() + 10
        task = None
        while time.monotonic() < deadline:  # wait until the handler has refused a delivery
            task = next(iter(client.list_tasks(parent=parent)), None)
            if task is not None and task.dispatch_count >= 2:
                break
            time.sleep(0.05)
        # Dispatched twice and still there: the handler's answer was non-2xx both times.
        assert task is not None and task.dispatch_count >= 2
    finally:
        faults.start_pg()
    done = faults.wait_for(job["id"], lambda j: j["done"])
    assert done["state"] == "COMPLETED" and done["result"] == {"survives": True}
    assert len(faults.attempts(job["id"])) == 1  # refused deliveries never claimed the job

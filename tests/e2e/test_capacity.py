"""Hung jobs cannot starve the API (issue #21 finding 8): RUN_CONCURRENCY keeps threads for it."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import requests
import sqlalchemy as sa
from google.cloud import tasks_v2
from sqlalchemy.engine import Engine

from api.cloud.tasks import queue_path
from tests.e2e.conftest import Stack, second_server

THREADS, RUN_CONCURRENCY, HUNG = 4, 2, 4


@pytest.fixture
def small_server(stack: Stack, migrated_url: str) -> Iterator[str]:
    """One worker of 4 threads that runs at most 2 attempts at once, on the e2e emulator."""
    with second_server(stack, migrated_url, GUNICORN_THREADS=str(THREADS), RUN_CONCURRENCY=str(RUN_CONCURRENCY)) as url:
        yield url


def timed(method: str, url: str, **kw: object) -> tuple[float, requests.Response]:
    start = time.monotonic()
    resp = requests.request(method, url, timeout=30, **kw)  # type: ignore[arg-type]
    return time.monotonic() - start, resp


def test_the_api_answers_while_jobs_hang_and_the_refused_deliveries_complete_later(
    small_server: str, stack: Stack, db: Engine
) -> None:
    url = small_server
    baseline = min(timed("GET", url + "/healthz")[0] for _ in range(5))
    parent = queue_path(stack.config, "unlimited")
    list(stack.tasks.list_tasks(parent=parent))  # the client's channel is up before the clock runs
    ids = []
    for _ in range(HUNG):
        resp = requests.post(url + "/v1/jobs", json={"type": "sleep", "payload": {"seconds": 3}, "queue": "unlimited"},
                             timeout=10)
        assert resp.status_code == 202
        ids.append(resp.json()["id"])
    # Wait until the attempts hold every thread they can: the slots are taken and every task
    # has been delivered (refused, with the limit), or every thread runs one (without it).
    names = {f"job-{uuid.UUID(i).hex}" for i in ids}
    deadline = time.monotonic() + 20
    while True:
        tasks = [t for t in stack.tasks.list_tasks(request={"parent": parent, "response_view": tasks_v2.Task.View.FULL})
                 if t.name.rsplit("/", 1)[-1].rsplit("-", 1)[0] in names]
        with db.connect() as conn:  # not through the server: its threads may all be taken
            running = conn.execute(sa.text("SELECT count(*) FROM jobs WHERE state = 'RUNNING' AND id = ANY(:ids)"),
                                   {"ids": ids}).scalar_one()
        delivered = len(tasks) == HUNG and all(t.dispatch_count >= 1 for t in tasks)
        if running >= RUN_CONCURRENCY and (delivered or running >= THREADS):
            break
        assert time.monotonic() < deadline, "the jobs were never all delivered"
        time.sleep(0.05)
    # Every thread but RUN_CONCURRENCY's is left to the API: before, the hanging attempts took
    # all four and a health check waited for one to end (3 s).
    health = [timed("GET", url + "/healthz") for _ in range(5)]
    created = [timed("POST", url + "/v1/jobs", json={"type": "echo", "payload": {}}) for _ in range(3)]
    assert all(r.status_code == 200 for _, r in health) and all(r.status_code == 202 for _, r in created)
    slowest = max(t for t, _ in health + created)
    assert slowest < baseline + 1.0, f"the API took {slowest:.2f}s while jobs hung (baseline {baseline:.3f}s)"
    # The deliveries refused with 429 come back and run; a refusal costs a job no attempt.
    deadline = time.monotonic() + 90
    for job_id in ids:
        while (job := requests.get(f"{url}/v1/jobs/{job_id}", timeout=10).json())["state"] != "COMPLETED":
            assert time.monotonic() < deadline and not job["done"], job
            time.sleep(0.1)
        assert job["attempts"] == 1, job

"""Operating end to end: a paused queue holds its dispatches in the emulator, a resumed one
lets them go; a bulk retry's chunks carried on by Cloud Tasks."""

from __future__ import annotations

import time

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tests.e2e.conftest import Stack


def test_pause_holds_dispatches_and_resume_releases_them(stack: Stack, db: Engine) -> None:
    assert stack.post("/v1/queues/slow:pause").json()["cloud_tasks"] == "PAUSED"
    try:
        job = stack.post("/v1/jobs", json={"type": "echo", "queue": "slow"}).json()
        time.sleep(1.0)  # nothing to wait for: a paused queue dispatches nothing
        assert stack.get(f"/v1/jobs/{job['id']}").json()["state"] == "QUEUED"
    finally:
        assert stack.post("/v1/queues/slow:resume").json()["cloud_tasks"] == "RUNNING"
    assert stack.wait_for(job["id"], lambda j: j["done"])["state"] == "COMPLETED"


def test_a_bulk_retry_is_carried_on_by_its_tasks_until_done(stack: Stack, db: Engine) -> None:
    # the `unlimited` queue: 50 deliveries at once meet the server's RUN_CONCURRENCY (429s), and
    # a queue with few attempts could give a task up before its job ever ran (the sweeper's then)
    jobs = stack.post("/v1/jobs:batchCreate", json={"jobs": [
        {"type": "flaky", "queue": "unlimited", "payload": {"failures": 1}, "max_attempts": 1,
         "labels": {"e2e": "redrive"}} for _ in range(50)]}).json()["jobs"]
    for j in jobs:
        stack.wait_for(j["id"], lambda x: x["done"])
    op = stack.post("/v1/jobs:batchRetry", json={"filter": {"state": "FAILED", "label": "e2e:redrive"}}).json()
    name = op["name"]
    deadline = time.monotonic() + 30
    while not op["done"]:
        assert time.monotonic() < deadline, op
        time.sleep(0.1)
        op = stack.get(f"/v1/{name}").json()
    assert op["response"]["succeeded"] == 50
    for j in jobs:  # flaky failed its first attempt; the retry's (attempt 2) succeeds
        stack.wait_for(j["id"], lambda x: x["done"])
    with db.connect() as conn:
        done = dict(conn.execute(sa.text("SELECT state, count(*) FROM jobs WHERE labels @> '{\"e2e\": \"redrive\"}' "
                                         "GROUP BY state")).all())
    assert done == {"COMPLETED": 50}


def test_metrics_sum_the_workers_counts(stack: Stack) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    def created() -> float:
        text = stack.get("/metrics").text
        return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
                   if s.name == "cloudjobs_jobs_created_total" and s.labels.get("type") == "echo")

    before = created()
    for _ in range(20):  # spread over gunicorn's workers
        stack.post("/v1/jobs", json={"type": "echo"})
    assert created() - before == 20

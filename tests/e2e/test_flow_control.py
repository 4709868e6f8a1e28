"""Flow control and webhooks end to end: gunicorn, the emulator dispatching, real time.

The limit of a concurrency key is checked where it matters, on the attempts as they ran
(their start and finish times), and a webhook's retries are the webhooks queue's own."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from standardwebhooks.webhooks import Webhook

from tests.e2e.conftest import WEBHOOK_SECRET, Stack
from tests.servers import BurstHTTPServer


def batch(stack: Stack, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    resp = stack.post("/v1/jobs:batchCreate", json={"jobs": jobs})
    assert resp.status_code == 202, resp.text
    return list(resp.json()["jobs"])


def wait_all_done(db: Engine, ids: list[str], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with db.connect() as conn:
            left = conn.execute(sa.text("SELECT count(*) FROM jobs WHERE id = ANY(CAST(:i AS uuid[])) "
                                        "AND state NOT IN ('COMPLETED', 'FAILED', 'CANCELLED')"), {"i": ids}).scalar_one()
        if left == 0:
            return
        assert time.monotonic() < deadline, f"{left} jobs not done"
        time.sleep(0.1)


def most_at_once(intervals: list[tuple[Any, Any]]) -> int:
    """The largest number of intervals open at one instant (a finish before a start at a tie)."""
    events = sorted([(s, 1) for s, _ in intervals] + [(f, -1) for _, f in intervals], key=lambda e: (e[0], e[1]))
    now = peak = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak


def test_200_jobs_on_one_key_never_run_more_than_2_at_once_and_all_complete(stack: Stack, db: Engine) -> None:
    jobs = batch(stack, [{"type": "sleep", "queue": "keyed", "concurrency_key": "one-customer",
                          "payload": {"worktime": 0.02}} for _ in range(200)])
    quiet = batch(stack, [{"type": "sleep", "queue": "keyed", "concurrency_key": "another-customer",
                           "payload": {"worktime": 0.02}} for _ in range(4)])
    ids = [j["id"] for j in jobs]
    wait_all_done(db, [j["id"] for j in quiet], timeout=30)
    with db.connect() as conn:  # the other key's jobs did not wait behind the busy one
        busy_done = conn.execute(sa.text("SELECT count(*) FROM jobs WHERE id = ANY(CAST(:i AS uuid[])) "
                                         "AND state = 'COMPLETED'"), {"i": ids}).scalar_one()
    assert busy_done < 150, busy_done
    wait_all_done(db, ids)
    with db.connect() as conn:
        states = conn.execute(sa.text("SELECT state, count(*) FROM jobs WHERE id = ANY(CAST(:i AS uuid[])) "
                                      "GROUP BY state"), {"i": ids}).all()
        attempts = conn.execute(sa.text("SELECT started_time, finished_time FROM job_attempts "
                                        "WHERE job_id = ANY(CAST(:i AS uuid[]))"), {"i": ids}).all()
    assert dict(states) == {"COMPLETED": 200}
    assert len(attempts) >= 200
    assert most_at_once([(a.started_time, a.finished_time) for a in attempts]) == 2


def test_a_receiver_failing_twice_gets_one_event_delivered_three_times_through_the_queue(stack: Stack) -> None:
    got: list[tuple[dict[str, str], bytes]] = []
    statuses = [500, 502]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(statuses.pop(0) if statuses else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = BurstHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/done"
        job = stack.post("/v1/jobs", json={"type": "echo", "payload": {"x": 1}, "callback_url": url}).json()
        deadline = time.monotonic() + 30
        while len(got) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # nothing more comes
        assert len(got) == 3
        assert len({h["webhook-id"] for h, _ in got}) == 1
        for headers, body in got:
            assert Webhook(WEBHOOK_SECRET).verify(body, headers)["data"]["id"] == job["id"]
        [cb] = stack.get(f"/v1/jobs/{job['id']}/callbacks").json()["callbacks"]
        assert cb["state"] == "DELIVERED" and [d["status_code"] for d in cb["deliveries"]] == [500, 502, 200]
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_a_throttle_of_10_a_minute_holds_over_a_real_minute(stack: Stack, db: Engine) -> None:
    # 15 jobs at once on a key of the throttled queue (10/m): dispatched one every 6 s, so the
    # rate over the minute is 10/m within 5%, and no two start closer than 5% under 6 s (a
    # delivery's own latency, tens of milliseconds, is the only jitter). All complete.
    jobs = batch(stack, [{"type": "echo", "queue": "throttled", "concurrency_key": "partner-api",
                          "payload": {"i": i}} for i in range(15)])
    ids = [j["id"] for j in jobs]
    wait_all_done(db, ids[:11], timeout=100)
    with db.connect() as conn:
        starts = sorted(r[0] for r in conn.execute(sa.text(
            "SELECT started_time FROM job_attempts WHERE job_id = ANY(CAST(:i AS uuid[]))"), {"i": ids}))
    gaps = [(b - a).total_seconds() for a, b in zip(starts[:11], starts[1:11], strict=False)]
    assert min(gaps) >= 6.0 * 0.95, gaps
    per_minute = 10 / ((starts[10] - starts[0]).total_seconds() / 60)
    assert per_minute == pytest.approx(10, rel=0.05), gaps
    wait_all_done(db, ids, timeout=40)

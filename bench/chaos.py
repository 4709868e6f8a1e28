"""The chaos run: many mixed jobs and workflows, random failures, duplicate deliveries,
worker kills and database faults.

    python -m bench.chaos [--jobs 2000] [--workflows 10] [--fires 60] [--messages 200]
                          [--database-url URL] [--seed S] [--quick]

Database faults, every few seconds in turn: a read-only interval (the database set to
`default_transaction_read_only` and its connections dropped, as a failover to a standby looks
to the app, then writable again without dropping them) and a restart — a real PostgreSQL
restart, fast or immediate, when the run has its own embedded server (`--database-url ''`),
else every connection to the run's database terminated (a shared server is not restarted).

Half the jobs are created in batches, up to 10 to a Cloud Task (chaos.queues.yaml's
`jobs_per_task`); duplicates are delivered of single jobs and of shared tasks alike.

At the end every job must be terminal, each terminal transition must have happened exactly
once, every attempt a claim started must have exactly one attempt row, and nothing may be
stuck. Workflows (diamonds and fan-ins of 200, duplicates delivered to their steps too) add:
every dependent left WAITING exactly once and never before its last dependency ended, nothing
WAITING once its dependencies are terminal, and each workflow's state and counters equal to
its steps'. Schedule fires (overlap allow, skip and cancel_previous) and Pub/Sub pushes, each
delivered one to three times, at once or later, add: one fire row per fire time, one job per
created fire and none for a skipped one, one job per pushed message. Keyed jobs (a
concurrency key with a limit of 2, priorities, some sharing a unique key) add: never more
attempts of a key at once than its limit (from the attempt rows' times), one job per unique
key, and nothing left WAITING with its key free. Jobs with a callback URL (a receiver that
fails a fifth of its deliveries) add: exactly one webhook event per terminal transition,
each delivered, with one webhook-id however often it was sent. Prints the tally; exits 1 on
any violation. Everything runs on loopback.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil
import requests
import sqlalchemy as sa
from google.cloud import tasks_v2
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from api.cloud.tasks import SHARED_PREFIX, make_client, queue_path
from bench.stack import DEFAULT_SERVER, Stack, fresh_database, running_stack

HERE = Path(__file__).resolve().parent
CHAOS_SCHEDULES = ("chaos-tick", "chaos-skip", "chaos-cancel")
SHARED_LIKE = f"%/tasks/{SHARED_PREFIX}%"  # the task names of shared tasks (api.cloud.tasks.is_shared)

# Transitions are recorded by a trigger that exists only in the chaos database.
AUDIT = """
CREATE TABLE chaos_transitions (
    job_id uuid NOT NULL, old_state text, new_state text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE FUNCTION chaos_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO chaos_transitions (job_id, old_state, new_state) VALUES (NEW.id, NULL, NEW.state);
    ELSIF OLD.state IS DISTINCT FROM NEW.state THEN
        INSERT INTO chaos_transitions (job_id, old_state, new_state) VALUES (NEW.id, OLD.state, NEW.state);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER chaos_audit AFTER INSERT OR UPDATE ON jobs FOR EACH ROW EXECUTE FUNCTION chaos_audit();
"""


def job_mix(rng: random.Random, n: int, callback_url: str | None = None) -> list[dict[str, Any]]:
    """N job requests: echo, sleep, flaky that succeeds, flaky that runs out of attempts."""
    jobs = []
    for i in range(n):
        roll = rng.random()
        body: dict[str, Any]
        if roll < 0.4:
            body = {"type": "echo", "payload": {"i": i}}
        elif roll < 0.6:
            body = {"type": "sleep", "payload": {"seconds": round(rng.uniform(0.01, 0.3), 3)}}
        elif roll < 0.9:
            body = {"type": "flaky", "payload": {"failures": rng.randint(1, 2)}}
        else:
            body = {"type": "flaky", "payload": {"failures": 9}, "max_attempts": 3}
        body["timeout_s"] = 2  # a killed attempt's lease ends soon after
        if rng.random() < 0.15:  # keyed: a few customers' keys, a limit of 2, priorities
            body.update(queue="keyed", concurrency_key=f"customer-{rng.randint(0, 3)}", priority=rng.randint(-2, 2))
            if i % 5 == 0:  # pairs of creates that mean the same work
                body["unique_key"] = f"work-{i // 10}"
        if callback_url is not None and rng.random() < 0.1:
            body["callback_url"] = callback_url
        jobs.append(body)
    return jobs


def workflow_mix(rng: random.Random, n: int, fan_in: int) -> list[dict[str, Any]]:
    """N workflows: diamonds whose branches may fail (each policy in turn), and fan-ins."""
    out: list[dict[str, Any]] = []
    for i in range(n):
        if i % 3 == 2:
            steps = [{"name": f"p{k}", "type": "echo", "payload": {"k": k}, "timeout_s": 2} for k in range(fan_in)]
            steps.append({"name": "join", "type": "echo", "needs": [f"p{k}" for k in range(fan_in)], "timeout_s": 2})
            out.append({"name": f"fan-in-{i}", "steps": steps})
            continue
        doomed = rng.random() < 0.3  # a branch that runs out of attempts
        b = ({"type": "flaky", "payload": {"failures": 9}, "max_attempts": 2} if doomed
             else {"type": "flaky", "payload": {"failures": rng.randint(0, 2)}})
        policy = ("fail", "cancel", "run")[i % 3]
        out.append({"name": f"diamond-{i}", "steps": [
            {"name": "a", "type": "echo", "payload": {"i": i}, "timeout_s": 2},
            {"name": "b", **b, "needs": ["a"], "timeout_s": 2},
            {"name": "c", "type": "sleep", "payload": {"seconds": round(rng.uniform(0.01, 0.2), 3)},
             "needs": ["a"], "timeout_s": 2},
            {"name": "d", "type": "echo", "needs": ["b", "c"], "on_dependency_failure": policy, "timeout_s": 2},
        ]})
    return out


class Chaos:
    """Creates the jobs, injects the faults, then checks the invariants."""

    def __init__(self, stack: Stack, *, rng: random.Random, kill_every_s: float, dup_fraction: float,
                 db_fault_every_s: float = 0.0, server: Any = None) -> None:
        self.stack = stack
        self.db_fault_every_s = db_fault_every_s
        self.server = server  # an embedded PostgreSQL the run may restart
        self.db_faults: dict[str, int] = {}
        self.rng = rng
        self.kill_every_s = kill_every_s
        self.dup_fraction = dup_fraction
        self.kills = 0
        self.duplicates = 0
        self.sweeps = 0
        self.trigger_deliveries = 0
        self.shared_duplicates = 0
        self.stop = threading.Event()
        # The sweeper outlives the faults: it is the net that sends webhook events whose task
        # was never created (a fault between the commit and the send), after the jobs ended.
        self.stop_sweeping = threading.Event()

    def submit(self, bodies: list[dict[str, Any]]) -> list[str]:
        """Half one by one, half in batches; returns the job ids.

        A worker may die after committing a job but before answering; the retried request
        carries the same Idempotency-Key, so it returns that job instead of making another.
        """
        ids: list[str] = []
        half = len(bodies) // 2
        session = requests.Session()
        run = uuid.uuid4().hex[:8]
        for n, body in enumerate(bodies[:half]):
            key = {"Idempotency-Key": f"chaos-{run}-{n}"}
            resp = _retrying(lambda b=body, k=key: session.post(self.stack.url + "/v1/jobs", json=b, headers=k, timeout=30))
            assert resp.status_code in (200, 202), resp.text
            ids.append(resp.json()["id"])
        rest = bodies[half:]
        for i in range(0, len(rest), 200):
            key = {"Idempotency-Key": f"chaos-{run}-batch-{i}"}
            resp = _retrying(lambda c=rest[i:i + 200], k=key: session.post(
                self.stack.url + "/v1/jobs:batchCreate", json={"jobs": c}, headers=k, timeout=60))
            assert resp.status_code in (200, 202), resp.text
            ids += [j["id"] for j in resp.json()["jobs"]]
        return ids

    def submit_workflows(self, bodies: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
        """Each workflow in one request (retried with its Idempotency-Key); the workflow ids
        and their steps' job ids."""
        session = requests.Session()
        run = uuid.uuid4().hex[:8]
        workflow_ids: list[str] = []
        step_ids: list[str] = []
        for n, body in enumerate(bodies):
            key = {"Idempotency-Key": f"chaos-{run}-wf-{n}"}
            resp = _retrying(lambda b=body, k=key: session.post(
                self.stack.url + "/v1/workflows", json=b, headers=k, timeout=60))
            assert resp.status_code in (200, 202), resp.text
            workflow_ids.append(resp.json()["id"])
            step_ids += [s["job_id"] for s in resp.json()["steps"]]
        return workflow_ids, step_ids

    def fire_and_push(self, fires: int, messages: int) -> tuple[set[str], dict[str, int]]:
        """Deliver `fires` fire times of each chaos schedule and `messages` Pub/Sub messages,
        each one to three times, shuffled, from four threads (retried through kills and
        faults, as Cloud Scheduler and Pub/Sub retry); the job ids the answers named."""
        config = self.stack.config
        token = self.stack.emulator.issuer.id_token(config.tasks_service_account, config.audience)
        auth = {"Authorization": f"Bearer {token}"}
        deliveries: list[tuple[str, dict[str, str], Any]] = []
        for schedule in CHAOS_SCHEDULES:
            for i in range(fires):
                at = f"2026-01-01T{i // 60:02d}:{i % 60:02d}:00Z"
                headers = {**auth, "X-CloudScheduler-JobName": f"cloudjobs-schedule-{schedule}", "X-CloudScheduler-ScheduleTime": at}
                deliveries += [("/handlers/schedule", headers, {"schedule": schedule})] * self.rng.randint(1, 3)
        for i in range(messages):
            body = {"message": {"messageId": f"chaos-{i}", "data": base64.b64encode(json.dumps({"n": i}).encode()).decode()},
                    "subscription": "projects/bench-project/subscriptions/chaos-push"}
            deliveries += [("/handlers/pubsub", auth, body)] * self.rng.randint(1, 3)
        self.rng.shuffle(deliveries)
        session = requests.Session()

        def deliver(d: tuple[str, dict[str, str], Any]) -> dict[str, Any]:
            resp = _retrying(lambda: session.post(self.stack.url + d[0], json=d[2], headers=d[1], timeout=30))
            assert resp.status_code == 200, resp.text
            return dict(resp.json())

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(deliver, deliveries))
        ids = {a["job"]["id"] for a in answers if a.get("job")}
        self.trigger_deliveries = len(deliveries)
        return ids, {"fires": fires * len(CHAOS_SCHEDULES), "messages": messages}

    def duplicate(self, ids: list[str], engine: sa.Engine) -> None:
        """Deliver some jobs twice, and some shared tasks whole: a second task with the same
        body, as at-least-once may."""
        client = make_client(self.stack.config)
        parent = queue_path(self.stack.config, "default")
        bodies = [{"job_id": job_id} for job_id in self.rng.sample(ids, int(len(ids) * self.dup_fraction))]
        with engine.connect() as conn:
            shared = conn.execute(sa.text(
                "SELECT array_agg(id::text) FROM jobs WHERE task_name LIKE :shared GROUP BY task_name"), {"shared": SHARED_LIKE}
            ).scalars().all()
        bodies += [{"job_ids": group} for group in self.rng.sample(shared, int(len(shared) * self.dup_fraction * 3))]
        for body in bodies:
            client.create_task(parent=parent, task=tasks_v2.Task(
                name=f"{parent}/tasks/dup-{uuid.uuid4().hex}",
                http_request=tasks_v2.HttpRequest(
                    http_method=tasks_v2.HttpMethod.POST,
                    url=f"{self.stack.url}/handlers/run",
                    headers={"Content-Type": "application/json"},
                    body=json.dumps(body).encode(),
                    oidc_token=tasks_v2.OidcToken(service_account_email=self.stack.config.tasks_service_account,
                                                  audience=self.stack.config.audience),
                ),
            ))
            self.duplicates += 1
            self.shared_duplicates += "job_ids" in body

    def killer(self) -> None:
        """SIGKILL a random gunicorn worker now and then; the master starts another."""
        master = psutil.Process(self.stack.gunicorn.pid)
        while not self.stop.wait(self.kill_every_s * self.rng.uniform(0.5, 1.5)):
            workers = master.children()
            if workers:
                self.rng.choice(workers).send_signal(signal.SIGKILL)
                self.kills += 1

    def database_faults(self) -> None:
        """A read-only interval, then a restart, in turn, every `db_fault_every_s` or so."""
        url = sa.make_url(self.stack.database_url)
        name = url.database  # altered from the server's own database, which stays writable
        admin = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT",
                                 poolclass=sa.pool.NullPool)
        drop = sa.text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                       "WHERE datname = :name AND pid <> pg_backend_pid()").bindparams(name=name)
        kinds = ["read-only", "restart"]
        while not self.stop.wait(self.db_fault_every_s * self.rng.uniform(0.5, 1.5)):
            kind = kinds[sum(self.db_faults.values()) % 2]
            try:
                if kind == "read-only":
                    with admin.connect() as conn:
                        conn.execute(sa.text(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on'))
                        conn.execute(drop)
                    self.stop.wait(1.5)
                    with admin.connect() as conn:  # pooled read-only sessions stay: the app must replace them
                        conn.execute(sa.text(f'ALTER DATABASE "{name}" RESET default_transaction_read_only'))
                elif self.server is not None:
                    from pgserver._commands import pg_ctl

                    mode = self.rng.choice(["fast", "immediate"])
                    pg_ctl(["-w", "-m", mode, "restart"], pgdata=self.server.pgdata, user=self.server.system_user)
                else:
                    with admin.connect() as conn:
                        conn.execute(drop)
                self.db_faults[kind] = self.db_faults.get(kind, 0) + 1
            except Exception as e:  # the fault itself failed (the server was still coming back)
                print(f"database fault {kind} failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}",
                      file=sys.stderr)
        admin.dispose()

    def sweeper(self) -> None:
        """What Cloud Scheduler would do: a sweep every second."""
        from api import create_app
        from api.config import Config
        from api.orchestration.sweep import sweep

        app = create_app(Config.from_env(self.stack.env))
        state = app.extensions["cloudjobs"]
        while not self.stop_sweeping.wait(1.0):
            try:
                sweep(state)
                self.sweeps += 1
            except Exception as e:  # a sweep that fails is retried next second, as Scheduler would
                print(f"sweep failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}", file=sys.stderr)
        state.engine.dispose()


def _retrying(call: Any, attempts: int = 20) -> requests.Response:
    """A client retrying connection errors and 5xx (a worker may be killed under it)."""
    for i in range(attempts):
        try:
            resp = call()
            if resp.status_code < 500:
                return resp
        except requests.RequestException:
            pass
        time.sleep(min(0.05 * 2**i, 1.0))
    raise RuntimeError("the API did not answer")


def check_triggers(conn: sa.Connection, expected: dict[str, int]) -> list[str]:
    """Schedule fires and pushed messages acted exactly once."""
    violations = []
    fires = conn.execute(sa.text("SELECT count(*) FROM schedule_fires")).scalar_one()
    if fires != expected["fires"]:
        violations.append(f"{expected['fires']} fire times delivered, {fires} fire rows")
    doubled = conn.execute(sa.text("""
        SELECT count(*) FROM (SELECT 1 FROM jobs WHERE schedule IS NOT NULL
                              GROUP BY schedule, scheduled_for HAVING count(*) > 1) x""")).scalar_one()
    if doubled:
        violations.append(f"{doubled} fire times created more than one job")
    mismatched = conn.execute(sa.text("""
        SELECT count(*) FROM schedule_fires f
        WHERE (f.outcome = 'created') <> EXISTS (SELECT 1 FROM jobs j WHERE j.schedule = f.schedule
                                                  AND j.scheduled_for = f.scheduled_for AND j.id = f.job_id)
           OR (f.outcome = 'skipped' AND f.previous_job_id IS NULL)""")).scalar_one()
    if mismatched:
        violations.append(f"{mismatched} fires whose job does not match their outcome")
    pushed = conn.execute(sa.text("SELECT count(DISTINCT message_id), count(*) FROM jobs WHERE trigger IS NOT NULL")).one()
    if tuple(pushed) != (expected["messages"], expected["messages"]):
        violations.append(f"{expected['messages']} messages pushed, {pushed[1]} jobs for {pushed[0]} of them")
    return violations


def check_keys(conn: sa.Connection, peaks: dict[str, int]) -> list[str]:
    """Keyed jobs: never more attempts of a key at once than its limit; one holder per unique key."""
    out = []
    rows = conn.execute(sa.text("""
        SELECT j.concurrency_key, j.concurrency_limit, a.started_time, a.finished_time
        FROM job_attempts a JOIN jobs j ON j.id = a.job_id
        WHERE j.concurrency_limit IS NOT NULL""")).all()
    by_key: dict[str, list[tuple[Any, int]]] = {}
    limits = {}
    for key, limit, started, finished in rows:
        by_key.setdefault(key, []).extend([(started, 1), (finished, -1)])
        limits[key] = limit
    for key, events in by_key.items():
        now = peak = 0
        for _, step in sorted(events, key=lambda e: (e[0], e[1])):
            now += step
            peak = max(peak, now)
        peaks[key] = peak
        if peak > limits[key]:
            out.append(f"key {key}: {peak} attempts at once, over its limit of {limits[key]}")
    # A second job of a unique key only once the first had ended (by the audit's clock: the
    # second's insert after the first's terminal transition).
    twice = conn.execute(sa.text("""
        SELECT count(*) FROM jobs a
        JOIN jobs b ON b.unique_key = a.unique_key AND coalesce(b.owner, '') = coalesce(a.owner, '') AND b.id <> a.id
        JOIN chaos_transitions ai ON ai.job_id = a.id AND ai.old_state IS NULL
        JOIN chaos_transitions bi ON bi.job_id = b.id AND bi.old_state IS NULL
        WHERE a.unique_key IS NOT NULL AND ai.at < bi.at
          AND NOT EXISTS (SELECT 1 FROM chaos_transitions ae WHERE ae.job_id = a.id
                          AND ae.new_state IN ('COMPLETED','FAILED','CANCELLED') AND ae.at < bi.at)
    """)).scalar_one()
    if twice:
        out.append(f"{twice} jobs created while another job held their unique key")
    return out


def check_webhooks(conn: sa.Connection, received: dict[str, int]) -> tuple[dict[str, Any], list[str]]:
    """One event per terminal transition of a job with a callback, each delivered, one id each."""
    out = []
    transitions = conn.execute(sa.text("""
        SELECT count(*) FROM chaos_transitions t JOIN jobs j ON j.id = t.job_id
        WHERE j.callback_url IS NOT NULL AND t.new_state IN ('COMPLETED','FAILED','CANCELLED')""")).scalar_one()
    events: dict[str, int] = dict(conn.execute(sa.text(
        "SELECT CASE WHEN delivered_time IS NOT NULL THEN 'delivered' WHEN failed_time IS NOT NULL THEN 'failed' "
        "ELSE 'pending' END, count(*) FROM webhook_events GROUP BY 1")).all())
    ids = {r[0] for r in conn.execute(sa.text("SELECT id FROM webhook_events"))}
    if sum(events.values()) != transitions:
        out.append(f"{transitions} terminal transitions of jobs with callbacks, {sum(events.values())} webhook events")
    if events.get("delivered", 0) != sum(events.values()):
        out.append(f"webhook events not delivered: {events}")
    if unknown := set(received) - ids:
        out.append(f"{len(unknown)} webhook-ids received that are no event's")
    if missing := ids - set(received):
        out.append(f"{len(missing)} webhook events never received")
    tally = {"webhook_events": events, "webhook_deliveries_received": sum(received.values()),
             "webhook_ids_received_more_than_once": sum(1 for n in received.values() if n > 1)}
    return tally, out


class Receiver:
    """A webhook receiver on loopback that refuses a fifth of its deliveries (500), verifies
    every signature with the standardwebhooks library, and counts deliveries by webhook-id."""

    def __init__(self, secret: str, rng: random.Random) -> None:
        self.received: dict[str, int] = {}
        self.forged = 0
        lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                try:
                    Webhook(secret).verify(body, dict(self.headers))
                except WebhookVerificationError:
                    receiver.forged += 1
                    self.send_response(400)
                else:
                    with lock:
                        fail = rng.random() < 0.2
                        if not fail:
                            msg = self.headers["webhook-id"]
                            receiver.received[msg] = receiver.received.get(msg, 0) + 1
                    self.send_response(500 if fail else 204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def check(engine: sa.Engine, ids: list[str], expected: dict[str, int] | None = None) -> tuple[dict[str, Any], list[str]]:
    """The tally and the list of violated invariants."""
    violations: list[str] = []
    with engine.connect() as conn:
        if expected is not None:
            violations += check_triggers(conn, expected)
        states: dict[str, int] = dict(conn.execute(sa.text("SELECT state, count(*) FROM jobs GROUP BY state")).all())
        total = sum(states.values())
        if total != len(set(ids)):  # a create with a held unique key answers the job holding it
            violations.append(f"{len(set(ids))} jobs submitted, {total} in the table")
        peaks: dict[str, int] = {}
        violations += check_keys(conn, peaks)
        live = conn.execute(sa.text(
            "SELECT count(*) FROM jobs WHERE state IN ('WAITING','CREATED','QUEUED','RUNNING')")).scalar_one()
        if live:
            violations.append(f"{live} jobs are not terminal")
        released_twice = conn.execute(sa.text("""
            SELECT count(*) FROM (
                SELECT job_id FROM chaos_transitions WHERE old_state = 'WAITING'
                GROUP BY job_id HAVING count(*) <> 1) x""")).scalar_one()
        if released_twice:
            violations.append(f"{released_twice} dependents left WAITING other than exactly once")
        early = conn.execute(sa.text("""
            SELECT count(*) FROM chaos_transitions r
            JOIN job_dependencies e ON e.job_id = r.job_id
            JOIN chaos_transitions p ON p.job_id = e.parent_id
                 AND p.new_state IN ('COMPLETED','FAILED','CANCELLED')
            WHERE r.old_state = 'WAITING' AND r.new_state = 'QUEUED' AND r.at < p.at""")).scalar_one()
        if early:
            violations.append(f"{early} dependents were released before a dependency ended")
        edges_left = conn.execute(sa.text("SELECT count(*) FROM job_dependencies WHERE NOT done")).scalar_one()
        if edges_left:
            violations.append(f"{edges_left} dependency edges never released")
        workflows_off = conn.execute(sa.text("""
            SELECT count(*) FROM workflows w, LATERAL (
                SELECT count(*) FILTER (WHERE state NOT IN ('COMPLETED','FAILED','CANCELLED')) AS active,
                       count(*) FILTER (WHERE state = 'FAILED') AS failed,
                       count(*) FILTER (WHERE state = 'CANCELLED') AS cancelled
                FROM jobs WHERE workflow_id = w.id) s
            WHERE w.state = 'RUNNING' OR w.active <> s.active OR w.failed <> s.failed
               OR w.cancelled <> s.cancelled""")).scalar_one()
        if workflows_off:
            violations.append(f"{workflows_off} workflows not ended, or their counters differ from their steps")
        workflow_states: dict[str, int] = dict(
            conn.execute(sa.text("SELECT state, count(*) FROM workflows GROUP BY state")).all())
        released = conn.execute(sa.text(
            "SELECT count(*) FROM chaos_transitions WHERE old_state = 'WAITING'")).scalar_one()
        twice = conn.execute(sa.text("""
            SELECT count(*) FROM (
                SELECT job_id FROM chaos_transitions
                WHERE new_state IN ('COMPLETED','FAILED','CANCELLED')
                GROUP BY job_id HAVING count(*) <> 1) x""")).scalar_one()
        if twice:
            violations.append(f"{twice} jobs reached a terminal state other than exactly once")
        bad_history = conn.execute(sa.text("""
            SELECT count(*) FROM jobs j
            WHERE j.attempts <> (SELECT count(*) FROM job_attempts a WHERE a.job_id = j.id)
               OR j.attempts <> coalesce((SELECT max(number) FROM job_attempts a WHERE a.job_id = j.id), 0)
            """)).scalar_one()
        if bad_history:
            violations.append(f"{bad_history} jobs whose attempt rows do not match their attempts")
        leases = conn.execute(sa.text(
            "SELECT count(*) FROM jobs WHERE lease_expires_time IS NOT NULL AND state <> 'RUNNING'")).scalar_one()
        if leases:
            violations.append(f"{leases} finished jobs still hold a lease")
        outcomes: dict[str, int] = dict(
            conn.execute(sa.text("SELECT outcome, count(*) FROM job_attempts GROUP BY outcome")).all()
        )
        attempts = conn.execute(sa.text("SELECT count(*) FROM job_attempts")).scalar_one()
        shared = conn.execute(sa.text(
            "SELECT count(DISTINCT task_name), count(*) FROM jobs WHERE task_name LIKE :shared"), {"shared": SHARED_LIKE}).one()
        fire_outcomes: dict[str, int] = dict(
            conn.execute(sa.text("SELECT outcome, count(*) FROM schedule_fires GROUP BY outcome")).all())
        keyed = conn.execute(sa.text("SELECT count(*) FROM jobs WHERE concurrency_limit IS NOT NULL")).scalar_one()
    tally = {"keyed_jobs": keyed, "keyed_most_attempts_at_once": peaks, "creates_answered_by_a_unique_holder": len(ids) - len(set(ids)),
             "schedule_fires": fire_outcomes, "shared_tasks": shared[0], "jobs_in_shared_tasks": shared[1], "jobs": total, "states": states, "attempt_rows": attempts, "attempt_outcomes": outcomes,
             "workflows": workflow_states, "dependents_released": released}
    return tally, violations


def main(argv: list[str] | None = None) -> int:
    """Run the chaos run; 0 when every invariant holds."""
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=2000)
    p.add_argument("--database-url", default=DEFAULT_SERVER,
                   help="a PostgreSQL server; a fresh database is made on it ('' for an embedded one)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--kill-every", type=float, default=2.0, help="seconds between worker kills")
    p.add_argument("--duplicates", type=float, default=0.1, help="fraction of jobs delivered twice")
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--workflows", type=int, default=9, help="workflows: diamonds and fan-ins, in turn")
    p.add_argument("--fan-in", type=int, default=200, help="steps joined by each fan-in workflow")
    p.add_argument("--db-fault-every", type=float, default=6.0,
                   help="seconds between database faults (read-only interval, restart); 0: none")
    p.add_argument("--fires", type=int, default=60, help="fire times delivered per chaos schedule")
    p.add_argument("--messages", type=int, default=200, help="Pub/Sub messages pushed")
    p.add_argument("--quick", action="store_true", help="a short run for the test suite")
    args = p.parse_args(argv)
    if args.quick:
        args.jobs = min(args.jobs, 200)
        args.kill_every = min(args.kill_every, 1.0)
        args.workflows = min(args.workflows, 6)
        args.fan_in = min(args.fan_in, 40)
        args.db_fault_every = min(args.db_fault_every, 2.5)
        args.fires = min(args.fires, 10)
        args.messages = min(args.messages, 30)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    server = None
    if not args.database_url:  # an embedded server of the run's own, which it may restart
        from api.cli.devdb import start_embedded_postgres

        args.database_url, server = start_embedded_postgres(Path(tempfile.mkdtemp(prefix="cloudjobs-chaos-")) / "pg")
    try:
        return _run(args, seed, server)
    finally:
        if server is not None:
            server.cleanup()


def _run(args: argparse.Namespace, seed: int, server: Any) -> int:
    rng = random.Random(seed)
    started = time.monotonic()
    with fresh_database(args.database_url) as url:
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        with engine.begin() as conn:
            conn.exec_driver_sql(AUDIT)
        secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
        receiver = Receiver(secret, random.Random(seed + 1))
        extra = {"LEASE_MARGIN_S": "1", "SWEEP_CREATED_AFTER_S": "2", "SWEEP_QUEUED_AFTER_S": "5",
                 "SCHEDULES_FILE": str(HERE / "chaos.schedules.yaml"),
                 "WEBHOOK_SECRETS": secret, "WEBHOOK_ALLOW_PRIVATE": "true"}
        with running_stack(url, queues_file=HERE / "chaos.queues.yaml", extra_env=extra) as stack:
            chaos = Chaos(stack, rng=rng, kill_every_s=args.kill_every, dup_fraction=args.duplicates,
                          db_fault_every_s=args.db_fault_every, server=server)
            sweeper = threading.Thread(target=chaos.sweeper, daemon=True)
            threads = [threading.Thread(target=chaos.killer, daemon=True), sweeper]
            if args.db_fault_every > 0:
                threads.append(threading.Thread(target=chaos.database_faults, daemon=True))
            for t in threads:
                t.start()
            ids = chaos.submit(job_mix(rng, args.jobs, receiver.url))
            workflow_ids, step_ids = chaos.submit_workflows(workflow_mix(rng, args.workflows, args.fan_in))
            ids += step_ids
            triggered, expected = chaos.fire_and_push(args.fires, args.messages)
            chaos.duplicate(ids, engine)
            ids += sorted(triggered)
            deadline = time.monotonic() + args.timeout
            while time.monotonic() < deadline:
                try:
                    with engine.connect() as conn:
                        live = conn.execute(sa.text(
                            "SELECT count(*) FROM jobs WHERE state IN ('WAITING','CREATED','QUEUED','RUNNING')")
                        ).scalar_one()
                except (sa.exc.DBAPIError, OSError):  # a database fault: ask again
                    live = -1
                if live == 0:
                    break
                time.sleep(0.5)
            chaos.stop.set()
            for t in threads:
                if t is not sweeper:
                    t.join(timeout=30)
            time.sleep(1.0)  # let in-flight duplicate deliveries land before checking
            tally, violations = check(engine, ids, expected)
            deadline = time.monotonic() + 60  # webhooks are delivered after their jobs ended
            while True:
                with engine.connect() as conn:
                    hooks, hook_violations = check_webhooks(conn, receiver.received)
                if not hook_violations or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            chaos.stop_sweeping.set()
            sweeper.join(timeout=30)
            tally.update(hooks, webhook_signatures_refused=receiver.forged)
            violations += hook_violations
            receiver.close()
        engine.dispose()
    tally.update(seed=seed, workflows_submitted=len(workflow_ids), worker_kills=chaos.kills,
                 duplicate_deliveries=chaos.duplicates, shared_task_duplicates=chaos.shared_duplicates,
                 trigger_deliveries=chaos.trigger_deliveries,
                 database_faults=chaos.db_faults, sweeps=chaos.sweeps, seconds=round(time.monotonic() - started, 1))
    print(json.dumps(tally, indent=2, sort_keys=True))
    for v in violations:
        print(f"VIOLATION: {v}", file=sys.stderr)
    print("chaos run: " + ("clean" if not violations else f"{len(violations)} violation(s)"))
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())

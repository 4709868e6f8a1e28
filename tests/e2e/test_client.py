"""cloudjobs_client.client against gunicorn, the emulator and PostgreSQL; a lossy front for its retries."""

from __future__ import annotations

import http.server
import json
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from cloudjobs_client.client import Client, Conflict, Job, NotFound, Unauthorized, Unavailable, ValidationFailed
from sqlalchemy.engine import Engine

from tests.e2e.conftest import Stack
from tests.servers import BurstHTTPServer


@pytest.fixture
def settled(db: Engine) -> Iterator[None]:
    """Let every job a test made finish before `db` empties the tables.

    A TRUNCATE racing a handler's finish statement deadlocks, so no test may leave a job
    running behind it.
    """
    yield
    deadline = time.monotonic() + 30
    sql = sa.text("SELECT count(*) FROM jobs WHERE state IN ('CREATED', 'QUEUED', 'RUNNING')")
    while True:
        with db.connect() as conn:
            live = conn.execute(sql).scalar_one()
        if not live:
            return
        assert time.monotonic() < deadline, f"{live} jobs still live after the test"
        time.sleep(0.05)


pytestmark = pytest.mark.usefixtures("settled")


@pytest.fixture
def client(stack: Stack) -> Iterator[Client]:
    with Client(stack.url, timeout=10) as c:
        yield c


def later() -> datetime:
    """A run_at far enough ahead that the job stays QUEUED for the test."""
    return datetime.now(UTC) + timedelta(hours=1)


def count_labelled(db: Engine, run: str) -> int:
    with db.connect() as conn:
        sql = sa.text("SELECT count(*) FROM jobs WHERE labels @> CAST(:l AS jsonb)")
        return int(conn.execute(sql, {"l": json.dumps({"run": run})}).scalar_one())


def test_submit_then_wait_returns_the_completed_job_typed(client: Client, db: Engine) -> None:
    job = client.submit("echo", {"a": 1}, labels={"team": "x"})
    assert isinstance(job, Job) and job.type == "echo" and job.labels == {"team": "x"}
    done = client.wait(job.id, timeout=20)
    assert done.done and done.succeeded and done.state == "COMPLETED"
    assert done.result == {"a": 1} and done.error is None
    assert done.created_time.tzinfo is not None
    assert done.done_time is not None and done.done_time >= done.created_time
    assert done.raw["id"] == job.id
    [attempt] = client.attempts(job.id)
    assert attempt.number == 1 and attempt.outcome == "COMPLETED" and attempt.duration_s >= 0


def test_under_gunicorn_a_waiter_is_woken_by_the_notification(client: Client, db: Engine) -> None:
    job = client.submit("sleep", {"seconds": 1})
    done = client.wait(job.id, timeout=30)
    assert done.state == "COMPLETED" and done.done_time is not None
    # The fallback would answer up to 5 s after the job ended; the NOTIFY answers at once.
    assert (datetime.now(UTC) - done.done_time).total_seconds() < 2.5


def test_wait_returns_the_job_as_it_is_when_the_timeout_passes(client: Client, db: Engine) -> None:
    job = client.submit("echo", run_at=later())
    start = time.monotonic()
    seen = client.wait(job.id, timeout=1.2)
    assert not seen.done and seen.state == "QUEUED"
    assert 1.2 <= time.monotonic() - start < 3.5
    client.cancel(job.id)  # its task would otherwise outlive the test


def test_submit_many_and_list_every_page(client: Client, db: Engine) -> None:
    run = uuid.uuid4().hex
    made = client.submit_many([{"type": "echo", "payload": {"i": i}, "labels": {"run": run}} for i in range(7)])
    assert [j.payload["i"] for j in made] == list(range(7))
    listed = list(client.list(labels={"run": run}, page_size=3))  # three pages
    assert sorted(j.id for j in listed) == sorted(j.id for j in made)
    assert [j.created_time for j in listed] == sorted((j.created_time for j in listed), reverse=True)
    assert list(client.list(labels={"run": run}, type="sleep")) == []


def test_cancel_then_retry_runs_the_job_again(client: Client, db: Engine) -> None:
    job = client.submit("echo", {"k": "v"}, run_at=later())
    cancelled = client.cancel(job.id)
    assert cancelled.state == "CANCELLED" and cancelled.done
    assert client.cancel(job.id).state == "CANCELLED"  # idempotent
    again = client.retry(job.id)
    assert again.state in ("CREATED", "QUEUED", "RUNNING", "COMPLETED")
    assert client.wait(job.id, timeout=20).state == "COMPLETED"
    with pytest.raises(Conflict) as e:
        client.retry(job.id)
    assert e.value.status == 409 and e.value.title == "Job state conflict"


def test_problems_become_typed_exceptions(client: Client, db: Engine) -> None:
    with pytest.raises(NotFound) as nf:
        client.get(str(uuid.uuid4()))
    assert (nf.value.status, nf.value.title) == (404, "Job not found")
    with pytest.raises(ValidationFailed) as vf:
        client.submit("no-such-type", {})
    assert vf.value.status == 422 and vf.value.errors[0]["field"] == "type"
    with pytest.raises(ValidationFailed) as bad:
        list(client.list(state="SLEEPING"))
    assert bad.value.status == 400 and "SLEEPING" in bad.value.detail


def test_the_same_idempotency_key_returns_the_same_job(client: Client, db: Engine) -> None:
    key = f"k-{uuid.uuid4()}"
    first = client.submit("echo", {"n": 1}, idempotency_key=key)
    second = client.submit("echo", {"n": 1}, idempotency_key=key)
    assert second.id == first.id
    with pytest.raises(Conflict) as e:
        client.submit("echo", {"n": 2}, idempotency_key=key)
    assert e.value.title == "Idempotency key reused"


# -- a lossy front: answers lost after the API acted, refusals, headers -----------------------


@dataclass
class Front:
    """An HTTP server before the stack that can lose answers; what it saw is recorded."""

    url: str
    script: list[str] = field(default_factory=list)  # one action per request, then "pass"
    seen: list[dict[str, Any]] = field(default_factory=list)
    next_request: threading.Event = field(default_factory=threading.Event)  # set when one arrives


# Ways an answer breaks off after the API acted: a chunked body cut mid-chunk, a body shorter
# than its Content-Length, a reset mid-body, a body that stops arriving (the read times out).
BREAKS = ("cut", "short", "reset", "stall")


@pytest.fixture
def front(stack: Stack) -> Iterator[Front]:
    state = Front(url="")

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _handle(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            state.next_request.set()
            state.next_request = threading.Event()
            state.seen.append({"method": self.command, "path": self.path, "headers": dict(self.headers)})
            action = state.script.pop(0) if state.script else "pass"
            if action == "401":
                self._reply(
                    401,
                    {
                        "type": "about:blank",
                        "title": "Unauthenticated",
                        "status": 401,
                        "detail": "that API key is not valid",
                    },
                )
                return
            upstream = requests.request(
                self.command,
                stack.url + self.path,
                data=body,
                timeout=30,
                headers={k: v for k, v in self.headers.items() if k.lower() != "host"},
            )
            if action == "drop":  # the API acted; its answer never arrives
                self.close_connection = True
                return
            if action in BREAKS:  # the API acted; its answer breaks off mid-body
                self._break(upstream.status_code, upstream.content, action)
                return
            if action == "503":  # the API acted; the front end then answered 503
                self._reply(503, {"title": "Service Unavailable", "status": 503, "detail": "try again"})
                return
            self.send_response(upstream.status_code)
            self.send_header("Content-Type", upstream.headers.get("Content-Type", "application/json"))
            self.send_header("Content-Length", str(len(upstream.content)))
            self.end_headers()
            self.wfile.write(upstream.content)

        def _break(self, status: int, content: bytes, how: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            if how == "short":
                self.send_header("Content-Length", str(len(content)))
            else:
                self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            half = content[: len(content) // 2]
            self.wfile.write(half if how == "short" else b"%x\r\n" % len(content) + half)
            self.wfile.flush()
            self.close_connection = True
            if how == "reset":  # RST, not FIN: the client reads ECONNRESET
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
            elif how == "stall":  # the rest never comes: the client's read times out
                state.next_request.wait(30)

        def _reply(self, status: int, doc: dict[str, Any]) -> None:
            raw = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/problem+json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        do_GET = do_POST = _handle

    server = BurstHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("loss", ["503", "drop", *BREAKS])
def test_a_submit_whose_answer_is_lost_is_retried_and_makes_one_job(front: Front, db: Engine, loss: str) -> None:
    run = uuid.uuid4().hex
    front.script = [loss]
    # A short read timeout for the stalled body; a replay through the front takes milliseconds.
    with Client(front.url, timeout=1 if loss == "stall" else 10, backoff=0.05) as c:
        job = c.submit("echo", {"x": 1}, labels={"run": run})
    posts = [s for s in front.seen if s["method"] == "POST"]
    assert len(posts) == 2  # the lost one and the retry
    assert posts[0]["headers"]["Idempotency-Key"] == posts[1]["headers"]["Idempotency-Key"]
    assert count_labelled(db, run) == 1  # the retry found the job the first attempt made
    assert job.labels == {"run": run}


def test_an_answer_that_keeps_breaking_is_unavailable_after_the_retries_and_made_one_job(
    front: Front, db: Engine
) -> None:
    run = uuid.uuid4().hex
    front.script = ["cut", "short", "cut"]
    with Client(front.url, retries=2, backoff=0.01) as c, pytest.raises(Unavailable) as e:
        c.submit("echo", {"x": 1}, labels={"run": run})
    assert e.value.status is None and e.value.title == "Broken answer"
    posts = [s for s in front.seen if s["method"] == "POST"]
    assert len(posts) == 3  # the first and two retries, every one under the submit's one key
    assert len({p["headers"]["Idempotency-Key"] for p in posts}) == 1
    assert count_labelled(db, run) == 1


def test_the_api_key_is_sent_as_a_bearer_token_and_a_refusal_is_unauthorized(front: Front) -> None:
    front.script = ["401"]
    with Client(front.url, api_key="cj_test_123") as c, pytest.raises(Unauthorized) as e:
        c.get(str(uuid.uuid4()))
    assert e.value.status == 401 and e.value.detail == "that API key is not valid"
    assert front.seen[0]["headers"]["Authorization"] == "Bearer cj_test_123"


def test_a_service_that_stays_unavailable_is_reported_after_the_retries(front: Front) -> None:
    front.script = ["503"] * 3
    with Client(front.url, retries=2, backoff=0.01) as c, pytest.raises(Unavailable) as e:
        c.get(str(uuid.uuid4()))
    assert e.value.status == 503 and len(front.seen) == 3
    with (
        Client("http://127.0.0.1:9", retries=1, backoff=0.01) as c,
        pytest.raises(Unavailable) as down,
    ):
        c.get(str(uuid.uuid4()))
    assert down.value.status is None and "Unreachable" in str(down.value)


def test_under_gevent_one_process_holds_many_waiters_and_wakes_them_all(stack: Stack, migrated_url: str) -> None:
    """Issue #21: only 4 ?wait= requests were held per process; the rest became polling.

    Under GUNICORN_WORKER_CLASS=gevent a waiter holds a greenlet, not a thread, and the default
    limit is 1000: fifty waiters on one worker are all answered when the job ends."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.e2e.conftest import second_server

    # The job runs on the main stack (its task calls that back); this server only holds waiters.
    with second_server(stack, migrated_url, tasks_to_self=False, GUNICORN_WORKER_CLASS="gevent") as url:
        job = requests.post(
            url + "/v1/jobs", json={"type": "sleep", "payload": {"seconds": 1.5}, "queue": "unlimited"}, timeout=10
        ).json()

        def wait(_: int) -> dict[str, Any]:
            return requests.get(f"{url}/v1/jobs/{job['id']}?wait=30", timeout=60).json()  # type: ignore[no-any-return]

        with ThreadPoolExecutor(50) as pool:
            answers = list(pool.map(wait, range(50)))
    # With gthread's limit of 4, 46 of them would have been answered at once, not done.
    assert [a["state"] for a in answers] == ["COMPLETED"] * 50


# -- orchestration from the client (#14): depends_on, and workflows composed in Python


def test_a_chain_of_a_group_and_a_chord_runs_each_step_after_what_it_needs(client: Client) -> None:
    from cloudjobs_client import Step, chain, chord, group

    flow = chain(
        Step("fetch", "echo", {"n": 1}),
        chord(group(Step("left", "echo", {"n": 2}), Step("right", "echo", {"n": 3})),
              Step("merge", "echo", {"n": 4})),
    )
    wf = client.submit_workflow(flow, name=f"canvas-{uuid.uuid4().hex[:6]}", labels={"suite": "e2e"})
    assert {s.name: s.needs for s in wf.steps} == {
        "fetch": [], "left": ["fetch"], "right": ["fetch"], "merge": ["left", "right"]}
    done = client.wait_workflow(wf.id, timeout=30)
    assert done.done and done.succeeded and done.step_count == 4 and done.active == 0
    jobs = {s.name: client.get(s.job_id) for s in done.steps}
    assert jobs["merge"].result == {"n": 4}
    for step in ("left", "right"):  # the fan-in ran after both, and they after fetch
        assert jobs[step].started_time >= jobs["fetch"].done_time
        assert jobs["merge"].started_time >= jobs[step].done_time
    assert wf.id in [w.id for w in client.list_workflows(labels={"suite": "e2e"})]
    with pytest.raises(Conflict):
        client.retry_workflow(wf.id)  # it COMPLETED: nothing to run again


def test_the_client_reads_a_jobs_durable_steps(client: Client) -> None:
    job = client.wait(client.submit("three_steps").id, timeout=30)
    assert job.result == {"steps": [1, 2, 3]}
    assert [(s["name"], s["attempt"]) for s in client.steps(job.id)] == [("one", 1), ("two", 1), ("three", 1)]


def test_a_job_submitted_with_depends_on_waits_and_follows_its_policy(client: Client) -> None:
    parent = client.submit("echo", {"p": 1}, run_at=later())
    child = client.submit("echo", {"c": 1}, depends_on=[parent.id], on_dependency_failure="cancel")
    assert child.state == "WAITING"
    client.cancel(parent.id)
    ended = client.wait(child.id, timeout=10)
    assert ended.state == "CANCELLED" and ended.error is not None and ended.error.code == "DEPENDENCY_FAILED"


def test_a_workflow_cancelled_from_the_client_ends_cancelled(client: Client) -> None:
    from cloudjobs_client import Step

    wf = client.submit_workflow([Step("later", "echo", run_at=later()), Step("after", "echo", needs=["later"])],
                                name="to-cancel")
    cancelled = client.cancel_workflow(wf.id)
    assert cancelled.state == "CANCELLED" and cancelled.done
    assert {s.state for s in client.get_workflow(wf.id).steps} == {"CANCELLED"}
    with pytest.raises(ValueError, match="unique"):
        client.submit_workflow([Step("x", "echo"), Step("x", "echo")], name="twice")  # refused before sending

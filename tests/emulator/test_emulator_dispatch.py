"""Delivery through the real client and a real HTTP target: headers, retries, limits, timing."""

from __future__ import annotations

import datetime as dt
import logging
import socket
import time
from collections.abc import Callable

import pytest
from conftest import LOCATION, CountingTarget, Target, client_for, refused, wait_until
from google.api_core import exceptions
from google.cloud import tasks_v2

from emulator import Emulator, ManualClock

Client = tasks_v2.CloudTasksClient
FAST_RETRY = {"min_backoff": {"seconds": 0}, "max_backoff": {"seconds": 0}}


def short(name: str) -> str:
    return name.rsplit("/", 1)[1]


def gone(client: Client, name: str) -> bool:
    try:
        client.get_task(name=name)
    except exceptions.NotFound:
        return True
    return False


def test_first_attempt_carries_task_and_cloud_tasks_headers(client: Client, queue: tasks_v2.Queue,
                                                            target: Target) -> None:
    task = client.create_task(parent=queue.name, task={
        "name": f"{queue.name}/tasks/hdr-1",
        "http_request": {
            "url": target.url("/run?x=1"),
            "http_method": tasks_v2.HttpMethod.PUT,
            "headers": {"Content-Type": "application/json", "X-Custom": "kept",
                        "User-Agent": "replaced", "X-CloudTasks-TaskName": "spoofed",
                        "X-Google-Thing": "dropped"},
            "body": b'{"job_id": "1"}',
        },
    })
    [got] = target.wait_for(1, "/run?x=1")
    h = got.headers
    assert got.method == "PUT"
    assert got.body == b'{"job_id": "1"}'
    assert h["content-type"] == "application/json"
    assert h["x-custom"] == "kept"
    assert h["user-agent"] == "Google-Cloud-Tasks"
    assert "x-google-thing" not in h
    assert h["x-cloudtasks-queuename"] == short(queue.name)
    assert h["x-cloudtasks-taskname"] == "hdr-1"
    assert h["x-cloudtasks-taskretrycount"] == "0"
    assert h["x-cloudtasks-taskexecutioncount"] == "0"
    assert float(h["x-cloudtasks-tasketa"]) == pytest.approx(task.schedule_time.timestamp(),
                                                             abs=1e-6)
    # no Content-Type that the task did not set: Google documents none for HTTP targets
    client.create_task(parent=queue.name, task={"http_request": {"url": target.url("/bare"), "body": b"raw"}})
    [bare] = target.wait_for(1, "/bare")
    assert "content-type" not in bare.headers and bare.body == b"raw"
    assert "x-cloudtasks-taskpreviousresponse" not in h
    assert "x-cloudtasks-taskretryreason" not in h
    assert "authorization" not in h
    wait_until(lambda: gone(client, task.name))


def test_retry_headers_count_retries_executions_and_previous_response(
        client: Client, make_queue: Callable[..., tasks_v2.Queue], target: Target) -> None:
    q = make_queue(retry_config=FAST_RETRY)
    # 500, then 404, then no answer at all, then success.
    answers: list[int | None] = [500, 404, None, 200]
    target.respond = lambda request, n: answers[n]
    task = client.create_task(parent=q.name, task={"http_request": {"url": target.url()}})
    got = target.wait_for(4)
    wait_until(lambda: gone(client, task.name))
    h = [r.headers for r in got]
    assert [x["x-cloudtasks-taskretrycount"] for x in h] == ["0", "1", "2", "3"]
    # 5xx and no answer are not executions; the 404 is.
    assert [x["x-cloudtasks-taskexecutioncount"] for x in h] == ["0", "0", "1", "1"]
    assert [x.get("x-cloudtasks-taskpreviousresponse") for x in h] == [None, "500", "404", "0"]
    # Empty after an answer, as real HTTP targets get it; the gRPC code when none came (no
    # recording of that case: the emulator keeps saying why)
    assert [x.get("x-cloudtasks-taskretryreason") for x in h] == [None, "", "", "UNAVAILABLE"]
    etas = [float(x["x-cloudtasks-tasketa"]) for x in h]
    assert etas == sorted(etas) and etas[0] < etas[-1]
    assert len({x["x-cloudtasks-taskname"] for x in h}) == 1


def test_task_records_attempts(client: Client, make_queue: Callable[..., tasks_v2.Queue],
                               target: Target) -> None:
    q = make_queue(retry_config={"min_backoff": {"seconds": 30}})
    target.respond = lambda request, n: 503
    task = client.create_task(parent=q.name, task={"http_request": {"url": target.url()}})
    target.wait_for(1)
    t = wait_until(lambda: (lambda g: g if g.response_count else None)(
        client.get_task(name=task.name)))
    assert t.dispatch_count == 1 and t.response_count == 1
    assert t.first_attempt.dispatch_time == t.last_attempt.dispatch_time
    assert t.last_attempt.response_time >= t.last_attempt.dispatch_time
    assert t.last_attempt.response_status.code == 14  # UNAVAILABLE, from HTTP 503
    assert "503" in t.last_attempt.response_status.message
    # The retry is scheduled min_backoff after the failure.
    delay = (t.schedule_time - t.last_attempt.response_time).total_seconds()
    assert delay == pytest.approx(30, abs=1)


def test_exhausted_task_is_deleted(client: Client, make_queue: Callable[..., tasks_v2.Queue],
                                   target: Target) -> None:
    q = make_queue(retry_config={**FAST_RETRY, "max_attempts": 3})
    target.respond = lambda request, n: 500
    task = client.create_task(parent=q.name, task={
        "name": f"{q.name}/tasks/doomed", "http_request": {"url": target.url()}})
    target.wait_for(3)
    wait_until(lambda: gone(client, task.name))
    time.sleep(0.2)
    assert len(target.on("/run")) == 3
    # Like a success, exhaustion keeps the name reserved.
    with refused("ALREADY_EXISTS"):
        client.create_task(parent=q.name, task={"name": task.name,
                                                "http_request": {"url": target.url()}})


def test_unanswered_task_is_retried_until_exhausted(
        client: Client, make_queue: Callable[..., tasks_v2.Queue]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    q = make_queue(retry_config={**FAST_RETRY, "max_attempts": 2})
    task = client.create_task(parent=q.name, task={
        "http_request": {"url": f"http://127.0.0.1:{closed_port}/refused"}})
    wait_until(lambda: gone(client, task.name))


def test_max_retry_duration_keeps_retrying_past_max_attempts(
        client: Client, make_queue: Callable[..., tasks_v2.Queue], target: Target) -> None:
    q = make_queue(retry_config={"max_attempts": 1, "max_retry_duration": {"nanos": 600_000_000},
                                 "min_backoff": {"nanos": 100_000_000},
                                 "max_backoff": {"nanos": 100_000_000}})
    target.respond = lambda request, n: 500
    task = client.create_task(parent=q.name, task={"http_request": {"url": target.url()}})
    wait_until(lambda: gone(client, task.name), timeout=5)
    got = target.on("/run")
    assert len(got) >= 3
    assert got[-1].at - got[0].at >= 0.55


def test_unlimited_attempts(client: Client, make_queue: Callable[..., tasks_v2.Queue],
                            target: Target) -> None:
    q = make_queue(retry_config={**FAST_RETRY, "max_attempts": -1})
    target.respond = lambda request, n: 500 if n < 25 else 200
    task = client.create_task(parent=q.name, task={"http_request": {"url": target.url()}})
    target.wait_for(26)
    wait_until(lambda: gone(client, task.name))
    assert target.on("/run")[-1].headers["x-cloudtasks-taskretrycount"] == "25"


def _failed_attempts(client: Client, name: str, n: int) -> tasks_v2.Task:
    """The task once its `n`th attempt has been answered (its next one scheduled)."""
    def answered() -> tasks_v2.Task | None:
        t = client.get_task(request={"name": name, "response_view": tasks_v2.Task.View.FULL})
        return t if t.dispatch_count == n and "response_time" in t.last_attempt else None
    return wait_until(answered)


def test_backoff_timing(make_emulator: Callable[..., Emulator], target: Target) -> None:
    # 10 s doubling twice, then linear by 40 s: gaps 10, 20, 40, 80 capped at 50. Time moves
    # only when the test says, so each gap is exact and none is waited for.
    clock = ManualClock()
    client = client_for(make_emulator(clock=clock))
    q = client.create_queue(parent=LOCATION, queue={
        "name": f"{LOCATION}/queues/backoff", "retry_config": {
            "min_backoff": {"seconds": 10}, "max_backoff": {"seconds": 50}, "max_doublings": 2}})
    target.respond = lambda request, n: 500 if n < 4 else 200
    task = client.create_task(parent=q.name, task={"http_request": {"url": target.url()}})
    for n, gap in enumerate([10, 20, 40, 50], start=1):
        t = _failed_attempts(client, task.name, n)
        assert (t.schedule_time - t.last_attempt.response_time).total_seconds() == pytest.approx(gap, abs=1e-3)
        clock.advance(gap - 0.01)
        assert len(target.on("/run")) == n  # not due yet: nothing can have been sent
        clock.advance(0.01)
        target.wait_for(n + 1)
    wait_until(lambda: gone(client, task.name))
    client.transport.close()


def test_schedule_time_is_honoured_and_orders_dispatch(
        client: Client, make_queue: Callable[..., tasks_v2.Queue], target: Target) -> None:
    q = make_queue(rate_limits={"max_concurrent_dispatches": 1})
    client.pause_queue(name=q.name)
    now = dt.datetime.now(dt.UTC)
    # `now` on the monotonic clock the target stamps arrivals with.
    since = time.monotonic() - (time.time() - now.timestamp())
    for i, offset in enumerate([0.9, 0.6, 0.0, 0.3]):
        client.create_task(parent=q.name, task={
            "name": f"{q.name}/tasks/t{i}", "schedule_time": now + dt.timedelta(seconds=offset),
            "http_request": {"url": target.url()}})
    client.resume_queue(name=q.name)
    got = target.wait_for(4)
    assert [r.headers["x-cloudtasks-taskname"] for r in got] == ["t2", "t3", "t1", "t0"]
    for r, offset in zip(got, [0.0, 0.3, 0.6, 0.9], strict=True):
        assert offset - 0.02 <= r.at - since <= offset + 0.5


def test_paused_queue_holds_tasks_until_resumed(client: Client, queue: tasks_v2.Queue,
                                                target: Target) -> None:
    client.pause_queue(name=queue.name)
    for _ in range(3):
        client.create_task(parent=queue.name, task={"http_request": {"url": target.url()}})
    time.sleep(0.3)
    assert target.on("/run") == []
    client.resume_queue(name=queue.name)
    target.wait_for(3)


def test_rate_limit_is_held(client: Client, make_queue: Callable[..., tasks_v2.Queue],
                            target: Target) -> None:
    q = make_queue(rate_limits={"max_dispatches_per_second": 10})
    assert q.rate_limits.max_burst_size == 10
    client.pause_queue(name=q.name)
    client.batch_create_tasks(parent=q.name, requests=[
        {"parent": q.name, "task": {"http_request": {"url": target.url()}}} for _ in range(30)
    ]).result()
    client.resume_queue(name=q.name)
    got = target.wait_for(30, timeout=10)
    at = [r.at for r in got]
    # A full bucket of 10 goes at once, then 10 per second: 20 more take about 2 s.
    assert at[9] - at[0] < 0.5
    steady = 19 / (at[29] - at[10])
    assert 6 <= steady <= 13, steady


def test_max_concurrent_dispatches_is_respected(client: Client,
                                                make_queue: Callable[..., tasks_v2.Queue],
                                                target: Target) -> None:
    q = make_queue(rate_limits={"max_concurrent_dispatches": 3})
    target.respond = lambda request, n: (200, 0.2)
    for _ in range(9):
        client.create_task(parent=q.name, task={"http_request": {"url": target.url()}})
    got = target.wait_for(9, timeout=10)
    assert target.max_active == 3
    assert got[-1].at - got[0].at >= 0.35  # three waves of 0.2 s


def test_dispatch_deadline_exceeded_is_retried(make_emulator: Callable[..., Emulator],
                                               target: Target) -> None:
    # 15 s is the shortest deadline Google allows for HTTP tasks: on the manual clock it
    # passes when the test says, not after 15 s of waiting.
    clock = ManualClock()
    client = client_for(make_emulator(clock=clock))
    queue = client.create_queue(parent=LOCATION, queue={
        "name": f"{LOCATION}/queues/deadline", "retry_config": {"min_backoff": {"seconds": 1}}})
    target.respond = lambda request, n: (200, 60.0) if n == 0 else 200
    task = client.create_task(parent=queue.name, task={
        "http_request": {"url": target.url()}, "dispatch_deadline": {"seconds": 15}})
    target.wait_for(1)
    clock.advance(14.99)
    assert "response_time" not in client.get_task(name=task.name).last_attempt  # still waiting for its answer
    clock.advance(0.02)
    t = _failed_attempts(client, task.name, 1)
    assert t.last_attempt.response_status.code == 4  # DEADLINE_EXCEEDED
    clock.advance(1.0)  # the backoff
    first, second = target.wait_for(2)
    h = second.headers
    assert h["x-cloudtasks-taskretrycount"] == "1"
    assert h["x-cloudtasks-taskexecutioncount"] == "0"
    assert h["x-cloudtasks-taskpreviousresponse"] == "0"
    assert h["x-cloudtasks-taskretryreason"] == "DEADLINE_EXCEEDED"
    wait_until(lambda: gone(client, task.name))
    client.transport.close()


def test_hanging_handler_on_one_queue_does_not_stall_another(
        client: Client, make_queue: Callable[..., tasks_v2.Queue],
        make_target: Callable[[], Target]) -> None:
    hanging, fast = make_target(), make_target()
    hanging.respond = lambda request, n: (200, 60.0)
    qa = make_queue(rate_limits={"max_concurrent_dispatches": 1})
    qb = make_queue()
    for _ in range(3):
        client.create_task(parent=qa.name, task={"http_request": {"url": hanging.url()}})
    hanging.wait_for(1)
    start = time.monotonic()
    for _ in range(20):
        client.create_task(parent=qb.name, task={"http_request": {"url": fast.url()}})
    fast.wait_for(20, timeout=3)
    assert time.monotonic() - start < 3
    assert len(hanging.on("/run")) == 1  # A's other tasks wait for its only slot


def test_app_engine_tasks_go_to_the_app_engine_host(client: Client,
                                                    make_queue: Callable[..., tasks_v2.Queue],
                                                    target: Target) -> None:
    q = make_queue(retry_config=FAST_RETRY)
    target.respond = lambda request, n: 500 if n == 0 else 200
    task = client.create_task(parent=q.name, task={
        "name": f"{q.name}/tasks/ae-1",
        "app_engine_http_request": {"relative_uri": "/ae/run?k=v", "body": b"data",
                                    "headers": {"X-Mine": "yes"},
                                    "app_engine_routing": {"service": "worker"}}})
    assert task.app_engine_http_request.app_engine_routing.host == target.base.split("//")[1]
    first, second = target.wait_for(2, "/ae/run?k=v")
    assert first.method == "POST" and first.body == b"data"
    assert first.headers["x-mine"] == "yes"
    assert first.headers["content-type"] == "application/octet-stream"
    assert "AppEngine-Google" in first.headers["user-agent"]
    assert first.headers["x-appengine-queuename"] == short(q.name)
    assert first.headers["x-appengine-taskname"] == "ae-1"
    assert first.headers["x-appengine-taskretrycount"] == "0"
    assert first.headers["x-appengine-taskexecutioncount"] == "0"
    assert float(first.headers["x-appengine-tasketa"]) == pytest.approx(
        task.schedule_time.timestamp(), abs=1e-6)
    assert "x-cloudtasks-queuename" not in first.headers
    assert second.headers["x-appengine-taskretrycount"] == "1"
    assert second.headers["x-appengine-taskpreviousresponse"] == "500"
    assert second.headers["x-appengine-taskretryreason"] == "App Error"  # as real App Engine tasks get
    assert second.headers["x-appengine-taskexecutioncount"] == "1"  # App Engine counts the 500 too


def test_oauth_token_is_a_placeholder_bearer(client: Client, queue: tasks_v2.Queue,
                                            target: Target) -> None:
    client.create_task(parent=queue.name, task={"http_request": {
        "url": target.url("/scoped"),
        "oauth_token": {"service_account_email": "sa@p.iam.gserviceaccount.com",
                        "scope": "https://www.googleapis.com/auth/pubsub"}}})
    client.create_task(parent=queue.name, task={"http_request": {
        "url": target.url("/default"),
        "oauth_token": {"service_account_email": "sa@p.iam.gserviceaccount.com"}}})
    [scoped] = target.wait_for(1, "/scoped")
    [default] = target.wait_for(1, "/default")
    assert scoped.headers["authorization"] == \
        "Bearer emulator-oauth-token-https://www.googleapis.com/auth/pubsub"
    assert default.headers["authorization"] == \
        "Bearer emulator-oauth-token-https://www.googleapis.com/auth/cloud-platform"


def test_queue_http_target_overrides(client: Client, make_queue: Callable[..., tasks_v2.Queue],
                                     target: Target) -> None:
    q = make_queue(http_target={
        "uri_override": {"scheme": tasks_v2.UriOverride.Scheme.HTTP, "host": "127.0.0.1",
                         "port": target.server.server_port,
                         "path_override": {"path": "/overridden"},
                         "query_override": {"query_params": "a=b"}},
        "http_method": tasks_v2.HttpMethod.PUT,
        "header_overrides": [{"header": {"key": "X-Queue", "value": "q"}}],
    })
    client.create_task(parent=q.name, task={"http_request": {
        "url": "https://elsewhere.invalid:1/path?q=1", "body": b"b",
        "headers": {"x-queue": "task"}}})
    [got] = target.wait_for(1, "/overridden?a=b")
    assert got.method == "PUT" and got.body == b"b"
    assert got.headers["x-queue"] == "q"


def test_one_log_line_per_dispatch(client: Client, make_queue: Callable[..., tasks_v2.Queue],
                                   target: Target, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="emulator")
    q = make_queue(retry_config=FAST_RETRY)
    target.respond = lambda request, n: 500 if n == 0 else 200
    task = client.create_task(parent=q.name, task={
        "name": f"{q.name}/tasks/logged", "http_request": {"url": target.url()}})
    target.wait_for(2)
    wait_until(lambda: gone(client, task.name))
    wait_until(lambda: len([r for r in caplog.records if "task=logged" in r.getMessage()]) == 2)
    lines = [r.getMessage() for r in caplog.records if "task=logged" in r.getMessage()]
    assert f"queue={short(q.name)}" in lines[0]
    assert "attempt=1 status=500" in lines[0] and "attempt=2 status=200" in lines[1]
    assert all("latency_ms=" in line for line in lines)


def test_unlimited_queue_dispatches_thousands_per_second(
        make_emulator: Callable[..., Emulator], counting_target: CountingTarget) -> None:
    emu = make_emulator(max_dispatch_rate=None)
    client = client_for(emu)
    q = client.create_queue(parent=LOCATION, queue={
        "name": f"{LOCATION}/queues/unlimited",
        "rate_limits": {"max_dispatches_per_second": float("inf"),
                        "max_concurrent_dispatches": 100}})
    client.pause_queue(name=q.name)
    n = 3000
    for _ in range(0, n, 100):
        client.batch_create_tasks(parent=q.name, requests=[
            {"parent": q.name, "task": {"http_request": {"url": counting_target.url}}}
            for _ in range(100)]).result()
    t0 = time.monotonic()
    client.resume_queue(name=q.name)
    wait_until(lambda: counting_target.count() >= n, timeout=20)
    rate = n / (time.monotonic() - t0)
    client.transport.close()
    # The target shares this process (and its GIL); bench/emulator_bench.py measures alone.
    assert rate > 1000, rate

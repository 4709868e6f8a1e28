"""Task RPCs through the real client: CRUD, de-duplication, limits, views, RunTask, batches."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

import pytest
from conftest import LOCATION, Target, client_for, refused, wait_until
from google.cloud import tasks_v2

from emulator import Emulator, ManualClock

Client = tasks_v2.CloudTasksClient
FULL = tasks_v2.Task.View.FULL
BASIC = tasks_v2.Task.View.BASIC


@pytest.fixture
def paused(client: Client, queue: tasks_v2.Queue) -> tasks_v2.Queue:
    """A paused queue: tasks stay put, so their state can be inspected."""
    return client.pause_queue(name=queue.name)


def http_task(target: Target, name: str = "", **fields: object) -> dict:
    task: dict = {"http_request": {"url": target.url(), **fields}}
    if name:
        task["name"] = name
    return task


def test_create_get_list_delete(client: Client, paused: tasks_v2.Queue, target: Target) -> None:
    before = dt.datetime.now(dt.UTC)
    created = client.create_task(parent=paused.name, task=http_task(
        target, f"{paused.name}/tasks/first", body=b"payload", headers={"X-Mine": "1"}))
    assert created.name == f"{paused.name}/tasks/first"
    assert created.http_request.url == target.url()
    assert created.http_request.headers["X-Mine"] == "1"
    assert created.http_request.http_method == tasks_v2.HttpMethod.POST or \
        created.http_request.http_method == tasks_v2.HttpMethod.HTTP_METHOD_UNSPECIFIED
    # create_time is truncated to the second; schedule_time defaults to now.
    assert created.create_time.timestamp() == int(created.create_time.timestamp())
    assert before - dt.timedelta(seconds=1) <= created.create_time <= dt.datetime.now(dt.UTC)
    assert before - dt.timedelta(seconds=1) <= created.schedule_time <= dt.datetime.now(dt.UTC)
    assert created.dispatch_deadline.total_seconds() == 600
    assert created.dispatch_count == 0 and created.response_count == 0
    got = client.get_task(name=created.name)
    assert got.name == created.name
    assert [t.name for t in client.list_tasks(parent=paused.name)] == [created.name]
    client.delete_task(name=created.name)
    with refused("NOT_FOUND"):
        client.get_task(name=created.name)
    with refused("NOT_FOUND"):
        client.delete_task(name=created.name)


def test_generated_ids_are_unique(client: Client, paused: tasks_v2.Queue,
                                  target: Target) -> None:
    names = {client.create_task(parent=paused.name, task=http_task(target)).name
             for _ in range(20)}
    assert len(names) == 20
    assert all(n.startswith(paused.name + "/tasks/") for n in names)


def test_missing_queue_is_not_found(client: Client, target: Target) -> None:
    with refused("NOT_FOUND"):
        client.create_task(parent=f"{LOCATION}/queues/absent", task=http_task(target))
    with refused("NOT_FOUND"):
        client.get_task(name=f"{LOCATION}/queues/absent/tasks/t")


def test_view_basic_omits_body_and_full_has_it(client: Client, paused: tasks_v2.Queue,
                                               target: Target) -> None:
    t = client.create_task(parent=paused.name, task=http_task(target, body=b"secret"))
    assert t.view == BASIC and t.http_request.body == b""
    full = client.get_task(request={"name": t.name, "response_view": FULL})
    assert full.view == FULL and full.http_request.body == b"secret"
    assert client.get_task(name=t.name).http_request.body == b""
    listed = list(client.list_tasks(request={"parent": paused.name, "response_view": FULL}))
    assert listed[0].http_request.body == b"secret"
    created_full = client.create_task(request={"parent": paused.name, "response_view": FULL,
                                               "task": http_task(target, body=b"x")})
    assert created_full.http_request.body == b"x"
    ae = client.create_task(parent=paused.name, task={
        "app_engine_http_request": {"relative_uri": "/ae", "body": b"ae-body"}})
    assert ae.app_engine_http_request.body == b""
    assert client.get_task(request={"name": ae.name, "response_view": FULL}
                           ).app_engine_http_request.body == b"ae-body"


def test_existing_name_is_already_exists(client: Client, paused: tasks_v2.Queue,
                                         target: Target) -> None:
    name = f"{paused.name}/tasks/dup"
    client.create_task(parent=paused.name, task=http_task(target, name))
    with refused("ALREADY_EXISTS"):
        client.create_task(parent=paused.name, task=http_task(target, name))


def test_deleted_name_is_reserved(client: Client, paused: tasks_v2.Queue,
                                  target: Target) -> None:
    name = f"{paused.name}/tasks/gone"
    client.create_task(parent=paused.name, task=http_task(target, name))
    client.delete_task(name=name)
    with refused("ALREADY_EXISTS"):
        client.create_task(parent=paused.name, task=http_task(target, name))


def test_executed_name_is_reserved(client: Client, queue: tasks_v2.Queue,
                                   target: Target) -> None:
    name = f"{queue.name}/tasks/ran"
    client.create_task(parent=queue.name, task=http_task(target, name))
    target.wait_for(1)
    wait_until(lambda: not list(client.list_tasks(parent=queue.name)))
    with refused("NOT_FOUND"):
        client.get_task(name=name)
    with refused("ALREADY_EXISTS"):
        client.create_task(parent=queue.name, task=http_task(target, name))


def test_name_is_free_again_after_the_window(make_emulator: Callable[..., Emulator],
                                             target: Target) -> None:
    clock = ManualClock()
    emu = make_emulator(dedup_window_s=3600, clock=clock)
    client = client_for(emu)
    q = client.create_queue(parent=LOCATION, queue={"name": f"{LOCATION}/queues/window"})
    client.pause_queue(name=q.name)
    name = f"{q.name}/tasks/again"
    client.create_task(parent=q.name, task=http_task(target, name))
    client.delete_task(name=name)
    clock.advance(3599.9)  # one hour, less a moment: still reserved
    with refused("ALREADY_EXISTS"):
        client.create_task(parent=q.name, task=http_task(target, name))
    clock.advance(0.2)
    client.create_task(parent=q.name, task=http_task(target, name))
    client.transport.close()


def test_tombstones_expire_from_memory(make_emulator: Callable[..., Emulator],
                                       target: Target) -> None:
    clock = ManualClock()
    emu = make_emulator(dedup_window_s=60, clock=clock)
    client = client_for(emu)
    q = client.create_queue(parent=LOCATION, queue={"name": f"{LOCATION}/queues/mem"})
    for i in range(50):
        client.create_task(parent=q.name, task=http_task(target, f"{q.name}/tasks/t{i}"))
    target.wait_for(50)
    record = emu.state.queues[q.name]
    wait_until(lambda: not record.tasks)
    emu.state.sweep()
    assert len(record.tombstones) == 50  # within the window the names stay reserved
    clock.advance(60.1)
    emu.state.sweep()
    assert not record.tasks and not record.tombstones
    client.transport.close()


@pytest.mark.parametrize("task_id", ["has space", "dot.ted", "x" * 501, "ünïcode"])
def test_invalid_task_id(client: Client, paused: tasks_v2.Queue, target: Target,
                         task_id: str) -> None:
    with refused("INVALID_ARGUMENT"):
        client.create_task(parent=paused.name,
                           task=http_task(target, f"{paused.name}/tasks/{task_id}"))


def test_longest_valid_task_id(client: Client, paused: tasks_v2.Queue, target: Target) -> None:
    name = f"{paused.name}/tasks/" + "a-_Z9" * 100
    assert client.create_task(parent=paused.name, task=http_task(target, name)).name == name


def test_task_name_in_another_queue_is_invalid(client: Client, paused: tasks_v2.Queue,
                                               target: Target) -> None:
    with refused("INVALID_ARGUMENT"):
        client.create_task(parent=paused.name,
                           task=http_task(target, f"{LOCATION}/queues/other/tasks/t"))


def test_schedule_time_limit_is_30_days(client: Client, paused: tasks_v2.Queue,
                                        target: Target) -> None:
    now = dt.datetime.now(dt.UTC)
    ok = client.create_task(parent=paused.name, task={
        **http_task(target), "schedule_time": now + dt.timedelta(days=29, hours=23)})
    assert ok.schedule_time > now + dt.timedelta(days=29)
    with refused("INVALID_ARGUMENT"):
        client.create_task(parent=paused.name, task={
            **http_task(target), "schedule_time": now + dt.timedelta(days=30, minutes=1)})


def test_past_schedule_time_becomes_now(client: Client, paused: tasks_v2.Queue,
                                        target: Target) -> None:
    now = dt.datetime.now(dt.UTC)
    t = client.create_task(parent=paused.name, task={
        **http_task(target), "schedule_time": now - dt.timedelta(days=3)})
    assert t.schedule_time >= now - dt.timedelta(seconds=1)


def test_task_size_limit_is_1_mb(client: Client, paused: tasks_v2.Queue,
                                 target: Target) -> None:
    client.create_task(parent=paused.name, task=http_task(target, body=b"x" * 1_000_000))
    with refused("INVALID_ARGUMENT"):
        client.create_task(parent=paused.name, task=http_task(target, body=b"x" * 1_048_577))


@pytest.mark.parametrize(
    "task",
    [
        {"http_request": {"url": "not-a-url"}},
        {"http_request": {"url": "http://x", "http_method": tasks_v2.HttpMethod.GET,
                          "body": b"no body with GET"}},
        {"http_request": {"url": "http://x"}, "dispatch_deadline": {"seconds": 10}},
        {"http_request": {"url": "http://x"}, "dispatch_deadline": {"seconds": 3600}},
        {},
    ],
)
def test_invalid_tasks(client: Client, paused: tasks_v2.Queue, task: dict) -> None:
    with refused("INVALID_ARGUMENT"):
        client.create_task(parent=paused.name, task=task)


def test_list_tasks_pages(client: Client, paused: tasks_v2.Queue, target: Target) -> None:
    names = sorted(client.create_task(parent=paused.name, task=http_task(target)).name
                   for _ in range(5))
    page = client.list_tasks(request={"parent": paused.name, "page_size": 2})
    assert len(page.tasks) == 2 and page.next_page_token
    assert sorted(t.name for t in client.list_tasks(
        request={"parent": paused.name, "page_size": 2})) == names
    with refused("INVALID_ARGUMENT"):
        client.list_tasks(request={"parent": paused.name, "page_token": "bogus"})


def test_run_task_dispatches_now_despite_pause_and_schedule(
        client: Client, paused: tasks_v2.Queue, target: Target) -> None:
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    t = client.create_task(parent=paused.name, task={**http_task(target), "schedule_time": later})
    ran = client.run_task(name=t.name)
    # The answer shows the dispatch, not its result.
    assert ran.dispatch_count == 1
    assert ran.last_attempt.dispatch_time.timestamp() > 0
    assert ran.first_attempt.dispatch_time == ran.last_attempt.dispatch_time
    target.wait_for(1)
    wait_until(lambda: not list(client.list_tasks(parent=paused.name)))
    with refused("NOT_FOUND"):
        client.run_task(name=t.name)


def test_run_task_failure_reschedules_with_backoff(client: Client,
                                                   make_queue: Callable[..., tasks_v2.Queue],
                                                   target: Target) -> None:
    q = make_queue(retry_config={"min_backoff": {"seconds": 60}})
    client.pause_queue(name=q.name)
    target.respond = lambda request, n: 500
    t = client.create_task(parent=q.name, task=http_task(target))
    client.run_task(name=t.name)
    target.wait_for(1)
    got = wait_until(lambda: (lambda g: g if g.response_count else None)(
        client.get_task(name=t.name)))
    assert got.dispatch_count == 1
    assert got.last_attempt.response_status.code == 13  # INTERNAL
    assert got.schedule_time > dt.datetime.now(dt.UTC) + dt.timedelta(seconds=55)


def test_batch_create(client: Client, paused: tasks_v2.Queue, target: Target) -> None:
    requests = [{"parent": paused.name, "task": http_task(target, f"{paused.name}/tasks/b{i}")}
                for i in range(3)]
    requests.append({"parent": paused.name,
                     "task": http_task(target, f"{paused.name}/tasks/bad id")})
    requests.append({"parent": paused.name, "task": http_task(target, f"{paused.name}/tasks/b0")})
    op = client.batch_create_tasks(parent=paused.name, requests=requests)
    result = op.result(timeout=5)
    assert [t.name.rsplit("/", 1)[1] for t in result.tasks] == ["b0", "b1", "b2"]
    meta = op.metadata
    assert meta.state == tasks_v2.BatchCreateTasksMetadata.State.PARTIALLY_SUCCEEDED
    assert sorted(meta.failed_requests) == [3, 4]
    assert meta.failed_requests[3].code == 3  # INVALID_ARGUMENT
    assert meta.failed_requests[4].code == 6  # ALREADY_EXISTS
    assert len(list(client.list_tasks(parent=paused.name))) == 3
    # The operation can be fetched again.
    assert client.get_operation(request={"name": op.operation.name}).done


def test_batch_create_limits(client: Client, paused: tasks_v2.Queue, target: Target) -> None:
    too_many = [{"parent": paused.name, "task": http_task(target)} for _ in range(101)]
    with refused("INVALID_ARGUMENT"):
        client.batch_create_tasks(parent=paused.name, requests=too_many)
    with refused("NOT_FOUND"):
        client.batch_create_tasks(parent=f"{LOCATION}/queues/absent",
                                  requests=[{"parent": f"{LOCATION}/queues/absent",
                                             "task": http_task(target)}])


def test_batch_create_request_id_is_idempotent(client: Client, paused: tasks_v2.Queue,
                                               target: Target) -> None:
    request = {"parent": paused.name, "request_id": "once",
               "requests": [{"parent": paused.name, "task": http_task(target)}]}
    first = client.batch_create_tasks(request=request).result(timeout=5)
    second = client.batch_create_tasks(request=request).result(timeout=5)
    assert [t.name for t in first.tasks] == [t.name for t in second.tasks]
    assert len(list(client.list_tasks(parent=paused.name))) == 1


def test_batch_delete(client: Client, paused: tasks_v2.Queue, target: Target) -> None:
    names = [client.create_task(parent=paused.name, task=http_task(target)).name
             for _ in range(3)]
    op = client.batch_delete_tasks(parent=paused.name,
                                   names=[*names[:2], f"{paused.name}/tasks/absent"])
    op.result(timeout=5)
    assert op.metadata.state == tasks_v2.BatchDeleteTasksMetadata.State.PARTIALLY_SUCCEEDED
    assert list(op.metadata.failed_requests) == [2]
    assert [t.name for t in client.list_tasks(parent=paused.name)] == [names[2]]


def test_task_retry_config_overrides_queue(client: Client,
                                           make_queue: Callable[..., tasks_v2.Queue],
                                           target: Target) -> None:
    q = make_queue(retry_config={"max_attempts": 10, "min_backoff": {"seconds": 0},
                                 "max_backoff": {"seconds": 0}})
    target.respond = lambda request, n: 503
    t = client.create_task(parent=q.name, task={**http_task(target),
                                                "retry_config": {"max_attempts": 2}})
    assert t.retry_config.max_attempts == 2
    target.wait_for(2)
    wait_until(lambda: not list(client.list_tasks(parent=q.name)))
    time.sleep(0.1)
    assert len(target.on("/run")) == 2

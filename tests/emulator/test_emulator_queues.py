"""Queue RPCs through the real client: CRUD, errors, update masks, pause/resume, purge."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from conftest import LOCATION, Target, client_for, refused
from google.cloud import tasks_v2
from google.protobuf import field_mask_pb2

from emulator import Emulator, ManualClock

Client = tasks_v2.CloudTasksClient


def test_create_fills_googles_defaults(client: Client) -> None:
    q = client.create_queue(parent=LOCATION, queue={"name": f"{LOCATION}/queues/defaults"})
    assert q.state == tasks_v2.Queue.State.RUNNING
    assert q.rate_limits.max_dispatches_per_second == 500
    assert q.rate_limits.max_burst_size == 100
    assert q.rate_limits.max_concurrent_dispatches == 1000
    rc = q.retry_config
    assert rc.max_attempts == 100
    assert rc.min_backoff.total_seconds() == pytest.approx(0.1)
    assert rc.max_backoff.total_seconds() == 3600
    assert rc.max_doublings == 16
    assert rc.max_retry_duration.total_seconds() == 0
    assert client.get_queue(name=q.name) == q


def test_create_keeps_given_limits_and_derives_burst(client: Client) -> None:
    q = client.create_queue(parent=LOCATION, queue={
        "name": f"{LOCATION}/queues/given",
        "rate_limits": {"max_dispatches_per_second": 7.5, "max_concurrent_dispatches": 3,
                        "max_burst_size": 999},
        "retry_config": {"max_attempts": -1, "min_backoff": {"seconds": 2}},
    })
    assert q.rate_limits.max_dispatches_per_second == 7.5
    assert q.rate_limits.max_burst_size == 8  # output only: derived, not taken
    assert q.rate_limits.max_concurrent_dispatches == 3
    assert q.retry_config.max_attempts == -1
    assert q.retry_config.min_backoff.total_seconds() == 2


def test_create_twice_is_already_exists(client: Client, queue: tasks_v2.Queue) -> None:
    with refused("ALREADY_EXISTS"):
        client.create_queue(parent=LOCATION, queue={"name": queue.name})


@pytest.mark.parametrize(
    ("parent", "name"),
    [
        (LOCATION, f"{LOCATION}/queues/bad_id"),
        (LOCATION, f"{LOCATION}/queues/" + "q" * 101),
        (LOCATION, "projects/other/locations/us-central1/queues/q"),
        ("projects/p", "projects/p/queues/q"),
        (LOCATION, ""),
    ],
)
def test_create_with_bad_name_is_invalid(client: Client, parent: str, name: str) -> None:
    with refused("INVALID_ARGUMENT"):
        client.create_queue(parent=parent, queue={"name": name})


@pytest.mark.parametrize(
    "fields",
    [
        {"rate_limits": {"max_dispatches_per_second": 501}},
        {"rate_limits": {"max_concurrent_dispatches": 5001}},
        {"retry_config": {"max_attempts": -2}},
        {"retry_config": {"min_backoff": {"seconds": 9}, "max_backoff": {"seconds": 3}}},
    ],
)
def test_create_beyond_limits_is_invalid(make_queue: Callable[..., tasks_v2.Queue],
                                         fields: dict) -> None:
    with refused("INVALID_ARGUMENT"):
        make_queue(**fields)


def test_get_missing_is_not_found(client: Client) -> None:
    with refused("NOT_FOUND"):
        client.get_queue(name=f"{LOCATION}/queues/missing")


def test_list_pages_in_name_order(client: Client) -> None:
    parent = "projects/listing/locations/europe-west1"
    names = [f"{parent}/queues/q{i:02d}" for i in range(7)]
    for name in reversed(names):
        client.create_queue(parent=parent, queue={"name": name})
    client.create_queue(parent="projects/listing/locations/elsewhere",
                        queue={"name": "projects/listing/locations/elsewhere/queues/x"})
    first = client.list_queues(request={"parent": parent, "page_size": 3})
    assert [q.name for q in first.queues] == names[:3]
    assert first.next_page_token
    assert [q.name for q in client.list_queues(parent=parent)] == names
    assert [q.name for q in client.list_queues(request={"parent": parent,
                                                         "page_size": 3})] == names


def test_list_rejects_bad_page_token_and_size(client: Client) -> None:
    with refused("INVALID_ARGUMENT"):
        client.list_queues(request={"parent": LOCATION, "page_token": "garbage"})
    with refused("INVALID_ARGUMENT"):
        client.list_queues(request={"parent": LOCATION, "page_size": -1})


def test_list_filters_on_state(client: Client) -> None:
    parent = "projects/filtering/locations/l"
    for n in ("a", "b", "c"):
        client.create_queue(parent=parent, queue={"name": f"{parent}/queues/{n}"})
    client.pause_queue(name=f"{parent}/queues/b")
    paused = client.list_queues(request={"parent": parent, "filter": "state: PAUSED"})
    assert [q.name.rsplit("/", 1)[1] for q in paused] == ["b"]
    with refused("INVALID_ARGUMENT"):
        list(client.list_queues(request={"parent": parent, "filter": "name: x"}))


def test_update_honours_mask(client: Client, make_queue: Callable[..., tasks_v2.Queue]) -> None:
    q = make_queue(rate_limits={"max_dispatches_per_second": 5, "max_concurrent_dispatches": 4})
    updated = client.update_queue(
        queue={"name": q.name, "rate_limits": {"max_dispatches_per_second": 50,
                                               "max_concurrent_dispatches": 99},
               "retry_config": {"max_attempts": 2}},
        update_mask=field_mask_pb2.FieldMask(paths=["rate_limits.max_dispatches_per_second"]),
    )
    assert updated.rate_limits.max_dispatches_per_second == 50
    assert updated.rate_limits.max_burst_size == 50
    assert updated.rate_limits.max_concurrent_dispatches == 4
    assert updated.retry_config.max_attempts == 100
    assert client.get_queue(name=q.name) == updated


def test_update_without_mask_replaces_all_fields(client: Client,
                                                 make_queue: Callable[..., tasks_v2.Queue]) -> None:
    q = make_queue(rate_limits={"max_concurrent_dispatches": 4})
    updated = client.update_queue(queue={"name": q.name, "retry_config": {"max_attempts": 2}})
    assert updated.rate_limits.max_concurrent_dispatches == 1000
    assert updated.retry_config.max_attempts == 2


def test_update_cannot_change_state(client: Client, queue: tasks_v2.Queue) -> None:
    client.pause_queue(name=queue.name)
    updated = client.update_queue(queue={"name": queue.name,
                                         "state": tasks_v2.Queue.State.RUNNING})
    assert updated.state == tasks_v2.Queue.State.PAUSED


def test_update_creates_a_missing_queue(client: Client) -> None:
    name = f"{LOCATION}/queues/made-by-update"
    created = client.update_queue(queue={"name": name,
                                         "rate_limits": {"max_dispatches_per_second": 3}})
    assert created.rate_limits.max_dispatches_per_second == 3
    assert created.retry_config.max_attempts == 100
    assert client.get_queue(name=name).state == tasks_v2.Queue.State.RUNNING


def test_update_errors(client: Client, queue: tasks_v2.Queue) -> None:
    with refused("INVALID_ARGUMENT"):
        client.update_queue(queue={"name": queue.name},
                            update_mask=field_mask_pb2.FieldMask(paths=["nonsense"]))
    with refused("INVALID_ARGUMENT"):
        client.update_queue(queue={"name": queue.name,
                                   "rate_limits": {"max_dispatches_per_second": 1000}})
    with refused("INVALID_ARGUMENT"):
        client.update_queue(queue={"name": f"{LOCATION}/queues/bad_name"})


def test_delete(client: Client, queue: tasks_v2.Queue, target: Target) -> None:
    client.create_task(parent=queue.name, task={"http_request": {"url": target.url()}})
    client.delete_queue(name=queue.name)
    with refused("NOT_FOUND"):
        client.get_queue(name=queue.name)
    with refused("NOT_FOUND"):
        client.delete_queue(name=queue.name)
    with refused("NOT_FOUND"):
        client.create_task(parent=queue.name, task={"http_request": {"url": target.url()}})
    # Google holds a deleted queue's name for up to 3 days, and so does the emulator by default.
    with refused("FAILED_PRECONDITION", match="existed too recently"):
        client.create_queue(parent=LOCATION, queue={"name": queue.name})


def test_pause_and_resume_report_state(client: Client, queue: tasks_v2.Queue) -> None:
    assert client.pause_queue(name=queue.name).state == tasks_v2.Queue.State.PAUSED
    assert client.get_queue(name=queue.name).state == tasks_v2.Queue.State.PAUSED
    assert client.resume_queue(name=queue.name).state == tasks_v2.Queue.State.RUNNING
    for call in (client.pause_queue, client.resume_queue, client.purge_queue):
        with refused("NOT_FOUND"):
            call(name=f"{LOCATION}/queues/absent")


def test_purge_deletes_tasks_and_keeps_names(client: Client, queue: tasks_v2.Queue,
                                             target: Target) -> None:
    client.pause_queue(name=queue.name)
    for i in range(3):
        client.create_task(parent=queue.name, task={"name": f"{queue.name}/tasks/t{i}",
                                                    "http_request": {"url": target.url()}})
    purged = client.purge_queue(name=queue.name)
    assert purged.purge_time.timestamp() > 0
    assert list(client.list_tasks(parent=queue.name)) == []
    with refused("ALREADY_EXISTS"):
        client.create_task(parent=queue.name, task={"name": f"{queue.name}/tasks/t0",
                                                    "http_request": {"url": target.url()}})
    client.resume_queue(name=queue.name)
    client.create_task(parent=queue.name, task={"http_request": {"url": target.url("/after")}})
    target.wait_for(1, "/after")
    assert target.on("/run") == []


def test_queue_tombstone_is_failed_precondition(make_emulator: Callable[..., Emulator]) -> None:
    clock = ManualClock()
    emu = make_emulator(queue_tombstone_s=7 * 24 * 3600, clock=clock)  # Google's: about a week
    client = client_for(emu)
    name = f"{LOCATION}/queues/recycled"
    client.create_queue(parent=LOCATION, queue={"name": name})
    client.delete_queue(name=name)
    with refused("FAILED_PRECONDITION"):
        client.create_queue(parent=LOCATION, queue={"name": name})
    with refused("FAILED_PRECONDITION"):
        client.update_queue(queue={"name": name})
    clock.advance(7 * 24 * 3600 + 1)
    client.create_queue(parent=LOCATION, queue={"name": name})
    client.transport.close()

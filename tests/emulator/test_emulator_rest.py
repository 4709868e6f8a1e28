"""REST/JSON and v2beta3: every v2beta3 RPC through the real tasks_v2beta3 client over gRPC and
REST, Google's JSON forms and error bodies over plain HTTP (what curl, Terraform or
firebase-admin see), bad input answered with Google's shapes and never a 500, and BufferTask."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from conftest import LOCATION, Target, client_for, refused
from google.cloud import tasks_v2beta3
from google.cloud.location import locations_pb2
from google.iam.v1 import iam_policy_pb2, policy_pb2

from emulator import Emulator

Beta = tasks_v2beta3.CloudTasksClient


@pytest.fixture
def beta(emulator: Emulator, transport: str) -> Iterator[Beta]:
    """The real v2beta3 client over gRPC, then over REST."""
    c = client_for(emulator, transport, tasks_v2beta3)
    yield c
    c.transport.close()


@pytest.fixture
def rest(emulator: Emulator) -> Callable[..., requests.Response]:
    """Plain HTTP to the emulator's REST front, as curl would call it."""

    def call(method: str, path: str, body: Any = None, **kw: Any) -> requests.Response:
        if body is not None and not isinstance(body, (bytes, str)):
            kw["json"] = body
        elif body is not None:
            kw["data"] = body
        return requests.request(method, emulator.http_url + path, timeout=10, **kw)

    return call


def test_every_v2beta3_rpc(beta: Beta, target: Target) -> None:
    name = f"{LOCATION}/queues/beta-q"
    queue = beta.create_queue(parent=LOCATION, queue={
        "name": name, "rate_limits": {"max_dispatches_per_second": 5},
        "app_engine_http_queue": {"app_engine_routing_override": {"service": "worker"}}})
    assert queue.rate_limits.max_burst_size == 5 and queue.type_ == tasks_v2beta3.Queue.Type.PUSH
    assert queue.app_engine_http_queue.app_engine_routing_override.service == "worker"
    assert queue.tombstone_ttl.total_seconds() == 3600 and queue.task_ttl.days == 31
    assert not queue.stats.tasks_count  # stats only when the read mask asks
    assert [q.name for q in beta.list_queues(parent=LOCATION)] == [name]
    updated = beta.update_queue(queue={"name": name, "rate_limits": {"max_dispatches_per_second": 7}},
                                update_mask={"paths": ["rate_limits.max_dispatches_per_second"]})
    assert updated.rate_limits.max_dispatches_per_second == 7
    assert updated.app_engine_http_queue.app_engine_routing_override.service == "worker"
    assert beta.pause_queue(name=name).state == tasks_v2beta3.Queue.State.PAUSED

    task = beta.create_task(parent=name, task={"http_request": {"url": target.url(), "body": b"b"}})
    assert task.http_request.url == target.url()
    assert beta.get_task(request={"name": task.name, "response_view": "FULL"}).http_request.body == b"b"
    assert [t.name for t in beta.list_tasks(parent=name)] == [task.name]
    stats = beta.get_queue(request={"name": name, "read_mask": {"paths": ["name", "stats"]}})
    assert stats.stats.tasks_count == 1 and stats.stats.oldest_estimated_arrival_time is not None
    assert stats.rate_limits.max_dispatches_per_second == 0  # left out by the mask
    ran = beta.run_task(name=task.name)
    assert ran.name == task.name
    target.wait_for(1)
    op = beta.batch_create_tasks(parent=name, requests=[
        {"parent": name, "task": {"http_request": {"url": target.url("/b")}}}])
    created = op.result()
    assert isinstance(created, tasks_v2beta3.BatchCreateTasksResponse) and len(created.tasks) == 1
    beta.delete_task(name=created.tasks[0].name)
    with refused("NOT_FOUND"):
        beta.get_task(name=created.tasks[0].name)
    beta.create_task(parent=name, task={"http_request": {"url": target.url("/c")}})
    assert beta.purge_queue(name=name).purge_time is not None
    assert list(beta.list_tasks(parent=name)) == []
    assert beta.resume_queue(name=name).state == tasks_v2beta3.Queue.State.RUNNING

    policy = beta.set_iam_policy(request={"resource": name, "policy": policy_pb2.Policy(
        bindings=[policy_pb2.Binding(role="roles/cloudtasks.enqueuer", members=["user:a@b.c"])])})
    assert beta.get_iam_policy(request={"resource": name}).etag == policy.etag
    allowed = beta.test_iam_permissions(request=iam_policy_pb2.TestIamPermissionsRequest(
        resource=name, permissions=["cloudtasks.tasks.create"]))
    assert list(allowed.permissions) == ["cloudtasks.tasks.create"]
    key = f"{LOCATION}/keyRings/r/cryptoKeys/k"
    assert beta.update_cmek_config(cmek_config={"name": f"{LOCATION}/cmekConfig", "kms_key": key}).kms_key == key
    assert beta.get_cmek_config(name=f"{LOCATION}/cmekConfig").kms_key == key
    location = beta.get_location(request=locations_pb2.GetLocationRequest(name=LOCATION))
    assert location.location_id == "us-central1"
    beta.delete_queue(name=name)
    with refused("NOT_FOUND"):
        beta.get_queue(name=name)


def test_v2beta3_and_v2_share_one_state(emulator: Emulator, beta: Beta, queue: Any) -> None:
    """A queue made through v2 is seen, and changed, through v2beta3 (and back)."""
    v2 = client_for(emulator)
    assert beta.get_queue(name=queue.name).name == queue.name
    beta.pause_queue(name=queue.name)
    assert v2.get_queue(name=queue.name).state == 2  # PAUSED
    with refused("INVALID_ARGUMENT", match="Pull queues"):
        beta.create_queue(parent=LOCATION, queue={"name": f"{LOCATION}/queues/pull", "type_": "PULL"})


def test_json_forms_over_plain_http(rest: Callable[..., requests.Response], target: Target) -> None:
    resp = rest("POST", f"/v2/{LOCATION}/queues", {"name": f"{LOCATION}/queues/curl",
                                                    "retryConfig": {"minBackoff": "0.5s", "maxAttempts": 3}})
    assert resp.status_code == 200, resp.text
    queue = resp.json()
    assert queue["retryConfig"] == {"maxAttempts": 3, "minBackoff": "0.500s", "maxBackoff": "3600s",
                                    "maxDoublings": 16, "maxRetryDuration": "0s"}
    assert queue["state"] == "RUNNING" and queue["rateLimits"]["maxBurstSize"] == 100
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    resp = rest("POST", f"/v2/{LOCATION}/queues/curl/tasks", {
        "task": {"httpRequest": {"url": target.url(), "body": "aGk="}, "scheduleTime": when,
                 "dispatchDeadline": "20s"},
        "responseView": "FULL"})
    assert resp.status_code == 200, resp.text
    task = resp.json()
    assert task["scheduleTime"] == when and task["dispatchDeadline"] == "20s"
    assert task["httpRequest"]["body"] == "aGk=" and task["view"] == "FULL"
    listed = rest("GET", f"/v2/{LOCATION}/queues/curl/tasks?pageSize=1&responseView=BASIC").json()
    assert [t["name"] for t in listed["tasks"]] == [task["name"]] and "body" not in listed["tasks"][0]["httpRequest"]
    assert rest("POST", f"/v2/{task['name']}:run").json()["dispatchCount"] == 1  # answered as dispatched
    assert target.wait_for(1)[0].body == b"hi"
    assert rest("DELETE", f"/v2/{LOCATION}/queues/curl").json() == {}


@pytest.mark.parametrize(("method", "path", "body", "status", "message"), [
    ("POST", f"/v2/{LOCATION}/queues", b'{"name": ', 400, "Invalid JSON payload received"),
    ("POST", f"/v2/{LOCATION}/queues", {"name": f"{LOCATION}/queues/x", "colour": 1}, 400,
     "Unknown name \"colour\""),
    ("POST", f"/v2/{LOCATION}/queues", {"name": f"{LOCATION}/queues/x", "rateLimits": {"speed": 1}}, 400,
     "Unknown name \"speed\" at 'queue.rate_limits'"),
    ("POST", f"/v2/{LOCATION}/queues", {"name": f"{LOCATION}/queues/x", "rateLimits": "fast"}, 400,
     "Invalid JSON payload received"),
    ("GET", f"/v2/{LOCATION}/queues?colour=red", None, 400, "Cannot bind query parameter"),
    ("GET", f"/v2/{LOCATION}/queues?pageSize=many", None, 400, "Invalid JSON payload received"),
    ("POST", f"/v2/{LOCATION}/queues", {"name": f"{LOCATION}/queues/bad_id"}, 400, "Queue name must be formatted"),
    ("GET", f"/v2/{LOCATION}/queues/missing", None, 404, "Queue does not exist"),
    ("GET", "/v2/nothing/here", None, 404, "was not found"),
    ("POST", f"/v2/{LOCATION}/queues/missing/tasks", {"task": {"httpRequest": {"url": "http://x"}}}, 404,
     "Queue does not exist"),
    ("POST", f"/v2/{LOCATION}/queues/missing/tasks", [1, 2], 400, "Invalid JSON payload received"),
    ("PATCH", f"/v2/{LOCATION}/queues/q", [1, 2], 400, "Root element must be a message"),
    ("PATCH", f"/v2/{LOCATION}/queues/q", "null", 400, "Root element must be a message"),
])
def test_bad_input_gets_googles_error_shape_never_a_500(rest: Callable[..., requests.Response], method: str,
                                                         path: str, body: Any, status: int, message: str) -> None:
    resp = rest(method, path, body)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["code"] == status and message in error["message"], error
    assert error["status"] == {400: "INVALID_ARGUMENT", 404: "NOT_FOUND"}[status]


def test_an_invalid_name_has_googles_help_detail(rest: Callable[..., requests.Response]) -> None:
    error = rest("POST", f"/v2/{LOCATION}/queues", {"name": f"{LOCATION}/queues/bad_id"}).json()["error"]
    assert error["details"] == [{
        "@type": "type.googleapis.com/google.rpc.Help",
        "links": [{"description": "Definition of queue name",
                   "url": "https://cloud.google.com/tasks/docs/reference/rest/v2/projects.locations.queues#Queue.FIELDS.name"}],
    }]


def test_buffer_task_sends_the_body_to_the_queues_target(rest: Callable[..., requests.Response],
                                                          target: Target) -> None:
    port = target.server.server_port
    resp = rest("POST", f"/v2beta3/{LOCATION}/queues", {"name": f"{LOCATION}/queues/buf", "httpTarget": {
        "uriOverride": {"scheme": "HTTP", "host": "127.0.0.1", "port": str(port),
                        "pathOverride": {"path": "/buffered"}}}})
    assert resp.status_code == 200, resp.text
    sent = rest("POST", f"/v2beta3/{LOCATION}/queues/buf/tasks:buffer", b'{"x": 1}',
                headers={"Content-Type": "application/json"})
    assert sent.status_code == 200, sent.text
    assert sent.json()["task"]["name"].startswith(f"{LOCATION}/queues/buf/tasks/")
    named = rest("POST", f"/v2/{LOCATION}/queues/buf/tasks/mine:buffer", b"plain")
    assert named.json()["task"]["name"] == f"{LOCATION}/queues/buf/tasks/mine"
    got = target.wait_for(2, "/buffered")
    by_body = {r.body: r for r in got}
    assert by_body[b'{"x": 1}'].headers["content-type"] == "application/json"
    assert by_body[b'{"x": 1}'].method == "POST"
    again = rest("POST", f"/v2/{LOCATION}/queues/buf/tasks/mine:buffer", b"plain")
    assert again.status_code == 409 and again.json()["error"]["status"] == "ALREADY_EXISTS"
    no_target = rest("POST", f"/v2/{LOCATION}/queues", {"name": f"{LOCATION}/queues/plain"})
    assert no_target.status_code == 200
    refused_ = rest("POST", f"/v2/{LOCATION}/queues/plain/tasks:buffer", b"x")
    assert refused_.status_code == 400 and refused_.json()["error"]["status"] == "FAILED_PRECONDITION"


def test_rest_errors_carry_the_grpc_sides_codes(emulator: Emulator, queue: Any) -> None:
    """The same refusals through both transports: one table of methods behind both."""
    grpc_client, rest_client = client_for(emulator, "grpc"), client_for(emulator, "rest")
    for c in (grpc_client, rest_client):
        with refused("ALREADY_EXISTS"):
            c.create_queue(parent=LOCATION, queue={"name": queue.name})
        with refused("NOT_FOUND", match="Queue does not exist"):
            c.get_queue(name=f"{LOCATION}/queues/none")


def test_update_masks_in_snake_or_camel_case(rest: Callable[..., requests.Response]) -> None:
    """Google takes both; the Node.js client's REST fallback sends snake_case."""
    name = f"{LOCATION}/queues/masks"
    assert rest("POST", f"/v2/{LOCATION}/queues", {"name": name}).status_code == 200
    for mask, rate in (("rate_limits.max_dispatches_per_second", 3), ("rateLimits.maxDispatchesPerSecond", 4)):
        resp = rest("PATCH", f"/v2/{name}?updateMask={mask}", {"rateLimits": {"maxDispatchesPerSecond": rate,
                                                                              "maxConcurrentDispatches": 9}})
        assert resp.status_code == 200, resp.text
        assert resp.json()["rateLimits"]["maxDispatchesPerSecond"] == rate
        assert resp.json()["rateLimits"]["maxConcurrentDispatches"] == 1000  # not in the mask


def test_a_bug_behind_a_route_is_googles_internal_error_not_a_traceback() -> None:
    import asyncio
    import concurrent.futures

    from aiohttp.test_utils import make_mocked_request
    from google.cloud.tasks_v2 import types as T

    from emulator.rest import RestFront, routes
    from emulator.rpc import Rpc

    def broken(request: Any) -> Any:
        raise RuntimeError("a bug")

    front = RestFront(routes("v2", [("GetQueue", "GET", "{name=projects/*/locations/*/queues/*}", "")],
                             {"GetQueue": Rpc(T.GetQueueRequest, T.Queue, broken)}))
    # In a thread of its own: an earlier test may leave this one's event loop marked running.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        answer = pool.submit(asyncio.run, front.handle(make_mocked_request("GET", f"/v2/{LOCATION}/queues/q"))).result()
    assert answer.status == 500
    assert json.loads(answer.body)["error"] == {"code": 500, "message": "Internal error encountered.",
                                                "status": "INTERNAL"}

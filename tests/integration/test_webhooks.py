"""Completion webhooks (docs/webhooks.md): one signed event per terminal transition, delivered
through its own queue with retries, every attempt recorded; SSRF refused.

Signatures are checked with the standardwebhooks library's own verifier. The receiver is a
real HTTP server on this machine (WEBHOOK_ALLOW_PRIVATE=true, as in dev)."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from google.cloud import tasks_v2
from sqlalchemy.engine import Engine
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from api.cloud.tasks import queue_path
from api.orchestration import webhooks
from api.orchestration.sweep import sweep
from tests.servers import BurstHTTPServer

SECRET = "whsec_" + base64.b64encode(b"s" * 32).decode()
OLD_SECRET = "whsec_" + base64.b64encode(b"o" * 32).decode()


class Receiver:
    """An HTTP endpoint that answers from a script of statuses and keeps what it got."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = list(statuses)
        self.got: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.got.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = BurstHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/cloudjobs?tenant=7"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Callable[[list[int]], Receiver]]:
    made: list[Receiver] = []

    def make(statuses: list[int]) -> Receiver:
        made.append(Receiver(statuses))
        return made[-1]

    yield make
    for r in made:
        r.close()


@pytest.fixture
def client(make_app: Callable[..., Flask]) -> FlaskClient:
    return make_app(handler_auth="none", webhook_secrets=(SECRET,), webhook_allow_private=True).test_client()


def create(client: FlaskClient, body: dict[str, Any], status: int = 202) -> dict[str, Any]:
    resp = client.post("/v1/jobs", data=json.dumps(body), content_type="application/json")
    assert resp.status_code == status, resp.get_json()
    return dict(resp.get_json())


def run(client: FlaskClient, job_id: str) -> None:
    client.post("/handlers/run", data=json.dumps({"job_id": job_id}), content_type="application/json",
                headers={"X-CloudTasks-TaskRetryCount": "0"})


def webhook_tasks(client: FlaskClient, tasks: tasks_v2.CloudTasksClient) -> list[str]:
    """The event ids of the webhooks queue's tasks."""
    config = client.application.extensions["cloudjobs"].config
    out = []
    for t in tasks.list_tasks(request={"parent": queue_path(config, "webhooks"), "response_view": tasks_v2.Task.View.FULL}):
        assert t.http_request.url.endswith("/handlers/webhook")
        out.append(json.loads(t.http_request.body)["event_id"])
    return out


def deliver(client: FlaskClient, event_id: str, retry_count: int) -> Any:
    return client.post("/handlers/webhook", data=json.dumps({"event_id": event_id}), content_type="application/json",
                       headers={"X-CloudTasks-TaskRetryCount": str(retry_count)})


def callbacks(client: FlaskClient, job_id: str) -> list[dict[str, Any]]:
    resp = client.get(f"/v1/jobs/{job_id}/callbacks")
    assert resp.status_code == 200
    return list(resp.get_json()["callbacks"])


def test_a_receiver_that_fails_twice_gets_one_event_in_three_deliveries_with_one_id(
    client: FlaskClient, tasks_client: tasks_v2.CloudTasksClient, receiver: Callable[[list[int]], Receiver],
) -> None:
    hook = receiver([503, 500, 204])
    job = create(client, {"type": "echo", "payload": {"say": "hi"}, "callback_url": hook.url})
    assert job["callback_url"] == hook.url
    run(client, job["id"])
    [event_id] = webhook_tasks(client, tasks_client)  # sent after the commit, through the webhooks queue
    assert [deliver(client, event_id, n).status_code for n in range(3)] == [500, 500, 200]
    assert deliver(client, event_id, 3).get_json()["outcome"] == "done"  # a redelivery after success: nothing sent
    assert len(hook.got) == 3
    ids = {h["webhook-id"] for h, _ in hook.got}
    assert ids == {event_id}
    for headers, body in hook.got:
        payload = Webhook(SECRET).verify(body, headers)  # the library's verifier
        assert payload["type"] == "job.completed" and payload["data"]["id"] == job["id"]
        assert payload["data"]["state"] == "COMPLETED" and payload["data"]["result"] == {"say": "hi"}
    [cb] = callbacks(client, job["id"])
    assert cb["id"] == event_id and cb["state"] == "DELIVERED" and cb["type"] == "job.completed"
    assert [d["status_code"] for d in cb["deliveries"]] == [503, 500, 204]
    assert [d["number"] for d in cb["deliveries"]] == [1, 2, 3]


def test_each_terminal_transition_is_one_event(client: FlaskClient, tasks_client: Any,
                                               receiver: Callable[[list[int]], Receiver], db: Engine) -> None:
    hook = receiver([])
    job = create(client, {"type": "echo", "callback_url": hook.url})
    client.post(f"/v1/jobs/{job['id']}:cancel")
    client.post(f"/v1/jobs/{job['id']}:cancel")  # idempotent: no second event
    client.post(f"/v1/jobs/{job['id']}:retry")
    run(client, job["id"])
    run(client, job["id"])  # a duplicate delivery of a finished job: no event
    events = callbacks(client, job["id"])
    assert [(e["run"], e["type"]) for e in events] == [(0, "job.cancelled"), (1, "job.completed")]
    assert sorted(webhook_tasks(client, tasks_client)) == sorted(e["id"] for e in events)


def test_a_rotated_secret_signs_with_both(make_app: Callable[..., Flask], tasks_client: Any,
                                          receiver: Callable[[list[int]], Receiver]) -> None:
    client = make_app(handler_auth="none", webhook_secrets=(SECRET, OLD_SECRET), webhook_allow_private=True).test_client()
    hook = receiver([])
    job = create(client, {"type": "echo", "callback_url": hook.url})
    run(client, job["id"])
    [event_id] = webhook_tasks(client, tasks_client)
    deliver(client, event_id, 0)
    [(headers, body)] = hook.got
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(SECRET).verify(body, headers)  # a receiver that has the new secret
    Webhook(OLD_SECRET).verify(body, headers)  # and one that still has the old one
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + base64.b64encode(b"x" * 32).decode()).verify(body, headers)
    tampered = body.replace(b"COMPLETED", b"FAILED!!!")
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(tampered, headers)


def test_the_queue_gives_up_after_its_attempts_and_the_event_is_failed(
    client: FlaskClient, tasks_client: Any, receiver: Callable[[list[int]], Receiver],
) -> None:
    hook = receiver([500] * 10)
    job = create(client, {"type": "echo", "callback_url": hook.url})
    run(client, job["id"])
    [event_id] = webhook_tasks(client, tasks_client)
    answers = [deliver(client, event_id, n).status_code for n in range(5)]  # the webhooks queue: 5 attempts
    assert answers == [500, 500, 500, 500, 200]
    [cb] = callbacks(client, job["id"])
    assert cb["state"] == "FAILED" and len(cb["deliveries"]) == 5 and cb["deliveries"][-1]["error"] == "HTTP 500"


def test_the_type_and_the_deployment_name_callbacks_too(make_app: Callable[..., Flask], tasks_client: Any,
                                                         receiver: Callable[[list[int]], Receiver]) -> None:
    hook = receiver([])
    client = make_app(handler_auth="none", webhook_secrets=(SECRET,), webhook_allow_private=True,
                      webhook_url=hook.url).test_client()
    job = create(client, {"type": "echo"})
    assert job["callback_url"] == hook.url
    own = create(client, {"type": "echo", "callback_url": hook.url + "&own=1"})
    assert own["callback_url"].endswith("&own=1")


def test_the_sweeper_sends_an_event_whose_task_was_never_created(client: FlaskClient, tasks_client: Any,
                                                                 receiver: Callable[[list[int]], Receiver],
                                                                 db: Engine) -> None:
    hook = receiver([])
    job = create(client, {"type": "echo", "callback_url": hook.url})
    with db.begin() as conn:  # ended by hand, as a process that died before sending would leave it
        conn.execute(sa.text("UPDATE jobs SET state = 'FAILED', done_time = now() WHERE id = :i"), {"i": job["id"]})
        conn.execute(sa.text("UPDATE webhook_events SET created_time = now() - interval '1 minute'"))
    assert webhook_tasks(client, tasks_client) == []
    report = sweep(client.application.extensions["cloudjobs"])
    assert report.webhooks_sent == 1 and len(webhook_tasks(client, tasks_client)) == 1


@pytest.mark.parametrize("url", [
    "http://example.com/hook",  # https only in production
    "https://127.0.0.1/hook", "https://[::1]/hook", "https://10.1.2.3/hook", "https://192.168.0.10/hook",
    "https://169.254.169.254/computeMetadata/v1/", "https://metadata.google.internal/computeMetadata/v1/",
    "https://localhost:8443/hook", "https://user:pass@example.com/hook", "ftp://example.com/hook", "not a url",
    "https://[::ffff:127.0.0.1]/hook", "https://100.64.0.1/hook",
])
def test_ssrf_targets_are_422_naming_callback_url_and_store_nothing(make_app: Callable[..., Flask], db: Engine,
                                                                    url: str) -> None:
    client = make_app(handler_auth="none", webhook_secrets=(SECRET,)).test_client()  # production: not allowed
    resp = client.post("/v1/jobs", data=json.dumps({"type": "echo", "callback_url": url}), content_type="application/json")
    assert resp.status_code == 422, resp.get_json()
    assert [e["field"] for e in resp.get_json()["errors"]] == ["callback_url"]
    with db.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM jobs")).scalar_one() == 0


def test_the_metadata_server_is_refused_even_where_private_addresses_are_allowed() -> None:
    for url in ("http://169.254.169.254/", "http://metadata.google.internal/", "http://[fd00:ec2::254]/"):
        assert webhooks.check_url(url, allow_private=True) is not None
    assert webhooks.check_url("http://127.0.0.1:9/hook", allow_private=True) is None


def test_a_name_that_resolves_to_a_private_address_is_refused_at_delivery() -> None:
    # localhost.localdomain-style names pass the check without DNS; the delivery resolves them
    answer = webhooks.post("https://127.0.0.1.nip.io.invalid/", b"{}", {}, allow_private=False, timeout_s=1)
    assert answer.status is None and not answer.ok
    with pytest.raises(webhooks.Refused):
        webhooks.resolve("localhost", 443, allow_private=False)
    assert webhooks.resolve("localhost", 443, allow_private=True) in ("127.0.0.1", "::1")


def test_a_callback_needs_secrets_to_sign_with(make_app: Callable[..., Flask]) -> None:
    client = make_app(handler_auth="none", webhook_allow_private=True).test_client()
    resp = client.post("/v1/jobs", data=json.dumps({"type": "echo", "callback_url": "https://example.com/h"}),
                       content_type="application/json")
    assert resp.status_code == 422 and "WEBHOOK_SECRETS" in resp.get_json()["errors"][0]["message"]


def test_a_receiver_that_never_answers_times_out() -> None:
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()  # accepts, never answers
    try:
        answer = webhooks.post(f"http://127.0.0.1:{listener.getsockname()[1]}/", b"{}", {}, allow_private=True,
                               timeout_s=0.5)
        assert answer.status is None and "Timeout" in (answer.error or "")
        assert "127.0.0.1" not in (answer.error or "")  # no URL (which may hold a token) in the error
    finally:
        listener.close()

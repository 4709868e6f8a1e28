"""Pub/Sub push triggers: real push envelopes, signed with the emulator's OIDC key, create one
job per (trigger, messageId) however often Pub/Sub pushes; what can create no job is
acknowledged and recorded; forged and malformed pushes are refused. `triggers sync` through
the real google-cloud-pubsub client over gRPC (to a stand-in Subscriber service: Pub/Sub itself
cannot run here)."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from google.protobuf import empty_pb2
from google.pubsub_v1 import types as P
from sqlalchemy.engine import Engine

from api.cloud.pubsub import sync_triggers
from api.cloud.schedules import Schedules
from api.config import Config
from emulator import Emulator
from tests.conftest import ROOT
from tests.integration.conftest import SERVICE_ACCOUNT

SCHEDULES = ROOT / "tests" / "schedules.yaml"
AUDIENCE = "http://127.0.0.1:9"
PUSHER = "pubsub-push@local-project.iam.gserviceaccount.com"


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app(schedules_file=SCHEDULES, pubsub_service_account=PUSHER)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def envelope(subscription: str, data: Any, message_id: str | None = None, **attributes: str) -> dict[str, Any]:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return {"message": {"data": base64.b64encode(raw).decode(), "attributes": attributes,
                        "messageId": message_id or str(uuid.uuid4().int)[:16], "publishTime": "2026-12-04T10:00:00.123Z"},
            "subscription": f"projects/local-project/subscriptions/{subscription}"}


def push(client: FlaskClient, emulator: Emulator, body: Any, *, status: int = 200, email: str = PUSHER,
         signed: bool = True) -> Any:
    headers = {"Authorization": "Bearer " + emulator.issuer.id_token(email, AUDIENCE)} if signed else {}
    resp = client.post("/handlers/pubsub", data=json.dumps(body), content_type="application/json", headers=headers)
    assert resp.status_code == status, resp.get_json()
    return resp.get_json()


def count(db: Engine, table: str) -> int:
    with db.connect() as conn:
        return int(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())


def test_a_pushed_message_creates_its_job_from_the_json_data(client: FlaskClient, emulator: Emulator) -> None:
    body = envelope("uploads-push", {"bucket": "b", "name": "a.csv"}, "1001", eventType="OBJECT_FINALIZE")
    out = push(client, emulator, body)
    job = out["job"]
    assert not out["duplicate"]
    assert (job["type"], job["payload"], job["labels"]) == ("echo", {"bucket": "b", "name": "a.csv"}, {"source": "gcs"})
    assert (job["trigger"], job["message_id"], job["state"]) == ("uploads", "1001", "QUEUED")
    assert [j["id"] for j in client.get("/v1/jobs?trigger=uploads").get_json()["jobs"]] == [job["id"]]


def test_message_mode_gives_data_and_attributes_as_fields(client: FlaskClient, emulator: Emulator) -> None:
    job = push(client, emulator, envelope("events-push", b"plain text", "7", kind="ping"))["job"]
    assert job["payload"] == {"data": "plain text", "attributes": {"kind": "ping"}, "message_id": "7",
                              "publish_time": "2026-12-04T10:00:00.123Z"}


def test_the_same_message_pushed_again_or_at_once_creates_one_job(app: Flask, emulator: Emulator, db: Engine) -> None:
    body = envelope("uploads-push", {"n": 1}, "2002")
    barrier = threading.Barrier(4)

    def deliver() -> Any:
        c = app.test_client()
        barrier.wait()
        return push(c, emulator, body)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: deliver(), range(4)))
    assert len({a["job"]["id"] for a in answers}) == 1
    assert sorted(a["duplicate"] for a in answers) == [False, True, True, True]
    assert push(app.test_client(), emulator, body)["duplicate"]
    assert count(db, "jobs") == 1


def test_a_message_that_can_make_no_job_is_acknowledged_and_recorded(client: FlaskClient, emulator: Emulator,
                                                                     db: Engine) -> None:
    unknown = push(client, emulator, envelope("nobodys-push", {"x": 1}, "3003"))
    assert unknown["rejected"].startswith("no trigger for subscription")
    refused = push(client, emulator, envelope("strict-push", {"seconds": "soon"}, "3004"))
    assert refused["rejected"] == "the job is not valid"
    assert refused["errors"][0]["field"].startswith("payload")
    not_json = push(client, emulator, envelope("uploads-push", b"\xff\xfe", "3005"))
    assert "not a JSON object" in not_json["rejected"]
    push(client, emulator, envelope("nobodys-push", {"x": 1}, "3003"))  # pushed again: still one record
    assert count(db, "jobs") == 0
    with db.connect() as conn:
        rows = conn.execute(sa.text("SELECT message_id, trigger, reason FROM trigger_rejections ORDER BY message_id")).all()
    assert [(r.message_id, r.trigger) for r in rows] == [("3003", None), ("3004", "strict"), ("3005", "uploads")]


@pytest.mark.parametrize(("body", "field"), [
    ({"subscription": "projects/p/subscriptions/uploads-push"}, "message"),
    ({"message": {"data": "e30="}, "subscription": "projects/p/subscriptions/uploads-push"}, "message.messageId"),
    ({"message": {"messageId": "1", "data": 5}, "subscription": "projects/p/subscriptions/uploads-push"}, "message.data"),
    ({"message": {"messageId": "1", "attributes": {"a": 1}}, "subscription": "s"}, "message.attributes"),
    ({"message": {"messageId": "1"}}, "subscription"),
    ([1, 2], ""),
])
def test_a_malformed_envelope_is_a_400_naming_the_field(client: FlaskClient, emulator: Emulator, db: Engine,
                                                        body: Any, field: str) -> None:
    problem = push(client, emulator, body, status=400)
    assert problem["errors"][0]["field"] == field
    assert count(db, "jobs") == 0 and count(db, "trigger_rejections") == 0


def test_a_forged_push_is_refused(client: FlaskClient, emulator: Emulator, db: Engine) -> None:
    body = envelope("uploads-push", {"n": 1})
    push(client, emulator, body, status=401, signed=False)
    push(client, emulator, body, status=401, email="someone@evil.example")
    push(client, emulator, body, status=401, email=SERVICE_ACCOUNT)  # Cloud Tasks' identity is not Pub/Sub's
    assert count(db, "jobs") == 0


class StandInSubscriber:
    """google.pubsub.v1.Subscriber's Get/Create/ModifyPushConfig over gRPC, as Pub/Sub answers
    them, with the subscriptions in a dict."""

    def __init__(self) -> None:
        self.subscriptions: dict[str, Any] = {}

    def handler(self) -> grpc.GenericRpcHandler:
        def rpc(fn: Callable[[Any], Any], req: Any, resp: Any) -> grpc.RpcMethodHandler:
            def call(request: Any, context: grpc.ServicerContext) -> Any:
                try:
                    return fn(request)
                except KeyError:
                    context.abort(grpc.StatusCode.NOT_FOUND, "Resource not found")
            return grpc.unary_unary_rpc_method_handler(call, request_deserializer=req.deserialize,
                                                       response_serializer=resp.serialize)

        def create(sub: Any) -> Any:
            self.subscriptions[sub.name] = sub
            return sub

        def modify(req: Any) -> Any:
            self.subscriptions[req.subscription].push_config = req.push_config
            return empty_pb2.Empty()

        empty = type("EmptyType", (), {"serialize": staticmethod(lambda m: m.SerializeToString())})
        return grpc.method_handlers_generic_handler("google.pubsub.v1.Subscriber", {
            "GetSubscription": rpc(lambda r: self.subscriptions[r.subscription], P.GetSubscriptionRequest, P.Subscription),
            "CreateSubscription": rpc(create, P.Subscription, P.Subscription),
            "ModifyPushConfig": rpc(modify, P.ModifyPushConfigRequest, empty),
        })


@pytest.fixture
def subscriber(monkeypatch: pytest.MonkeyPatch) -> Iterator[StandInSubscriber]:
    stand_in = StandInSubscriber()
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers([stand_in.handler()])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", f"127.0.0.1:{port}")  # the client's own switch
    yield stand_in
    server.stop(None)


def test_triggers_sync_creates_push_subscriptions_and_repoints_them(subscriber: StandInSubscriber, config: Config) -> None:
    cfg = config.replace(handler_base_url="https://svc.example", pubsub_service_account=PUSHER)
    schedules = Schedules.load(SCHEDULES)
    lines = sync_triggers(cfg, schedules)
    assert lines[0] == "created uploads: projects/local-project/subscriptions/uploads-push on projects/local-project/topics/uploads"
    assert lines[1].startswith("not managed events") and lines[2].startswith("not managed strict")
    sub = subscriber.subscriptions["projects/local-project/subscriptions/uploads-push"]
    assert sub.push_config.push_endpoint == "https://svc.example/handlers/pubsub"
    assert (sub.push_config.oidc_token.service_account_email, sub.push_config.oidc_token.audience) == (PUSHER, "https://svc.example")
    assert sub.retry_policy.minimum_backoff.seconds == 10
    assert sync_triggers(cfg, schedules)[0] == "unchanged uploads"
    moved = cfg.replace(handler_base_url="https://new.example", oidc_audience="https://svc.example")
    assert sync_triggers(moved, schedules)[0] == "updated uploads: pushes to https://new.example/handlers/pubsub"
    assert sub.name in subscriber.subscriptions
    assert subscriber.subscriptions[sub.name].push_config.push_endpoint == "https://new.example/handlers/pubsub"

"""Authentication and scoping: every mode's acceptance and each rejection, and no principal
ever reaching another's job."""

from __future__ import annotations

import hmac as hmac_lib
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from google.auth import jwt
from sqlalchemy.engine import Engine

from api.web import auth
from api.web.callers import sign
from emulator import Emulator
from tests.integration.conftest import SERVICE_ACCOUNT
from tests.servers import BurstHTTPServer

AUDIENCE = "http://127.0.0.1:9"  # the test config's handler_base_url, the default audience


def token(emu: Emulator, **claims: Any) -> str:
    """A token signed with the emulator's key (what Google would sign), with claims overridden."""
    now = int(time.time())
    payload = {"iss": "https://accounts.google.com", "aud": AUDIENCE, "sub": "1", "email": SERVICE_ACCOUNT,
               "email_verified": True, "iat": now, "exp": now + 3600, **claims}
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(emu.key.signer, payload).decode()


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def make_key(db: Engine, name: str, *, admin: bool = False) -> str:
    with db.begin() as conn:
        return auth.create_key(conn, name, admin=admin)


def post_job(client: FlaskClient, headers: dict[str, str], body: dict[str, Any] | None = None, **extra: str) -> Any:
    return client.post("/v1/jobs", data=json.dumps(body or {"type": "echo"}), content_type="application/json",
                       headers={**headers, **extra})


@pytest.fixture
def keys_app(make_app: Callable[..., Flask]) -> Flask:
    return make_app(api_auth="keys")


# ---- API keys ---------------------------------------------------------------------------

@pytest.mark.parametrize(("headers", "needle"), [
    ({}, "Authorization: Bearer"),
    ({"Authorization": "Basic dXNlcjpwYXNz"}, "Authorization: Bearer"),
    ({"Authorization": "Bearer "}, "Authorization: Bearer"),
    ({"Authorization": "Bearer not-a-key"}, "malformed"),
    ({"Authorization": "Bearer cj_deadbeef0000_" + "x" * 43}, "not known"),
])
def test_the_api_refuses_callers_without_a_valid_key(keys_app: Flask, db: Engine, headers: dict[str, str], needle: str) -> None:
    client = keys_app.test_client()
    for resp in (client.get("/v1/jobs", headers=headers), post_job(client, headers)):
        assert resp.status_code == 401
        assert resp.content_type == "application/problem+json"
        assert needle in resp.get_json()["detail"]
        assert resp.headers["WWW-Authenticate"] == "Bearer"


def test_a_key_with_a_wrong_secret_is_refused(keys_app: Flask, db: Engine) -> None:
    key = make_key(db, "team-a")
    forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    assert keys_app.test_client().get("/v1/jobs", headers=bearer(forged)).status_code == 401


def test_a_revoked_key_is_refused(keys_app: Flask, db: Engine) -> None:
    key = make_key(db, "leaver")
    with db.begin() as conn:
        assert auth.revoke_key(conn, "leaver") == 1
    resp = keys_app.test_client().get("/v1/jobs", headers=bearer(key))
    assert resp.status_code == 401 and "revoked" in resp.get_json()["detail"]


def test_public_endpoints_need_no_key(keys_app: Flask) -> None:
    client = keys_app.test_client()
    for path in ("/healthz", "/readyz", "/openapi.json"):
        assert client.get(path).status_code == 200


def test_a_key_never_reaches_another_principals_job(keys_app: Flask, db: Engine) -> None:
    client = keys_app.test_client()
    a, b, admin = bearer(make_key(db, "a")), bearer(make_key(db, "b")), bearer(make_key(db, "ops", admin=True))
    job = post_job(client, a).get_json()
    jid = job["id"]
    assert client.get(f"/v1/jobs/{jid}", headers=a).status_code == 200
    for method, path in [("get", f"/v1/jobs/{jid}"), ("get", f"/v1/jobs/{jid}/attempts"),
                         ("post", f"/v1/jobs/{jid}:cancel"), ("post", f"/v1/jobs/{jid}:retry")]:
        resp = getattr(client, method)(path, headers=b)
        assert resp.status_code == 404, (method, path, resp.status_code)
        assert resp.get_json()["title"] == "Job not found"
    assert client.get("/v1/jobs", headers=b).get_json()["jobs"] == []
    assert [j["id"] for j in client.get("/v1/jobs", headers=a).get_json()["jobs"]] == [jid]
    # B's attempts above changed nothing; an admin sees the job and may act on it.
    assert client.get(f"/v1/jobs/{jid}", headers=admin).get_json()["state"] == "QUEUED"
    assert [j["id"] for j in client.get("/v1/jobs", headers=admin).get_json()["jobs"]] == [jid]
    assert client.post(f"/v1/jobs/{jid}:cancel", headers=admin).get_json()["state"] == "CANCELLED"


def test_idempotency_keys_are_scoped_to_the_caller(keys_app: Flask, db: Engine) -> None:
    client = keys_app.test_client()
    a, b = bearer(make_key(db, "a")), bearer(make_key(db, "b"))
    ja = post_job(client, a, **{"Idempotency-Key": "same"})
    jb = post_job(client, b, **{"Idempotency-Key": "same"})
    assert (ja.status_code, jb.status_code) == (202, 202)
    assert ja.get_json()["id"] != jb.get_json()["id"]
    assert post_job(client, a, **{"Idempotency-Key": "same"}).get_json()["id"] == ja.get_json()["id"]


def test_keys_are_stored_as_hashes_only(db: Engine) -> None:
    key = make_key(db, "hashed")
    secret = key.split("_", 2)[2]
    with db.connect() as conn:
        rows = [dict(r._mapping) for r in conn.exec_driver_sql("SELECT * FROM api_keys")]
    assert secret not in json.dumps(rows, default=str)


def test_keys_and_tokens_never_reach_logs_or_errors(keys_app: Flask, db: Engine, caplog: pytest.LogCaptureFixture) -> None:
    key = make_key(db, "secretive")
    bad = "cj_" + "f" * 12 + "_" + "s" * 43
    caplog.set_level(logging.DEBUG)
    client = keys_app.test_client()
    post_job(client, bearer(key))
    resp = client.get("/v1/jobs", headers=bearer(bad))
    assert bad not in resp.get_data(as_text=True)
    text = caplog.text + json.dumps([r.__dict__ for r in caplog.records], default=str)
    assert key not in text and bad not in text


# ---- AUTH=google --------------------------------------------------------------------------

@pytest.fixture
def google_app(make_app: Callable[..., Flask]) -> Flask:
    return make_app(api_auth="google", api_service_accounts=("caller@p.iam.gserviceaccount.com",),
                    admin_service_accounts=("admin@p.iam.gserviceaccount.com",), api_audience="https://api.example")


def test_google_id_tokens_from_allowed_service_accounts_are_accepted(google_app: Flask, emulator: Emulator) -> None:
    client = google_app.test_client()
    caller = bearer(token(emulator, aud="https://api.example", email="caller@p.iam.gserviceaccount.com"))
    admin = bearer(token(emulator, aud="https://api.example", email="admin@p.iam.gserviceaccount.com"))
    job = post_job(client, caller)
    assert job.status_code == 202
    assert client.get(f"/v1/jobs/{job.get_json()['id']}", headers=admin).status_code == 200


@pytest.mark.parametrize(("claims", "needle"), [
    ({"email": "stranger@p.iam.gserviceaccount.com"}, "another service account"),
    ({"aud": "https://elsewhere.example"}, "another audience"),
    ({"email_verified": False}, "not verified"),
    ({"iss": "https://evil.example"}, "not issued by Google"),
    ({"exp": int(time.time()) - 3600, "iat": int(time.time()) - 7200}, "expired"),
])
def test_google_id_tokens_are_refused(google_app: Flask, emulator: Emulator, claims: dict[str, Any], needle: str) -> None:
    base = {"aud": "https://api.example", "email": "caller@p.iam.gserviceaccount.com"}
    resp = google_app.test_client().get("/v1/jobs", headers=bearer(token(emulator, **{**base, **claims})))
    assert resp.status_code == 401
    assert needle in resp.get_json()["detail"]


# ---- /handlers/* ----------------------------------------------------------------------------

def deliver(client: FlaskClient, job_id: str, headers: dict[str, str]) -> Any:
    return client.post("/handlers/run", data=json.dumps({"job_id": job_id}), content_type="application/json",
                       headers={"X-CloudTasks-TaskRetryCount": "0", **headers})


def test_a_callback_with_the_tasks_oidc_token_is_accepted(client: FlaskClient, emulator: Emulator) -> None:
    job = post_job(client, {}).get_json()
    assert deliver(client, job["id"], bearer(emulator.issuer.id_token(SERVICE_ACCOUNT, AUDIENCE))).status_code == 200
    assert client.get(f"/v1/jobs/{job['id']}").get_json()["state"] == "COMPLETED"


@pytest.mark.parametrize(("headers_of", "needle"), [
    (lambda emu: {}, "Bearer"),
    (lambda emu: bearer("a.b"), "not a JWT"),
    (lambda emu: bearer("x.y.z"), "could not be verified"),
    (lambda emu: bearer(token(emu, exp=int(time.time()) - 3600, iat=int(time.time()) - 7200)), "expired"),
    (lambda emu: bearer(token(emu, aud="https://another.service")), "another audience"),
    (lambda emu: bearer(token(emu, iss="https://evil.example")), "not issued by Google"),
    (lambda emu: bearer(token(emu, email="intruder@p.iam.gserviceaccount.com")), "another service account"),
    (lambda emu: bearer(token(emu, email_verified=False)), "not verified"),
    (lambda emu: bearer(token(emu, email_verified=None)), "not verified"),
])
def test_handler_oidc_rejections(client: FlaskClient, emulator: Emulator, headers_of: Any, needle: str, db: Engine) -> None:
    job = post_job(client, {}).get_json()
    resp = deliver(client, job["id"], headers_of(emulator))
    assert resp.status_code == 401
    assert needle in resp.get_json()["detail"]
    assert client.get(f"/v1/jobs/{job['id']}").get_json()["attempts"] == 0


def test_a_token_signed_by_an_unknown_key_is_refused(client: FlaskClient, db: Engine) -> None:
    from emulator.oidc import SigningKey

    stranger = SigningKey.generate()
    now = int(time.time())
    forged = jwt.encode(stranger.signer, {"iss": "https://accounts.google.com", "aud": AUDIENCE, "email": SERVICE_ACCOUNT,
                                          "email_verified": True, "iat": now, "exp": now + 600}).decode()
    job = post_job(client, {}).get_json()
    resp = deliver(client, job["id"], bearer(forged))
    assert resp.status_code == 401 and "unknown key" in resp.get_json()["detail"]


SECRET_1, SECRET_2 = "s1-" + "a" * 40, "s2-" + "b" * 40


@pytest.fixture
def hmac_client(make_app: Callable[..., Flask]) -> FlaskClient:
    return make_app(handler_auth="hmac", handler_hmac_secrets=(SECRET_1, SECRET_2)).test_client()


def signed_delivery(client: FlaskClient, job_id: str, signature: str | None, body: bytes | None = None) -> Any:
    raw = body if body is not None else json.dumps({"job_id": job_id}).encode()
    headers = {"X-CloudJobs-Signature": signature} if signature is not None else {}
    return client.post("/handlers/run", data=raw, content_type="application/json", headers=headers)


@pytest.mark.parametrize("secret", [SECRET_1, SECRET_2])
def test_hmac_signatures_under_either_secret_are_accepted(hmac_client: FlaskClient, secret: str) -> None:
    job = post_job(hmac_client, {}).get_json()
    raw = json.dumps({"job_id": job["id"]}).encode()
    assert signed_delivery(hmac_client, job["id"], sign(secret, raw), raw).status_code == 200


@pytest.mark.parametrize(("make_sig", "needle"), [
    (lambda raw: None, "X-CloudJobs-Signature"),
    (lambda raw: "garbage", "t=<unix time>"),
    # issue #21: the signature covers the method and path, not the body alone
    (lambda raw: sign(SECRET_1, raw, path="/handlers/sweep"), "does not match"),
    (lambda raw: sign(SECRET_1, raw, method="PUT"), "does not match"),
    (lambda raw: "t={},v1={}".format(int(time.time()), hmac_lib.new(SECRET_1.encode(), b"%d." % int(time.time()) + raw,
                                                                  "sha256").hexdigest()), "no longer accepted"),
    (lambda raw: sign("wrong-" + "c" * 40, raw), "does not match"),
    (lambda raw: sign(SECRET_1, raw + b" "), "does not match"),
    (lambda raw: sign(SECRET_1, raw, at=int(time.time()) - 301), "5 minutes"),
    (lambda raw: sign(SECRET_1, raw, at=int(time.time()) + 301), "5 minutes"),
])
def test_hmac_rejections(hmac_client: FlaskClient, make_sig: Any, needle: str) -> None:
    job = post_job(hmac_client, {}).get_json()
    raw = json.dumps({"job_id": job["id"]}).encode()
    resp = signed_delivery(hmac_client, job["id"], make_sig(raw), raw)
    assert resp.status_code == 401
    assert needle in resp.get_json()["detail"]


def test_app_engine_header_is_trusted_on_app_engine_only(make_app: Callable[..., Flask]) -> None:
    client = make_app(handler_auth="appengine", on_app_engine=True).test_client()
    job = post_job(client, {}).get_json()
    assert deliver(client, job["id"], {}).status_code == 401
    assert deliver(client, job["id"], {"X-AppEngine-QueueName": "default"}).status_code == 200


def test_the_sweep_endpoint_refuses_unsigned_callers(client: FlaskClient, emulator: Emulator) -> None:
    assert client.post("/handlers/sweep").status_code == 401
    ok = client.post("/handlers/sweep", headers=bearer(emulator.issuer.id_token(SERVICE_ACCOUNT, AUDIENCE)))
    assert ok.status_code == 200


# ---- input and responses ----------------------------------------------------------------

def test_responses_carry_security_headers(client: FlaskClient) -> None:
    for resp in (client.get("/healthz"), client.get(f"/v1/jobs/{uuid.uuid4()}")):
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["X-Frame-Options"] == "DENY"
        assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
        assert resp.headers["Cache-Control"] == "no-store"


def test_a_payload_over_its_limit_is_422(make_app: Callable[..., Flask], db: Engine) -> None:
    client = make_app(max_payload_bytes=100).test_client()
    resp = post_job(client, {}, {"type": "echo", "payload": {"x": "y" * 200}})
    assert resp.status_code == 422 and resp.get_json()["errors"][0]["field"] == "payload"


def test_an_unexpected_error_shows_no_stack_trace_or_sql(app: Flask) -> None:
    @app.get("/v1/explode")
    def explode() -> None:
        raise RuntimeError("SELECT secret FROM internals")

    resp = app.test_client().get("/v1/explode")
    assert resp.status_code == 500
    body = resp.get_data(as_text=True)
    assert "Traceback" not in body and "SELECT" not in body and "internals" not in body


@pytest.mark.parametrize("query", ["state=" + ",".join(["QUEUED"] * 60), "type=" + "x" * 300,
                                   "&".join(["label=a:b"] * 60), "created_after=99999-01-01T00:00:00Z"])
def test_query_parameters_are_bounded(client: FlaskClient, query: str) -> None:
    assert client.get(f"/v1/jobs?{query}").status_code == 400


def test_signing_certs_are_cached_as_their_headers_say(emulator: Emulator) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler

    hits = []
    body = json.dumps(emulator.key.certs_v1()).encode()

    class Certs(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Cache-Control", "public, max-age=3600")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = BurstHTTPServer(("127.0.0.1", 0), Certs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        verifier = auth.TokenVerifier(f"http://127.0.0.1:{server.server_address[1]}/certs")
        for _ in range(5):
            verifier.verify(token(emulator), audience=AUDIENCE, emails=(SERVICE_ACCOUNT,))
    finally:
        server.shutdown()
    assert len(hits) == 1


def test_a_verified_token_is_remembered_until_it_expires(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    from google.oauth2 import id_token

    calls = []
    real = id_token.verify_token
    monkeypatch.setattr(id_token, "verify_token", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    verifier = auth.TokenVerifier(emulator.certs_url)
    good = token(emulator)
    for _ in range(3):
        assert verifier.verify(good, audience=AUDIENCE, emails=(SERVICE_ACCOUNT,))["email"] == SERVICE_ACCOUNT
    assert len(calls) == 1  # signature checked once
    # Still checked on every use: the service account and the audience it was verified for.
    with pytest.raises(auth.Unauthenticated, match="another service account"):
        verifier.verify(good, audience=AUDIENCE, emails=("other@p.iam.gserviceaccount.com",))
    with pytest.raises(auth.Unauthenticated, match="another audience"):
        verifier.verify(good, audience="https://another.service", emails=(SERVICE_ACCOUNT,))
    # And its expiry: accepted within the clock skew, refused once past it.
    now = int(time.time())
    ending = token(emulator, iat=now - 3600, exp=now - auth.CLOCK_SKEW_S + 1)
    verifier.verify(ending, audience=AUDIENCE, emails=(SERVICE_ACCOUNT,))
    time.sleep(2.1)  # google-auth counts whole seconds
    with pytest.raises(auth.Unauthenticated, match="expired"):
        verifier.verify(ending, audience=AUDIENCE, emails=(SERVICE_ACCOUNT,))

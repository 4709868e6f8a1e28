"""OIDC tokens on dispatch, verified by google-auth against the emulator's certs URL."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path

import google.auth.transport.requests
import pytest
import requests
from conftest import Target
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from google.cloud import tasks_v2
from google.oauth2 import id_token

from emulator import Emulator
from emulator.oidc import SigningKey, TokenIssuer, subject_for

Client = tasks_v2.CloudTasksClient
SA = "tasks-invoker@test-project.iam.gserviceaccount.com"


def bearer(received_headers: dict[str, str]) -> str:
    scheme, _, token = received_headers["authorization"].partition(" ")
    assert scheme == "Bearer"
    return token


def b64json(part: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def test_token_verifies_with_google_auth_and_the_certs_url(
        client: Client, queue: tasks_v2.Queue, target: Target, emulator: Emulator) -> None:
    client.create_task(parent=queue.name, task={"http_request": {
        "url": target.url(), "oidc_token": {"service_account_email": SA}}})
    [got] = target.wait_for(1)
    token = bearer(got.headers)
    request = google.auth.transport.requests.Request()
    # No audience on the task: the task URL is the audience.
    claims = id_token.verify_token(token, request, audience=target.url(),
                                   certs_url=emulator.certs_url)
    assert claims["iss"] == "https://accounts.google.com"
    assert claims["email"] == SA
    assert claims["email_verified"] is True
    assert claims["sub"] == subject_for(SA)
    assert claims["sub"].isdigit() and len(claims["sub"]) == 21
    assert claims["exp"] - claims["iat"] == 3600
    header = b64json(token.split(".")[0])
    assert header["alg"] == "RS256"
    assert header["kid"] == emulator.key.kid


def test_explicit_audience_and_wrong_audience(client: Client, queue: tasks_v2.Queue,
                                              target: Target, emulator: Emulator) -> None:
    audience = "https://handlers.example.run.app"
    client.create_task(parent=queue.name, task={"http_request": {
        "url": target.url(),
        "oidc_token": {"service_account_email": SA, "audience": audience}}})
    [got] = target.wait_for(1)
    token = bearer(got.headers)
    request = google.auth.transport.requests.Request()
    assert id_token.verify_token(token, request, audience=audience,
                                 certs_url=emulator.certs_url)["aud"] == audience
    with pytest.raises(ValueError, match="audience"):
        id_token.verify_token(token, request, audience=target.url(),
                              certs_url=emulator.certs_url)


def test_token_from_another_key_is_rejected(emulator: Emulator) -> None:
    stranger = TokenIssuer(SigningKey.generate()).id_token(SA, "aud")
    with pytest.raises(ValueError):
        id_token.verify_token(stranger, google.auth.transport.requests.Request(),
                              audience="aud", certs_url=emulator.certs_url)


def test_queue_level_oidc_override(client: Client, make_queue: Callable[..., tasks_v2.Queue],
                                   target: Target, emulator: Emulator) -> None:
    q = make_queue(http_target={"oidc_token": {"service_account_email": "queue@p.iam",
                                               "audience": "queue-aud"}})
    client.create_task(parent=q.name, task={"http_request": {
        "url": target.url(), "oidc_token": {"service_account_email": SA}}})
    [got] = target.wait_for(1)
    claims = id_token.verify_token(bearer(got.headers), google.auth.transport.requests.Request(),
                                   audience="queue-aud", certs_url=emulator.certs_url)
    assert claims["email"] == "queue@p.iam"


def test_jwks_endpoint_verifies_the_signature(client: Client, queue: tasks_v2.Queue,
                                              target: Target, emulator: Emulator) -> None:
    client.create_task(parent=queue.name, task={"http_request": {
        "url": target.url(), "oidc_token": {"service_account_email": SA}}})
    token = bearer(target.wait_for(1)[0].headers)
    jwks = requests.get(emulator.jwks_url, timeout=5).json()
    [jwk] = jwks["keys"]
    head, payload, signature = token.split(".")
    assert jwk["kid"] == b64json(head)["kid"] and jwk["alg"] == "RS256"

    def as_int(b64: str) -> int:
        return int.from_bytes(base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4)), "big")

    key = rsa.RSAPublicNumbers(as_int(jwk["e"]), as_int(jwk["n"])).public_key()
    key.verify(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)),
               f"{head}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256())


def test_certs_endpoint_shape(emulator: Emulator) -> None:
    response = requests.get(emulator.certs_url, timeout=5)
    assert response.headers["Content-Type"].startswith("application/json")
    certs = response.json()
    assert list(certs) == [emulator.key.kid]
    assert certs[emulator.key.kid].startswith("-----BEGIN CERTIFICATE-----")


def test_key_file_gives_a_stable_key_id(make_emulator: Callable[..., Emulator],
                                        key_file: Path) -> None:
    first, second = make_emulator(), make_emulator()
    assert first.key.kid == second.key.kid == SigningKey.from_file(key_file).kid
    assert requests.get(first.certs_url, timeout=5).json() == \
        {first.key.kid: first.key.certificate_pem}


def test_tokens_are_reused_until_near_expiry() -> None:
    issuer = TokenIssuer(SigningKey.generate())
    a = issuer.id_token(SA, "aud", now=1000.0)
    assert issuer.id_token(SA, "aud", now=1000.0 + 3000) == a
    assert issuer.id_token(SA, "aud", now=1000.0 + 3400) != a
    assert issuer.id_token(SA, "other", now=1000.0) != a


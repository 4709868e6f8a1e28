"""Who may call /handlers/*: Cloud Tasks (or Cloud Scheduler) and nobody else. Fails closed.

- oidc: a Google-signed ID token for our audience, from the configured service account,
  with a verified email (signature, issuer, audience and expiry checked by google-auth).
- hmac: `X-CloudJobs-Signature: t=<unix time>,v2=<hex HMAC-SHA256 of "t.METHOD.path." + raw body>`,
  within 5 minutes, under any of the configured secrets (two during a rotation).
- appengine: App Engine's `X-AppEngine-QueueName`, trusted only on App Engine, which strips
  X-AppEngine-* headers from outside requests.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import TYPE_CHECKING, Any

from api.config import Config
from api.errors import Unauthenticated
from api.web.auth import TokenVerifier, bearer_token

if TYPE_CHECKING:
    from flask import Request

SIGNATURE_HEADER = "X-CloudJobs-Signature"
HMAC_TOLERANCE_S = 300


def _signed(t: int, method: str, path: str, body: bytes) -> bytes:
    # Method and path are signed with the body: a signed call to /handlers/run is not a valid
    # call to /handlers/sweep, or to anything else.
    return f"{t}.{method.upper()}.{path}.".encode() + body


def sign(secret: str, body: bytes, *, method: str = "POST", path: str = "/handlers/run", at: int | None = None) -> str:
    """The X-CloudJobs-Signature value for a request (for callers that sign their requests)."""
    t = int(time.time()) if at is None else at
    mac = hmac.new(secret.encode(), _signed(t, method, path, body), hashlib.sha256).hexdigest()
    return f"t={t},v2={mac}"


def verify_signature(
    header: str, body: bytes, secrets: tuple[str, ...], *, method: str, path: str, now: float | None = None
) -> None:
    """Accept a signature of this method, path and body made within the tolerance under any of
    `secrets`; 401 otherwise."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    if "v1" in fields and "v2" not in fields:
        raise Unauthenticated(
            "v1 signatures (of the body alone) are no longer accepted: send v2, an HMAC-SHA256 of "
            "<t>.<METHOD>.<path>.<body>"
        )
    try:
        t = int(fields["t"])
        given = fields["v2"]
    except (KeyError, ValueError):
        raise Unauthenticated(f"{SIGNATURE_HEADER} must be t=<unix time>,v2=<hex>") from None
    current = time.time() if now is None else now
    if abs(current - t) > HMAC_TOLERANCE_S:
        raise Unauthenticated("the signature's timestamp is more than 5 minutes off")
    signed = _signed(t, method, path, body)
    # Check every secret, so the time taken says nothing about which one matched.
    ok = False
    for secret in secrets:
        expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
        ok |= hmac.compare_digest(expected, given)
    if not ok:
        raise Unauthenticated("the signature does not match")


def require_task_caller(req: Request, state: Any, *, identity: str | None = None) -> str:
    """Refuse a request to /handlers/* that is not from Cloud Tasks (or, with `identity`, from
    the service account Cloud Scheduler or Pub/Sub push signs as)."""
    verifier = state.__dict__.get("_token_verifier")
    if verifier is None:
        verifier = state.__dict__["_token_verifier"] = TokenVerifier(state.config.oidc_certs_url)
    return authenticate(req, state.config, verifier, identity=identity)


def authenticate(req: Request, config: Config, verifier: TokenVerifier, *, identity: str | None = None) -> str:
    """Check the caller as the configured mode says; returns who it is. Under oidc the token
    must be signed for `identity` (default: TASKS_SERVICE_ACCOUNT)."""
    mode = config.handler_auth
    if mode == "none":
        return "anonymous"
    if mode == "appengine":
        if not config.on_app_engine or not req.headers.get("X-AppEngine-QueueName"):
            raise Unauthenticated("only App Engine's task queue may call this endpoint")
        return "appengine"
    if mode == "hmac":
        header = req.headers.get(SIGNATURE_HEADER)
        if not header:
            raise Unauthenticated(f"send a {SIGNATURE_HEADER} header")
        verify_signature(header, req.get_data(cache=True), config.handler_hmac_secrets, method=req.method, path=req.path)
        return "hmac"
    if mode == "oidc":
        claims = verifier.verify(
            bearer_token(req), audience=config.audience, emails=(identity or config.tasks_service_account or "",)
        )
        return str(claims.get("email"))
    raise Unauthenticated("handler authentication is not configured")

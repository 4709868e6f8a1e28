"""Who may call /handlers/*: Cloud Tasks with an OIDC token, or App Engine's queue header."""

from __future__ import annotations

import logging
import threading
from typing import Any

from flask import Request

from api.config import Config
from api.errors import Unauthenticated

logger = logging.getLogger(__name__)

ISSUERS = ("accounts.google.com", "https://accounts.google.com")


class TokenVerifier:
    """Verifies Google-signed ID tokens; the certs are fetched through an HTTP cache."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._request: Any = None
        self._lock = threading.Lock()

    def _transport(self) -> Any:
        if self._request is None:
            with self._lock:
                if self._request is None:
                    import cachecontrol
                    import google.auth.transport.requests
                    import requests

                    # Google's certs say how long they may be cached; CacheControl obeys, so
                    # a verification costs no fetch until they expire.
                    session = cachecontrol.CacheControl(requests.Session())
                    self._request = google.auth.transport.requests.Request(session=session)
        return self._request

    def verify(self, token: str, *, audience: str, email: str) -> dict[str, Any]:
        """The token's claims, if Google (or the emulator) signed it for `audience` as `email`."""
        from google.auth import exceptions as gauth_exc
        from google.oauth2 import id_token

        try:
            claims: dict[str, Any] = id_token.verify_token(
                token,
                self._transport(),
                audience=audience,
                certs_url=self._config.oidc_certs_url,
                clock_skew_in_seconds=10,
            )
        except (ValueError, gauth_exc.GoogleAuthError) as e:
            raise Unauthenticated(f"the bearer token is not valid: {_reason(e)}") from None
        if claims.get("iss") not in ISSUERS:
            raise Unauthenticated("the bearer token was not issued by Google")
        if claims.get("email") != email:
            raise Unauthenticated("the bearer token belongs to another service account")
        if claims.get("email_verified") is not True:
            raise Unauthenticated("the bearer token's email is not verified")
        return claims


_REASONS = (
    ("too late", "it has expired"),
    ("expired", "it has expired"),
    ("too early", "it is not valid yet"),
    ("audience", "it is for another audience"),
    ("signature", "its signature does not verify"),
    ("segments", "it is not a JWT"),
    ("certificate for key id", "it was signed by an unknown key"),
)


def _reason(e: Exception) -> str:
    # google-auth's messages can quote the token; say which check failed, in our words.
    text = str(e).lower()
    for needle, reason in _REASONS:
        if needle in text:
            return reason
    return "it could not be verified"


def require_task_caller(req: Request, state: Any) -> str:
    """Refuse a request to /handlers/* that is not from Cloud Tasks (or Cloud Scheduler)."""
    verifier = state.__dict__.get("_token_verifier")
    if verifier is None:
        verifier = state.__dict__["_token_verifier"] = TokenVerifier(state.config)
    return authenticate(req, state.config, verifier)


def authenticate(req: Request, config: Config, verifier: TokenVerifier) -> str:
    """Refuse a request to /handlers/* that is not from the configured caller; returns who it is."""
    mode = config.handler_auth
    if mode == "none":
        return "anonymous"
    if mode == "appengine":
        # App Engine removes X-AppEngine-* headers from requests that come from outside.
        if not req.headers.get("X-AppEngine-QueueName"):
            raise Unauthenticated("only App Engine's task queue may call this endpoint")
        return "appengine"
    if mode == "oidc":
        header = req.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated(
                "send an OIDC token as Authorization: Bearer", headers={"WWW-Authenticate": "Bearer"}
            )
        claims = verifier.verify(
            token.strip(), audience=config.audience, email=config.tasks_service_account or ""
        )
        return str(claims.get("email"))
    raise Unauthenticated("handler authentication is not configured")

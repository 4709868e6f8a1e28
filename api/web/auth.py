"""Who is calling the API: API keys, Google-signed ID tokens, or nobody (AUTH=none).

Every job belongs to the principal that created it; a principal sees and acts on its own
jobs only (another's is a 404), and an admin sees all.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, Row

from api.config import Config
from api.errors import Unauthenticated
from api.store.tables import api_keys

if TYPE_CHECKING:
    from flask import Request

KEY_PREFIX = "cj_"
ISSUERS = ("accounts.google.com", "https://accounts.google.com")
# A verified key is trusted this long without a query; a revocation takes effect within it.
KEY_CACHE_S = 5.0


@dataclass(frozen=True)
class Principal:
    """An authenticated caller; `owner` is what its jobs are stamped with."""

    owner: str | None  # None: AUTH=none, no scoping
    admin: bool = False

    @property
    def scope(self) -> str | None:
        """The owner to filter jobs by; None sees every job."""
        return None if self.admin else self.owner


ANONYMOUS = Principal(owner=None, admin=True)


# ---- API keys ---------------------------------------------------------------------------

def _hash(secret: str) -> str:
    # Keys are 256 random bits: a fast hash is enough (no password stretching needed).
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyNameTaken(Exception):
    """A live key already has that name."""


def create_key(conn: Connection, name: str, *, admin: bool = False) -> str:
    """Store a new key and return it: the only time the whole key is ever shown."""
    taken = conn.execute(
        sa.select(api_keys.c.id).where(api_keys.c.name == name, api_keys.c.revoked_time.is_(None))
    ).first()
    if taken is not None:
        raise KeyNameTaken(f"a live key is named {name!r}; revoke it or choose another name")
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    conn.execute(sa.insert(api_keys).values(id=key_id, name=name, secret_hash=_hash(secret), admin=admin))
    return f"{KEY_PREFIX}{key_id}_{secret}"


def list_keys(conn: Connection) -> list[Row[Any]]:
    """Every key, newest first (never the secrets)."""
    cols = [api_keys.c.id, api_keys.c.name, api_keys.c.admin, api_keys.c.created_time, api_keys.c.revoked_time]
    return list(conn.execute(sa.select(*cols).order_by(api_keys.c.created_time.desc())))


def revoke_key(conn: Connection, id_or_name: str) -> int:
    """Revoke a live key by id or name; returns how many were revoked."""
    stmt = (
        sa.update(api_keys)
        .where(sa.or_(api_keys.c.id == id_or_name, api_keys.c.name == id_or_name),
               api_keys.c.revoked_time.is_(None))
        .values(revoked_time=sa.func.now())
    )
    return conn.execute(stmt).rowcount


def _parse_key(token: str) -> tuple[str, str] | None:
    if not token.startswith(KEY_PREFIX):
        return None
    key_id, sep, secret = token[len(KEY_PREFIX):].partition("_")
    if not sep or not key_id or not secret or len(token) > 200:
        return None
    return key_id, secret


class KeyVerifier:
    """Checks API keys against the table, with a short cache of good keys."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._cache: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()

    def verify(self, token: str) -> Principal:
        """The principal of a valid, unrevoked key; 401 otherwise."""
        parsed = _parse_key(token)
        if parsed is None:
            raise Unauthenticated("the API key is malformed", headers=_CHALLENGE)
        key_id, secret = parsed
        digest = _hash(secret)
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        with self._engine.connect() as conn:
            row = conn.execute(
                sa.select(api_keys.c.secret_hash, api_keys.c.admin, api_keys.c.revoked_time)
                .where(api_keys.c.id == key_id)
            ).first()
        if row is None or not hmac.compare_digest(row.secret_hash, digest):
            raise Unauthenticated("the API key is not known", headers=_CHALLENGE)
        if row.revoked_time is not None:
            raise Unauthenticated("the API key was revoked", headers=_CHALLENGE)
        principal = Principal(owner=f"key:{key_id}", admin=row.admin)
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (now + KEY_CACHE_S, principal)
        return principal


_CHALLENGE = {"WWW-Authenticate": "Bearer"}


# ---- Google-signed ID tokens (shared with /handlers/* OIDC) -----------------------------

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


class _CertsCache:
    """A google.auth transport Request for the certs alone, kept in memory as long as allowed.

    Google's certs response says how long it may be cached (Cache-Control max-age); until
    then every verification reads it from memory: no HTTP session, no proxy lookup (issue
    #7 measured a verification through a caching requests session at ~0.45 ms).
    """

    def __init__(self, fetch: Any) -> None:
        self._fetch = fetch  # the real transport, for misses
        self._cached: tuple[float, Any] | None = None
        self._lock = threading.Lock()

    def __call__(self, url: str, method: str = "GET", **kwargs: Any) -> Any:
        cached = self._cached
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        with self._lock:
            response = self._fetch(url, method=method, **kwargs)
            headers = response.headers or {}
            max_age = _max_age(headers.get("Cache-Control") or headers.get("cache-control") or "")
            if response.status == 200 and max_age > 0:
                self._cached = (time.monotonic() + max_age, response)
            return response


def _max_age(cache_control: str) -> int:
    """max-age of a Cache-Control header; 0 when absent, no-store or no-cache."""
    directives = [d.strip().lower() for d in cache_control.split(",")]
    if "no-store" in directives or "no-cache" in directives:
        return 0
    for d in directives:
        name, _, value = d.partition("=")
        if name == "max-age" and value.strip().isdigit():
            return int(value)
    return 0


# Verified tokens kept at most; past it the cache starts again (a token is ~1 kB).
VERIFIED_TOKENS_MAX = 1024
# Clock skew allowed on a token's times (iat, nbf, exp): an instance whose clock is a minute
# or two behind Google's would refuse every callback with less. Google's own verifiers allow
# five minutes (the Java IdTokenVerifier, oauth2client); google-auth's default is none.
CLOCK_SKEW_S = 300


class TokenVerifier:
    """Verifies Google-signed ID tokens (google-auth); the certs are cached as they allow.

    A token that verified once is remembered, with its claims, until it expires: the same
    token arriving again (a caller reuses its token until close to expiry; the emulator does)
    skips the JWT decoding and the RSA check, ~0.2 ms of a `/handlers/run` (issue #7). Its
    expiry, audience and service account are still checked on every request.
    """

    def __init__(self, certs_url: str) -> None:
        self._certs_url = certs_url
        self._request: Any = None
        self._lock = threading.Lock()
        self._verified: dict[tuple[str, str], dict[str, Any]] = {}

    def _transport(self) -> Any:
        if self._request is None:
            with self._lock:
                if self._request is None:
                    import google.auth.transport.requests

                    self._request = _CertsCache(google.auth.transport.requests.Request())
        return self._request

    def verify(self, token: str, *, audience: str, emails: tuple[str, ...]) -> dict[str, Any]:
        """The claims, if Google signed the token for `audience` as one of `emails`, verified."""
        claims = self._verified.get((token, audience))
        if claims is None or not time.time() <= claims["exp"] + CLOCK_SKEW_S:
            claims = self._verify_signed(token, audience)
        if claims.get("email") not in emails:
            raise Unauthenticated("the bearer token belongs to another service account", headers=_CHALLENGE)
        return claims

    def _verify_signed(self, token: str, audience: str) -> dict[str, Any]:
        from google.auth import exceptions as gauth_exc
        from google.oauth2 import id_token

        try:
            claims: dict[str, Any] = id_token.verify_token(  # type: ignore[assignment]
                token, self._transport(), audience=audience, certs_url=self._certs_url,
                clock_skew_in_seconds=CLOCK_SKEW_S,
            )
        except (ValueError, gauth_exc.GoogleAuthError) as e:
            raise Unauthenticated(f"the bearer token is not valid: {_reason(e)}", headers=_CHALLENGE) from None
        if claims.get("iss") not in ISSUERS:
            raise Unauthenticated("the bearer token was not issued by Google", headers=_CHALLENGE)
        if claims.get("email_verified") is not True:
            raise Unauthenticated("the bearer token's email is not verified", headers=_CHALLENGE)
        if not isinstance(claims.get("exp"), int | float):  # google-auth requires it; be sure
            raise Unauthenticated("the bearer token has no expiry", headers=_CHALLENGE)
        if len(self._verified) >= VERIFIED_TOKENS_MAX:
            self._verified.clear()
        self._verified[(token, audience)] = claims
        return claims


def bearer_token(req: Request) -> str:
    """The bearer token of the request; 401 when there is none."""
    scheme, _, token = req.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("send credentials as Authorization: Bearer …", headers=_CHALLENGE)
    return token.strip()


class ApiAuthenticator:
    """Authenticates callers of /v1 as the configuration says."""

    def __init__(self, config: Config, engine: Engine) -> None:
        self._config = config
        self._keys = KeyVerifier(engine)
        self._tokens = TokenVerifier(config.oidc_certs_url)

    def principal(self, req: Request) -> Principal:
        """Who is calling; 401 for anyone the configuration does not let in."""
        mode = self._config.api_auth
        if mode == "none":
            return ANONYMOUS
        token = bearer_token(req)
        if mode == "keys":
            return self._keys.verify(token)
        c = self._config
        claims = self._tokens.verify(
            token,
            audience=c.api_audience or c.handler_base_url,
            emails=c.api_service_accounts + c.admin_service_accounts,
        )
        email = str(claims["email"])
        return Principal(owner=f"sa:{email}", admin=email in c.admin_service_accounts)

    def key_principal(self, key: str) -> Principal:
        """The principal of an API key given other than in a header (the dashboard's cookie)."""
        return self._keys.verify(key)

"""The emulator's signing key, the OIDC tokens it attaches to tasks, and its certs endpoints.

Tokens look like the ones Cloud Tasks mints for a service account: RS256 with a ``kid``,
issuer ``https://accounts.google.com``, ``aud``, ``email``, ``email_verified``, ``sub``,
``azp``, ``iat`` and ``exp``. The public half is served in Google's two formats, so
``google.oauth2.id_token.verify_token(..., certs_url=<emulator>/oauth2/v1/certs)`` verifies
them unchanged.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.auth import crypt, jwt

ISSUER = "https://accounts.google.com"
TOKEN_LIFETIME_S = 3600
# A cached token is reused until this close to expiry, like google-auth's own refresh margin.
REFRESH_MARGIN_S = 300
CERTS_V1_PATH = "/oauth2/v1/certs"
CERTS_V3_PATH = "/oauth2/v3/certs"
DISCOVERY_PATH = "/.well-known/openid-configuration"


def _b64url_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def subject_for(email: str) -> str:
    """A stable 21-digit numeric subject for a service account, shaped like Google's ids."""
    digest = int.from_bytes(hashlib.sha256(email.encode("utf-8")).digest()[:8], "big")
    return str(10**20 + digest % 10**20)


class SigningKey:
    """An RSA key pair with a key id and a self-signed certificate for its public half."""

    def __init__(self, private_key: rsa.RSAPrivateKey) -> None:
        self._key = private_key
        public_der = private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        # Derived from the key, so a key file gives the same kid on every start.
        self.kid = hashlib.sha1(public_der).hexdigest()
        self.private_pem = private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode("ascii")
        self.certificate_pem = self._self_signed_certificate()
        # The signer RSASigner.from_string(private_pem) would build, without parsing and
        # re-validating the key we already hold (about 0.1 s per start).
        self.signer = crypt.RSASigner(private_key, key_id=self.kid)

    @classmethod
    def generate(cls) -> SigningKey:
        """A fresh 2048-bit key, as Google's signing keys are."""
        return cls(rsa.generate_private_key(public_exponent=65537, key_size=2048))

    @classmethod
    def from_file(cls, path: str | Path) -> SigningKey:
        """Load a PEM private key (PKCS#1 or PKCS#8, unencrypted)."""
        resolved = Path(path).resolve()
        stat = resolved.stat()
        return _load_key(resolved, stat.st_mtime_ns, stat.st_size)

    def _self_signed_certificate(self) -> str:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cloud-tasks-emulator")])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=365))
            .sign(self._key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")

    def certs_v1(self) -> dict[str, str]:
        """``{kid: PEM certificate}``, the shape of googleapis.com/oauth2/v1/certs."""
        return {self.kid: self.certificate_pem}

    def certs_v3(self) -> dict[str, list[dict[str, str]]]:
        """A JWKS document, the shape of googleapis.com/oauth2/v3/certs."""
        numbers = self._key.public_key().public_numbers()
        return {
            "keys": [
                {
                    "kty": "RSA",
                    "alg": "RS256",
                    "use": "sig",
                    "kid": self.kid,
                    "n": _b64url_uint(numbers.n),
                    "e": _b64url_uint(numbers.e),
                }
            ]
        }


@functools.lru_cache(maxsize=16)
def _load_key(path: Path, mtime_ns: int, size: int) -> SigningKey:
    # Validating an RSA key on load takes about 0.1 s; tests start many emulators with one
    # key file, so a file that has not changed is loaded once per process.
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"{path} does not hold an RSA private key")
    return SigningKey(key)


class TokenIssuer:
    """Mints (and caches) OIDC ID tokens for service accounts; used on the dispatch loop only."""

    def __init__(self, key: SigningKey, issuer: str = ISSUER) -> None:
        self.key = key
        self.issuer = issuer
        self._cache: dict[tuple[str, str], tuple[str, float]] = {}

    def id_token(self, email: str, audience: str, *, now: float | None = None) -> str:
        """A signed ID token for ``email`` with audience ``audience``."""
        now = time.time() if now is None else now
        cached = self._cache.get((email, audience))
        if cached and cached[1] - now > REFRESH_MARGIN_S:
            return cached[0]
        iat = int(now)
        sub = subject_for(email)
        payload = {
            "iss": self.issuer,
            "aud": audience,
            "azp": sub,
            "sub": sub,
            "email": email,
            "email_verified": True,
            "iat": iat,
            "exp": iat + TOKEN_LIFETIME_S,
        }
        token = jwt.encode(self.key.signer, payload).decode("ascii")
        if len(self._cache) > 10_000:
            # Bounded: audiences come from task URLs, which a caller controls.
            self._cache.clear()
        self._cache[(email, audience)] = (token, float(iat + TOKEN_LIFETIME_S))
        return token


def discovery_document(issuer: str, base_url: str) -> dict[str, Any]:
    """An OpenID Provider's discovery document for the emulator's tokens, shaped as
    https://accounts.google.com/.well-known/openid-configuration (the parts a verifier reads)."""
    return {
        "issuer": issuer,
        "jwks_uri": base_url + CERTS_V3_PATH,
        "id_token_signing_alg_values_supported": ["RS256"],
        "subject_types_supported": ["public"],
        "response_types_supported": ["id_token"],
        "claims_supported": ["aud", "azp", "email", "email_verified", "exp", "iat", "iss", "sub"],
    }


def certs_app(key: SigningKey, *, client_max_size: int = 1024**2, issuer: str = ISSUER,
              base_url: Callable[[web.Request], str] | None = None) -> web.Application:
    """The aiohttp app serving the public keys in Google's v1 (PEM) and v3 (JWKS) formats, and
    the discovery document (``/.well-known/openid-configuration``) naming them."""
    v1 = json.dumps(key.certs_v1())
    v3 = json.dumps(key.certs_v3())
    # api/auth.py keeps the certs for this long, as it does with Google's endpoint.
    cache = {"Cache-Control": "public, max-age=3600"}

    async def get_v1(request: web.Request) -> web.Response:
        return web.Response(text=v1, content_type="application/json", headers=cache)

    async def get_v3(request: web.Request) -> web.Response:
        return web.Response(text=v3, content_type="application/json", headers=cache)

    async def index(request: web.Request) -> web.Response:
        body = {"service": "cloud-tasks-emulator", "certs": [CERTS_V1_PATH, CERTS_V3_PATH]}
        return web.json_response(body)

    async def discovery(request: web.Request) -> web.Response:
        base = base_url(request) if base_url else f"{request.scheme}://{request.host}"
        return web.json_response(discovery_document(issuer, base), headers=cache)

    app = web.Application(client_max_size=client_max_size)
    app.router.add_get(DISCOVERY_PATH, discovery)
    app.router.add_get(CERTS_V1_PATH, get_v1)
    app.router.add_get(CERTS_V3_PATH, get_v3)
    app.router.add_get("/", index)
    return app

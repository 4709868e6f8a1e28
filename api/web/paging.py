"""Opaque, tamper-evident page tokens for keyset paging (AIP-158)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from datetime import datetime

from api.errors import InvalidRequest
from api.times import in_range

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


def page_size(raw: str | None) -> int:
    """AIP-158: default 50, above 500 coerced to 500, negative or not a number → 400."""
    if raw is None or raw == "":
        return DEFAULT_PAGE_SIZE
    try:
        size = int(raw)
    except ValueError:
        raise InvalidRequest(f"page_size must be a whole number, not {raw!r}") from None
    if size < 0:
        raise InvalidRequest("page_size must not be negative")
    if size == 0:
        return DEFAULT_PAGE_SIZE
    return min(size, MAX_PAGE_SIZE)


def encode(key: str, position: tuple[datetime, uuid.UUID], scope: str) -> str:
    """A token for the page after `position`, bound to the query's filters (`scope`)."""
    body = json.dumps({"t": position[0].isoformat(), "i": str(position[1]), "s": scope})
    raw = body.encode()
    mac = hmac.new(key.encode(), raw, hashlib.sha256).digest()[:12]
    return base64.urlsafe_b64encode(mac + raw).decode().rstrip("=")


def decode(key: str, token: str, scope: str) -> tuple[datetime, uuid.UUID]:
    """The position a token stands for; 400 when it was altered or the filters changed."""
    try:
        blob = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        mac, raw = blob[:12], blob[12:]
        if not hmac.compare_digest(mac, hmac.new(key.encode(), raw, hashlib.sha256).digest()[:12]):
            raise ValueError("bad signature")
        body = json.loads(raw)
        position = (datetime.fromisoformat(body["t"]), uuid.UUID(body["i"]))
        same_scope = body["s"] == scope
        if position[0].tzinfo is None or not in_range(position[0]):
            raise ValueError("a time out of range")
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidRequest("page_token is not valid; start again without it") from None
    if not same_scope:
        raise InvalidRequest("page_token belongs to a query with other filters")
    return position

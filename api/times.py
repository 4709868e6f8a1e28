"""Times on the wire: RFC 3339 in UTC with a Z, for the API, the reports and the CLI."""

from __future__ import annotations

import functools
from datetime import UTC, datetime


def rfc3339(value: datetime | None) -> str | None:
    """UTC, RFC 3339, with a Z."""
    if value is None:
        return None
    return _rfc3339(value)


# The jobs of one batch, or one transaction, share their times (now() is the transaction's):
# a batch of 500 formats the same few values 1,500 times.
@functools.lru_cache(maxsize=1024)
def _rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


# Times the API takes: far enough from datetime's ends (years 1 and 9999) that a window or a
# time zone moved across them cannot overflow.
MIN_YEAR, MAX_YEAR = 2, 9998


def in_range(value: datetime) -> bool:
    """Whether an aware time lies within the years the API takes (in UTC and as written)."""
    try:
        utc = value.astimezone(UTC)
    except OverflowError:
        return False
    return MIN_YEAR <= value.year <= MAX_YEAR and MIN_YEAR <= utc.year <= MAX_YEAR

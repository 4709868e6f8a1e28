"""Times on the wire: RFC 3339 in UTC with a Z, for the API, the reports and the CLI."""

from __future__ import annotations

from datetime import UTC, datetime


def rfc3339(value: datetime | None) -> str | None:
    """UTC, RFC 3339, with a Z."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")

"""Completion webhooks in PostgreSQL: the events (one per terminal transition of a job with a
callback URL, written by the trigger `jobs_webhook_event`, migration 0016) and their deliveries.

An event is the outbox: it commits with the transition that ended its job, whatever path
ended it. Its delivery task is created after the commit (`enqueued_time`); the sweeper sends
events whose task was never created. Each delivery attempt is a row of `webhook_deliveries`.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from api.store.tables import webhook_deliveries, webhook_events

_UNSENT_OF_JOBS = sa.text(
    """
    SELECT id, job_id, run FROM webhook_events
    WHERE job_id = ANY(CAST(:ids AS uuid[])) AND enqueued_time IS NULL
    """
)

_UNSENT = sa.text(
    """
    SELECT id, job_id, run FROM webhook_events
    WHERE enqueued_time IS NULL AND created_time < now() - make_interval(secs => :older_than_s)
    ORDER BY created_time LIMIT :limit
    """
)


def unsent(conn: Connection, *, job_ids: Sequence[uuid.UUID] | None = None, older_than_s: float = 0,
           limit: int = 500) -> list[Row[Any]]:
    """Events whose delivery task was not created: of these jobs, or (the sweeper) older than a while."""
    if job_ids is not None:
        return list(conn.execute(_UNSENT_OF_JOBS, {"ids": [str(i) for i in job_ids]}))
    return list(conn.execute(_UNSENT, {"older_than_s": older_than_s, "limit": limit}))


def mark_enqueued(conn: Connection, event_ids: Sequence[str]) -> None:
    """Their delivery tasks exist."""
    conn.execute(sa.text("UPDATE webhook_events SET enqueued_time = now() "
                         "WHERE id = ANY(CAST(:ids AS text[])) AND enqueued_time IS NULL"),
                 {"ids": list(event_ids)})


def get_event(conn: Connection, event_id: str) -> Row[Any] | None:
    """One event."""
    return conn.execute(sa.select(webhook_events).where(webhook_events.c.id == event_id)).first()


_RECORD = sa.text(
    """
    WITH e AS (
        UPDATE webhook_events SET
            attempts = attempts + 1,
            delivered_time = CASE WHEN :ok THEN now() ELSE delivered_time END,
            failed_time = CASE WHEN NOT :ok AND :final THEN now() ELSE failed_time END
        WHERE id = :id
        RETURNING id, attempts
    )
    INSERT INTO webhook_deliveries (event_id, number, started_time, duration_ms, status_code, error)
    SELECT id, attempts, :started, :duration_ms, :status, :error FROM e
    """
)


def record_delivery(conn: Connection, event_id: str, *, started: Any, duration_ms: int, status: int | None,
                    error: str | None, ok: bool, final: bool) -> None:
    """One delivery attempt, and the event's outcome if it settled it."""
    conn.execute(_RECORD, {"id": event_id, "started": started, "duration_ms": duration_ms, "status": status,
                           "error": error, "ok": ok, "final": final})


def events_of_job(conn: Connection, job_id: uuid.UUID) -> list[tuple[Row[Any], list[Row[Any]]]]:
    """A job's events, oldest first, each with its deliveries."""
    events = list(conn.execute(sa.select(webhook_events).where(webhook_events.c.job_id == job_id)
                               .order_by(webhook_events.c.created_time, webhook_events.c.run)))
    if not events:
        return []
    deliveries: dict[str, list[Row[Any]]] = {}
    rows = conn.execute(sa.select(webhook_deliveries)
                        .where(webhook_deliveries.c.event_id.in_([e.id for e in events]))
                        .order_by(webhook_deliveries.c.event_id, webhook_deliveries.c.number))
    for d in rows:
        deliveries.setdefault(d.event_id, []).append(d)
    return [(e, deliveries.get(e.id, [])) for e in events]

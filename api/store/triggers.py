"""Schedule fires and Pub/Sub rejections: the rows that make a trigger act once.

A fire is keyed by (schedule, scheduled_for): the primary key of `schedule_fires` is the
constraint that makes a redelivered fire find what the first delivery did. Fires of one
schedule are serialised by a transaction-scoped advisory lock, so an overlap policy sees
the previous fire's job, committed. Callers own the transaction.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection, Row

from api.store.tables import ACTIVE, jobs, schedule_fires, trigger_rejections


def lock_schedule(conn: Connection, schedule: str) -> None:
    """Hold the schedule's lock until the transaction ends (fires of one schedule in turn)."""
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('cloudjobs.schedule'), hashtext(:s))"),
                 {"s": schedule})


def fire_of(conn: Connection, schedule: str, scheduled_for: datetime) -> Row[Any] | None:
    """What a fire did, if it was delivered before."""
    return conn.execute(sa.select(schedule_fires).where(
        schedule_fires.c.schedule == schedule, schedule_fires.c.scheduled_for == scheduled_for)).first()


def record_fire(conn: Connection, schedule: str, scheduled_for: datetime, *, outcome: str,
                job_id: uuid.UUID | None, previous_job_id: uuid.UUID | None) -> Row[Any]:
    """The fire's row (a second one for the same fire time violates the primary key)."""
    return conn.execute(sa.insert(schedule_fires).values(
        schedule=schedule, scheduled_for=scheduled_for, outcome=outcome, job_id=job_id,
        previous_job_id=previous_job_id).returning(*schedule_fires.c)).one()


def active_jobs(conn: Connection, schedule: str) -> list[Row[Any]]:
    """The schedule's jobs not yet terminal, oldest fire first."""
    return list(conn.execute(sa.select(jobs.c.id, jobs.c.state).where(
        jobs.c.schedule == schedule, jobs.c.state.in_(ACTIVE)).order_by(jobs.c.scheduled_for)))


_LAST_FIRES = sa.text(
    """
    SELECT DISTINCT ON (f.schedule) f.*, j.state AS job_state
    FROM schedule_fires f LEFT JOIN jobs j ON j.id = f.job_id
    ORDER BY f.schedule, f.scheduled_for DESC
    """
)


def last_fires(conn: Connection) -> dict[str, Row[Any]]:
    """Each schedule's latest fire (by fire time), with its job's state."""
    return {r.schedule: r for r in conn.execute(_LAST_FIRES)}


def recent_fires(conn: Connection, schedule: str, *, limit: int = 20) -> list[Row[Any]]:
    """A schedule's latest fires, newest first, with their jobs' states."""
    stmt = (
        sa.select(schedule_fires, jobs.c.state.label("job_state"))
        .outerjoin(jobs, jobs.c.id == schedule_fires.c.job_id)
        .where(schedule_fires.c.schedule == schedule)
        .order_by(schedule_fires.c.scheduled_for.desc())
        .limit(limit)
    )
    return list(conn.execute(stmt))


def record_rejection(conn: Connection, *, subscription: str, message_id: str, trigger: str | None,
                     reason: str, errors: list[dict[str, str]] | None) -> bool:
    """Record a message acknowledged without a job; False if it was recorded before."""
    stmt = pg_insert(trigger_rejections).values(
        subscription=subscription, message_id=message_id, trigger=trigger, reason=reason, errors=errors,
    ).on_conflict_do_nothing().returning(trigger_rejections.c.message_id)
    return conn.execute(stmt).first() is not None


def rejections(conn: Connection, *, limit: int = 50) -> list[Row[Any]]:
    """The latest messages acknowledged without a job."""
    return list(conn.execute(sa.select(trigger_rejections)
                             .order_by(trigger_rejections.c.received_time.desc()).limit(limit)))

"""Durable steps (ctx.step): a job's step results, recorded once and read by later attempts."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Connection, Row

from api.store.tables import job_steps


def results(conn: Connection, job_id: uuid.UUID) -> dict[str, Any]:
    """Every recorded step's result, by name: one indexed read when an attempt first asks."""
    rows = conn.execute(sa.select(job_steps.c.name, job_steps.c.result).where(job_steps.c.job_id == job_id))
    return {name: result for name, result in rows}


def record(conn: Connection, job_id: uuid.UUID, name: str, *, attempt: int, result: Any,
           started: datetime) -> Any:
    """Record a step's result unless one is recorded already; the result that stands (the
    first recorded: a zombie attempt may have run the step at the same time)."""
    stmt = (
        insert(job_steps)
        .values(job_id=job_id, name=name, attempt=attempt, result=result, started_time=started)
        .on_conflict_do_nothing(index_elements=["job_id", "name"])
        .returning(job_steps.c.name)
    )
    if conn.execute(stmt).first() is not None:
        return result
    return conn.execute(
        sa.select(job_steps.c.result).where(job_steps.c.job_id == job_id, job_steps.c.name == name)
    ).scalar_one()


def list_steps(conn: Connection, job_id: uuid.UUID) -> list[Row[Any]]:
    """A job's steps, in the order they finished."""
    return list(conn.execute(
        sa.select(job_steps).where(job_steps.c.job_id == job_id)
        .order_by(job_steps.c.finished_time, job_steps.c.name)
    ))

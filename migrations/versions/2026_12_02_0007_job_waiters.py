"""Notify a job's end only to those waiting on it: NOTIFY serialises the commits that send it

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02

Migration 0004's trigger sent `pg_notify('cloudjobs_job_done', id)` for every job that ended.
A transaction that has sent a NOTIFY holds one lock for the whole database from just before
its commit until the commit is flushed to disk, so every finish of every job queued behind
the one before it: on this machine 16 connections updating a row and notifying in one
transaction committed 300-340 times a second, against 1,600 without the NOTIFY (pgbench,
docs/benchmarks.md), and `/handlers/run` finishes jobs in exactly such a transaction.

Now a request that waits (`GET /v1/jobs/{id}?wait=S`) first registers in `job_waiters`, an
unlogged table (no WAL; emptied after a crash, when no request is waiting anyway), and the
trigger notifies only when a registration for the job exists: one primary-key probe per job
that ends, and the NOTIFY only for jobs somebody waits on. api/waiters.py explains why a
registration made while the job is ending cannot miss it.
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

COMMENTS = {
    "TABLE job_waiters": "Requests waiting for a job to end (GET /v1/jobs/{id}?wait=S), one row each while "
    "they wait; a job that ends with a row here is announced on the cloudjobs_job_done channel. Unlogged.",
    "COLUMN job_waiters.job_id": "The job waited on.",
    "COLUMN job_waiters.waiter": "A random id of the waiting request.",
    "COLUMN job_waiters.since": "When the request registered; the sweeper removes rows left by a process that died.",
}


def upgrade() -> None:
    op.execute(
        """
        CREATE UNLOGGED TABLE job_waiters (
            job_id uuid NOT NULL,
            waiter uuid NOT NULL,
            since timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (job_id, waiter)
        )
        """
    )
    for target, text in COMMENTS.items():
        op.execute(f"COMMENT ON {target} IS '{text.replace(chr(39), chr(39) * 2)}'")
    op.execute(
        """
        CREATE OR REPLACE FUNCTION cloudjobs_notify_job_done() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            IF EXISTS (SELECT 1 FROM job_waiters WHERE job_id = NEW.id) THEN
                PERFORM pg_notify('cloudjobs_job_done', NEW.id::text);
            END IF;
            RETURN NULL;
        END
        $$
        """
    )


def downgrade() -> None:
    op.execute(
        """
        CREATE OR REPLACE FUNCTION cloudjobs_notify_job_done() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('cloudjobs_job_done', NEW.id::text);
            RETURN NULL;
        END
        $$
        """
    )
    op.execute("DROP TABLE job_waiters")

"""notify cloudjobs_job_done when a job reaches a terminal state

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22

`GET /v1/jobs/{id}?wait=S` listens on this channel (api/waiters.py). A trigger, rather than a
pg_notify in each statement of api/store.py, so that every way a job can end — the store's
transitions today, any added later, an operator's UPDATE — wakes the waiters. The WHEN clause
is evaluated without calling the function, so updates that do not end a job cost nothing.
NOTIFY is transactional: the waiter hears of the change only after it is committed.
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION cloudjobs_notify_job_done() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('cloudjobs_job_done', NEW.id::text);
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER jobs_notify_done
        AFTER UPDATE OF state ON jobs
        FOR EACH ROW
        WHEN (NEW.state IN ('COMPLETED', 'FAILED', 'CANCELLED')
              AND OLD.state IS DISTINCT FROM NEW.state)
        EXECUTE FUNCTION cloudjobs_notify_job_done()
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS jobs_notify_done ON jobs")
    op.execute("DROP FUNCTION IF EXISTS cloudjobs_notify_job_done()")

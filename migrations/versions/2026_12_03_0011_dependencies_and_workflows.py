"""Jobs that wait for jobs, and workflows

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03

- `WAITING`, a state before QUEUED for a job whose dependencies are not all terminal; it has
  no Cloud Task while it waits.
- `job_dependencies`: one row per edge (dependent `job_id`, `parent_id`); `done` flips once,
  when the parent's terminal transition releases it, so a release counted twice is impossible.
- On jobs: `waiting_on` (edges not yet done), `on_dependency_failure` (fail, cancel, run;
  null without dependencies), `has_dependents` (a finish looks for dependents only then),
  `workflow_id` and `step`.
- `workflows`: one row per DAG submitted with POST /v1/workflows; `active`, `failed` and
  `cancelled` count its steps, kept by a trigger on every state change of a step, so its
  state is exact whichever path moved the step (finish, cancel, the sweeper, a release).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

TERMINAL = "('COMPLETED','FAILED','CANCELLED')"


def upgrade() -> None:
    op.drop_constraint("jobs_state_valid", "jobs", type_="check")
    op.create_check_constraint(
        "jobs_state_valid", "jobs", "state IN ('WAITING','CREATED','QUEUED','RUNNING','COMPLETED','FAILED','CANCELLED')"
    )
    op.add_column("jobs", sa.Column("waiting_on", sa.Integer, nullable=False, server_default=sa.text("0"),
                                    comment="Dependencies not yet terminal (WAITING until 0)."))
    op.add_column("jobs", sa.Column("on_dependency_failure", sa.Text,
                                    comment="fail, cancel or run: what a failed or cancelled dependency does to this job; null without dependencies."))
    op.add_column("jobs", sa.Column("has_dependents", sa.Boolean, nullable=False, server_default=sa.text("false"),
                                    comment="True once a job depends on this one: its terminal transition releases them."))
    op.add_column("jobs", sa.Column("workflow_id", UUID(as_uuid=True), comment="The workflow this job is a step of."))
    op.add_column("jobs", sa.Column("step", sa.Text, comment="Its step name in the workflow."))
    op.create_check_constraint(
        "jobs_on_dependency_failure_valid", "jobs", "on_dependency_failure IN ('fail','cancel','run')"
    )
    op.drop_index("jobs_active_idx", "jobs")
    op.create_index("jobs_active_idx", "jobs", ["state", "updated_time"],
                    postgresql_where=sa.text("state IN ('WAITING','CREATED','QUEUED','RUNNING')"))
    op.create_index("jobs_workflow_idx", "jobs", ["workflow_id", "step"], unique=True,
                    postgresql_where=sa.text("workflow_id IS NOT NULL"))

    op.create_table(
        "job_dependencies",
        sa.Column("job_id", UUID(as_uuid=True), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False,
                  comment="The dependent job."),
        sa.Column("parent_id", UUID(as_uuid=True), nullable=False, comment="The job it waits for."),
        sa.Column("done", sa.Boolean, nullable=False, server_default=sa.text("false"),
                  comment="True once the parent's terminal transition released this edge."),
        sa.PrimaryKeyConstraint("job_id", "parent_id"),
        comment="Which job waits for which: one row per dependency.",
    )
    op.create_index("job_dependencies_parent_idx", "job_dependencies", ["parent_id"])

    op.create_table(
        "workflows",
        sa.Column("id", UUID(as_uuid=True), primary_key=True, comment="The workflow's id."),
        sa.Column("name", sa.Text, nullable=False, comment="What its submitter called it."),
        sa.Column("owner", sa.Text, comment="The principal that created it."),
        sa.Column("labels", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb"), comment="Free-form string labels."),
        sa.Column("state", sa.Text, nullable=False, server_default=sa.text("'RUNNING'"),
                  comment="RUNNING until every step is terminal; then COMPLETED, FAILED (a step failed) or CANCELLED."),
        sa.Column("steps", sa.Integer, nullable=False, comment="How many steps it has."),
        sa.Column("active", sa.Integer, nullable=False, comment="Steps not yet terminal."),
        sa.Column("failed", sa.Integer, nullable=False, server_default=sa.text("0"), comment="Steps FAILED."),
        sa.Column("cancelled", sa.Integer, nullable=False, server_default=sa.text("0"), comment="Steps CANCELLED."),
        sa.Column("created_time", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()"),
                  comment="When it was accepted."),
        sa.Column("done_time", sa.DateTime(timezone=True), comment="When its last step became terminal."),
        sa.Column("updated_time", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()"),
                  comment="The last change."),
        sa.Column("idempotency_key", sa.Text, comment="The creating request's Idempotency-Key, unique per owner."),
        sa.Column("request_hash", sa.Text, comment="SHA-256 of the creating request, to tell a replay from another."),
        sa.CheckConstraint("state IN ('RUNNING','COMPLETED','FAILED','CANCELLED')", name="workflows_state_valid"),
        comment="One row per workflow (a DAG of jobs); its steps are jobs with its workflow_id.",
    )
    op.create_index("workflows_created_idx", "workflows", ["created_time", "id"])
    op.create_index("workflows_owner_created_idx", "workflows", ["owner", "created_time", "id"])
    op.create_index("workflows_owner_idempotency_key_idx", "workflows", [sa.text("coalesce(owner, '')"), "idempotency_key"],
                    unique=True, postgresql_where=sa.text("idempotency_key IS NOT NULL"))

    # Each SET reads the row's own columns: under a concurrent step's change, PostgreSQL
    # re-reads the locked row and applies this change on top (a subquery would not be re-read).
    op.execute(f"""
        CREATE FUNCTION workflow_step_moved() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            d_active int := (CASE WHEN NEW.state IN {TERMINAL} THEN 0 ELSE 1 END)
                          - (CASE WHEN OLD.state IN {TERMINAL} THEN 0 ELSE 1 END);
            d_failed int := (NEW.state = 'FAILED')::int - (OLD.state = 'FAILED')::int;
            d_cancelled int := (NEW.state = 'CANCELLED')::int - (OLD.state = 'CANCELLED')::int;
        BEGIN
            UPDATE workflows SET
                active = active + d_active,
                failed = failed + d_failed,
                cancelled = cancelled + d_cancelled,
                state = CASE WHEN active + d_active > 0 THEN 'RUNNING'
                             WHEN failed + d_failed > 0 THEN 'FAILED'
                             WHEN cancelled + d_cancelled > 0 THEN 'CANCELLED'
                             ELSE 'COMPLETED' END,
                done_time = CASE WHEN active + d_active > 0 THEN NULL ELSE coalesce(done_time, now()) END,
                updated_time = now()
            WHERE id = NEW.workflow_id;
            RETURN NULL;
        END $$
    """)
    # Only a step that becomes terminal, or stops being so (a retry), calls it: the WHEN is
    # evaluated without a function call, so jobs outside workflows, and a step's claim or
    # any other move between live states, pay nothing and take no lock on the workflow's row.
    op.execute(f"""
        CREATE TRIGGER jobs_workflow_step_moved
        AFTER UPDATE OF state ON jobs
        FOR EACH ROW
        WHEN (NEW.workflow_id IS NOT NULL
              AND (OLD.state IN {TERMINAL}) IS DISTINCT FROM (NEW.state IN {TERMINAL}))
        EXECUTE FUNCTION workflow_step_moved()
    """)


def downgrade() -> None:
    op.execute("DROP TRIGGER jobs_workflow_step_moved ON jobs")
    op.execute("DROP FUNCTION workflow_step_moved()")
    op.drop_table("workflows")
    op.drop_table("job_dependencies")
    op.drop_index("jobs_workflow_idx", "jobs")
    op.drop_index("jobs_active_idx", "jobs")
    op.create_index("jobs_active_idx", "jobs", ["state", "updated_time"],
                    postgresql_where=sa.text("state IN ('CREATED','QUEUED','RUNNING')"))
    op.execute("DELETE FROM jobs WHERE state = 'WAITING'")
    op.drop_constraint("jobs_on_dependency_failure_valid", "jobs", type_="check")
    for column in ("step", "workflow_id", "has_dependents", "on_dependency_failure", "waiting_on"):
        op.drop_column("jobs", column)
    op.drop_constraint("jobs_state_valid", "jobs", type_="check")
    op.create_check_constraint(
        "jobs_state_valid", "jobs", "state IN ('CREATED','QUEUED','RUNNING','COMPLETED','FAILED','CANCELLED')"
    )

"""Workflows: a DAG of jobs submitted in one request, stored in one transaction.

Each step is a job with the workflow's id and its step name; a step with `needs` is WAITING on
the steps it names, through the same edges and release as `depends_on`
(api/store/dependencies.py), so a workflow's fan-in is as exactly-once as a job's. Cycles and
unknown names are refused before anything is stored; the steps that need nothing are
enqueued after the commit.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import replace
from graphlib import CycleError, TopologicalSorter
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy.engine import Row

from api.errors import IdempotencyKeyReused, InvalidRequest, JobStateConflict, ValidationFailed
from api.observability import metrics
from api.orchestration import lifecycle
from api.orchestration.requests import CreateJob, check_labels
from api.state import AppState
from api.store import dependencies
from api.store import jobs as store
from api.store import workflows as wf_store

MAX_STEPS = 10_000
STEP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


class WorkflowStep(CreateJob):
    """One step: a job (every option of POST /v1/jobs) with a name and the steps it needs."""

    name: str = Field(description="Unique in the workflow: letters, digits, _ . -, at most 100.")
    needs: list[str] = Field(default_factory=list, max_length=MAX_STEPS,
                             description="Names of the steps that must be terminal before it runs "
                                         "(a fan-in may need every other step).")

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not STEP_NAME.match(name):
            raise ValueError(f"step name {name!r} must match {STEP_NAME.pattern}")
        return name

    @field_validator("depends_on")
    @classmethod
    def _no_depends_on(cls, ids: list[uuid.UUID]) -> list[uuid.UUID]:
        if ids:
            raise ValueError("a workflow's steps name the steps they need in `needs`, not job ids")
        return ids


class CreateWorkflow(BaseModel):
    """The body of POST /v1/workflows."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, description="What to call it.")
    labels: dict[str, str] = Field(default_factory=dict, description="Free-form string labels.")
    steps: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_STEPS,
                                        description="The steps, each a job with a name and `needs`.")

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels: dict[str, str]) -> dict[str, str]:
        return check_labels(labels)


def parse(state: AppState, body: Any) -> tuple[CreateWorkflow, list[WorkflowStep]]:
    """Validate a workflow: each step as a job, unique names, known needs, no cycle; 422 naming them."""
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    try:
        req = CreateWorkflow.model_validate(body)
    except ValidationError as e:
        raise ValidationFailed("the workflow is not valid", errors=lifecycle.field_errors(e)) from None
    steps: list[WorkflowStep] = []
    errors: list[dict[str, str]] = []
    for i, raw in enumerate(req.steps):
        prefix = f"steps[{i}]."
        try:
            step = WorkflowStep.model_validate(raw)
        except ValidationError as e:
            errors += lifecycle.field_errors(e, prefix)
            continue
        errors += [{**err, "field": prefix + err["field"]}
                   for err in lifecycle.check_job(state, step) + lifecycle.no_unique_key(step, "workflow steps")]
        steps.append(step)
    if errors:
        raise ValidationFailed(f"the workflow is refused: {errors[0]['field']} is not valid", errors=errors)
    index: dict[str, int] = {}
    for i, step in enumerate(steps):
        if step.name in index:
            errors.append({"field": f"steps[{i}].name", "message": f"step {step.name!r} is named twice"})
        index.setdefault(step.name, i)
    for i, step in enumerate(steps):
        for k, need in enumerate(step.needs):
            if need not in index:
                errors.append({"field": f"steps[{i}].needs[{k}]", "message": f"no step named {need!r}"})
            elif need == step.name:
                errors.append({"field": f"steps[{i}].needs[{k}]", "message": f"step {need!r} needs itself"})
        if len(set(step.needs)) < len(step.needs):
            errors.append({"field": f"steps[{i}].needs", "message": "names a step twice"})
    if errors:
        raise ValidationFailed(f"the workflow is refused: {errors[0]['message']}", errors=errors)
    try:
        TopologicalSorter({s.name: s.needs for s in steps}).prepare()
    except CycleError as e:
        cycle = e.args[1]
        path = " → ".join(reversed(cycle))
        raise ValidationFailed(
            f"the steps' needs form a cycle: {path}",
            errors=[{"field": f"steps[{index[cycle[0]]}].needs", "message": f"part of a cycle: {path}"}],
        ) from None
    return req, steps


def create(
    state: AppState, req: CreateWorkflow, steps: list[WorkflowStep], *, idempotency_key: str | None,
    owner: str | None,
) -> tuple[Row[Any], bool]:
    """Store the workflow and all its jobs and edges in one transaction, then enqueue the steps
    that need nothing; returns the workflow and whether it is new."""
    workflow_id = uuid.uuid4()
    digest = _digest(req) if idempotency_key else None
    needed = {n for s in steps for n in s.needs}
    new = [
        replace(
            lifecycle.new_job(state, step, owner=owner),
            workflow_id=workflow_id, step=step.name, has_dependents=step.name in needed,
            state="WAITING" if step.needs else None, waiting_on=len(step.needs),
            on_dependency_failure=step.on_dependency_failure if step.needs else None,
        )
        for step in steps
    ]
    ids = {j.step: j.id for j in new}
    with state.engine.begin() as conn:
        row = wf_store.insert_workflow(
            conn, workflow_id=workflow_id, name=req.name, labels=req.labels, steps=len(new), owner=owner,
            idempotency_key=idempotency_key, request_hash=digest,
        )
        if row is None:
            existing = wf_store.workflow_by_idempotency_key(conn, idempotency_key or "", owner=owner)
            if existing is None or existing.request_hash != digest:
                raise IdempotencyKeyReused("this Idempotency-Key was used with a different workflow")
            return existing, False
        rows = store.insert_jobs(conn, new)
        dependencies.insert_edges(conn, [(ids[s.name], ids[n], False) for s in steps for n in s.needs])
    metrics.created(rows)
    lifecycle.enqueue_ready(state, rows)
    return row, True


def _digest(req: CreateWorkflow) -> str:
    canonical = json.dumps(req.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def cancel(state: AppState, workflow_id: uuid.UUID, *, scope: str | None) -> Row[Any] | None:
    """Cancel every step not yet terminal (a running one cooperatively); idempotent.

    None if there is no such workflow; 409 if it already COMPLETED or FAILED."""
    with state.engine.begin() as conn:
        row = wf_store.get_workflow(conn, workflow_id, owner=scope)
        if row is None:
            return None
        if row.state in ("COMPLETED", "FAILED"):
            raise JobStateConflict(f"the workflow is {row.state}; it cannot be cancelled", state=row.state)
        moved = wf_store.cancel_steps(conn, workflow_id)
        # Jobs outside the workflow may depend on its steps.
        released = dependencies.release(conn, [r.id for r in moved if r.state == "CANCELLED"])
    if released:
        lifecycle.continue_released(state, released)
    with state.engine.connect() as conn:
        return wf_store.get_workflow(conn, workflow_id)


def retry(state: AppState, workflow_id: uuid.UUID, *, scope: str | None) -> Row[Any] | None:
    """Run the failed and cancelled steps, and everything downstream of them, again; the
    completed steps keep their results. Idempotent: a RUNNING workflow (retried already, or
    not ended yet) is returned as it is.

    None if there is no such workflow; 409 if it COMPLETED."""
    with state.engine.begin() as conn:
        row = wf_store.get_workflow(conn, workflow_id, owner=scope)
        if row is None:
            return None
        if row.state == "COMPLETED":
            raise JobStateConflict("the workflow COMPLETED; there is nothing to retry", state=row.state)
        if row.state == "RUNNING":
            return row
        moved = wf_store.retry_steps(conn, workflow_id)
    ready = [r for r in moved if r.state == "CREATED"]
    if ready:
        lifecycle.enqueue(state, ready)
    with state.engine.connect() as conn:
        return wf_store.get_workflow(conn, workflow_id)

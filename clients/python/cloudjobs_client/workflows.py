"""Workflows from Python: steps composed with `chain`, `group` and `chord`, and the workflow
resource the API answers with.

    from cloudjobs_client import Client, Step, chain, chord, group

    flow = chain(
        Step("fetch", "echo", {"src": "gs://b/in"}),
        group(Step("clean", "echo"), Step("stats", "echo")),   # both need fetch
        Step("report", "echo", on_dependency_failure="run"),  # needs clean and stats
    )
    wf = Client(url).submit_workflow(flow, name="nightly")

A composition is only a way to write `needs`: `chain(a, b)` makes b's first steps need a's
last ones, `group(a, b)` runs a and b side by side, and `chord(group, callback)` is
`chain(group, callback)`, Celery's words for the same shapes. The server receives the plain
list of steps of `POST /v1/workflows` (docs/workflows.md) and checks it; nothing here decides
when a step runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = ["Step", "Workflow", "WorkflowStep", "chain", "chord", "group", "steps_of"]


@dataclass(frozen=True)
class Step:
    """One step: a job of `type` named `name` in its workflow, with any option of a job."""

    name: str
    type: str
    payload: Mapping[str, Any] | None = None
    needs: Sequence[str] = ()
    queue: str | None = None
    max_attempts: int | None = None
    timeout_s: int | None = None
    labels: Mapping[str, str] | None = None
    on_dependency_failure: str | None = None  # fail (default), cancel or run
    run_at: datetime | str | None = None

    def body(self, extra_needs: Iterable[str] = ()) -> dict[str, Any]:
        """The step as `POST /v1/workflows` takes it."""
        needs = list(dict.fromkeys([*self.needs, *extra_needs]))
        body: dict[str, Any] = {"name": self.name, "type": self.type, "payload": dict(self.payload or {})}
        if needs:
            body["needs"] = needs
        for key in ("queue", "max_attempts", "timeout_s", "on_dependency_failure"):
            value = getattr(self, key)
            if value is not None:
                body[key] = value
        if self.labels:
            body["labels"] = dict(self.labels)
        if self.run_at is not None:
            body["run_at"] = self.run_at if isinstance(self.run_at, str) else self.run_at.isoformat()
        return body


class _Part:
    """A composition: its steps with the needs it adds, where it starts and where it ends."""

    def __init__(self, bodies: list[dict[str, Any]], entries: list[str], exits: list[str]) -> None:
        self.bodies, self.entries, self.exits = bodies, entries, exits




def _part(node: Step | _Part | Mapping[str, Any]) -> _Part:
    if isinstance(node, _Part):
        return node
    body = node.body() if isinstance(node, Step) else dict(node)
    if "name" not in body or "type" not in body:
        raise ValueError("a step needs a name and a type")
    return _Part([body], [body["name"]], [body["name"]])


def chain(*nodes: Step | _Part | Mapping[str, Any]) -> _Part:
    """Each node after the one before: its first steps need the previous node's last ones."""
    if not nodes:
        raise ValueError("a chain needs at least one step")
    parts = [_part(n) for n in nodes]
    bodies = [dict(b) for b in parts[0].bodies]
    for before, after in zip(parts, parts[1:], strict=False):
        for body in after.bodies:
            body = dict(body)
            if body["name"] in after.entries:
                body["needs"] = list(dict.fromkeys([*body.get("needs", []), *before.exits]))
            bodies.append(body)
    return _Part(bodies, parts[0].entries, parts[-1].exits)


def group(*nodes: Step | _Part | Mapping[str, Any]) -> _Part:
    """The nodes side by side: a chain that follows a group waits for all of them."""
    if not nodes:
        raise ValueError("a group needs at least one step")
    parts = [_part(n) for n in nodes]
    return _Part([b for p in parts for b in p.bodies], [e for p in parts for e in p.entries],
                 [x for p in parts for x in p.exits])


def chord(header: Step | _Part | Mapping[str, Any], callback: Step | _Part | Mapping[str, Any]) -> _Part:
    """`callback` once every step of `header` (usually a group) has ended: a fan-in."""
    return chain(header, callback)


def steps_of(flow: Step | _Part | Mapping[str, Any] | Iterable[Step | Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The plain step list of a composition, a step, or a list of steps (taken as they are)."""
    single = isinstance(flow, Step | _Part | Mapping)
    bodies = _part(flow).bodies if single else [_part(s).bodies[0] for s in flow]  # type: ignore[arg-type, union-attr]
    names = [b["name"] for b in bodies]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"step names must be unique in a workflow: {', '.join(twice)}")
    return bodies


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


@dataclass
class WorkflowStep:
    """One step of a workflow as the API returned it."""

    name: str
    job_id: str
    type: str
    state: str
    needs: list[str]
    attempts: int
    error: dict[str, Any] | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> WorkflowStep:
        return cls(name=d["name"], job_id=d["job_id"], type=d.get("type", ""), state=d["state"],
                   needs=list(d.get("needs") or []), attempts=d.get("attempts", 0),
                   error=d.get("error"), raw=dict(d))


@dataclass
class Workflow:
    """A workflow as the API returned it; `steps` is empty in a list's items."""

    id: str
    name: str | None
    state: str
    done: bool
    step_count: int
    active: int
    failed: int
    cancelled: int
    counts: dict[str, int]
    labels: dict[str, str]
    steps: list[WorkflowStep]
    created_time: datetime
    done_time: datetime | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Workflow:
        return cls(
            id=d["id"], name=d.get("name"), state=d["state"], done=bool(d["done"]),
            step_count=d.get("step_count", 0), active=d.get("active", 0), failed=d.get("failed", 0),
            cancelled=d.get("cancelled", 0), counts=dict(d.get("counts") or {}),
            labels=dict(d.get("labels") or {}),
            steps=[WorkflowStep.from_json(s) for s in d.get("steps") or []],
            created_time=datetime.fromisoformat(d["created_time"]), done_time=_time(d.get("done_time")),
            raw=dict(d),
        )

    @property
    def succeeded(self) -> bool:
        """Whether every step COMPLETED."""
        return self.state == "COMPLETED"

    def step(self, name: str) -> WorkflowStep:
        """The step named `name` (KeyError if there is none)."""
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(name)

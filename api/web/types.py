"""GET /v1/types: the registered job types with their schema, queue, timeout and limits.

`describe` is also what `cloudjobs types` prints and what `create_app` checks at start (a
type whose timeout is longer than its queue's dispatch deadline is cut to it: a warning).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Response

from api.cloud.queues import Queues
from api.web.http import authenticate, current_state, json_response

if TYPE_CHECKING:
    from handlers.registry import Registry

logger = logging.getLogger(__name__)

bp = Blueprint("types", __name__)
bp.before_request(authenticate)


@dataclass(frozen=True)
class TypeInfo:
    """A job type as a create sees it: where it goes and the limits it runs under."""

    name: str
    queue: str
    timeout_s: int  # what a job of this type gets: the type's, at most the queue's deadline
    declared_timeout_s: int  # what @job(timeout_s=…) asked for
    max_attempts: int  # the type's, at most the queue's (1000 for an unlimited queue)
    dispatch_deadline_s: float  # the queue's
    schema: dict[str, Any] | None  # the payload's JSON Schema; None takes any object
    concurrency_per_key: int | None = None  # @job(concurrency_per_key=): over the queue's
    callback_url: str | None = None  # @job(callback_url=): its jobs' webhook unless a create names one

    @property
    def timeout_cut(self) -> bool:
        """Whether the queue's dispatch deadline cuts the type's declared timeout."""
        return self.declared_timeout_s > self.timeout_s

    def as_json(self) -> dict[str, Any]:
        """The wire form (GET /v1/types, `cloudjobs types --format json`)."""
        return asdict(self)


def describe(registry: Registry, queues: Queues) -> list[TypeInfo]:
    """Every registered type, by name, as api/orchestration/lifecycle.py would create its jobs."""
    out = []
    for name in sorted(registry.types):
        jt = registry.types[name]
        queue = jt.queue or queues.route(name)
        spec = queues.specs.get(queue)
        deadline = spec.dispatch_deadline if spec else 0.0
        queue_max = spec.retry.max_attempts if spec and spec.retry.max_attempts > 0 else 1000
        out.append(TypeInfo(
            name=name,
            queue=queue,
            timeout_s=min(jt.timeout_s, int(deadline)) if spec else jt.timeout_s,
            declared_timeout_s=jt.timeout_s,
            max_attempts=min(jt.max_attempts or queue_max, queue_max),
            dispatch_deadline_s=deadline,
            schema=jt.schema.model_json_schema() if jt.schema is not None else None,
            concurrency_per_key=jt.concurrency_per_key,
            callback_url=jt.callback_url,
        ))
    return out


def warn_cut_timeouts(registry: Registry, queues: Queues) -> list[str]:
    """Log (and return) a warning for each type whose timeout its queue cuts.

    A warning, not a refusal: the jobs still run, only for at most the deadline, and a
    deployment should not stop starting because queues.yaml changed (docs/queues.md).
    """
    lines = []
    for t in describe(registry, queues):
        if t.timeout_cut:
            lines.append(
                f"job type {t.name!r}: timeout_s={t.declared_timeout_s} is longer than the "
                f"dispatch_deadline of queue {t.queue} ({t.dispatch_deadline_s:g}s), so its jobs get "
                f"{t.timeout_s}s: raise the queue's dispatch_deadline (at most 30m) in the queues "
                "file, or lower the type's timeout_s"
            )
    for line in lines:
        logger.warning(line)
    return lines


@bp.get("/v1/types")
def list_types() -> Response:
    """The registered job types, by name."""
    state = current_state()
    return json_response({"types": [t.as_json() for t in describe(state.registry, state.queues)]})

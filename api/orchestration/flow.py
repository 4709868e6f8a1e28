"""Flow control at creation: a job's keys checked and its limits resolved (docs/flow-control.md).

The rules, which the database then enforces (api/store/flow.py):

- a concurrency key's limit is the queue's override for that key (`key_overrides`), else the
  type's `concurrency_per_key`, else the queue's `concurrency_per_key`;
- a job is throttled by its `throttle_key`'s rate, or by its concurrency key's when the
  queue (or the key's override) declares `rate_per_key`;
- a key with neither a limit nor a rate is refused (422): it would limit nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from api.orchestration.requests import CreateJob

if TYPE_CHECKING:
    from api.cloud.queues import QueueSpec
    from api.state import AppState
    from handlers.registry import JobType


def key_settings(spec: QueueSpec, jt: JobType | None, req: CreateJob) -> tuple[int | None, str | None]:
    """The concurrency limit and the throttle key of a job of this queue and type."""
    limit = None
    throttle = None
    if req.concurrency_key is not None:
        limits = spec.key_limits(req.concurrency_key)
        override = spec.key_overrides.get(req.concurrency_key)
        if override is not None and override.concurrency is not None:
            limit = override.concurrency
        elif jt is not None and jt.concurrency_per_key is not None:
            limit = jt.concurrency_per_key
        else:
            limit = limits.concurrency
        if limits.interval_s is not None:
            throttle = req.concurrency_key
    if req.throttle_key is not None:
        throttle = req.throttle_key
    return limit, throttle


def check_flow(spec: QueueSpec, jt: JobType | None, req: CreateJob) -> list[dict[str, str]]:
    """Field errors of a job's flow-control options against its queue and type."""
    errors = []
    if req.unique_key is None:
        if req.unique_for_s is not None:
            errors.append({"field": "unique_for_s", "message": "needs unique_key"})
        if req.unique_mode != "return":
            errors.append({"field": "unique_mode", "message": "needs unique_key"})
    if req.concurrency_key is not None:
        limit, throttle = key_settings(spec, jt, req)
        if limit is None and throttle is None:
            errors.append({
                "field": "concurrency_key",
                "message": f"queue {spec.name!r} declares no concurrency_per_key or rate_per_key, and type "
                           f"{req.type!r} no concurrency_per_key: the key would limit nothing",
            })
    if req.throttle_key is not None and spec.key_limits(req.throttle_key).interval_s is None:
        errors.append({"field": "throttle_key",
                       "message": f"queue {spec.name!r} declares no rate_per_key for this key"})
    return errors


def interval_of(state: AppState) -> Callable[[str, str], float | None]:
    """`interval(queue, key)`: a throttled key's seconds between dispatches (None: not throttled)."""
    def interval(queue: str, key: str) -> float | None:
        spec = state.queues.specs.get(queue)
        return spec.key_limits(key).interval_s if spec is not None else None

    return interval

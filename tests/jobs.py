"""Job types for the tests (JOB_MODULES=tests.jobs); they use only the public job API."""

from __future__ import annotations

import time
from typing import Any

from handlers import JobContext, job


@job("overrun", timeout_s=1)
def overrun(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Run past the 1 s timeout on the first attempt, then finish in time."""
    if ctx.attempt == 1:
        time.sleep(float(payload.get("seconds", 1.3)))
    return {"attempt": ctx.attempt}


@job("not_json")
def not_json(payload: dict[str, Any], ctx: JobContext) -> Any:
    """Return something JSON cannot carry."""
    return {1, 2, 3}


@job("boom")
def boom(payload: dict[str, Any], ctx: JobContext) -> Any:
    """Raise an unexpected exception (a bug in a job function)."""
    raise KeyError("missing")


@job("quoting")
def quoting(payload: dict[str, Any], ctx: JobContext) -> Any:
    """Raise an exception whose message quotes the payload, as much real code does."""
    raise ValueError(f"no card like {payload['card']} in {payload['n']}" + " padding" * 100)


@job("parents")
def parents(payload: dict[str, Any], ctx: JobContext) -> Any:
    """Return what the job saw of its dependencies: key → [state, result]."""
    return {key: [p.state, p.result] for key, p in sorted(ctx.parents.items())}


@job("spawner")
def spawner(payload: dict[str, Any], ctx: JobContext) -> Any:
    """Submit `n` echo children and a continuation that needs them; fail the first attempt after
    submitting when `fail_first` (its children must then not exist)."""
    ids = [ctx.submit("echo", {"i": i}, labels={"role": "child"}) for i in range(payload.get("n", 2))]
    then = ctx.then("parents", labels={"role": "continuation"})
    if payload.get("fail_first") and ctx.attempt == 1:
        raise RuntimeError("failing after submitting")
    return {"children": ids, "then": then}


@job("bad_spawner")
def bad_spawner(payload: dict[str, Any], ctx: JobContext) -> Any:
    """Submit a valid child, then one of an unknown type: the attempt fails, nothing is created."""
    ctx.submit("echo", {"ok": 1})
    ctx.submit("no-such-type")
    return {}


# How many times each durable step's function ran, by job id and step (the tests run in-process).
STEP_RUNS: dict[tuple[str, str], int] = {}


def _counted(job_id: str, name: str, value: Any) -> Any:
    STEP_RUNS[(job_id, name)] = STEP_RUNS.get((job_id, name), 0) + 1
    return value


@job("three_steps")
def three_steps(payload: dict[str, Any], ctx: JobContext) -> Any:
    """Three durable steps; the third raises on the first attempt when `fail_third`."""
    jid = str(ctx.job_id)
    one = ctx.step("one", _counted, jid, "one", {"n": 1})
    two = ctx.step("two", _counted, jid, "two", one["n"] + 1)

    def third() -> int:
        _counted(jid, "three", None)
        if payload.get("fail_third") and ctx.attempt == 1:
            raise RuntimeError("step three failed")
        return two + 1

    three = ctx.step("three", third)
    return {"steps": [one["n"], two, three]}


@job("bad_step")
def bad_step(payload: dict[str, Any], ctx: JobContext) -> Any:
    """A step whose result JSON cannot carry, or one past the size limit."""
    if payload.get("big"):
        return ctx.step("big", lambda: "x" * int(payload["big"]))
    return ctx.step("set", lambda: {1, 2})


@job("alone", timeout_s=10, jobs_per_task=1)
def alone(payload: dict[str, Any], ctx: JobContext) -> Any:
    """A type whose jobs must each have a task of their own, whatever the queue allows."""
    return payload


@job("one_at_a_time", concurrency_per_key=1)
def one_at_a_time(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """A type that allows one job per concurrency key at a time, over its queue's limit."""
    time.sleep(float(payload.get("seconds", 0)))
    return {"ok": True}

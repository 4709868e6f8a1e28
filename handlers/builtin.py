"""Built-in job types for demos and tests: sleep (alias worktime), echo, flaky.

They live in a registry of their own, `demo`: create_app adds it to the app's types only
when DEMO_JOB_TYPES is on (`cloudjobs dev` and the tests turn it on), so a deployment runs
its own types and nothing else unless told otherwise."""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from handlers.registry import JobContext, Permanent, Registry, Retry

demo = Registry()
job = demo.job


class SleepPayload(BaseModel):
    """`{"seconds": n}`, or `{"worktime": n}` as in the original tutorial."""

    model_config = ConfigDict(extra="forbid")
    seconds: float | None = Field(default=None, ge=0, le=3600)
    worktime: float | None = Field(default=None, ge=0, le=3600)

    @model_validator(mode="after")
    def one_duration(self) -> SleepPayload:
        if (self.seconds is None) == (self.worktime is None):
            raise ValueError("give exactly one of seconds or worktime")
        return self

    @property
    def duration(self) -> float:
        return self.seconds if self.seconds is not None else self.worktime  # type: ignore[return-value]


@job("sleep", schema=SleepPayload, timeout_s=3600)
def sleep(payload: SleepPayload, ctx: JobContext) -> dict[str, Any]:
    """Sleep for the given time, reporting progress and stopping early when cancelled."""
    total = payload.duration
    start = time.monotonic()
    step = 0.5 if total > 2 else 0.05
    while (elapsed := time.monotonic() - start) < total:
        if ctx.cancelled():
            raise Permanent("cancelled while sleeping", code="CANCELLED")
        ctx.progress(round(elapsed / total, 3) if total else 1.0, f"slept {elapsed:.1f}s of {total:g}s")
        time.sleep(min(step, total - elapsed))
    return {"slept_s": round(time.monotonic() - start, 3)}


@job("worktime", schema=SleepPayload, timeout_s=3600)
def worktime(payload: SleepPayload, ctx: JobContext) -> dict[str, Any]:
    """The original tutorial's name for sleep."""
    return sleep(payload, ctx)


@job("echo", timeout_s=10)  # instant: a short timeout lets many share a task (jobs_per_task)
def echo(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Return the payload unchanged."""
    return payload


class FlakyPayload(BaseModel):
    """`{"failures": n}`: fail the first n attempts, then succeed."""

    model_config = ConfigDict(extra="forbid")
    failures: int = Field(ge=0, le=1000)


@job("flaky", schema=FlakyPayload, timeout_s=10)
def flaky(payload: FlakyPayload, ctx: JobContext) -> dict[str, Any]:
    """Fail the first `failures` attempts, then succeed."""
    if ctx.attempt <= payload.failures:
        raise Retry(f"attempt {ctx.attempt} of {payload.failures + 1} fails on purpose", code="FLAKY")
    return {"succeeded_on_attempt": ctx.attempt}

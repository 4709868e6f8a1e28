from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from handlers.builtin import FlakyPayload, SleepPayload, flaky, sleep
from handlers.registry import JobContext, Permanent, Registry, Retry, UnknownJobType


def ctx(attempt: int = 1, cancelled: bool = False, reports: list | None = None) -> JobContext:
    return JobContext(
        job_id=uuid.uuid4(), attempt=attempt, deadline=datetime.now(UTC),
        _report=lambda f, m: (reports if reports is not None else []).append((f, m)),
        _check_cancel=lambda: cancelled,
    )


def test_sleep_takes_seconds_or_the_tutorials_worktime() -> None:
    assert SleepPayload.model_validate({"seconds": 2}).duration == 2
    assert SleepPayload.model_validate({"worktime": 40}).duration == 40
    for bad in ({}, {"seconds": 1, "worktime": 1}, {"seconds": -1}, {"minutes": 1}):
        with pytest.raises(ValidationError):
            SleepPayload.model_validate(bad)


def test_sleep_reports_progress_and_returns_the_time_slept() -> None:
    reports: list = []
    result = sleep(SleepPayload(seconds=0.12), ctx(reports=reports))
    assert result["slept_s"] >= 0.12
    assert reports and all(0 <= f <= 1 for f, _ in reports)


def test_sleep_stops_when_cancelled() -> None:
    with pytest.raises(Permanent) as e:
        sleep(SleepPayload(seconds=5), ctx(cancelled=True))
    assert e.value.code == "CANCELLED"


@pytest.mark.parametrize(("attempt", "fails"), [(1, True), (2, True), (3, False)])
def test_flaky_fails_the_first_n_attempts(attempt: int, fails: bool) -> None:
    if fails:
        with pytest.raises(Retry):
            flaky(FlakyPayload(failures=2), ctx(attempt))
    else:
        assert flaky(FlakyPayload(failures=2), ctx(attempt)) == {"succeeded_on_attempt": 3}


def test_registry_registers_and_refuses_unknown_types() -> None:
    reg = Registry()

    @reg.job("t", timeout_s=9)
    def fn(payload, c):  # type: ignore[no-untyped-def]
        return payload

    assert reg["t"].fn is fn and reg["t"].timeout_s == 9
    assert "t" in reg
    with pytest.raises(UnknownJobType):
        reg["nope"]


def test_progress_refuses_fractions_outside_zero_to_one() -> None:
    with pytest.raises(ValueError):
        ctx().progress(1.5)


def test_cancelled_is_polled_at_most_once_per_interval() -> None:
    calls = []
    c = JobContext(uuid.uuid4(), 1, datetime.now(UTC), lambda f, m: None,
                   lambda: calls.append(1) or False, _cancel_poll_s=60)
    assert [c.cancelled() for _ in range(5)] == [False] * 5
    assert len(calls) == 1

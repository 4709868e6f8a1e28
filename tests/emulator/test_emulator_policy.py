"""Pure delivery rules: backoff schedule, when retrying stops, token bucket, status mapping."""

from __future__ import annotations

import math

import grpc
import pytest

from emulator.policy import (
    TokenBucket,
    backoff_delay,
    code_number,
    http_status_to_code,
    retries_exhausted,
)


def test_backoff_follows_googles_documented_example() -> None:
    # RetryConfig docs: min 10s, max 300s, 3 doublings -> 10, 20, 40, 80, 160, 240, 300, 300.
    delays = [backoff_delay(n, min_backoff=10, max_backoff=300, max_doublings=3)
              for n in range(1, 10)]
    assert delays == [10, 20, 40, 80, 160, 240, 300, 300, 300]


def test_backoff_with_google_defaults() -> None:
    # min 0.1s, max 3600s, 16 doublings: pure doubling until the cap.
    delays = [backoff_delay(n, min_backoff=0.1, max_backoff=3600, max_doublings=16)
              for n in range(1, 18)]
    assert delays[:5] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6])
    assert delays[15] == pytest.approx(3276.8)
    assert delays[16] == 3600


def test_backoff_without_doublings_grows_linearly() -> None:
    delays = [backoff_delay(n, min_backoff=1, max_backoff=3.5, max_doublings=0)
              for n in range(1, 6)]
    assert delays == [1, 2, 3, 3.5, 3.5]


def test_backoff_linear_step_is_the_last_doubled_interval() -> None:
    delays = [backoff_delay(n, min_backoff=0.5, max_backoff=100, max_doublings=2)
              for n in range(1, 7)]
    assert delays == [0.5, 1, 2, 4, 6, 8]


def test_backoff_rejects_retry_zero() -> None:
    with pytest.raises(ValueError):
        backoff_delay(0, min_backoff=1, max_backoff=2, max_doublings=1)


@pytest.mark.parametrize(
    ("attempts", "elapsed", "max_attempts", "max_duration", "exhausted"),
    [
        (3, 0.0, 3, 0.0, True),      # attempts reached, no time limit
        (2, 0.0, 3, 0.0, False),     # attempts left
        (3, 5.0, 3, 10.0, False),    # attempts reached but duration not passed
        (3, 10.0, 3, 10.0, True),    # both satisfied
        (1, 50.0, 3, 10.0, False),   # duration passed but attempts left
        (500, 1e6, -1, 0.0, False),  # -1: unlimited attempts
        (500, 1e6, -1, 10.0, False),  # -1 is never satisfied, whatever the duration
    ],
)
def test_retries_stop_only_when_both_limits_are_met(
    attempts: int, elapsed: float, max_attempts: int, max_duration: float, exhausted: bool
) -> None:
    assert retries_exhausted(attempts=attempts, first_attempt_at=100.0, now=100.0 + elapsed,
                             max_attempts=max_attempts,
                             max_retry_duration=max_duration) is exhausted


def test_token_bucket_starts_full_then_refills_at_rate() -> None:
    bucket = TokenBucket(rate=10, burst=3, now=0.0)
    assert [bucket.try_take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.wait_time(0.0) == pytest.approx(0.1)
    assert not bucket.try_take(0.05)
    assert bucket.try_take(0.1)
    # A long idle spell earns at most `burst` tokens.
    assert sum(bucket.try_take(100.0) for _ in range(10)) == 3


def test_token_bucket_reconfigure_keeps_earned_tokens_up_to_new_burst() -> None:
    bucket = TokenBucket(rate=1, burst=10, now=0.0)
    bucket.reconfigure(rate=100, burst=2, now=0.0)
    assert sum(bucket.try_take(0.0) for _ in range(5)) == 2
    assert bucket.wait_time(0.0) == pytest.approx(0.01)


def test_infinite_rate_never_runs_out() -> None:
    bucket = TokenBucket(rate=math.inf, burst=1, now=0.0)
    assert all(bucket.try_take(0.0) for _ in range(10_000))
    assert bucket.wait_time(0.0) == 0


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (200, grpc.StatusCode.OK),
        (204, grpc.StatusCode.OK),
        (400, grpc.StatusCode.INVALID_ARGUMENT),
        (404, grpc.StatusCode.NOT_FOUND),
        (418, grpc.StatusCode.FAILED_PRECONDITION),
        (429, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (500, grpc.StatusCode.INTERNAL),
        (503, grpc.StatusCode.UNAVAILABLE),
        (504, grpc.StatusCode.DEADLINE_EXCEEDED),
        (302, grpc.StatusCode.UNKNOWN),
    ],
)
def test_http_status_maps_to_rpc_code(status: int, code: grpc.StatusCode) -> None:
    assert http_status_to_code(status) == code


def test_code_number() -> None:
    assert code_number(grpc.StatusCode.NOT_FOUND) == 5

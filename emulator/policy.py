"""Pure delivery rules: retry backoff, when retrying stops, the token bucket, status mapping.

No clocks are read here: every function takes ``now``, so each rule is tested exactly.
"""

from __future__ import annotations

import math

import grpc


def backoff_delay(
    retry: int, *, min_backoff: float, max_backoff: float, max_doublings: int
) -> float:
    """Seconds to wait before retry number ``retry`` (1 = the retry after the first attempt).

    Google's RetryConfig rule: the interval starts at ``min_backoff``, doubles
    ``max_doublings`` times, then grows linearly by ``min_backoff * 2**max_doublings`` per
    retry, and is capped at ``max_backoff``. With min 10s, max 300s and 3 doublings the
    retries come 10, 20, 40, 80, 160, 240, 300, 300, ... seconds apart.
    """
    if retry < 1:
        raise ValueError("retry numbers start at 1")
    doublings = retry - 1
    if doublings <= max_doublings:
        delay = min_backoff * (2.0**doublings)
    else:
        step = min_backoff * (2.0**max_doublings)
        delay = step * (doublings - max_doublings + 1)
    return min(delay, max_backoff)


def retries_exhausted(
    *,
    attempts: int,
    first_attempt_at: float,
    now: float,
    max_attempts: int,
    max_retry_duration: float,
) -> bool:
    """True when no further attempt may be made (the task is then deleted).

    Cloud Tasks stops only when both limits are satisfied: ``attempts >= max_attempts``
    (never, when max_attempts is -1) and ``max_retry_duration`` has passed since the first
    attempt (always, when it is 0, which means no time limit).
    """
    attempts_done = max_attempts != -1 and attempts >= max_attempts
    duration_done = max_retry_duration <= 0 or now - first_attempt_at >= max_retry_duration
    return attempts_done and duration_done


class TokenBucket:
    """Google's dispatch token bucket: ``burst`` tokens at most, refilled at ``rate`` per second.

    An infinite rate never runs out. Callers pass a monotonic ``now``.
    """

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        # A new queue starts with a full bucket.
        self.tokens = float(self.burst)
        self.updated = now

    def reconfigure(self, rate: float, burst: int, now: float) -> None:
        """Apply new limits, keeping the tokens already earned (up to the new burst)."""
        self.refill(now)
        self.rate = rate
        self.burst = max(1, burst)
        self.tokens = min(self.tokens, float(self.burst))

    def refill(self, now: float) -> None:
        """Add the tokens earned since the last refill."""
        if math.isinf(self.rate):
            self.tokens = float(self.burst)
        elif now > self.updated:
            self.tokens = min(float(self.burst), self.tokens + (now - self.updated) * self.rate)
        self.updated = max(self.updated, now)

    def try_take(self, now: float) -> bool:
        """Take one token if there is one."""
        self.refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def wait_time(self, now: float) -> float:
        """Seconds until the next whole token is available (0 if one is)."""
        self.refill(now)
        if self.tokens >= 1.0 or math.isinf(self.rate):
            return 0.0
        return (1.0 - self.tokens) / self.rate


# How an HTTP answer is reported in Attempt.response_status (google.rpc.Code), following the
# HTTP mapping documented in google/rpc/code.proto.
_HTTP_TO_CODE = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ABORTED,
    416: grpc.StatusCode.OUT_OF_RANGE,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def http_status_to_code(status: int) -> grpc.StatusCode:
    """The google.rpc code Cloud Tasks reports for an HTTP status."""
    if 200 <= status < 300:
        return grpc.StatusCode.OK
    if status in _HTTP_TO_CODE:
        return _HTTP_TO_CODE[status]
    if 400 <= status < 500:
        return grpc.StatusCode.FAILED_PRECONDITION
    if 500 <= status < 600:
        return grpc.StatusCode.INTERNAL
    return grpc.StatusCode.UNKNOWN


def code_number(code: grpc.StatusCode) -> int:
    """The integer of a gRPC status code, as google.rpc.Status carries it."""
    return int(code.value[0])

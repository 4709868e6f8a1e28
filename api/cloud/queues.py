"""queues.yaml: each queue's Cloud Tasks settings and which job types it carries."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}
_QUEUE_ID = re.compile(r"^[A-Za-z0-9-]{1,100}$")
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|m|h|d)\s*$")
_RATE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# A key's concurrency limit: enough for any one customer of a queue that dispatches 1,000 at once.
MAX_CONCURRENCY_PER_KEY = 1000
# A task's body names its jobs: 500 ids are about 20 kB, far within a task's 1 MB.
MAX_JOBS_PER_TASK = 500


class QueuesInvalid(Exception):
    """queues.yaml cannot be read as a set of queues."""


def parse_duration(value: Any) -> float:
    """Seconds from `30`, `30s`, `1.5m`, `2h`, `7d`, `2w`, `250ms`."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    m = _DURATION.match(str(value))
    if not m:
        raise QueuesInvalid(f"not a duration: {value!r} (use 30s, 5m, 1h, 7d, 2w)")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_rate(value: Any) -> float:
    """The interval, in seconds, between two dispatches of a rate like `10/m`, `5/s`, `100/h`."""
    m = _RATE.match(str(value))
    if not m or float(m.group(1)) <= 0:
        raise QueuesInvalid(f"not a rate: {value!r} (use 10/s, 10/m, 100/h, 1000/d)")
    return _RATE_UNITS[m.group(2)] / float(m.group(1))


@dataclass(frozen=True)
class KeyLimits:
    """A queue's flow control per key: how many of a key's jobs at once, and how often."""

    concurrency: int | None = None  # at most this many CREATED, QUEUED or RUNNING at once; None: no limit
    interval_s: float | None = None  # at least this long between two dispatches; None: no throttle


@dataclass(frozen=True)
class RetryConfig:
    """Cloud Tasks' retry config for a queue."""

    max_attempts: int = 100  # -1: unlimited
    max_retry_duration: float = 0.0  # seconds from the first attempt; 0: no time limit
    min_backoff: float = 0.1
    max_backoff: float = 3600.0
    max_doublings: int = 16

    def backoff_s(self, retry: int) -> float:
        """How long Cloud Tasks waits before retry number `retry` (1: the first retry).

        Google's documented rule for a queue's RetryConfig: min_backoff, doubled max_doublings
        times, then growing by the last doubled interval per retry, never above max_backoff.
        The server uses it to say when a job waiting to retry should run next; Cloud Tasks
        decides.
        """
        n = max(retry, 1) - 1
        interval = self.min_backoff * 2.0 ** min(n, self.max_doublings)
        if n > self.max_doublings:
            interval *= n - self.max_doublings + 1
        return min(interval, self.max_backoff)


@dataclass(frozen=True)
class QueueSpec:
    """One queue as declared in queues.yaml."""

    name: str
    max_dispatches_per_second: float = 500.0
    max_concurrent_dispatches: int = 1000
    retry: RetryConfig = field(default_factory=RetryConfig)
    dispatch_deadline: float = 600.0  # seconds; Cloud Tasks allows 15 s to 30 min
    types: tuple[str, ...] = ()
    # Jobs one Cloud Task may carry (run one after another by one /handlers/run); 1: a task each.
    jobs_per_task: int = 1
    # Flow control per concurrency key (or throttle key): the queue's defaults, and overrides
    # for named keys (docs/flow-control.md).
    per_key: KeyLimits = field(default_factory=KeyLimits)
    key_overrides: dict[str, KeyLimits] = field(default_factory=dict)

    def key_limits(self, key: str) -> KeyLimits:
        """The limits of one key: its override where the queue names it, else the queue's."""
        override = self.key_overrides.get(key)
        if override is None:
            return self.per_key
        return KeyLimits(
            override.concurrency if override.concurrency is not None else self.per_key.concurrency,
            override.interval_s if override.interval_s is not None else self.per_key.interval_s,
        )

    def attempts_exhausted(self, retry_count: int, first_attempt_age: float | None) -> bool:
        """Whether Cloud Tasks gives up after the attempt that has `retry_count` retries before it.

        Cloud Tasks stops when max_attempts is reached and max_retry_duration has passed
        since the first attempt (0 means no time limit, so max_attempts alone decides).
        """
        r = self.retry
        if r.max_attempts < 0 or retry_count + 1 < r.max_attempts:
            return False
        if r.max_retry_duration <= 0:
            return True
        return first_attempt_age is not None and first_attempt_age >= r.max_retry_duration


@dataclass(frozen=True)
class Queues:
    """All declared queues and the routing of job types to them."""

    specs: dict[str, QueueSpec]

    def __getitem__(self, name: str) -> QueueSpec:
        return self.specs[name]

    def __contains__(self, name: object) -> bool:
        return name in self.specs

    def route(self, job_type: str) -> str:
        """The queue a job type goes to when the request names none."""
        for spec in self.specs.values():
            if job_type in spec.types:
                return spec.name
        for spec in self.specs.values():
            if "*" in spec.types:
                return spec.name
        return "default" if "default" in self.specs else next(iter(self.specs))

    @classmethod
    def load(cls, path: Path) -> Queues:
        """Read queues.yaml."""
        try:
            raw = yaml.safe_load(path.read_text())
        except FileNotFoundError as e:
            raise QueuesInvalid(f"{path}: not found (set QUEUES_FILE)") from e
        return cls.parse(raw, source=str(path))

    @classmethod
    def parse(cls, raw: Any, *, source: str = "queues.yaml") -> Queues:
        """Build queues from the parsed YAML document."""
        if not isinstance(raw, dict) or not isinstance(raw.get("queues"), dict) or not raw["queues"]:
            raise QueuesInvalid(f"{source}: expected a mapping `queues: {{name: {{...}}}}`")
        specs = {}
        for name, body in raw["queues"].items():
            specs[name] = _parse_queue(str(name), body or {}, source)
        return cls(specs)


def _parse_queue(name: str, body: dict[str, Any], source: str) -> QueueSpec:
    if not _QUEUE_ID.match(name):
        raise QueuesInvalid(f"{source}: queue id {name!r} must match [A-Za-z0-9-]{{1,100}}")
    rate = body.get("rate_limits") or {}
    retry = body.get("retry_config") or {}
    deadline = parse_duration(body.get("dispatch_deadline", "600s"))
    if not 15 <= deadline <= 1800:
        raise QueuesInvalid(f"{source}: {name}.dispatch_deadline must be 15s to 30m")
    spec = QueueSpec(
        name=name,
        max_dispatches_per_second=float(rate.get("max_dispatches_per_second", 500)),
        max_concurrent_dispatches=int(rate.get("max_concurrent_dispatches", 1000)),
        retry=RetryConfig(
            max_attempts=int(retry.get("max_attempts", 100)),
            max_retry_duration=parse_duration(retry.get("max_retry_duration", 0)),
            min_backoff=parse_duration(retry.get("min_backoff", "0.1s")),
            max_backoff=parse_duration(retry.get("max_backoff", "3600s")),
            max_doublings=int(retry.get("max_doublings", 16)),
        ),
        dispatch_deadline=deadline,
        types=tuple(str(t) for t in body.get("types") or ()),
        jobs_per_task=int(body.get("jobs_per_task", 1)),
        per_key=_key_limits(body, f"{name}", source),
        key_overrides={
            str(key): _key_limits(limits or {}, f"{name}.key_overrides.{key}", source)
            for key, limits in _mapping(body.get("key_overrides"), f"{name}.key_overrides", source).items()
        },
    )
    if not 1 <= spec.jobs_per_task <= MAX_JOBS_PER_TASK:
        raise QueuesInvalid(f"{source}: {name}.jobs_per_task must be 1 to {MAX_JOBS_PER_TASK}")
    if spec.retry.max_attempts == 0 or spec.retry.max_attempts < -1:
        raise QueuesInvalid(f"{source}: {name}.retry_config.max_attempts must be -1 or >= 1")
    return spec


def _mapping(value: Any, where: str, source: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise QueuesInvalid(f"{source}: {where} must be a mapping of keys to limits")
    return value


def _key_limits(body: Any, where: str, source: str) -> KeyLimits:
    """`concurrency_per_key` and `rate_per_key` of a queue, or of one key's override."""
    if not isinstance(body, dict):
        raise QueuesInvalid(f"{source}: {where} must be a mapping")
    concurrency = body.get("concurrency_per_key")
    if concurrency is not None and (
        isinstance(concurrency, bool) or not isinstance(concurrency, int)
        or not 1 <= concurrency <= MAX_CONCURRENCY_PER_KEY
    ):
        raise QueuesInvalid(f"{source}: {where}.concurrency_per_key must be an integer from 1 to {MAX_CONCURRENCY_PER_KEY}")
    rate = body.get("rate_per_key")
    try:
        interval = parse_rate(rate) if rate is not None else None
    except QueuesInvalid as e:
        raise QueuesInvalid(f"{source}: {where}.rate_per_key: {e}") from None
    return KeyLimits(concurrency, interval)


def duration_proto(seconds: float) -> timedelta:
    """A proto-plus Duration value."""
    return timedelta(seconds=seconds)

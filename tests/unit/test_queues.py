from __future__ import annotations

import pytest

from api.cloud.queues import Queues, QueuesInvalid, QueueSpec, RetryConfig, parse_duration


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [(30, 30.0), ("30s", 30.0), ("1.5m", 90.0), ("2h", 7200.0), ("250ms", 0.25), ("0s", 0.0), ("1d", 86400.0), ("2w", 1209600.0)],
)
def test_parse_duration(raw: object, seconds: float) -> None:
    assert parse_duration(raw) == seconds


@pytest.mark.parametrize("raw", ["soon", "10 minutes", "-5s", ""])
def test_parse_duration_refuses_nonsense(raw: str) -> None:
    with pytest.raises(QueuesInvalid):
        parse_duration(raw)


def test_the_shipped_queues_file_parses() -> None:
    from tests.conftest import ROOT

    queues = Queues.load(ROOT / "queues.yaml")
    assert "default" in queues
    assert queues.route("anything") == "default"


def test_routing_prefers_an_explicit_type_over_the_wildcard() -> None:
    queues = Queues.parse({
        "queues": {
            "default": {"types": ["*"]},
            "slow": {"types": ["sleep"]},
        }
    })
    assert queues.route("sleep") == "slow"
    assert queues.route("echo") == "default"


def test_parse_reads_every_setting() -> None:
    q = Queues.parse({
        "queues": {
            "q1": {
                "rate_limits": {"max_dispatches_per_second": 10, "max_concurrent_dispatches": 3},
                "retry_config": {
                    "max_attempts": 4, "max_retry_duration": "1h", "min_backoff": "2s",
                    "max_backoff": "5m", "max_doublings": 3,
                },
                "dispatch_deadline": "2m",
            }
        }
    })["q1"]
    assert (q.max_dispatches_per_second, q.max_concurrent_dispatches) == (10.0, 3)
    assert q.retry == RetryConfig(4, 3600.0, 2.0, 300.0, 3)
    assert q.dispatch_deadline == 120.0


@pytest.mark.parametrize(
    "doc",
    [
        None,
        {"queues": {}},
        {"queues": {"bad_name!": {}}},
        {"queues": {"q": {"dispatch_deadline": "5s"}}},
        {"queues": {"q": {"retry_config": {"max_attempts": 0}}}},
    ],
)
def test_parse_refuses_invalid_documents(doc: object) -> None:
    with pytest.raises(QueuesInvalid):
        Queues.parse(doc)


@pytest.mark.parametrize(
    ("max_attempts", "max_duration", "retry_count", "age", "exhausted"),
    [
        (5, 0, 3, 0, False),  # attempt 4 of 5
        (5, 0, 4, 0, True),  # attempt 5 of 5, no time limit
        (5, 600, 4, 10, False),  # attempts used up but the duration has not passed
        (5, 600, 4, 601, True),  # both used up
        (5, 600, 9, None, False),  # unknown first-attempt time: let the queue decide
        (-1, 0, 1000, 10**6, False),  # unlimited attempts
        (1, 0, 0, 0, True),  # a single attempt
    ],
)
def test_attempts_exhausted_follows_cloud_tasks(
    max_attempts: int, max_duration: float, retry_count: int, age: float | None, exhausted: bool
) -> None:
    spec = QueueSpec("q", retry=RetryConfig(max_attempts=max_attempts, max_retry_duration=max_duration))
    assert spec.attempts_exhausted(retry_count, age) is exhausted


def test_the_backoff_follows_googles_retry_config_rule() -> None:
    # Google's example: min 10s, max 300s, 3 doublings: 10, 20, 40, 80, 160, 240, 300, 300
    rc = RetryConfig(min_backoff=10, max_backoff=300, max_doublings=3)
    assert [rc.backoff_s(n) for n in range(1, 9)] == [10, 20, 40, 80, 160, 240, 300, 300]


def test_flow_control_per_key_and_its_overrides() -> None:
    from api.cloud.queues import KeyLimits, parse_rate

    queues = Queues.parse({"queues": {"q": {
        "concurrency_per_key": 2, "rate_per_key": "10/m",
        "key_overrides": {"big": {"concurrency_per_key": 10}, "fast": {"rate_per_key": "5/s"}},
    }}})
    spec = queues["q"]
    assert spec.key_limits("anyone") == KeyLimits(2, 6.0)
    assert spec.key_limits("big") == KeyLimits(10, 6.0)
    assert spec.key_limits("fast") == KeyLimits(2, 0.2)
    assert parse_rate("100/h") == 36.0 and parse_rate(" 1.5 / s ") == 1 / 1.5
    assert Queues.parse({"queues": {"q": {}}})["q"].key_limits("k") == KeyLimits(None, None)

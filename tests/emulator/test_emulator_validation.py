"""Pure API rules: resource names, queue defaults, update masks, task checks."""

from __future__ import annotations

import grpc
import pytest
from google.cloud.tasks_v2 import types as T

from emulator import validation as v
from emulator.validation import ApiError


def pb(message: object) -> object:
    return type(message).pb(message)


@pytest.mark.parametrize(
    "name",
    [
        "projects/p/locations/l/queues/" + "a" * 100,
        "projects/my-proj.example.com:x/locations/us-central1/queues/Q-1",
    ],
)
def test_valid_queue_names(name: str) -> None:
    assert v.parse_queue_name(name).name == name


@pytest.mark.parametrize(
    "name",
    [
        "projects/p/locations/l/queues/" + "a" * 101,
        "projects/p/locations/l/queues/under_score",
        "projects/p/locations/l/queues/",
        "projects/p/queues/q",
        "queues/q",
        "",
    ],
)
def test_invalid_queue_names(name: str) -> None:
    with pytest.raises(ApiError) as err:
        v.parse_queue_name(name)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_task_ids() -> None:
    base = "projects/p/locations/l/queues/q/tasks/"
    assert v.parse_task_name(base + "A_b-9" + "x" * 495)[1].startswith("A_b-9")
    for bad in ["x" * 501, "has space", "dot.ted", "sl/ash", ""]:
        with pytest.raises(ApiError):
            v.parse_task_name(base + bad)


def test_defaults_are_googles() -> None:
    q = T.Queue.pb()(name="projects/p/locations/l/queues/q")
    v.fill_queue_defaults(q)
    assert q.rate_limits.max_dispatches_per_second == 500
    assert q.rate_limits.max_burst_size == 100
    assert q.rate_limits.max_concurrent_dispatches == 1000
    rc = q.retry_config
    assert rc.max_attempts == 100
    assert rc.max_doublings == 16
    assert v.duration_s(rc.min_backoff) == pytest.approx(0.1)
    assert v.duration_s(rc.max_backoff) == 3600
    assert v.duration_s(rc.max_retry_duration) == 0


@pytest.mark.parametrize(("rate", "burst"), [(0.5, 1), (1, 1), (10, 10), (99.5, 100),
                                             (100, 100), (500, 100), (float("inf"), 100)])
def test_burst_is_derived_from_rate(rate: float, burst: int) -> None:
    assert v.derive_max_burst_size(rate) == burst


def test_explicit_zero_backoff_is_kept_but_missing_one_is_defaulted() -> None:
    q = pb(T.Queue(retry_config=T.RetryConfig(min_backoff={"seconds": 0})))
    v.fill_queue_defaults(q)
    assert v.duration_s(q.retry_config.min_backoff) == 0
    assert v.duration_s(q.retry_config.max_backoff) == 3600


@pytest.mark.parametrize(
    "queue",
    [
        T.Queue(rate_limits=T.RateLimits(max_dispatches_per_second=501)),
        T.Queue(rate_limits=T.RateLimits(max_dispatches_per_second=-1)),
        T.Queue(rate_limits=T.RateLimits(max_concurrent_dispatches=5001)),
        T.Queue(retry_config=T.RetryConfig(max_attempts=-2)),
        T.Queue(retry_config=T.RetryConfig(max_doublings=-1)),
        T.Queue(retry_config=T.RetryConfig(min_backoff={"seconds": 10},
                                           max_backoff={"seconds": 5})),
        T.Queue(http_target=T.HttpTarget(oidc_token=T.OidcToken(service_account_email="a@b"))),
    ],
)
def test_invalid_queue_configs(queue: T.Queue) -> None:
    q = pb(queue)
    v.fill_queue_defaults(q)
    with pytest.raises(ApiError) as err:
        v.validate_queue(q, max_rate=500)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_rate_cap_can_be_lifted() -> None:
    q = pb(T.Queue(rate_limits=T.RateLimits(max_dispatches_per_second=1e6)))
    v.fill_queue_defaults(q)
    v.validate_queue(q, max_rate=float("inf"))


def test_update_with_mask_changes_only_masked_fields() -> None:
    current = pb(T.Queue(name="n", rate_limits=T.RateLimits(max_dispatches_per_second=10,
                                                              max_concurrent_dispatches=7)))
    v.fill_queue_defaults(current)
    update = pb(T.Queue(rate_limits=T.RateLimits(max_dispatches_per_second=20,
                                                 max_concurrent_dispatches=99),
                        retry_config=T.RetryConfig(max_attempts=3)))
    new = v.apply_update(current, update, ["rateLimits.maxDispatchesPerSecond"])
    v.fill_queue_defaults(new)
    assert new.rate_limits.max_dispatches_per_second == 20
    assert new.rate_limits.max_burst_size == 20
    assert new.rate_limits.max_concurrent_dispatches == 7
    assert new.retry_config.max_attempts == 100


def test_update_without_mask_replaces_everything() -> None:
    current = pb(T.Queue(name="n", rate_limits=T.RateLimits(max_concurrent_dispatches=7)))
    v.fill_queue_defaults(current)
    new = v.apply_update(current, pb(T.Queue(retry_config=T.RetryConfig(max_attempts=3))), [])
    v.fill_queue_defaults(new)
    assert new.rate_limits.max_concurrent_dispatches == 1000
    assert new.retry_config.max_attempts == 3


def test_update_rejects_unknown_paths() -> None:
    with pytest.raises(ApiError):
        v.apply_update(T.Queue.pb()(), T.Queue.pb()(), ["rate_limits.bogus"])


@pytest.mark.parametrize(
    "task",
    [
        T.Task(),
        T.Task(http_request=T.HttpRequest(url="ftp://x")),
        T.Task(http_request=T.HttpRequest(url="http://x/" + "a" * 2100)),
        T.Task(http_request=T.HttpRequest(url="http://x", http_method=T.HttpMethod.GET,
                                          body=b"no")),
        T.Task(http_request=T.HttpRequest(url="http://x", oidc_token=T.OidcToken())),
        T.Task(app_engine_http_request=T.AppEngineHttpRequest(relative_uri="no-slash")),
        T.Task(app_engine_http_request=T.AppEngineHttpRequest(
            relative_uri="/x", http_method=T.HttpMethod.PATCH, body=b"no")),
    ],
)
def test_invalid_task_targets(task: T.Task) -> None:
    with pytest.raises(ApiError) as err:
        v.validate_task_target(pb(task))
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        (T.Task(http_request=T.HttpRequest(url="http://x")), 600),
        (T.Task(http_request=T.HttpRequest(url="http://x"), dispatch_deadline={"seconds": 15}),
         15),
        (T.Task(http_request=T.HttpRequest(url="http://x"),
                dispatch_deadline={"seconds": 1800}), 1800),
        (T.Task(app_engine_http_request=T.AppEngineHttpRequest(),
                dispatch_deadline={"seconds": 0}), 600),
        (T.Task(app_engine_http_request=T.AppEngineHttpRequest(),
                dispatch_deadline={"seconds": 86415}), 86415),
    ],
)
def test_dispatch_deadline(task: T.Task, expected: float) -> None:
    assert v.dispatch_deadline_s(pb(task)) == expected


@pytest.mark.parametrize("seconds", [14, 1801, 0])
def test_http_dispatch_deadline_out_of_range(seconds: int) -> None:
    task = T.Task(http_request=T.HttpRequest(url="http://x"),
                  dispatch_deadline={"seconds": seconds})
    with pytest.raises(ApiError):
        v.dispatch_deadline_s(pb(task))


def test_task_retry_config_completes_from_queue() -> None:
    queue_rc = pb(T.RetryConfig(max_attempts=5, min_backoff={"seconds": 1},
                                max_backoff={"seconds": 10}, max_doublings=2,
                                max_retry_duration={"seconds": 0}))
    task = pb(T.Task(retry_config=T.RetryConfig(max_attempts=2)))
    rc = v.resolve_retry_config(queue_rc, task)
    assert rc.max_attempts == 2
    assert v.duration_s(rc.max_backoff) == 10

"""Pure request building: Cloud Tasks headers, reserved headers, URI overrides, auth."""

from __future__ import annotations

from typing import Any

import pytest
from google.cloud.tasks_v2 import types as T

from emulator.appengine import AppEngineRoutes
from emulator.dispatch import apply_uri_override, build_request
from emulator.state import Attempt, Target


def attempt(target: Target, *, retry_count: int = 0, previous: int | None = None,
            http_target: Any = None) -> Attempt:
    return Attempt(task=None, queue=None, queue_id="q", task_id="t", target=target,  # type: ignore[arg-type]
                   retry_count=retry_count, execution_count=0, eta=1700000000.5,
                   previous_response=previous, retry_reason="INTERNAL" if previous else None,
                   deadline_s=600.0, http_target=http_target, dispatched_at=0.0, forced=False)


def http(url: str = "http://h/p", method: str = "POST", headers: tuple = (),
         body: bytes = b"b", oidc: tuple[str, str] | None = None) -> Target:
    return Target(False, method, url, headers, body, oidc, None)


def tokens(email: str, audience: str) -> str:
    return f"token({email},{audience})"


def test_http_headers() -> None:
    req = build_request(attempt(http(headers=(("Host", "x"), ("X-A", "1")))),
                        app_engine=AppEngineRoutes("http://ae"), id_token=tokens)
    assert req.method == "POST" and req.url == "http://h/p" and req.body == b"b"
    assert req.follow_redirects
    assert req.headers == {
        "X-A": "1",
        "User-Agent": "Google-Cloud-Tasks",
        "X-CloudTasks-QueueName": "q",
        "X-CloudTasks-TaskName": "t",
        "X-CloudTasks-TaskRetryCount": "0",
        "X-CloudTasks-TaskExecutionCount": "0",
        "X-CloudTasks-TaskETA": "1700000000.500000",
    }


def test_retry_adds_previous_response_and_reason() -> None:
    req = build_request(attempt(http(), retry_count=2, previous=503),
                        app_engine=AppEngineRoutes("http://ae"), id_token=tokens)
    assert req.headers["X-CloudTasks-TaskRetryCount"] == "2"
    assert req.headers["X-CloudTasks-TaskPreviousResponse"] == "503"
    assert req.headers["X-CloudTasks-TaskRetryReason"] == "INTERNAL"


def test_oidc_audience_defaults_to_url() -> None:
    req = build_request(attempt(http(oidc=("sa@x", ""))), app_engine=AppEngineRoutes(""), id_token=tokens)
    assert req.headers["Authorization"] == "Bearer token(sa@x,http://h/p)"
    req = build_request(attempt(http(oidc=("sa@x", "aud"))), app_engine=AppEngineRoutes(""),
                        id_token=tokens)
    assert req.headers["Authorization"] == "Bearer token(sa@x,aud)"


def test_get_sends_no_body() -> None:
    req = build_request(attempt(http(method="GET", body=b"")), app_engine=AppEngineRoutes(""),
                        id_token=tokens)
    assert req.body is None


def test_app_engine_request() -> None:
    target = Target(True, "PUT", "/path?x=1", (("User-Agent", "mine"),), b"data", None, None)
    req = build_request(attempt(target), app_engine=AppEngineRoutes("http://127.0.0.1:8080/"),
                        id_token=tokens)
    assert req.url == "http://127.0.0.1:8080/path?x=1"
    assert not req.follow_redirects
    assert req.headers["User-Agent"] == \
        "mine AppEngine-Google; (+http://code.google.com/appengine)"
    assert req.headers["Content-Type"] == "application/octet-stream"
    assert req.headers["X-AppEngine-QueueName"] == "q"
    assert not any(k.startswith("X-CloudTasks-") for k in req.headers)


def uo(**fields: Any) -> Any:
    return T.UriOverride.pb(T.UriOverride(**fields))


@pytest.mark.parametrize(
    ("url", "override", "expected"),
    [
        ("http://a.com:81/p?q=1", uo(host="b.com"), "http://b.com:81/p?q=1"),
        ("http://a.com:81/p?q=1", uo(port=0), "http://a.com/p?q=1"),
        ("http://a.com/p", uo(scheme=T.UriOverride.Scheme.SCHEME_UNSPECIFIED), "https://a.com/p"),
        ("https://a.com/p", uo(scheme=T.UriOverride.Scheme.HTTP), "http://a.com/p"),
        ("http://a.com/p?q=1", uo(path_override={"path": "/n"}, query_override={}),
         "http://a.com/n"),
        # IF_NOT_EXISTS only fills in what the task URL lacks.
        ("http://a.com/p", uo(path_override={"path": "/n"}, query_override={"query_params": "z"},
                              uri_override_enforce_mode=1), "http://a.com/p?z"),
        ("http://a.com/", uo(path_override={"path": "/n"}, port=90,
                             uri_override_enforce_mode=1), "http://a.com:90/n"),
    ],
)
def test_uri_override(url: str, override: Any, expected: str) -> None:
    assert apply_uri_override(url, override) == expected

"""Trace headers, the log context and the JSON lines Cloud Logging reads."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import pytest

from api.observability import logs
from api.observability.traces import (
    SPAN_ID,
    TRACE,
    TRACE_SAMPLED,
    TraceContext,
    forwardable,
    parse_cloud_trace_context,
    parse_traceparent,
    trace_fields,
    trace_from_headers,
)
from api.store.jobs import Finish

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (f"00-{TRACE_ID}-{SPAN}-01", TraceContext(TRACE_ID, SPAN, True)),
        (f"00-{TRACE_ID}-{SPAN}-00", TraceContext(TRACE_ID, SPAN, False)),
        (f" 00-{TRACE_ID}-{SPAN}-03 ", TraceContext(TRACE_ID, SPAN, True)),  # other flag bits
        (f"01-{TRACE_ID}-{SPAN}-01-future", TraceContext(TRACE_ID, SPAN, True)),  # later version
        (f"00-{TRACE_ID}-{SPAN}-01-extra", None),  # version 00 has exactly four fields
        (f"ff-{TRACE_ID}-{SPAN}-01", None),  # version ff is invalid
        (f"00-{'0' * 32}-{SPAN}-01", None),  # all-zero trace id
        (f"00-{TRACE_ID}-{'0' * 16}-01", None),  # all-zero parent id
        (f"00-{TRACE_ID.upper()}-{SPAN}-01", None),  # the spec says lowercase
        (f"00-{TRACE_ID[:-1]}-{SPAN}-01", None),
        ("garbage", None),
        ("", None),
        (None, None),
    ],
)
def test_traceparent(header: str | None, expected: TraceContext | None) -> None:
    assert parse_traceparent(header) == expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (f"{TRACE_ID}/1;o=1", TraceContext(TRACE_ID, "0000000000000001", True)),
        (f"{TRACE_ID}/74;o=0", TraceContext(TRACE_ID, "000000000000004a", False)),
        (f"{TRACE_ID}/18446744073709551615", TraceContext(TRACE_ID, "ffffffffffffffff", None)),
        (f"{TRACE_ID}/18446744073709551616;o=1", TraceContext(TRACE_ID, None, True)),  # > 64 bits
        (f"{TRACE_ID}/0;o=1", TraceContext(TRACE_ID, None, True)),
        (TRACE_ID.upper(), TraceContext(TRACE_ID, None, None)),
        (f"{'0' * 32}/1;o=1", None),
        (f"{TRACE_ID}/abc;o=1", None),
        ("nonsense/1", None),
        (None, None),
    ],
)
def test_x_cloud_trace_context(header: str | None, expected: TraceContext | None) -> None:
    assert parse_cloud_trace_context(header) == expected


def test_traceparent_wins_over_the_google_header_and_a_bad_one_falls_back() -> None:
    other = "a" * 32
    both = {"traceparent": f"00-{TRACE_ID}-{SPAN}-01", "X-Cloud-Trace-Context": f"{other}/5;o=1"}
    assert trace_from_headers(both) == TraceContext(TRACE_ID, SPAN, True)
    bad = {"traceparent": "00-bad", "X-Cloud-Trace-Context": f"{other}/5;o=1"}
    assert trace_from_headers(bad) == TraceContext(other, "0000000000000005", True)
    assert trace_from_headers({}) is None


def test_only_well_formed_trace_headers_are_passed_on() -> None:
    headers = {
        "traceparent": f"00-{TRACE_ID}-{SPAN}-01",
        "X-Cloud-Trace-Context": "not a trace\r\nX-Injected: 1",
        "Authorization": "Bearer secret",
    }
    assert forwardable(headers) == {"traceparent": f"00-{TRACE_ID}-{SPAN}-01"}


def test_trace_fields_name_the_trace_in_cloud_loggings_format() -> None:
    assert trace_fields("proj-1", TraceContext(TRACE_ID, SPAN, True)) == {
        TRACE: f"projects/proj-1/traces/{TRACE_ID}",
        SPAN_ID: SPAN,
        TRACE_SAMPLED: True,
    }
    assert trace_fields("proj-1", TraceContext(TRACE_ID)) == {
        TRACE: f"projects/proj-1/traces/{TRACE_ID}"
    }
    assert trace_fields("proj-1", None) == {}


def _line(logger_name: str, msg: str, **extra: object) -> dict[str, Any]:
    record = logging.getLogger(logger_name).makeRecord(
        logger_name, logging.WARNING, __file__, 1, msg, (), None, extra=extra
    )
    return json.loads(logs.JsonFormatter().format(record))  # type: ignore[no-any-return]


def test_a_line_has_severity_message_time_and_the_extra_fields() -> None:
    entry = _line("x", "hello", job_id="j1")
    assert entry["severity"] == "WARNING"
    assert entry["message"] == "hello"
    assert entry["time"].endswith("+00:00")
    assert entry["job_id"] == "j1"
    assert "\n" not in logs.JsonFormatter().format(logging.makeLogRecord({"msg": "a\nb"}))


def test_the_context_is_on_every_line_until_cleared_and_extra_wins() -> None:
    logs.set_context(**{TRACE: "projects/p/traces/t"}, queue="q1", job_id=None)
    try:
        entry = _line("x", "in a request", queue="q2")
        assert entry[TRACE] == "projects/p/traces/t"
        assert entry["queue"] == "q2"  # extra= says more about this line than the context
        assert "job_id" not in entry  # None values are left out
        with logs.bound(job_id="j", attempt=2):
            assert _line("x", "in an attempt")["attempt"] == 2
        assert "attempt" not in _line("x", "after the attempt")
    finally:
        logs.clear_context()
    assert TRACE not in _line("x", "after the request")


def test_the_attempt_line_carries_the_job_and_no_error_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from api.observability.traces import log_attempt

    job_id = uuid.uuid4()
    finish = Finish(job_id, 3, "QUEUED", "RETRY", error={"code": "FLAKY", "message": "card 4242…"})
    with caplog.at_level(logging.INFO, logger="api.observability.traces"):
        log_attempt(job_type="flaky", queue="default", finish=finish, state="QUEUED", seconds=0.25)
    entry = json.loads(logs.JsonFormatter().format(caplog.records[-1]))
    assert {k: entry[k] for k in ("job_id", "type", "queue", "attempt", "outcome", "state")} == {
        "job_id": str(job_id),
        "type": "flaky",
        "queue": "default",
        "attempt": 3,
        "outcome": "RETRY",
        "state": "QUEUED",
    }
    assert entry["duration_s"] == 0.25
    assert entry["error_code"] == "FLAKY"
    assert "4242" not in json.dumps(entry)

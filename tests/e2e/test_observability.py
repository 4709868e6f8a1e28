"""End to end: a job created under a trace runs, delivered by the emulator, under that trace."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.conftest import Stack, second_server

TRACE_ID = "5b8aa5a2d2c872e8321cf37308d69df2"
TRACEPARENT = f"00-{TRACE_ID}-051581bf3cb55c13-01"


@pytest.fixture
def logged_app(stack: Stack, migrated_url: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """gunicorn with the production config file at LOG_LEVEL=INFO, its stderr kept in a file."""
    log = tmp_path / "gunicorn.log"
    with log.open("wb") as out, second_server(stack, migrated_url, stderr=out, LOG_LEVEL="INFO") as url:
        yield url, log


def _entries(log: Path) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"a log line is not JSON: {line!r}") from None
    return out


def _wait_for_line(log: Path, predicate: Any, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in _entries(log):
            if predicate(entry):
                return entry
        time.sleep(0.05)
    raise AssertionError(f"no such log line in {log.read_text()[-3000:]}")


def test_the_attempt_delivered_by_cloud_tasks_logs_under_the_creators_trace(
    logged_app: tuple[str, Path],
) -> None:
    url, log = logged_app
    resp = requests.post(
        f"{url}/v1/jobs",
        json={"type": "echo", "payload": {"password": "hunter2-e2e"}},
        headers={"traceparent": TRACEPARENT},
        timeout=10,
    )
    assert resp.status_code == 202
    job_id = resp.json()["id"]
    trace = f"projects/e2e-project/traces/{TRACE_ID}"

    attempt = _wait_for_line(log, lambda e: e.get("job_id") == job_id and "outcome" in e)
    assert attempt["outcome"] == "COMPLETED" and attempt["attempt"] == 1
    assert attempt["logging.googleapis.com/trace"] == trace
    assert attempt["type"] == "echo" and attempt["queue"] == "default"

    run = _wait_for_line(
        log,
        lambda e: (
            e.get("httpRequest", {}).get("requestUrl") == "/handlers/run"
            and e.get("logging.googleapis.com/trace") == trace
        ),
    )
    assert run["httpRequest"]["status"] == 200
    assert run["queue"] == "default"  # from X-CloudTasks-QueueName
    create = _wait_for_line(log, lambda e: e.get("message") == "POST /v1/jobs 202")
    assert create["logging.googleapis.com/trace"] == trace

    listed = requests.get(f"{url}/v1/jobs?label=k:query-secret-xyz", timeout=10)
    assert listed.status_code == 200
    _wait_for_line(log, lambda e: e.get("message") == "GET /v1/jobs 200")

    text = log.read_text()
    assert "query-secret-xyz" not in text  # no query strings (nor gunicorn's access line)
    assert "hunter2-e2e" not in text  # no payloads
    assert "Bearer" not in text and "eyJ" not in text  # no Authorization header, no token

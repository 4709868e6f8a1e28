"""The CLI's progress display and the client's parsing: pure functions, no server."""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cloudjobs_client.cli import ProgressLine, render
from cloudjobs_client.client import Job, _job_body

BASE: dict[str, Any] = {
    "id": "0b9f3c1e-0000-4000-8000-000000000001",
    "type": "sleep",
    "queue": "slow",
    "state": "RUNNING",
    "done": False,
    "payload": {"seconds": 10},
    "result": None,
    "error": None,
    "attempts": 1,
    "max_attempts": 2,
    "timeout_s": 60,
    "progress": {"fraction": 0.4, "message": "slept 4.0s of 10s"},
    "labels": {},
    "created_time": "2026-11-22T21:40:03.000001Z",
    "scheduled_time": "2026-11-22T21:40:03.000001Z",
    "started_time": "2026-11-22T21:40:04Z",
    "done_time": None,
    "updated_time": "2026-11-22T21:40:08Z",
    "owner": "someone",  # a field this client does not know yet
}


def job(**changes: Any) -> Job:
    return Job.from_json({**BASE, **changes})


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_job_is_parsed_with_aware_datetimes_and_keeps_unknown_fields() -> None:
    j = job()
    assert j.created_time == datetime(2026, 11, 22, 21, 40, 3, 1, tzinfo=UTC)
    assert j.done_time is None and j.progress is not None and j.progress.fraction == 0.4
    assert j.raw["owner"] == "someone" and not j.succeeded


def test_render_shows_state_bar_percentage_message_and_elapsed() -> None:
    line = render(job(), 12.34)
    assert "RUNNING" in line and "[########------------]" in line and " 40%" in line
    assert line.endswith("slept 4.0s of 10s  12.3s")
    assert "[" + "#" * 20 + "]" in render(job(state="COMPLETED", done=True), 75)
    assert render(job(), 75).endswith("1m15s")


def test_render_fits_the_width_by_shortening_the_message() -> None:
    line = render(job(progress={"fraction": 0.5, "message": "x" * 300}), 1.0, width=80)
    assert len(line) == 80 and "…" in line and line.endswith("  1.0s")
    assert len(render(job(), 1.0, width=30)) == 30  # a narrow terminal: cut, never wrapped
    coloured = render(job(state="FAILED"), 1.0, colour=True, width=80)
    assert "\x1b[31m" in coloured and len(coloured) - len("\x1b[31m\x1b[0m") <= 80


def test_on_a_terminal_one_line_is_rewritten_in_place() -> None:
    out = Terminal()
    line = ProgressLine(out, live=True)
    line.show(job(), 1.0)
    line.show(job(progress={"fraction": 0.6, "message": "m"}), 2.0)
    line.end()
    text = out.getvalue()
    assert text.count("\r\x1b[2K") == 2 and text.count("\n") == 1


def test_elsewhere_a_line_is_printed_per_change_only() -> None:
    out = io.StringIO()
    line = ProgressLine(out, live=False)
    for elapsed in (1.0, 2.0, 3.0):
        line.show(job(), elapsed)  # the same state and progress: one line
    line.show(job(state="COMPLETED", done=True), 4.0)
    assert len(out.getvalue().splitlines()) == 2 and "\r" not in out.getvalue()


def test_a_job_body_drops_unset_fields_and_needs_aware_times() -> None:
    assert _job_body({"type": "echo", "queue": None}) == {"type": "echo", "payload": {}}
    when = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert _job_body({"type": "echo", "run_at": when})["run_at"] == "2030-01-02T03:04:05Z"
    with pytest.raises(ValueError):
        _job_body({"type": "echo", "run_at": datetime(2030, 1, 2)})


def test_attempts_count_the_current_run_and_name_the_total_after_a_retry() -> None:
    first = job(attempts=2, run_attempts=2, max_attempts=5)
    assert first.attempt_text == "attempt 2 of 5"
    assert " 2/5 " in render(first, 1.0)
    again = job(attempts=7, run_attempts=2, run=1, max_attempts=5)
    assert again.attempt_text == "attempt 2 of 5 in this run (total 7)"
    assert " 2/5 (7) " in render(again, 1.0) and "7/5" not in render(again, 1.0)
    # a server from before run_attempts: every attempt was in the one run
    assert job(attempts=3).run_attempts == 3


def test_a_job_waiting_to_retry_shows_its_last_error_and_when_it_runs_next() -> None:
    soon = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=30)
    waiting = job(state="QUEUED", progress=None, error={"code": "FLAKY", "message": "boom"},
                  next_attempt_time=soon.isoformat().replace("+00:00", "Z"))
    line = render(waiting, 3.0)
    assert "FLAKY: boom" in line and "next attempt " + soon.strftime("%Y-%m-%d %H:%M:%SZ") in line
    assert re.search(r"\(in (29|30)\.\ds\)", line)  # 29.x or 30 s from now
    # without a time (an older server), the error alone
    assert "FLAKY: boom" in render(job(state="QUEUED", progress=None, error={"code": "FLAKY", "message": "boom"}), 1.0)


def test_labels_take_either_syntax_and_a_bad_one_is_a_usage_error() -> None:
    from cloudjobs_client.cli import UsageError, _labels

    assert _labels(["team=a", "env:prod", "url=http://x:1"]) == {"team": "a", "env": "prod", "url": "http://x:1"}
    with pytest.raises(UsageError, match="KEY=VALUE"):
        _labels(["novalue"])

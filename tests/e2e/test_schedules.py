"""End to end: the emulator's Cloud Scheduler fires a schedule that `cloudjobs schedules sync`
created, gunicorn creates its job exactly once per fire and the job runs through Cloud Tasks;
with the app down for a while the fire is retried by Cloud Scheduler and caught up without a
duplicate. Time is the emulator's ManualClock; the app runs on real time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import requests

from api.cloud.queues import Queues
from api.cloud.tasks import make_client, sync_queues
from api.config import Config
from emulator import Emulator
from emulator.clock import ManualClock
from tests.conftest import ROOT
from tests.e2e.conftest import SERVICE_ACCOUNT, TEST_QUEUES, free_port, stack_env, start_gunicorn, stop, wait_healthy

START = datetime(2026, 12, 4, 9, 0, 30, tzinfo=UTC)


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "api.cli.main", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


@pytest.fixture
def scheduled(migrated_url: str, tmp_path: Any) -> Iterator[dict[str, Any]]:
    schedules = tmp_path / "schedules.yaml"
    schedules.write_text(
        "schedules:\n"
        "  tick:\n"
        "    cron: '* * * * *'\n"
        "    job: {type: echo, payload: {tick: true}, queue: unlimited}\n"
        "    retry: {retry_count: 5, min_backoff: 10s, max_backoff: 60s, max_doublings: 3}\n")
    clock = ManualClock(start=START.timestamp())
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with Emulator(host="127.0.0.1", port=0, http_port=0, clock=clock, max_dispatch_rate=None) as emu:
        env = stack_env(database_url=migrated_url, emulator=emu, url=url, queues_file=TEST_QUEUES,
                        project="e2e-sched", service_account=SERVICE_ACCOUNT, log_level="WARNING",
                        SCHEDULES_FILE=str(schedules), CLOUDJOBS_URL=url)
        config = Config.from_env(env)
        sync_queues(make_client(config), config, list(Queues.load(TEST_QUEUES).specs.values()))
        proc = start_gunicorn(env, port, workers=1)
        state = {"env": env, "url": url, "clock": clock, "port": port, "proc": proc, "emu": emu}
        try:
            wait_healthy(url, proc)
            yield state
        finally:
            stop(state["proc"])


def tick_jobs(url: str) -> list[dict[str, Any]]:
    return requests.get(f"{url}/v1/jobs?schedule=tick", timeout=10).json()["jobs"]


def wait_jobs(url: str, n: int, timeout: float = 20.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        jobs = tick_jobs(url)
        if len(jobs) >= n and all(j["done"] for j in jobs):
            return sorted(jobs, key=lambda j: j["scheduled_for"])
        assert time.monotonic() < deadline, f"expected {n} finished jobs, have {jobs}"
        time.sleep(0.05)


def wait_attempt(emu: Emulator, at: str, timeout: float = 20.0) -> None:
    """Until the emulator's Cloud Scheduler has recorded an attempt started at `at` (HH:MM:SS):
    a retry's backoff counts from the attempt's end, so time may only move on after it."""
    name = "projects/e2e-sched/locations/us-central1/jobs/cloudjobs-schedule-tick"
    deadline = time.monotonic() + timeout
    while True:
        job = emu.scheduler.snapshot(name)
        if job is not None and job.HasField("last_attempt_time") and \
                job.last_attempt_time.ToDatetime().strftime("%H:%M:%S") == at:
            return
        assert time.monotonic() < deadline, f"no attempt at {at}"
        time.sleep(0.02)


def test_a_schedule_fires_its_job_once_per_minute_and_catches_up_after_an_outage(scheduled: dict[str, Any]) -> None:
    env, url, clock = scheduled["env"], scheduled["url"], scheduled["clock"]
    synced = run_cli(env, "schedules", "sync")
    assert synced.returncode == 0 and synced.stdout.strip() == "created tick", synced.stderr
    assert run_cli(env, "schedules", "sync").stdout.strip() == "unchanged tick"
    clock.advance(30)  # 09:01:00
    [first] = wait_jobs(url, 1)
    assert (first["state"], first["scheduled_for"], first["result"]) == ("COMPLETED", "2026-12-04T09:01:00.000000Z",
                                                                        {"tick": True})
    emu = scheduled["emu"]
    stop(scheduled["proc"])  # the app is down for the next fire and its first retries
    clock.advance(60)  # 09:02:00: refused
    wait_attempt(emu, "09:02:00")
    clock.advance(10)  # the first retry, 10 s on: refused
    wait_attempt(emu, "09:02:10")
    clock.advance(20)  # the second, 20 s on: refused
    wait_attempt(emu, "09:02:30")
    status = run_cli(env, "schedules", "list")  # the API is down too: the command says so in a line
    assert status.returncode == 1 and "Traceback" not in status.stderr
    scheduled["proc"] = start_gunicorn(env, scheduled["port"], workers=1)
    wait_healthy(url, scheduled["proc"])
    clock.advance(30)  # 09:03:00: the next fire, with the app back
    wait_attempt(emu, "09:03:00")
    clock.advance(10)  # 09:03:10: the third retry of 09:02:00 (40 s after the second) lands
    jobs = wait_jobs(url, 3)
    assert [j["scheduled_for"][11:19] for j in jobs] == ["09:01:00", "09:02:00", "09:03:00"]
    assert {j["state"] for j in jobs} == {"COMPLETED"}
    listed = run_cli(env, "schedules", "list", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    [tick] = json.loads(listed.stdout)["schedules"]
    assert tick["last_fire"]["scheduled_for"] == "2026-12-04T09:03:00.000000Z"
    assert tick["scheduler"]["state"] == "ENABLED" and tick["scheduler"]["status_code"] == 0


def test_a_bad_schedules_file_is_one_line_and_exit_2(tmp_path: Any) -> None:
    bad = tmp_path / "schedules.yaml"
    bad.write_text("schedules:\n  nightly: {cron: '0 25 * * *', job: {type: echo}}\n")
    env = {**os.environ, "SCHEDULES_FILE": str(bad), "CLOUDJOBS_DATA_DIR": str(tmp_path / "none"),
           "CLOUD_TASKS_EMULATOR_HOST": "127.0.0.1:9"}
    done = run_cli(env, "schedules", "sync")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"cloudjobs: {bad}: nightly.cron: '0 25 * * *' is not valid cron"), line
    bad.write_text("schedules:\n  nightly: {cron: '0 2 * * *', job: {type: nope}}\n")
    done = run_cli(env, "schedules", "sync")
    assert done.returncode == 2 and "nightly.job.type: unknown job type 'nope'" in done.stderr
    done = run_cli(env, "schedules", "run", "a/b")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "not a schedule name" in done.stderr

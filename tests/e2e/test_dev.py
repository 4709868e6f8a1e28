"""`cloudjobs dev`, as the README's first command runs it: the tutorial's flow works, and a stop is clean.

The commands next to a running dev are tests/e2e/test_dev_commands.py's (one dev each)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT
from tests.e2e.conftest import free_port

GRPC_LOG_LINE = re.compile(r"^[EIWD]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\] ")

# pg_ctl waits up to 60 s for PostgreSQL to stop; the rest takes a second or two.
STOP_TIMEOUT_S = 90


@pytest.mark.timeout(240)  # start (≤ 60 s) + the flow (≤ 30 s) + the stop (≤ STOP_TIMEOUT_S)
def test_cloudjobs_dev_runs_the_tutorial_flow_on_an_embedded_postgres(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "HANDLER_AUTH")}
    schedules = tmp_path / "schedules.yaml"  # once a year: it fires here only when asked to
    schedules.write_text("schedules:\n  yearly: {cron: '0 0 1 1 *', job: {type: sleep, payload: {worktime: 0.1}}}\n")
    env["SCHEDULES_FILE"] = str(schedules)
    proc = subprocess.Popen(
        [sys.executable, "-m", "api.cli.main", "dev", "--port", str(port), "--emulator-port", "0",
         "--data-dir", str(tmp_path / "data")],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        # Started as a shell starts a background job, with SIGINT ignored: Ctrl-C (or kill -INT)
        # must stop it all the same. (Python installs no KeyboardInterrupt then.)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read()  # type: ignore[union-attr]
            try:
                if requests.get(f"{url}/readyz", timeout=1).ok:
                    break
            except (requests.ConnectionError, requests.Timeout):
                pass  # not listening yet, or listening (dev holds the socket) with the app still starting
            assert time.monotonic() < deadline, "cloudjobs dev did not come up"
            time.sleep(0.2)

        resp = requests.post(f"{url}/v1/jobs", json={"type": "sleep", "payload": {"worktime": 0.5}}, timeout=10)
        assert resp.status_code == 202
        job_id = resp.json()["id"]
        deadline = time.monotonic() + 30
        while (job := requests.get(f"{url}/v1/jobs/{job_id}", timeout=5).json())["state"] != "COMPLETED":
            assert job["state"] in ("QUEUED", "RUNNING"), job
            assert time.monotonic() < deadline, job
            time.sleep(0.1)
        assert job["result"]["slept_s"] >= 0.5 and job["done_time"]
        # Even in dev the callback is authenticated: the emulator's OIDC token, checked.
        assert requests.post(f"{url}/handlers/run", json={"job_id": job_id}, timeout=5).status_code == 401

        # dev synced schedules.yaml into the emulator's Cloud Scheduler: a fire goes through it,
        # signed, to /handlers/schedule, and its job runs.
        listed = requests.get(f"{url}/v1/schedules", timeout=5).json()["schedules"]
        assert [(s["name"], s["scheduler"]["state"]) for s in listed] == [("yearly", "ENABLED")]
        assert requests.post(f"{url}/v1/schedules/yearly:run", timeout=5).status_code == 202
        deadline = time.monotonic() + 30
        while not (fired := requests.get(f"{url}/v1/jobs?schedule=yearly", timeout=5).json()["jobs"]) \
                or fired[0]["state"] != "COMPLETED":
            assert time.monotonic() < deadline, fired
            time.sleep(0.1)

        # dev.json says where everything is, for the database commands.
        state = json.loads((tmp_path / "data" / "dev.json").read_text())
        assert state["app_url"] == url and state["pid"] == proc.pid
        assert state["settings"]["DATABASE_URL"] == state["database_url"]

        # A job in flight at Ctrl-C: stopped, and named.
        resp = requests.post(f"{url}/v1/jobs", json={"type": "sleep", "payload": {"worktime": 60}}, timeout=10)
        in_flight = resp.json()["id"]
        deadline = time.monotonic() + 30
        while requests.get(f"{url}/v1/jobs/{in_flight}", timeout=5).json()["state"] != "RUNNING":
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGUSR1)  # dev prints every thread's stack
            time.sleep(1)
            proc.kill()
            out, _ = proc.communicate(timeout=10)
            pytest.fail(f"cloudjobs dev did not stop within {STOP_TIMEOUT_S}s of Ctrl-C:\n{out}")
    assert proc.returncode == 0, out
    # The banner first; pgserver's initdb transcript and alembic's lines are in the log file.
    # (gRPC's C core may print a line of its own on stderr, merged here, which dev does not own:
    # `E1204 08:15:12.928364 1512 ev_epoll1_linux.cc:373] … epoll_wait error` was seen once on CI.)
    ours = [line for line in out.splitlines() if not GRPC_LOG_LINE.match(line)]
    assert ours[0] == f"cloudjobs is running on {url}  (Ctrl-C stops everything)", out
    assert "curl -s -X POST" in out
    assert "  schedules  yearly (fired by the emulator's Cloud Scheduler)" in out.splitlines(), out
    for chatter in ("initdb", "pgserver", "alembic", "Running upgrade", "Traceback"):
        assert chatter not in out, out
    assert "initdb" in (tmp_path / "data" / "dev.log").read_text()
    assert f"interrupted 1 running job(s): {in_flight} (sleep)" in out
    assert not (tmp_path / "data" / "dev.json").exists()  # removed at a clean stop
    for part in ("app", "emulator", "postgres"):
        assert re.search(rf"{part} +stopped in \d+\.\ds", out), out

"""`cloudjobs dev`, as the README's first command runs it: the tutorial's flow works."""

from __future__ import annotations

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

# pg_ctl waits up to 60 s for PostgreSQL to stop; the rest takes a second or two.
STOP_TIMEOUT_S = 90


@pytest.mark.timeout(240)  # start (≤ 60 s) + the flow (≤ 30 s) + the stop (≤ STOP_TIMEOUT_S)
def test_cloudjobs_dev_runs_the_tutorial_flow_on_an_embedded_postgres(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "HANDLER_AUTH")}
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
            except requests.ConnectionError:
                pass
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
    assert f"cloudjobs is running on {url}" in out
    assert "curl -s -X POST" in out
    for part in ("app", "emulator", "postgres"):
        assert re.search(rf"{part} +stopped in \d+\.\ds", out), out

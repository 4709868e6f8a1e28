"""The chaos run's short mode: mixed jobs, failures, duplicates and worker kills end clean."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.timeout(420)  # about 20 s on an idle machine; far more when the cores are shared
def test_a_short_chaos_run_ends_clean(server_url: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.chaos", "--quick", "--jobs", "150", "--database-url", server_url],
        cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=400,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "chaos run: clean" in proc.stdout
    assert "\"dependents_released\"" in proc.stdout and "\"workflows_submitted\": " in proc.stdout
    tally = json.loads(proc.stdout[proc.stdout.index("{"):proc.stdout.rindex("}") + 1])
    # 10 fire times of each of the 3 chaos schedules, and 30 Pub/Sub messages, each delivered 1 to 3 times
    fires = tally["schedule_fires"]
    assert sum(fires.values()) == 30 and fires["created"] >= 10  # chaos-tick (overlap allow) creates every time
    assert 60 <= tally["trigger_deliveries"] <= 180
    # the batched half shares tasks of up to 10 (chaos.queues.yaml), and single creates arriving
    # together share theirs (a create alone gets a shared task of one), through the same faults
    assert tally["shared_tasks"] >= 5 and tally["jobs_in_shared_tasks"] > tally["shared_tasks"]
    # 150 jobs (less the creates a unique key's holder answered), the quick mode's 6 workflows (4
    # diamonds of 4 steps, 2 fan-ins of 40 + 1), a job per created fire and one per message
    held = tally["creates_answered_by_a_unique_holder"]
    assert tally["jobs"] == 248 - held + fires["created"] + 30 and tally["workflows_submitted"] == 6
    # keyed jobs ran within their limit (the run checks it), and every webhook event was delivered
    assert tally["keyed_jobs"] > 0 and all(peak <= 2 for peak in tally["keyed_most_attempts_at_once"].values())
    assert set(tally["webhook_events"]) <= {"delivered"}

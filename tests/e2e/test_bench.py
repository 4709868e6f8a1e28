"""The benchmark's smoke mode runs end to end and prints every figure of the table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import ROOT

# The figures --smoke measures (the peers and the round-trip count are left to --quick).
ROWS = {
    "floor.hello": "floor: bare Flask, GET /hello",
    "floor.insert": "floor: Flask + one INSERT … RETURNING",
    "floor.select": "floor: Flask + one SELECT by primary key",
    "floor.update": "floor: Flask + one UPDATE",
    "ceiling": "push ceiling: dispatcher → Flask claim + finish + attempt",
    "cj.create": "cloudjobs POST /v1/jobs (enqueue included)",
    "cj.get": "cloudjobs GET /v1/jobs/{id}",
    "cj.run": "cloudjobs POST /handlers/run, no-op job, OIDC",
    "cj.batch": "cloudjobs POST /v1/jobs:batchCreate ×500",
    "cj.e2e.one": "cloudjobs end to end, one by one",
    "cj.e2e.batch": "cloudjobs end to end, batches of 500",
    "cj.e2e.workflow": "cloudjobs workflow: fan-out and its fan-in",
}


def test_the_smoke_run_prints_every_figure(server_url: str, tmp_path: Path) -> None:
    raw = tmp_path / "bench.json"
    docs = tmp_path / "benchmarks.md"
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--database-url", server_url,
         "--json", str(raw), "--docs", str(docs)],
        cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=110,
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table: dict[str, str] = {}
    for line in proc.stdout.splitlines():  # the first table's row of each label
        if line.startswith("| "):
            table.setdefault(line.split(" | ")[0].lstrip("| "), line)
    for key, label in ROWS.items():
        assert label in table, f"no row for {key}:\n{proc.stdout}"
        median = table[label].split(" | ")[2].replace(",", "")
        assert float(median) > 0, table[label]
    figures = json.loads(raw.read_text())["figures"]
    for key in ROWS:
        assert figures[key]["samples"] and figures[key]["error"] is None, figures[key]
    assert "| POST /v1/jobs ≥ 0.6× floor INSERT |" in proc.stdout  # the targets table
    # latency from creation to COMPLETED, Cloud Tasks operations and jobs per task
    for key in ("cj.e2e.one", "cj.e2e.shared", "cj.latency.one"):
        f = figures[key]
        assert f["latency"] and 0 < f["latency"][0][0] <= f["latency"][0][1], f
        assert f["ops"] and f["per_task"], f
    assert 2.0 <= figures["cj.e2e.one"]["ops"][0] < 2.2  # a CreateTask and a delivery (a rare retry adds one)
    assert figures["cj.e2e.shared"]["per_task"][0] > 1 and figures["cj.e2e.shared"]["ops"][0] < 0.5
    assert figures["cj.latency.one"]["samples"][0] <= 100 * 1.1  # paced at 100 jobs/s
    assert not docs.exists()  # --smoke never writes the docs
    assert elapsed < 60, f"the smoke run took {elapsed:.0f}s"


def test_cloudjobs_has_no_bench_command() -> None:
    """The benchmark is `python -m bench`, from a checkout: the server does not import it."""
    out = subprocess.run([sys.executable, "-m", "api.cli.main", "bench", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and "invalid choice: 'bench'" in out.stderr, out.stderr


def test_the_emulator_transports_bench_prints_its_three_ratios() -> None:
    proc = subprocess.run([sys.executable, "-m", "bench.emulator_transports", "--rounds", "1",
                           "--creates", "20", "--tasks", "50"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in proc.stdout.splitlines()
            if line.startswith("| ") and "---" not in line}
    for label in ("CreateTask: REST vs gRPC", "CreateTask: --state-dir vs memory (gRPC)",
                  "dispatch: --state-dir vs memory"):
        assert label in rows, proc.stdout
        assert float(rows[label][3]) > 0, rows[label]

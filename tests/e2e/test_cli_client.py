"""`cloudjobs submit|get|list|watch|…` as a subprocess against gunicorn and the emulator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest
from sqlalchemy.engine import Engine

from tests.conftest import ROOT
from tests.e2e.conftest import Stack
from tests.e2e.test_client import settled  # noqa: F401  (the fixture, used below)

pytestmark = pytest.mark.usefixtures("settled")


def cloudjobs(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CLOUDJOBS_URL": stack.url}
    env.pop("CLOUDJOBS_API_KEY", None)
    return subprocess.run(
        [sys.executable, "-m", "api.cli.main", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_submit_wait_output_json_prints_the_completed_job(stack: Stack, db: Engine) -> None:
    proc = cloudjobs(stack, "submit", "echo", "--payload", '{"a":1}', "--wait", "--output", "json")
    assert proc.returncode == 0, proc.stderr
    job = json.loads(proc.stdout)
    assert job["state"] == "COMPLETED" and job["result"] == {"a": 1}
    watched = cloudjobs(stack, "watch", job["id"], "-o", "json")
    assert watched.returncode == 0 and json.loads(watched.stdout)["id"] == job["id"]


def test_submit_wait_without_a_terminal_prints_a_line_per_change(stack: Stack, db: Engine) -> None:
    proc = cloudjobs(stack, "submit", "sleep", "--payload", '{"seconds": 1.5}', "--wait")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "\r" not in proc.stdout and "\x1b" not in proc.stdout  # not a TTY: plain lines
    states = [line.split()[1] for line in lines if line.count(" ") > 2 and "[" in line]
    assert states[-1] == "COMPLETED" and "RUNNING" in states
    assert any("%" in line and "slept" in line for line in lines)  # the progress bar and message
    assert "#" * 20 in lines[-2] and lines[-1].startswith("result: ")


def test_list_prints_an_aligned_table(stack: Stack, db: Engine) -> None:
    run = uuid.uuid4().hex[:8]
    ids = []
    for i in range(2):
        proc = cloudjobs(
            stack, "submit", "echo", "--payload", json.dumps({"i": i}), "--label", f"run={run}"
        )
        assert proc.returncode == 0, proc.stderr
        ids.append(proc.stdout.strip())
    table = cloudjobs(stack, "list", "--label", f"run={run}", "--limit", "5")
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == [
        "ID",
        "TYPE",
        "QUEUE",
        "STATE",
        "ATTEMPTS",
        "CREATED",
        "PROGRESS",
        "LABELS",
    ]
    assert sorted(r.split()[0] for r in rows) == sorted(ids)
    column = header.index("STATE")
    assert all(r[column - 2 : column] == "  " and r[column] != " " for r in rows)  # aligned
    assert table.stderr == ""  # all shown: no word of more
    cut = cloudjobs(stack, "list", "--label", f"run={run}", "--limit", "1")
    assert cut.returncode == 0 and len(cut.stdout.splitlines()) == 2  # the header and one job
    assert "more than 1 jobs match" in cut.stderr and "--limit 0" in cut.stderr


def test_get_of_an_unknown_job_exits_2_with_the_problem(stack: Stack, db: Engine) -> None:
    proc = cloudjobs(stack, "get", str(uuid.uuid4()))
    assert proc.returncode == 2
    assert "Job not found" in proc.stderr and proc.stdout == ""


def test_workflows_submit_wait_get_list_from_a_file(stack: Stack, db: Engine, tmp_path: object) -> None:
    from pathlib import Path

    spec = Path(str(tmp_path)) / "flow.json"
    name = f"cli-{uuid.uuid4().hex[:6]}"
    spec.write_text(json.dumps({"name": name, "steps": [
        {"name": "one", "type": "echo", "payload": {"n": 1}},
        {"name": "two", "type": "echo", "needs": ["one"]},
    ]}))
    proc = cloudjobs(stack, "workflows", "submit", str(spec), "--label", "via=cli", "--wait")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    workflow_id = lines[0]
    assert any(line.startswith("COMPLETED  2/2 done") for line in lines)
    header = next(line for line in lines if line.startswith("STEP"))
    assert header.split() == ["STEP", "STATE", "TYPE", "ATTEMPTS", "NEEDS", "JOB", "ERROR"]
    got = cloudjobs(stack, "workflows", "get", workflow_id)
    assert got.returncode == 0 and f"name      {name}" in got.stdout and "two   COMPLETED" in got.stdout
    flow_yaml = Path(str(tmp_path)) / "flow.yaml"
    flow_yaml.write_text(f"name: {name}-yaml\nsteps:\n  - {{name: a, type: echo}}\n  - {{name: b, type: echo, needs: [a]}}\n")
    proc = cloudjobs(stack, "workflows", "submit", str(flow_yaml), "--label", "via=cli", "--wait", "-o", "json")
    assert proc.returncode == 0, proc.stderr
    assert [s["needs"] for s in json.loads(proc.stdout)["steps"]] == [[], ["a"]]
    listed = cloudjobs(stack, "workflows", "list", "--label", "via=cli", "-o", "json")
    assert listed.returncode == 0 and workflow_id in [w["id"] for w in json.loads(listed.stdout)]
    again = cloudjobs(stack, "workflows", "retry", workflow_id)
    assert again.returncode == 2 and again.stderr.startswith("cloudjobs: ")  # it COMPLETED: 409


def test_workflows_submit_of_a_bad_file_is_one_line_and_exit_2(stack: Stack, db: Engine, tmp_path: object) -> None:
    from pathlib import Path

    bad = Path(str(tmp_path)) / "bad.json"
    bad.write_text("{not json")
    proc = cloudjobs(stack, "workflows", "submit", str(bad))
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "not valid JSON" in proc.stderr
    cyclic = Path(str(tmp_path)) / "cyclic.json"
    cyclic.write_text(json.dumps([{"name": "a", "type": "echo", "needs": ["b"]},
                                  {"name": "b", "type": "echo", "needs": ["a"]}]))
    proc = cloudjobs(stack, "workflows", "submit", str(cyclic))
    assert proc.returncode == 2 and "needs a name" in proc.stderr and len(proc.stderr.splitlines()) == 1
    proc = cloudjobs(stack, "workflows", "submit", str(cyclic), "--name", "loop")
    assert proc.returncode == 2 and ("a → b → a" in proc.stderr or "b → a → b" in proc.stderr), proc.stderr

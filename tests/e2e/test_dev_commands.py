"""The command line next to a running `cloudjobs dev`, as a new user runs it (issues #13, #20).

One dev for the module, started in a project folder of its own with a job module there; every
command runs as a real subprocess from that folder with no database variable set.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from google.cloud import tasks_v2

from api.cloud.tasks import make_client, queue_path
from api.config import Config
from tests.conftest import ROOT, empty_database
from tests.e2e.conftest import free_port

# Variables a developer's shell may have that would make the commands find a database or a
# queue without dev; the tests must not pass because of them.
UNSET = ("DATABASE_URL", "INSTANCE_CONNECTION_NAME", "CLOUD_TASKS_EMULATOR_HOST", "HANDLER_AUTH",
         "TASKS_SERVICE_ACCOUNT", "OIDC_CERTS_URL", "QUEUES_FILE", "JOB_MODULES", "CLOUDJOBS_DATA_DIR",
         "HANDLER_BASE_URL", "AUTH", "DEMO_JOB_TYPES", "SWEEP_CREATED_AFTER_S", "SWEEP_QUEUED_AFTER_S")

JOBS = '''
from pydantic import BaseModel
from handlers import job

class Greet(BaseModel):
    name: str

@job("greet", schema=Greet, timeout_s=3600)
def greet(payload: Greet, ctx):
    return {"greeting": "hello " + payload.name}
'''

QUEUES = """queues:
  default:
    retry_config: {max_attempts: 5, min_backoff: 0.1s, max_backoff: 1s}
    dispatch_deadline: 60s
"""


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any database or queue setting, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    env["PYTHONPATH"] = str(ROOT)  # the tests run the checkout, wherever the command runs
    return {**env, **extra}


def cloudjobs(*args: str, cwd: Path, env: dict[str, str] | None = None,
              timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """Run `cloudjobs ARGS` as a user would, from `cwd`."""
    return subprocess.run([sys.executable, "-m", "api.cli.main", *args], cwd=cwd, env=env or clean_env(),
                          capture_output=True, text=True, timeout=timeout)


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """Assert the command failed with exit 2 and one line on stderr; that line."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


@dataclass
class Dev:
    """A running `cloudjobs dev`: its folder, URL, output so far, and what dev.json says."""

    proc: subprocess.Popen[str]
    project: Path
    url: str
    lines: list[str] = field(default_factory=list)

    @property
    def state(self) -> dict[str, Any]:
        return json.loads((self.project / ".cloudjobs" / "dev.json").read_text())  # type: ignore[no-any-return]

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_line(self, pattern: str, *, after: int = 0, timeout: float = 30) -> str:
        """The first output line from index `after` on that matches `pattern`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines[after:]:
                if re.search(pattern, line):
                    return line
            assert self.proc.poll() is None, self.output
            time.sleep(0.05)
        raise AssertionError(f"no line matching {pattern!r}:\n{self.output}")

    def wait_job(self, job_id: str, state: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while (job := requests.get(f"{self.url}/v1/jobs/{job_id}", timeout=5).json())["state"] != state:
            assert time.monotonic() < deadline, job
            time.sleep(0.1)
        return job  # type: ignore[no-any-return]

    def tasks(self) -> tasks_v2.CloudTasksClient:
        return make_client(Config(emulator_host=self.state["emulator"]))


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory, server_url: str) -> Iterator[Dev]:
    """`cloudjobs dev` in a fresh project folder (a job module, a queues file), on a new, empty database.

    Dev gets the database through DATABASE_URL (faster than an embedded one; test_dev.py
    covers that); the commands get no database variable at all and must find it in dev.json.
    The emulator's default port is held here, so dev must pick another and say so.
    """
    project = tmp_path_factory.mktemp("project")
    (project / "myjobs.py").write_text(JOBS)
    (project / "queues.yaml").write_text(QUEUES)
    port = free_port()
    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", 8123))
        holder.listen()
    except OSError:
        pass  # something else has it: taken all the same
    with empty_database(server_url) as database_url:
        proc = subprocess.Popen(
            [sys.executable, "-m", "api.cli.main", "dev", "--port", str(port), "--sweep-every", "1s"],
            cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=clean_env(DATABASE_URL=database_url, JOB_MODULES="myjobs", SWEEP_CREATED_AFTER_S="0"),
        )
        d = Dev(proc, project, f"http://127.0.0.1:{port}")
        threading.Thread(target=lambda: d.lines.extend(line.rstrip("\n") for line in proc.stdout),  # type: ignore[union-attr]
                         daemon=True).start()
        try:
            d.wait_line(r"app +ready", timeout=90)
            yield d
        finally:
            holder.close()
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_dev_prints_its_banner_first_then_warnings_and_keeps_chatter_in_its_log(dev: Dev) -> None:
    assert dev.lines[0] == f"cloudjobs is running on {dev.url}  (Ctrl-C stops everything)", dev.output
    assert re.search(r"emulator +127\.0\.0\.1:\d+ \(8123 was taken\); REST http://127\.0\.0\.1:\d+; "
                     r"tasks kept in \S*\.cloudjobs/emulator", dev.output)
    assert dev.state["emulator"] != "127.0.0.1:8123"
    # The warnings come after the summary: a timeout the queue cuts is one of them.
    banner_end = dev.lines.index(f"  curl -s {dev.url}/v1/jobs/$ID")
    cut = dev.wait_line(r"^warning: job type 'greet': timeout_s=3600 .* queue default \(60s\)")
    assert dev.lines.index(cut) > banner_end
    for chatter in ("alembic", "Running upgrade", "fork_posix", "setup plugin"):
        assert chatter not in dev.output
    log = Path(dev.state["log_file"]).read_text()
    assert "Running upgrade" in log and "Cloud Tasks emulator on" in log


def test_each_request_is_one_line(dev: Dev) -> None:
    mark = len(dev.lines)
    assert requests.get(f"{dev.url}/v1/types", headers={"User-Agent": "one-line-test"}, timeout=10).ok
    dev.wait_line(r"GET /v1/types 200", after=mark)
    time.sleep(0.5)  # a second line (werkzeug's own) would follow at once
    assert sum("/v1/types" in line for line in dev.lines[mark:]) == 1, dev.lines[mark:]


def test_a_job_module_in_the_project_folder_runs_and_its_types_are_listed(dev: Dev) -> None:
    resp = requests.post(f"{dev.url}/v1/jobs", json={"type": "greet", "payload": {"name": "ada"}}, timeout=10)
    assert resp.status_code == 202, resp.text
    assert resp.json()["timeout_s"] == 60  # cut to the queue's deadline, as the warning said
    assert dev.wait_job(resp.json()["id"], "COMPLETED")["result"] == {"greeting": "hello ada"}

    listed = requests.get(f"{dev.url}/v1/types", timeout=10).json()["types"]
    greet = next(t for t in listed if t["name"] == "greet")
    assert greet["queue"] == "default" and greet["timeout_s"] == 60 and greet["declared_timeout_s"] == 3600
    assert greet["max_attempts"] == 5 and greet["schema"]["required"] == ["name"]

    table = cloudjobs("types", cwd=dev.project)
    assert table.returncode == 0, table.stderr
    row = next(line for line in table.stdout.splitlines() if line.startswith("greet "))
    assert "60 (cut from 3600)" in row and "name: string" in row
    assert any(line.startswith("sleep ") for line in table.stdout.splitlines())  # dev's demo types too


def test_database_commands_use_devs_database_without_a_variable(dev: Dev) -> None:
    assert cloudjobs("migrate", cwd=dev.project).stdout.strip() == "database at head"
    seeded = cloudjobs("seed-history", "--jobs", "200", "--days", "3", cwd=dev.project)
    assert seeded.returncode == 0 and "seeded 200 jobs" in seeded.stdout, seeded.stderr
    report = cloudjobs("report", "summary", "--since", "2w", "--format", "json", cwd=dev.project)
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)[0]["jobs"] >= 200
    key = cloudjobs("keys", "create", "dev-key", cwd=dev.project)
    assert key.returncode == 0 and key.stdout.startswith("cj_"), key.stderr
    assert "dev-key" in cloudjobs("keys", "list", cwd=dev.project).stdout
    assert cloudjobs("rollup", cwd=dev.project).stdout.startswith("rolled up")
    assert cloudjobs("purge", "--older-than", "2w", cwd=dev.project).stdout.startswith("purged 0 jobs")


def test_another_folder_finds_dev_through_data_dir_or_its_variable(dev: Dev, tmp_path: Path) -> None:
    data = str(dev.project / ".cloudjobs")
    assert cloudjobs("keys", "list", "--data-dir", data, cwd=tmp_path).returncode == 0
    assert cloudjobs("keys", "list", cwd=tmp_path, env=clean_env(CLOUDJOBS_DATA_DIR=data)).returncode == 0
    line = one_line_error(cloudjobs("keys", "list", cwd=tmp_path))
    assert "DATABASE_URL" in line and "cloudjobs dev" in line


def test_sweep_next_to_dev_makes_tasks_devs_app_accepts(dev: Dev) -> None:
    # A QUEUED job whose task vanished (the emulator of a previous dev, say). The shell has
    # the settings that trapped a user before: HANDLER_AUTH=none made tasks without a token.
    tasks, parent = dev.tasks(), queue_path(Config(), "default")
    tasks.pause_queue(name=parent)
    try:
        job = requests.post(f"{dev.url}/v1/jobs", json={"type": "echo", "payload": {"n": 1}}, timeout=10).json()
        task = f"{parent}/tasks/job-{job['id'].replace('-', '')}-0"
        tasks.delete_task(name=task)
    finally:
        tasks.resume_queue(name=parent)
    swept = cloudjobs("sweep", cwd=dev.project, env=clean_env(HANDLER_AUTH="none", SWEEP_QUEUED_AFTER_S="0"))
    assert swept.returncode == 0, swept.stderr
    assert json.loads(swept.stdout)["requeued"] >= 1
    done = dev.wait_job(job["id"], "COMPLETED")
    assert done["result"] == {"n": 1}


def test_dev_sweeps_on_a_timer_and_queues_sync_says_unchanged(dev: Dev) -> None:
    tasks, name = dev.tasks(), queue_path(Config(), "default")
    tasks.delete_queue(name=name)  # the next create cannot enqueue: the job stays CREATED
    resp = requests.post(f"{dev.url}/v1/jobs", json={"type": "echo", "payload": {"n": 2}}, timeout=10)
    assert resp.status_code == 202 and resp.json()["state"] == "CREATED", resp.text
    synced = cloudjobs("queues", "sync", cwd=dev.project)
    assert synced.stdout.split("\n")[0] == "created default", synced.stderr
    # Nobody runs `cloudjobs sweep`: dev's own sweeper enqueues it.
    assert dev.wait_job(resp.json()["id"], "COMPLETED")["result"] == {"n": 2}
    again = cloudjobs("queues", "sync", cwd=dev.project)
    assert again.returncode == 0 and again.stdout.strip() == "unchanged default", again.stdout


def test_doctor_next_to_dev_checks_dev(dev: Dev) -> None:
    done = cloudjobs("doctor", cwd=dev.project)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK    schema: at head" in done.stdout
    assert "OK    queue default: exists, running, settings as in queues.yaml" in done.stdout


def test_reload_restarts_the_app_when_a_job_module_changes(dev: Dev) -> None:
    mark = len(dev.lines)
    (dev.project / "myjobs.py").write_text(JOBS + '''
@job("shout")
def shout(payload, ctx):
    return {"said": payload["word"].upper()}
''')
    dev.wait_line(r"reload +myjobs\.py changed", after=mark)
    dev.wait_line(r"app +ready .*shout", after=mark)
    resp = requests.post(f"{dev.url}/v1/jobs", json={"type": "shout", "payload": {"word": "hi"}}, timeout=10)
    assert resp.status_code == 202, resp.text
    assert dev.wait_job(resp.json()["id"], "COMPLETED")["result"] == {"said": "HI"}


# ---------------------------------------------------------------- without dev: one line each


@pytest.mark.parametrize("command", [
    ["migrate"], ["report", "summary"], ["seed-history", "--jobs", "10"], ["purge", "--older-than", "90d"],
    ["keys", "list"], ["sweep"], ["rollup"],
])
def test_without_dev_or_a_database_each_command_says_what_to_set(command: list[str], tmp_path: Path) -> None:
    line = one_line_error(cloudjobs(*command, cwd=tmp_path))
    assert line.startswith("cloudjobs: no database: set DATABASE_URL"), line


def test_a_dev_json_left_by_a_dev_that_died_is_one_line(tmp_path: Path) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / ".cloudjobs").mkdir()
    (tmp_path / ".cloudjobs" / "dev.json").write_text(json.dumps({
        "pid": int(gone.stdout), "app_url": "http://127.0.0.1:1", "database_url": "postgresql://x@127.0.0.1:1/x",
        "emulator": "127.0.0.1:1", "certs_url": "http://127.0.0.1:1", "log_file": "dev.log", "settings": {},
    }))
    line = one_line_error(cloudjobs("report", "summary", cwd=tmp_path))
    assert "no longer running" in line and "cloudjobs dev" in line


@pytest.mark.parametrize(("args", "says"), [
    (["report", "summary", "--since", "2x"], "not an RFC 3339 time or a duration: '2x'"),
    (["report", "summary", "--from", "yesterday"], "not an RFC 3339 time"),
    (["purge", "--older-than", "soon"], "not a duration"),
    (["report", "nonsense"], "invalid choice"),
])
def test_a_mistyped_argument_is_one_line_and_exit_2(args: list[str], says: str, tmp_path: Path) -> None:
    assert says in one_line_error(cloudjobs(*args, cwd=tmp_path))


def test_without_google_credentials_doctor_skips_and_queues_sync_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "queues.yaml").write_text(QUEUES)
    # No emulator, and credentials that cannot be found (rather than a metadata server to wait for).
    env = clean_env(GOOGLE_APPLICATION_CREDENTIALS=str(tmp_path / "none.json"), HOME=str(tmp_path))
    line = one_line_error(cloudjobs("queues", "sync", cwd=tmp_path, env=env))
    assert "no Google credentials" in line and "CLOUD_TASKS_EMULATOR_HOST" in line
    doctor = cloudjobs("doctor", cwd=tmp_path, env={**env, "DATABASE_URL": "postgresql://x@127.0.0.1:9/x",
                                                    "HANDLER_AUTH": "none"})
    assert "Traceback" not in doctor.stderr, doctor.stderr
    assert "SKIP  queues: not checked: no Google credentials" in doctor.stdout, doctor.stdout
    assert "FAIL  database: cannot connect" in doctor.stdout  # the local checks ran and said so


def test_taken_ports_named_on_the_command_line_are_one_line(tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = str(held.getsockname()[1])
        env = clean_env(DATABASE_URL="postgresql://x@127.0.0.1:9/x")  # never reached
        line = one_line_error(cloudjobs("dev", "--port", port, cwd=tmp_path, env=env))
        assert line.startswith(f"cloudjobs: --port {port}: 127.0.0.1:{port} is taken")
        line = one_line_error(cloudjobs("dev", "--port", str(free_port()), "--emulator-port", port,
                                        cwd=tmp_path, env=env))
        assert line.startswith(f"cloudjobs: --emulator-port {port}: 127.0.0.1:{port} is taken")


@pytest.mark.timeout(240)
def test_a_restarted_dev_keeps_a_delayed_jobs_task_and_runs_it_once(tmp_path: Path, server_url: str) -> None:
    """The emulator's state lives in the data folder (--state-dir): a dev stopped and started
    again still has the delayed job's task, which fires at its time, once."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "queues.yaml").write_text("queues:\n  default: {}\n")

    def start(port: int, database_url: str) -> Dev:
        proc = subprocess.Popen(
            [sys.executable, "-m", "api.cli.main", "dev", "--port", str(port), "--emulator-port", "0"],
            cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=clean_env(DATABASE_URL=database_url))
        d = Dev(proc, project, f"http://127.0.0.1:{port}")
        threading.Thread(target=lambda: d.lines.extend(line.rstrip("\n") for line in proc.stdout),  # type: ignore[union-attr]
                         daemon=True).start()
        d.wait_line(r"app +ready", timeout=90)
        return d

    def stop(d: Dev) -> None:
        d.proc.send_signal(signal.SIGINT)
        d.proc.wait(60)

    port = free_port()  # the same both times: a task keeps the handler URL it was made with
    with empty_database(server_url) as database_url:
        first = start(port, database_url)
        try:
            run_at = time.time() + 20
            resp = requests.post(f"{first.url}/v1/jobs", timeout=10, json={
                "type": "echo", "payload": {"kept": True},
                "run_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(run_at))})
            assert resp.status_code == 202, resp.text
            job = resp.json()
            [pending] = first.tasks().list_tasks(parent=queue_path(Config(), "default"))
            task_name = pending.name
        finally:
            stop(first)
        assert (project / ".cloudjobs" / "emulator" / "cloud-tasks.sqlite3").exists()

        second = start(port, database_url)
        try:
            task = second.tasks().get_task(name=task_name)  # back, with its schedule time
            assert abs(task.schedule_time.timestamp() - int(run_at)) < 1.5
            assert requests.get(f"{second.url}/v1/jobs/{job['id']}", timeout=5).json()["state"] == "QUEUED"
            done = second.wait_job(job["id"], "COMPLETED", timeout=60)
            assert done["result"] == {"kept": True} and done["attempts"] == 1 and done["run"] == 0
            assert time.time() >= int(run_at)  # not sent again early by the sweep at start
        finally:
            stop(second)

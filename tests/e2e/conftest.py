"""End to end: gunicorn serving the app, the emulator dispatching to it, the real client."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from google.cloud import tasks_v2

from api.cloud.queues import Queues
from api.cloud.tasks import make_client, sync_queues
from api.config import Config
from emulator import Emulator
from tests.conftest import ROOT

TEST_QUEUES = ROOT / "tests" / "queues.yaml"
SERVICE_ACCOUNT = "tasks@e2e-project.iam.gserviceaccount.com"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Stack:
    """The running stack: its URL, configuration, and a Cloud Tasks client on the emulator."""

    url: str
    config: Config
    tasks: tasks_v2.CloudTasksClient
    emulator: Emulator

    def get(self, path: str, **kw: Any) -> requests.Response:
        return requests.get(self.url + path, timeout=10, **kw)

    def post(self, path: str, json: Any = None, **kw: Any) -> requests.Response:
        return requests.post(self.url + path, json=json, timeout=10, **kw)

    def wait_for(self, job_id: str, predicate: Any, timeout: float = 20.0) -> dict[str, Any]:
        """Poll the job until predicate(job) holds; fail with the last state seen."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(f"/v1/jobs/{job_id}").json()
            if predicate(job):
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job never reached the expected state: {job}")
            time.sleep(0.05)


def start_gunicorn(env: dict[str, str], port: int, workers: int = 2) -> subprocess.Popen[bytes]:
    """gunicorn with the production config file, on a loopback port."""
    return subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"),
         "--bind", f"127.0.0.1:{port}", "--workers", str(workers), "api:create_app()"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        try:
            if requests.get(url + "/healthz", timeout=5).ok:
                return
        except requests.RequestException:  # not listening yet, or a worker still booting
            time.sleep(0.1)
    raise RuntimeError("gunicorn did not become healthy")


@pytest.fixture(scope="session")
def stack(migrated_url: str) -> Iterator[Stack]:
    """The emulator in this process and gunicorn serving the app, wired as in production."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with Emulator(host="127.0.0.1", port=0, http_port=0) as emu:
        env = {
            **os.environ,
            "DATABASE_URL": migrated_url,
            "GOOGLE_CLOUD_PROJECT": "e2e-project",
            "CLOUD_TASKS_EMULATOR_HOST": emu.address,
            "HANDLER_BASE_URL": url,
            "HANDLER_AUTH": "oidc",
            "DEMO_JOB_TYPES": "true",
            "AUTH": "none",
            "TASKS_SERVICE_ACCOUNT": SERVICE_ACCOUNT,
            "OIDC_CERTS_URL": emu.certs_url,
            "QUEUES_FILE": str(TEST_QUEUES),
            "LOG_LEVEL": "WARNING",
        }
        config = Config.from_env(env)
        client = make_client(config)
        sync_queues(client, config, list(Queues.load(TEST_QUEUES).specs.values()))
        proc = start_gunicorn(env, port)
        try:
            wait_healthy(url, proc)
            yield Stack(url, config, client, emu)
        finally:
            proc.terminate()
            proc.wait(timeout=30)

"""End to end: gunicorn serving the app, the emulator dispatching to it, the real client.

The stack is launched as the benchmark launches it (bench/stack.py), from one place."""

from __future__ import annotations

import base64
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from google.cloud import tasks_v2

from api.cloud.queues import Queues
from api.cloud.tasks import make_client, sync_queues
from api.config import Config
from bench.stack import free_port, stack_env, start_gunicorn, stop, wait_healthy
from emulator import Emulator
from tests.conftest import ROOT

TEST_QUEUES = ROOT / "tests" / "queues.yaml"
# Completion webhooks to receivers on this machine, as in dev (docs/webhooks.md)
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"e2e-webhook-secret-32-bytes-long").decode()
SERVICE_ACCOUNT = "tasks@e2e-project.iam.gserviceaccount.com"


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


@pytest.fixture(scope="session")
def stack(migrated_url: str) -> Iterator[Stack]:
    """The emulator in this process and gunicorn serving the app, wired as in production."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with Emulator(host="127.0.0.1", port=0, http_port=0) as emu:
        env = stack_env(database_url=migrated_url, emulator=emu, url=url, queues_file=TEST_QUEUES,
                        project="e2e-project", service_account=SERVICE_ACCOUNT, log_level="WARNING",
                        JOB_MODULES="tests.jobs",  # the test job types too (served from the checkout)
                        WEBHOOK_SECRETS=WEBHOOK_SECRET, WEBHOOK_ALLOW_PRIVATE="true")
        config = Config.from_env(env)
        client = make_client(config)
        sync_queues(client, config, list(Queues.load(TEST_QUEUES).specs.values()))
        proc = start_gunicorn(env, port)
        try:
            wait_healthy(url, proc)
            yield Stack(url, config, client, emu)
        finally:
            stop(proc)


@contextmanager
def second_server(stack: Stack, database_url: str, *, tasks_to_self: bool = True, stderr: Any = subprocess.DEVNULL,
                  **env: str) -> Iterator[str]:
    """One more gunicorn (one worker) on the e2e database and emulator, with some settings
    changed; its URL. Its tasks call it back, or the main stack with `tasks_to_self=False`."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    full = stack_env(database_url=database_url, emulator=stack.emulator, url=url if tasks_to_self else stack.url,
                     queues_file=TEST_QUEUES, project="e2e-project", service_account=SERVICE_ACCOUNT,
                     log_level="WARNING", **env)
    proc = start_gunicorn(full, port, workers=1, stderr=stderr)
    try:
        wait_healthy(url, proc)
        yield url
    finally:
        stop(proc)


__all__ = ["SERVICE_ACCOUNT", "TEST_QUEUES", "WEBHOOK_SECRET", "Stack", "free_port", "second_server", "stack_env", "start_gunicorn",
           "stop", "wait_healthy"]

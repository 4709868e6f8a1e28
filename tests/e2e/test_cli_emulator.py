"""`cloudjobs emulator` runs the emulator alone; the real client talks to it."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

from google.cloud import tasks_v2

from api.cloud.tasks import make_client
from api.config import Config
from tests.conftest import ROOT


def test_cloudjobs_emulator_serves_the_real_client() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "api.cli.main", "emulator", "--port", "0", "--http-port", "0"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        address = None
        for line in proc.stdout:  # type: ignore[union-attr]
            m = re.search(r"listening on (\S+)", line)
            if m:
                address = m.group(1)
                break
        assert address, "the emulator never said where it listens"
        client = make_client(Config(emulator_host=address))
        parent = "projects/p/locations/l"
        client.create_queue(parent=parent, queue=tasks_v2.Queue(name=f"{parent}/queues/q1"))
        assert [q.name for q in client.list_queues(parent=parent)] == [f"{parent}/queues/q1"]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)
    assert proc.returncode == 0

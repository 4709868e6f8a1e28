"""The app on plain pg8000, as it runs where pg8000 is a version pgfast was not tested on.

Run by tests/integration/test_drivers.py in a process of its own (pgfast's patches, once
made, last for the process): `python -m tests.integration.plain_pg8000 URL EMULATOR QUEUES`.
pg8000 reports version 1.31.99 here; the script creates, waits on, runs and reports a job,
and prints one JSON line of what it saw.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import sys
from pathlib import Path
from typing import Any

_real_version = importlib.metadata.version


def _version(name: str) -> str:
    return "1.31.99" if name == "pg8000" else _real_version(name)


importlib.metadata.version = _version  # before anything asks

import pg8000.core  # noqa: E402
import pg8000.dbapi  # noqa: E402

from api import create_app  # noqa: E402
from api.config import Config  # noqa: E402
from api.store import pgfast  # noqa: E402
from api.store.engine import create_engine  # noqa: E402
from tests.integration.test_drivers import start_waiting  # noqa: E402

PATCHED = ["execute_unnamed", "execute_simple", "execute_named", "prepare_statement"]


class _Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == pgfast.__name__:
            self.messages.append(record.getMessage())


def main(url: str, emulator: str, queues: str) -> dict[str, Any]:
    """Create, wait on, run and report a job on plain pg8000; what was seen."""
    caught = _Warnings()
    logging.getLogger().addHandler(caught)
    before = {name: getattr(pg8000.core.CoreConnection, name) for name in PATCHED}
    before["_read"] = pg8000.core._read
    before["convert_paramstyle"] = pg8000.dbapi.convert_paramstyle
    config = Config(
        database_url=url, emulator_host=emulator, handler_base_url="http://127.0.0.1:9",
        handler_auth="none", api_auth="none", queues_file=Path(queues), demo_job_types=True,
        wait_fallback_s=60,  # only the notification can end the wait soon
    )
    app = create_app(config)
    create_engine(config).dispose()  # a second engine: still one warning
    client = app.test_client()
    job_id = client.post("/v1/jobs", json={"type": "echo", "payload": {"plain": True}}).get_json()["id"]
    states = [client.get(f"/v1/jobs/{job_id}").get_json()["state"]]
    engine = app.extensions["cloudjobs"].engine
    thread, waited = start_waiting(client, job_id, engine)
    run = client.post("/handlers/run", json={"job_id": job_id}, headers={"X-CloudTasks-TaskRetryCount": "0"})
    assert run.status_code == 200, run.get_json()
    thread.join(timeout=30)
    states.append(client.get(f"/v1/jobs/{job_id}").get_json()["state"])
    [row] = client.get("/v1/reports/summary").get_json()["rows"]
    after = {name: getattr(pg8000.core.CoreConnection, name) for name in PATCHED}
    after["_read"] = pg8000.core._read
    after["convert_paramstyle"] = pg8000.dbapi.convert_paramstyle
    if (waiters := app.extensions.get("cloudjobs.waiters")) is not None:
        waiters.close()
    engine.dispose()
    return {
        "installed": pgfast.installed(),
        "functions_unchanged": before == after,
        "warnings": caught.messages,
        "states": states,
        "waited": waited,
        "report_total": row["jobs"],
    }


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:4])))

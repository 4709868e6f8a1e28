"""One clock (issue #21 finding 6): an app whose wall clock is off from the database's.

The app's clock is moved with time-machine (the system clock is outside the project; the
monotonic clock, which measures attempts, is left alone), the database keeps its own."""

from __future__ import annotations

import json
from typing import Any

import pytest
import time_machine
from flask.testing import FlaskClient

from emulator import Emulator
from tests.integration.conftest import SERVICE_ACCOUNT

AUDIENCE = "http://127.0.0.1:9"  # the test config's handler_base_url, the default audience


@pytest.fixture
def client(make_app: Any) -> FlaskClient:
    """The app as deployed: OIDC callbacks, verified against the emulator's keys."""
    return make_app().test_client()


@pytest.mark.parametrize("skew_s", [-120, -30, 30, 120])
def test_a_job_runs_to_completed_whatever_the_apps_clock_says(client: FlaskClient, emulator: Emulator,
                                                             skew_s: int) -> None:
    created = client.post("/v1/jobs", json={"type": "echo", "payload": {"n": skew_s}, "timeout_s": 25})
    assert created.status_code == 202, created.get_json()["errors"]
    job_id = created.get_json()["id"]
    token = emulator.issuer.id_token(SERVICE_ACCOUNT, AUDIENCE)  # signed with the true time
    import datetime as dt

    with time_machine.travel(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=skew_s), tick=True):
        resp = client.post("/handlers/run", data=json.dumps({"job_id": job_id}), content_type="application/json",
                           headers={"Authorization": f"Bearer {token}", "X-CloudTasks-TaskRetryCount": "0",
                                    "X-CloudTasks-TaskExecutionCount": "0"})
    # Before: 120 s behind, the token looked issued in the future (401); 120 s ahead, the
    # deadline (the database's start + 25 s) had passed by the app's clock (TIMED_OUT).
    assert resp.status_code == 200, resp.get_json()
    job = client.get(f"/v1/jobs/{job_id}").get_json()
    assert (job["state"], job["result"]) == ("COMPLETED", {"n": skew_s})

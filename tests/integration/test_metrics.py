"""GET /metrics: the counts of known traffic, and the database's gauges (docs/operations.md)."""

from __future__ import annotations

import json
from collections.abc import Callable

from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import Engine

from api.web.auth import create_key


def scrape(client: FlaskClient, **headers: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    resp = client.get("/metrics", headers=headers)
    assert resp.status_code == 200 and resp.mimetype == "text/plain"
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(resp.get_data(as_text=True)) for s in family.samples}


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_the_metrics_count_known_traffic(make_app: Callable[..., Flask], tasks_client: object) -> None:
    client = make_app(handler_auth="none").test_client()
    before = scrape(client)
    ids = [client.post("/v1/jobs", data=json.dumps(body), content_type="application/json").get_json()["id"] for body in (
        {"type": "echo"}, {"type": "echo"}, {"type": "flaky", "payload": {"failures": 9}, "max_attempts": 1})]
    for job_id in ids[1:]:
        client.post("/handlers/run", data=json.dumps({"job_id": job_id}), content_type="application/json")
    after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("cloudjobs_jobs_created_total", queue="default", type="echo") == 2
    assert delta("cloudjobs_jobs_created_total", queue="default", type="flaky") == 1
    assert delta("cloudjobs_jobs_finished_total", queue="default", type="echo", state="COMPLETED") == 1
    assert delta("cloudjobs_jobs_finished_total", queue="default", type="flaky", state="FAILED") == 1
    assert delta("cloudjobs_attempt_duration_seconds_count", queue="default", type="flaky", outcome="FAILED") == 1
    assert delta("cloudjobs_http_request_duration_seconds_count", route="/v1/jobs", method="POST", status="202") == 3
    # read from the database at the scrape: one echo job still QUEUED, and how long it has waited
    assert value(after, "cloudjobs_jobs", queue="default", state="QUEUED") == 1
    assert value(after, "cloudjobs_jobs", queue="slow", state="QUEUED") == 0
    assert value(after, "cloudjobs_oldest_waiting_seconds", queue="default") > 0


def test_metrics_are_for_admins(make_app: Callable[..., Flask], db: Engine, tasks_client: object) -> None:
    app = make_app(api_auth="keys", handler_auth="none")
    with db.begin() as conn:
        user, admin = create_key(conn, "user"), create_key(conn, "ops", admin=True)
    client = app.test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": f"Bearer {user}"}).status_code == 403
    assert "cloudjobs_jobs" in client.get("/metrics", headers={"Authorization": f"Bearer {admin}"}).get_data(as_text=True)

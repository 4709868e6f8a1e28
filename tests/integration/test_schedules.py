"""Schedules: a fire creates its job exactly once per (schedule, fire time), whatever Cloud
Scheduler redelivers; overlap policies in the same transaction; /v1/schedules through the
emulator's Cloud Scheduler; `schedules sync`; refusal of forged fires and unknown schedules."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from google.cloud import scheduler_v1
from sqlalchemy.engine import Engine

from api import create_app
from api.cloud.schedules import Schedules, make_scheduler_client, scheduler_parent, sync_schedules
from api.config import Config, ConfigurationInvalid
from emulator import Emulator
from tests.conftest import ROOT
from tests.integration.conftest import SERVICE_ACCOUNT

SCHEDULES = ROOT / "tests" / "schedules.yaml"
AUDIENCE = "http://127.0.0.1:9"


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app(schedules_file=SCHEDULES, scheduler_job_prefix="it-")


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def token(emulator: Emulator, email: str = SERVICE_ACCOUNT) -> dict[str, str]:
    return {"Authorization": "Bearer " + emulator.issuer.id_token(email, AUDIENCE)}


def fire(client: FlaskClient, emulator: Emulator, name: str, at: str, *, status: int = 200,
         headers: dict[str, str] | None = None) -> Any:
    resp = client.post("/handlers/schedule", data=json.dumps({"schedule": name}), content_type="application/json",
                       headers=headers if headers is not None else {
                           **token(emulator), "X-CloudScheduler": "true",
                           "X-CloudScheduler-JobName": f"it-{name}", "X-CloudScheduler-ScheduleTime": at})
    assert resp.status_code == status, resp.get_json()
    return resp.get_json()


def complete(client: FlaskClient, emulator: Emulator, job_id: str) -> None:
    resp = client.post("/handlers/run", data=json.dumps({"job_id": job_id}), content_type="application/json",
                       headers={**token(emulator), "X-CloudTasks-TaskRetryCount": "0"})
    assert resp.status_code == 200, resp.get_json()


def schedule_jobs(db: Engine, name: str) -> list[Any]:
    with db.connect() as conn:
        return list(conn.execute(sa.text("SELECT id, state, scheduled_for FROM jobs WHERE schedule = :s "
                                         "ORDER BY scheduled_for"), {"s": name}))


def test_a_fire_creates_its_job_with_the_schedule_and_the_fire_time(client: FlaskClient, emulator: Emulator) -> None:
    out = fire(client, emulator, "every-minute", "2026-12-04T10:00:00Z")
    assert (out["outcome"], out["duplicate"], out["scheduled_for"]) == ("created", False, "2026-12-04T10:00:00.000000Z")
    job = out["job"]
    assert (job["type"], job["payload"], job["labels"], job["state"]) == ("echo", {"from": "schedule"}, {"team": "data"}, "QUEUED")
    assert (job["schedule"], job["scheduled_for"]) == ("every-minute", "2026-12-04T10:00:00.000000Z")
    assert client.get(f"/v1/jobs/{job['id']}").get_json()["schedule"] == "every-minute"
    listed = client.get("/v1/jobs?schedule=every-minute").get_json()["jobs"]
    assert [j["id"] for j in listed] == [job["id"]]
    assert client.get("/v1/jobs?schedule=nightly").get_json()["jobs"] == []


def test_the_same_fire_delivered_again_answers_the_same_job(client: FlaskClient, emulator: Emulator, db: Engine) -> None:
    first = fire(client, emulator, "every-minute", "2026-12-04T10:01:00Z")
    again = fire(client, emulator, "every-minute", "2026-12-04T10:01:00+00:00")  # the same instant
    assert again["duplicate"] and again["job"]["id"] == first["job"]["id"]
    complete(client, emulator, first["job"]["id"])
    late = fire(client, emulator, "every-minute", "2026-12-04T10:01:00Z")  # after it completed
    assert late["duplicate"] and late["job"]["id"] == first["job"]["id"] and late["job"]["state"] == "COMPLETED"
    assert len(schedule_jobs(db, "every-minute")) == 1
    fire(client, emulator, "every-minute", "2026-12-04T10:02:00Z")  # the next minute is another fire
    assert len(schedule_jobs(db, "every-minute")) == 2


def test_the_same_fire_delivered_twice_at_once_creates_one_job(app: Flask, emulator: Emulator, db: Engine) -> None:
    barrier, answers = threading.Barrier(4), []

    def deliver() -> None:
        c = app.test_client()
        barrier.wait()
        answers.append(fire(c, emulator, "every-minute", "2026-12-04T11:00:00Z"))

    threads = [threading.Thread(target=deliver) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({a["job"]["id"] for a in answers}) == 1
    assert sorted(a["duplicate"] for a in answers) == [False, True, True, True]
    assert len(schedule_jobs(db, "every-minute")) == 1


def test_overlap_skip_skips_while_the_previous_job_is_active(client: FlaskClient, emulator: Emulator, db: Engine) -> None:
    first = fire(client, emulator, "skipper", "2026-12-04T10:00:00Z")["job"]
    skipped = fire(client, emulator, "skipper", "2026-12-04T10:05:00Z")
    assert (skipped["outcome"], skipped["job"], skipped["previous_job_id"]) == ("skipped", None, first["id"])
    complete(client, emulator, first["id"])
    # The skipped fire stays skipped when Cloud Scheduler delivers it again, now that nothing runs.
    again = fire(client, emulator, "skipper", "2026-12-04T10:05:00Z")
    assert again["duplicate"] and again["outcome"] == "skipped" and again["job"] is None
    assert fire(client, emulator, "skipper", "2026-12-04T10:10:00Z")["outcome"] == "created"
    assert len(schedule_jobs(db, "skipper")) == 2


def test_overlap_cancel_previous_cancels_the_active_job_in_the_same_transaction(
        client: FlaskClient, emulator: Emulator, db: Engine) -> None:
    first = fire(client, emulator, "canceller", "2026-12-04T10:00:00Z")["job"]
    second = fire(client, emulator, "canceller", "2026-12-04T11:00:00Z")
    assert second["outcome"] == "created" and second["previous_job_id"] == first["id"]
    states = [r.state for r in schedule_jobs(db, "canceller")]
    assert states == ["CANCELLED", "QUEUED"]


def test_overlap_allow_lets_fires_run_side_by_side(client: FlaskClient, emulator: Emulator, db: Engine) -> None:
    fire(client, emulator, "every-minute", "2026-12-04T12:00:00Z")
    fire(client, emulator, "every-minute", "2026-12-04T12:01:00Z")
    assert [r.state for r in schedule_jobs(db, "every-minute")] == ["QUEUED", "QUEUED"]


def test_forged_and_unknown_fires_create_nothing(client: FlaskClient, emulator: Emulator, db: Engine) -> None:
    headers = {"X-CloudScheduler-JobName": "it-every-minute", "X-CloudScheduler-ScheduleTime": "2026-12-04T13:00:00Z"}
    assert fire(client, emulator, "every-minute", "x", status=401, headers=headers)["status"] == 401
    other = {**headers, **token(emulator, "someone@evil.example")}
    fire(client, emulator, "every-minute", "x", status=401, headers=other)
    unknown = fire(client, emulator, "no-such", "2026-12-04T13:00:00Z", status=404)
    assert unknown["title"] == "Schedule not found"
    foreign = {**token(emulator), "X-CloudScheduler-JobName": "someone-elses-job"}
    fire(client, emulator, "every-minute", "x", status=404, headers=foreign)
    bad_time = {**token(emulator), "X-CloudScheduler-JobName": "it-every-minute", "X-CloudScheduler-ScheduleTime": "noon"}
    assert fire(client, emulator, "every-minute", "x", status=400, headers=bad_time)["errors"][0]["field"] == \
        "X-CloudScheduler-ScheduleTime"
    with db.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM jobs")).scalar() == 0
        assert conn.execute(sa.text("SELECT count(*) FROM schedule_fires")).scalar() == 0


def test_a_schedule_that_could_never_create_its_job_stops_the_start(config: Config, tmp_path: Any) -> None:
    bad = tmp_path / "schedules.yaml"
    bad.write_text("schedules:\n  s: {cron: '* * * * *', job: {type: nope}}\n")
    with pytest.raises(ConfigurationInvalid, match=r"s\.job\.type: unknown job type 'nope'"):
        create_app(config.replace(schedules_file=bad))
    bad.write_text("schedules:\n  s: {cron: '* * * * *', job: {type: echo, queue: nowhere}}\n")
    with pytest.raises(ConfigurationInvalid, match=r"s\.job\.queue: unknown queue"):
        create_app(config.replace(schedules_file=bad))


@pytest.fixture
def synced(config: Config) -> Any:
    """The tests' schedules in the emulator's Cloud Scheduler, under a prefix of this test's own."""
    cfg = config.replace(schedules_file=SCHEDULES, scheduler_job_prefix="it-")
    client = make_scheduler_client(cfg)
    for job in client.list_jobs(parent=scheduler_parent(cfg)):
        client.delete_job(name=job.name)
    yield cfg, client
    for job in client.list_jobs(parent=scheduler_parent(cfg)):
        client.delete_job(name=job.name)


def test_sync_creates_updates_pauses_and_deletes_only_its_own_jobs(synced: Any, tmp_path: Any) -> None:
    cfg, client = synced
    foreign = client.create_job(parent=scheduler_parent(cfg), job=scheduler_v1.Job(
        name=f"{scheduler_parent(cfg)}/jobs/not-ours", schedule="* * * * *",
        http_target=scheduler_v1.HttpTarget(uri="http://127.0.0.1:9/x")))
    schedules = Schedules.load(SCHEDULES)
    assert sync_schedules(client, cfg, schedules) == [f"created {n}" for n in schedules.schedules]
    assert sync_schedules(client, cfg, schedules) == [f"unchanged {n}" for n in schedules.schedules]
    nightly = client.get_job(name=f"{scheduler_parent(cfg)}/jobs/it-nightly")
    assert (nightly.schedule, nightly.time_zone, nightly.retry_config.retry_count) == ("0 2 * * *", "Europe/Paris", 2)
    assert nightly.http_target.oidc_token.service_account_email == SERVICE_ACCOUNT
    changed = tmp_path / "s.yaml"
    changed.write_text("schedules:\n"
                       "  nightly: {cron: '0 3 * * *', time_zone: Europe/Paris, job: {type: echo}, paused: true}\n"
                       "  every-minute: {cron: '* * * * *', job: {type: echo}}\n")
    lines = sync_schedules(client, cfg, Schedules.load(changed))
    assert lines[0].startswith("updated ") and "schedule" in lines[0] and lines[0].endswith("paused nightly")
    assert sorted(lines[2:]) == ["deleted canceller", "deleted skipper"]
    assert client.get_job(name=f"{scheduler_parent(cfg)}/jobs/it-nightly").state == scheduler_v1.Job.State.PAUSED
    assert client.get_job(name=foreign.name).name == foreign.name  # not ours: untouched


def test_the_schedules_api_reads_the_file_cloud_scheduler_and_the_fires(
        synced: Any, make_app: Callable[..., Flask], emulator: Emulator) -> None:
    cfg, client = synced
    sync_schedules(client, cfg, Schedules.load(SCHEDULES))
    api = make_app(schedules_file=SCHEDULES, scheduler_job_prefix="it-").test_client()
    fire(api, emulator, "nightly", "2026-12-04T01:00:00Z")
    listed = api.get("/v1/schedules").get_json()
    by_name = {s["name"]: s for s in listed["schedules"]}
    nightly = by_name["nightly"]
    assert (nightly["cron"], nightly["time_zone"], nightly["paused"], nightly["scheduler"]["state"]) == \
        ("0 2 * * *", "Europe/Paris", False, "ENABLED")
    assert len(nightly["next_fire_times"]) == 3 and nightly["last_fire"]["outcome"] == "created"
    assert nightly["last_fire"]["job_state"] == "QUEUED"
    assert {t["name"] for t in listed["triggers"]} == {"uploads", "events", "strict"}
    paused = api.post("/v1/schedules/nightly:pause").get_json()
    assert paused["paused"] and paused["next_fire_times"] == []
    assert api.get("/v1/schedules/nightly").get_json()["scheduler"]["state"] == "PAUSED"
    assert not api.post("/v1/schedules/nightly:resume").get_json()["paused"]
    assert api.post("/v1/schedules/nightly:run").status_code == 202
    one = api.get("/v1/schedules/nightly").get_json()
    assert [f["scheduled_for"] for f in one["fires"]] == ["2026-12-04T01:00:00.000000Z"]
    assert api.get("/v1/schedules/nope").status_code == 404
    assert api.post("/v1/schedules/nope:run").status_code == 404
    assert api.get("/v1/schedules?x=1").status_code == 400


def test_only_an_admin_may_run_pause_or_resume(synced: Any, make_app: Callable[..., Flask], db: Engine) -> None:
    from api.web.auth import create_key

    cfg, client = synced
    sync_schedules(client, cfg, Schedules.load(SCHEDULES))
    api = make_app(schedules_file=SCHEDULES, scheduler_job_prefix="it-", api_auth="keys").test_client()
    with db.begin() as conn:
        user = {"Authorization": f"Bearer {create_key(conn, 'someone')}"}
    assert api.get("/v1/schedules", headers=user).status_code == 200
    refused = api.post("/v1/schedules/nightly:pause", headers=user)
    assert refused.status_code == 403 and refused.get_json()["title"] == "Forbidden"
    assert client.get_job(name=f"{scheduler_parent(cfg)}/jobs/it-nightly").state == scheduler_v1.Job.State.ENABLED


def test_the_dashboard_lists_schedules_with_their_last_fire_and_filters_jobs_by_schedule(
        synced: Any, make_app: Callable[..., Flask], emulator: Emulator) -> None:
    cfg, client = synced
    sync_schedules(client, cfg, Schedules.load(SCHEDULES))
    client.pause_job(name=f"{scheduler_parent(cfg)}/jobs/it-skipper")
    ui = make_app(schedules_file=SCHEDULES, scheduler_job_prefix="it-").test_client()
    job = fire(ui, emulator, "nightly", "2026-12-04T01:00:00Z")["job"]
    html = ui.get("/ui/schedules").get_data(as_text=True)
    assert html.count('<tr><td><a href="/ui/jobs?trigger=') == 3
    row = html[html.index('href="/ui/jobs?schedule=nightly"'):]
    row = row[:row.index("</tr>")]
    assert "0 2 * * *" in row and "Europe/Paris" in row and "ENABLED" in row
    assert f'href="/ui/jobs/{job["id"]}"' in row and "QUEUED" in row
    skipper = html[html.index('href="/ui/jobs?schedule=skipper"'):]
    assert "PAUSED" in skipper[:skipper.index("</tr>")]
    listed = ui.get("/ui/jobs?schedule=nightly").get_data(as_text=True)
    assert job["id"][:8] in listed
    assert job["id"][:8] not in ui.get("/ui/jobs?schedule=every-minute").get_data(as_text=True)


def test_without_cloud_scheduler_reads_show_the_file_and_actions_are_503(
        make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch) -> None:
    # No emulator and no Google credentials: the client cannot even be made (outside the
    # project: Google's metadata server), as on a laptop without `gcloud auth`.
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    def no_credentials(*args: Any, **kwargs: Any) -> Any:
        raise DefaultCredentialsError("no credentials")

    monkeypatch.setattr(google.auth, "default", no_credentials)
    api = make_app(schedules_file=SCHEDULES, emulator_host=None).test_client()
    listed = api.get("/v1/schedules").get_json()
    assert {s["scheduler"]["state"] for s in listed["schedules"]} == {"UNKNOWN"}
    refused = api.post("/v1/schedules/nightly:pause")
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "5"
    assert api.get("/ui/schedules").status_code == 200

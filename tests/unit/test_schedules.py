"""schedules.yaml: parsing, the errors that name the schedule and field, cron maths in a time
zone (across DST changes), and the Cloud Scheduler job built for a schedule."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from google.cloud import scheduler_v1

from api.cloud.schedules import (
    Schedules,
    SchedulesInvalid,
    build_scheduler_job,
    schedule_from_job_name,
    scheduler_job_name,
)
from api.config import Config

GOOD = {
    "schedules": {
        "nightly-report": {
            "cron": "0 2 * * *", "time_zone": "Europe/Paris", "overlap": "skip", "description": "nightly",
            "job": {"type": "echo", "payload": {"report": "nightly"}, "queue": "default", "labels": {"team": "data"}},
            "retry": {"retry_count": 2, "min_backoff": "10s", "max_backoff": "5m"}, "attempt_deadline": "2m",
        },
        "hourly": {"cron": "0 * * * *", "job": {"type": "echo"}, "paused": True},
    },
    "triggers": {"uploads": {"subscription": "uploads-push", "topic": "uploads", "payload": "message",
                             "job": {"type": "echo"}}},
}


def test_a_file_is_read_with_its_defaults() -> None:
    s = Schedules.parse(GOOD)
    nightly, hourly = s["nightly-report"], s["hourly"]
    assert (nightly.cron, nightly.time_zone, nightly.overlap, nightly.description) == ("0 2 * * *", "Europe/Paris", "skip", "nightly")
    assert nightly.job["payload"] == {"report": "nightly"}
    assert (nightly.retry.retry_count, nightly.retry.min_backoff, nightly.retry.max_backoff) == (2, 10.0, 300.0)
    assert nightly.attempt_deadline == 120.0 and nightly.paused is None
    assert (hourly.time_zone, hourly.overlap, hourly.paused, hourly.retry.retry_count) == ("UTC", "allow", True, 3)
    trigger = s.triggers["uploads"]
    assert trigger.matches("projects/p/subscriptions/uploads-push") and not trigger.matches("projects/p/subscriptions/other")
    assert s.trigger_for("projects/p/subscriptions/uploads-push") is trigger


@pytest.mark.parametrize(("change", "names"), [
    ({"cron": "0 25 * * *"}, "nightly-report.cron"),
    ({"cron": "every day"}, "nightly-report.cron"),
    ({"time_zone": "Mars/Olympus"}, "nightly-report.time_zone"),
    ({"overlap": "queue"}, "nightly-report.overlap"),
    ({"paused": "yes"}, "nightly-report.paused"),
    ({"retry": {"retry_count": 9}}, "nightly-report.retry.retry_count"),
    ({"attempt_deadline": "2h"}, "nightly-report.attempt_deadline"),
    ({"colour": "blue"}, "nightly-report.colour"),
    ({"job": {"type": "echo", "depends_on": []}}, "nightly-report.job.depends_on"),
    ({"job": {"payload": {}}}, "nightly-report.job"),
])
def test_a_mistake_names_the_schedule_and_the_field(change: dict, names: str) -> None:
    raw = json.loads(json.dumps(GOOD))
    raw["schedules"]["nightly-report"].update(change)
    with pytest.raises(SchedulesInvalid) as e:
        Schedules.parse(raw, source="schedules.yaml")
    assert str(e.value).startswith(f"schedules.yaml: {names}")


def test_bad_names_and_shapes_are_refused() -> None:
    for raw in ({"schedules": {"Nightly Report": {"cron": "* * * * *", "job": {"type": "echo"}}}},
                {"schedules": []}, {"jobs": {}}, ["schedules"],
                {"triggers": {"t": {"subscription": "s", "job": {"type": "echo"}}}},
                {"triggers": {"t": {"subscription": "subs", "payload": "raw", "job": {"type": "echo"}}}}):
        with pytest.raises(SchedulesInvalid):
            Schedules.parse(raw)


def test_no_file_is_no_schedules_unless_one_is_required(tmp_path) -> None:
    assert Schedules.load(tmp_path / "schedules.yaml").schedules == {}
    with pytest.raises(SchedulesInvalid, match="not found"):
        Schedules.load(tmp_path / "schedules.yaml", required=True)
    (tmp_path / "bad.yaml").write_text("schedules: [")
    with pytest.raises(SchedulesInvalid, match="not YAML"):
        Schedules.load(tmp_path / "bad.yaml")


def test_a_daily_schedule_keeps_its_local_hour_across_dst_changes() -> None:
    spec = Schedules.parse({"schedules": {"morning": {"cron": "0 9 * * *", "time_zone": "Europe/Paris",
                                                      "job": {"type": "echo"}}}})["morning"]
    # Paris leaves summer time on 2026-10-25 and enters it on 2027-03-28.
    autumn = spec.next_fire_times(datetime(2026, 10, 23, 12, tzinfo=UTC), 3)
    assert autumn == [datetime(2026, 10, 24, 7, tzinfo=UTC), datetime(2026, 10, 25, 8, tzinfo=UTC),
                      datetime(2026, 10, 26, 8, tzinfo=UTC)]
    spring = spec.next_fire_times(datetime(2027, 3, 26, 12, tzinfo=UTC), 3)
    assert spring == [datetime(2027, 3, 27, 8, tzinfo=UTC), datetime(2027, 3, 28, 7, tzinfo=UTC),
                      datetime(2027, 3, 29, 7, tzinfo=UTC)]


def test_a_time_skipped_by_dst_fires_at_the_next_valid_moment_once() -> None:
    spec = Schedules.parse({"schedules": {"s": {"cron": "30 2 * * *", "time_zone": "Europe/Paris",
                                                "job": {"type": "echo"}}}})["s"]
    times = spec.next_fire_times(datetime(2027, 3, 27, 12, tzinfo=UTC), 2)
    assert times == [datetime(2027, 3, 28, 1, tzinfo=UTC), datetime(2027, 3, 29, 0, 30, tzinfo=UTC)]


def test_the_cloud_scheduler_job_of_a_schedule() -> None:
    config = Config(project="p", location="europe-west1", handler_base_url="https://svc.example",
                    tasks_service_account="tasks@p.iam.gserviceaccount.com", scheduler_service_account="sched@p.iam.gserviceaccount.com")
    job = build_scheduler_job(config, Schedules.parse(GOOD)["nightly-report"])
    assert job.name == "projects/p/locations/europe-west1/jobs/cloudjobs-schedule-nightly-report"
    assert (job.schedule, job.time_zone, job.description) == ("0 2 * * *", "Europe/Paris", "nightly")
    t = job.http_target
    assert t.uri == "https://svc.example/handlers/schedule" and t.http_method == scheduler_v1.HttpMethod.POST
    assert json.loads(t.body) == {"schedule": "nightly-report"}
    assert (t.oidc_token.service_account_email, t.oidc_token.audience) == ("sched@p.iam.gserviceaccount.com", "https://svc.example")
    assert job.retry_config.retry_count == 2 and job.retry_config.min_backoff_duration.total_seconds() == 10
    assert job.attempt_deadline.total_seconds() == 120
    assert schedule_from_job_name(config, job.name) == "nightly-report"
    assert schedule_from_job_name(config, "cloudjobs-schedule-nightly-report") == "nightly-report"
    assert schedule_from_job_name(config, "cloudjobs-sweep") is None  # deploy.sh's sweeper is not a schedule
    assert schedule_from_job_name(config, "projects/p/locations/l/jobs/someone-elses") is None
    assert scheduler_job_name(config.replace(scheduler_job_prefix="team-a-"), "x").endswith("/jobs/team-a-x")

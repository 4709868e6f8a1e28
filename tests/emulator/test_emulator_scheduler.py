"""The emulator's Cloud Scheduler through the real google-cloud-scheduler client over gRPC and REST:
every RPC, fires at their cron time in their time zone with Cloud Scheduler's headers and a
verifiable OIDC token, pause, RunJob, and retries of a failing target. Time is a ManualClock."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from google.auth.credentials import AnonymousCredentials
from google.auth.transport import requests as google_requests
from google.cloud import scheduler_v1
from google.cloud.scheduler_v1.services.cloud_scheduler.transports import CloudSchedulerGrpcTransport
from google.oauth2 import id_token
from google.protobuf import field_mask_pb2

from emulator import Emulator
from emulator.clock import ManualClock
from tests.emulator.conftest import LOCATION, Target, refused, wait_until

SA = "scheduler@test-project.iam.gserviceaccount.com"
# 2026-10-23 07:58:30 UTC: Paris is at UTC+2 for two more days.
START = datetime(2026, 10, 23, 7, 58, 30, tzinfo=UTC).timestamp()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=START)


@pytest.fixture
def emu(key_file: Any, clock: ManualClock) -> Iterator[Emulator]:
    with Emulator(key_file=key_file, clock=clock) as e:
        yield e


@pytest.fixture
def sched(emu: Emulator, transport: str) -> Iterator[scheduler_v1.CloudSchedulerClient]:
    """The real client over gRPC, then (a second run) over REST to the emulator's HTTP port."""
    if transport == "rest":
        client = scheduler_v1.CloudSchedulerClient(transport="rest", credentials=AnonymousCredentials(),
                                                   client_options={"api_endpoint": emu.http_url})
        yield client
        client.transport.close()
        return
    channel = grpc.insecure_channel(emu.address)
    yield scheduler_v1.CloudSchedulerClient(transport=CloudSchedulerGrpcTransport(channel=channel))
    channel.close()


def http_job(target: Target, job_id: str, cron: str = "* * * * *", tz: str = "UTC", **fields: Any) -> scheduler_v1.Job:
    return scheduler_v1.Job(
        name=f"{LOCATION}/jobs/{job_id}", schedule=cron, time_zone=tz,
        http_target=scheduler_v1.HttpTarget(uri=target.url("/fire"), body=b'{"schedule": "x"}',
                                            headers={"Content-Type": "application/json"},
                                            oidc_token=scheduler_v1.OidcToken(service_account_email=SA)),
        **fields)


def test_every_rpc_through_the_real_client(sched: scheduler_v1.CloudSchedulerClient, target: Target) -> None:
    job = sched.create_job(parent=LOCATION, job=http_job(target, "a", description="first"))
    assert job.state == scheduler_v1.Job.State.ENABLED
    assert job.schedule_time == datetime(2026, 10, 23, 7, 59, tzinfo=UTC)  # the next minute
    assert job.retry_config.min_backoff_duration.total_seconds() == 5  # Google's defaults
    assert job.attempt_deadline.total_seconds() == 180
    with refused("ALREADY_EXISTS"):
        sched.create_job(parent=LOCATION, job=http_job(target, "a"))
    for i in range(3):
        sched.create_job(parent=LOCATION, job=http_job(target, f"b{i}"))
    pages = sched.list_jobs(request={"parent": LOCATION, "page_size": 2}).pages
    assert [[j.name.rsplit("/", 1)[1] for j in p.jobs] for p in pages] == [["a", "b0"], ["b1", "b2"]]
    assert sched.get_job(name=job.name).description == "first"
    updated = sched.update_job(job=scheduler_v1.Job(name=job.name, schedule="0 9 * * *", description="second"),
                               update_mask=field_mask_pb2.FieldMask(paths=["schedule", "description"]))
    assert (updated.schedule, updated.description) == ("0 9 * * *", "second")
    assert updated.http_target.uri == target.url("/fire")  # not in the mask: kept
    assert sched.pause_job(name=job.name).state == scheduler_v1.Job.State.PAUSED
    assert sched.resume_job(name=job.name).state == scheduler_v1.Job.State.ENABLED
    sched.run_job(name=job.name)
    target.wait_for(1, "/fire")
    sched.delete_job(name=job.name)
    with refused("NOT_FOUND"):
        sched.get_job(name=job.name)
    with refused("NOT_FOUND"):
        sched.delete_job(name=job.name)


@pytest.mark.parametrize(("change", "message"), [
    ({"schedule": "61 * * * *"}, "unix-cron"),
    ({"time_zone": "Mars/Olympus"}, "Time zone"),
    ({"retry_config": scheduler_v1.RetryConfig(retry_count=6)}, "retry_count"),
])
def test_invalid_jobs_are_refused_as_google_refuses_them(sched: scheduler_v1.CloudSchedulerClient, target: Target,
                                                          change: dict[str, Any], message: str) -> None:
    job = http_job(target, "bad")
    for k, v in change.items():
        setattr(job, k, v)
    with refused("INVALID_ARGUMENT", match=message):
        sched.create_job(parent=LOCATION, job=job)
    with refused("INVALID_ARGUMENT"):
        sched.create_job(parent="projects/p", job=http_job(target, "x"))


def test_a_job_fires_at_the_minute_with_cloud_schedulers_headers_and_a_verifiable_token(
        emu: Emulator, clock: ManualClock, sched: scheduler_v1.CloudSchedulerClient, target: Target) -> None:
    job = sched.create_job(parent=LOCATION, job=http_job(target, "minutely"))
    clock.advance(29)  # 07:58:59: not yet
    clock.advance(0.5)
    assert target.on("/fire") == []
    clock.advance(1)  # 07:59:00.5
    [fire] = target.wait_for(1, "/fire")
    h = fire.headers
    assert h["x-cloudscheduler"] == "true" and h["x-cloudscheduler-jobname"] == "minutely"
    assert h["x-cloudscheduler-scheduletime"] == "2026-10-23T07:59:00Z"
    assert h["user-agent"] == "Google-Cloud-Scheduler" and json.loads(fire.body) == {"schedule": "x"}
    token = h["authorization"].removeprefix("Bearer ")
    claims = id_token.verify_token(token, google_requests.Request(), audience=target.url("/fire"),
                                   certs_url=emu.certs_url, clock_skew_in_seconds=10**9)
    assert claims["email"] == SA
    clock.advance(60)
    assert [r.headers["x-cloudscheduler-scheduletime"] for r in target.wait_for(2, "/fire")][1] == "2026-10-23T08:00:00Z"
    done = wait_until(lambda: (j := sched.get_job(name=job.name)).last_attempt_time and j)
    assert done.status.code == 0 and done.schedule_time == datetime(2026, 10, 23, 8, 1, tzinfo=UTC)


def test_the_time_zone_decides_the_hour(clock: ManualClock, sched: scheduler_v1.CloudSchedulerClient,
                                        target: Target) -> None:
    job = sched.create_job(parent=LOCATION, job=http_job(target, "paris", cron="0 10 * * *", tz="Europe/Paris"))
    assert job.schedule_time == datetime(2026, 10, 23, 8, tzinfo=UTC)  # 10:00 in Paris, summer time
    clock.advance(90)
    assert target.wait_for(1, "/fire")[0].headers["x-cloudscheduler-scheduletime"] == "2026-10-23T08:00:00Z"
    # After the change to winter time on the 25th, 10:00 in Paris is 09:00 UTC.
    clock.advance(2 * 86400 + 3600)
    # the scheduler's loop catches up in its own time (the fire of the 24th; the 25th's, missed
    # too, is not run): wait for the next fire time it settles on
    expected = datetime(2026, 10, 26, 9, tzinfo=UTC)
    wait_until(lambda: sched.get_job(name=job.name).schedule_time == expected)


def test_a_paused_job_does_not_fire_and_run_job_fires_at_once(clock: ManualClock, sched: scheduler_v1.CloudSchedulerClient,
                                                              target: Target) -> None:
    job = sched.create_job(parent=LOCATION, job=http_job(target, "held"))
    paused = sched.pause_job(name=job.name)
    assert not paused.schedule_time  # no next fire while paused
    clock.advance(300)
    assert target.on("/fire") == []
    sched.run_job(name=job.name)
    [fire] = target.wait_for(1, "/fire")
    assert fire.headers["x-cloudscheduler-scheduletime"] == "2026-10-23T08:03:30Z"  # now, to the second
    resumed = sched.resume_job(name=job.name)
    assert resumed.schedule_time == datetime(2026, 10, 23, 8, 4, tzinfo=UTC)  # missed fires are not run


def test_a_failing_target_is_retried_with_the_jobs_backoff(clock: ManualClock, sched: scheduler_v1.CloudSchedulerClient,
                                                           target: Target) -> None:
    target.respond = lambda request, n: 503 if n < 2 else 200
    job = sched.create_job(parent=LOCATION, job=http_job(
        target, "flaky", cron="0 * * * *",
        retry_config=scheduler_v1.RetryConfig(retry_count=3, min_backoff_duration={"seconds": 10},
                                              max_backoff_duration={"seconds": 60}, max_doublings=2)))
    clock.advance(91)  # 08:00:01
    target.wait_for(1, "/fire")
    assert wait_until(lambda: sched.get_job(name=job.name).status.code) == 14  # UNAVAILABLE, as HTTP 503
    clock.advance(9)
    assert len(target.on("/fire")) == 1  # the first retry waits min_backoff, 10 s
    clock.advance(1)
    target.wait_for(2, "/fire")
    # The backoff counts from the attempt's end, recorded before its time shows.
    wait_until(lambda: sched.get_job(name=job.name).last_attempt_time == datetime(2026, 10, 23, 8, 0, 11, tzinfo=UTC))
    clock.advance(19)
    assert len(target.on("/fire")) == 2  # then 20 s
    clock.advance(1)
    fires = target.wait_for(3, "/fire")
    assert {f.headers["x-cloudscheduler-scheduletime"] for f in fires} == {"2026-10-23T08:00:00Z"}
    assert wait_until(lambda: sched.get_job(name=job.name).status.code == 0)


def test_retries_stop_at_retry_count(clock: ManualClock, sched: scheduler_v1.CloudSchedulerClient, target: Target) -> None:
    target.respond = lambda request, n: 500
    job = sched.create_job(parent=LOCATION, job=http_job(
        target, "broken", cron="0 * * * *",
        retry_config=scheduler_v1.RetryConfig(retry_count=1, min_backoff_duration={"seconds": 5})))
    clock.advance(91)
    target.wait_for(1, "/fire")
    wait_until(lambda: sched.get_job(name=job.name).status.code == 13)  # INTERNAL, as HTTP 500
    clock.advance(5)
    target.wait_for(2, "/fire")
    clock.advance(600)
    assert len(target.on("/fire")) == 2  # one retry, then the next fire time (an hour on)

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

from google.cloud import tasks_v2

from api.cloud.queues import QueueSpec, RetryConfig
from api.cloud.tasks import build_queue, build_task, task_id_for, task_path
from api.config import Config

CONFIG = Config(project="p1", location="europe-west1", handler_base_url="https://svc.example")
JOB = uuid.UUID("12345678-1234-5678-1234-567812345678")


def test_task_id_is_derived_from_the_job_and_run() -> None:
    assert task_id_for(JOB) == "job-12345678123456781234567812345678-0"
    assert task_id_for(JOB, 2).endswith("-2")
    assert task_path(CONFIG, "q", "t") == "projects/p1/locations/europe-west1/queues/q/tasks/t"


def test_build_task_posts_the_job_id_to_the_handler() -> None:
    task = build_task(
        job_id=JOB, task_name="projects/p1/locations/europe-west1/queues/q/tasks/t",
        config=CONFIG, spec=QueueSpec("q"), timeout_s=60,
    )
    assert task.name.endswith("/tasks/t")
    assert task.http_request.url == "https://svc.example/handlers/run"
    assert task.http_request.http_method == tasks_v2.HttpMethod.POST
    assert json.loads(task.http_request.body) == {"job_id": str(JOB)}
    assert task.http_request.headers["Content-Type"] == "application/json"
    assert not task.http_request.oidc_token.service_account_email  # none configured
    assert task.dispatch_deadline == timedelta(seconds=75)


def test_build_task_carries_an_oidc_token_for_the_audience() -> None:
    config = CONFIG.replace(tasks_service_account="tasks@p1.iam.gserviceaccount.com")
    task = build_task(job_id=JOB, task_name="n", config=config, spec=QueueSpec("q"), timeout_s=5)
    assert task.http_request.oidc_token.service_account_email == "tasks@p1.iam.gserviceaccount.com"
    assert task.http_request.oidc_token.audience == "https://svc.example"
    assert task.dispatch_deadline == timedelta(seconds=20)  # at least 15 s; a timeout plus headroom


def test_dispatch_deadline_is_bounded_by_the_queue() -> None:
    spec = QueueSpec("q", dispatch_deadline=120)
    task = build_task(job_id=JOB, task_name="n", config=CONFIG, spec=spec, timeout_s=600)
    assert task.dispatch_deadline == timedelta(seconds=120)


def test_schedule_time_is_passed_through() -> None:
    when = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    task = build_task(job_id=JOB, task_name="n", config=CONFIG, spec=QueueSpec("q"), timeout_s=5, schedule_time=when)
    assert task.schedule_time == when


def test_build_queue_maps_queues_yaml() -> None:
    spec = QueueSpec("fast", max_dispatches_per_second=50, max_concurrent_dispatches=7,
                     retry=RetryConfig(3, 60, 0.5, 10, 2))
    q = build_queue(CONFIG, spec)
    assert q.name == "projects/p1/locations/europe-west1/queues/fast"
    assert q.rate_limits.max_dispatches_per_second == 50
    assert q.rate_limits.max_concurrent_dispatches == 7
    assert q.retry_config.max_attempts == 3
    assert q.retry_config.min_backoff == timedelta(seconds=0.5)
    assert q.retry_config.max_retry_duration == timedelta(seconds=60)
    assert q.retry_config.max_doublings == 2

"""Cloud Tasks: one client per process, pure task builders, and the enqueue call."""

from __future__ import annotations

import logging
import math
import threading
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from google.api_core import exceptions as gexc
from google.api_core.retry import Retry, if_exception_type
from google.cloud import tasks_v2

from api.cloud.queues import QueueSpec, duration_proto
from api.config import Config

logger = logging.getLogger(__name__)


def task_id_for(job_id: uuid.UUID, run: int = 0) -> str:
    """The task id of a job's run: derived from the job id, so a re-enqueue is de-duplicated."""
    return f"job-{job_id.hex}-{run}"


SHARED_PREFIX = "jobs-"


def shared_task_id(first_job_id: uuid.UUID) -> str:
    """The id of a task several jobs share (queues.yaml's jobs_per_task): named from its first
    job, and told apart from a job's own task by its prefix."""
    return f"{SHARED_PREFIX}{first_job_id.hex}-0"


def is_shared(task_name: str) -> bool:
    """Whether a task carries several jobs."""
    return f"/tasks/{SHARED_PREFIX}" in task_name


def queue_path(config: Config, queue: str) -> str:
    """projects/P/locations/L/queues/Q."""
    return f"projects/{config.project}/locations/{config.location}/queues/{queue}"


def task_path(config: Config, queue: str, task_id: str) -> str:
    """The full task name."""
    return f"{queue_path(config, queue)}/tasks/{task_id}"


# Cloud Tasks waits at most 30 minutes for an HTTP task; a task's deadline leaves this much
# beyond its jobs' timeouts for the handler to record how they ended.
MAX_DISPATCH_DEADLINE_S = 1800
TASK_HEADROOM_S = 15


def jobs_time_budget(spec: QueueSpec) -> float:
    """The timeouts the jobs of one task of this queue may add up to (they run one after another)."""
    return min(spec.dispatch_deadline, MAX_DISPATCH_DEADLINE_S) - TASK_HEADROOM_S


def build_task(
    *,
    job_id: uuid.UUID | list[uuid.UUID] | str,
    task_name: str,
    config: Config,
    spec: QueueSpec,
    timeout_s: int,
    schedule_time: datetime | None = None,
    headers: dict[str, str] | None = None,
    path: str = "/handlers/run",
    body: bytes | None = None,
) -> tasks_v2.Task:
    """The HTTP task that makes Cloud Tasks call POST /handlers/run for one job, or for the
    jobs of a shared task (`job_id` a list; `timeout_s` then their timeouts summed: they run
    one after another). Another handler's task (a webhook's) gives its `path` and `body`.

    Built as the raw protobuf and wrapped (no copy): proto-plus's keyword constructors cost
    ~90 µs a task, a tenth of a batchCreate of 500 (issue #7)."""
    if body is not None:
        pass
    elif isinstance(job_id, list):
        body = b'{"job_ids": [' + b", ".join(b'"' + str(i).encode() + b'"' for i in job_id) + b"]}"
    else:
        body = b'{"job_id": "' + str(job_id).encode() + b'"}'
    pb = _TASK_PB(
        name=task_name,
        http_request=_HTTP_REQUEST_PB(
            http_method=_POST,
            url=f"{config.handler_base_url}{path}",
            headers={"Content-Type": "application/json", **(headers or {})},
            body=body,
        ),
    )
    if config.tasks_service_account:
        pb.http_request.oidc_token.service_account_email = config.tasks_service_account
        pb.http_request.oidc_token.audience = config.audience
    # The queue's deadline bounds a job's timeout; a little headroom lets the handler record
    # a timed-out attempt before Cloud Tasks gives up on the request.
    pb.dispatch_deadline.FromTimedelta(timedelta(seconds=min(timeout_s + TASK_HEADROOM_S, spec.dispatch_deadline,
                                                             MAX_DISPATCH_DEADLINE_S)))
    if schedule_time is not None:
        pb.schedule_time.FromDatetime(schedule_time)
    return tasks_v2.Task.wrap(pb)


_TASK_PB = tasks_v2.Task.pb()
_HTTP_REQUEST_PB = tasks_v2.HttpRequest.pb()
_POST = int(tasks_v2.HttpMethod.POST)


def build_queue(config: Config, spec: QueueSpec) -> tasks_v2.Queue:
    """The Cloud Tasks queue that queues.yaml declares."""
    r = spec.retry
    return tasks_v2.Queue(
        name=queue_path(config, spec.name),
        rate_limits=tasks_v2.RateLimits(
            max_dispatches_per_second=spec.max_dispatches_per_second,
            max_concurrent_dispatches=spec.max_concurrent_dispatches,
        ),
        retry_config=tasks_v2.RetryConfig(
            max_attempts=r.max_attempts,
            max_retry_duration=duration_proto(r.max_retry_duration),
            min_backoff=duration_proto(r.min_backoff),
            max_backoff=duration_proto(r.max_backoff),
            max_doublings=r.max_doublings,
        ),
    )


# A create is safe to repeat (task names are fixed: a repeat is AlreadyExists), so UNAVAILABLE
# — Cloud Tasks or the channel to it coming back — is retried for a moment before the job is
# left CREATED for the backlog drain and the sweeper.
CREATE_RETRY = Retry(predicate=if_exception_type(gexc.ServiceUnavailable), initial=0.1, maximum=0.5,
                     multiplier=2.0, timeout=2.0)

# The emulator restarts (in development, in the fault tests); gRPC's default reconnect backoff
# grows to 120 s, which would keep a process's channel failing long after it is back.
EMULATOR_CHANNEL_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
                            ("grpc.max_reconnect_backoff_ms", 1000)]


C = TypeVar("C")


class PerProcessClient(Generic[C]):
    """A Google client built on first use (after gunicorn forks: gRPC channels do not survive
    a fork), once per process; `client=` gives one already made."""

    def __init__(self, config: Config, make: Callable[[Config], C], *, client: C | None = None) -> None:
        self._config = config
        self._make = make
        self._client = client
        self._lock = threading.Lock()

    @property
    def client(self) -> C:
        """The underlying client, created once per process."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._make(self._config)
        return self._client


class TasksClient(PerProcessClient[tasks_v2.CloudTasksClient]):
    """The process's CloudTasksClient."""

    def __init__(self, config: Config) -> None:
        super().__init__(config, make_client)

    def create_task(self, task: tasks_v2.Task, *, queue: str, timeout: float = 10.0) -> bool:
        """Create the task; False when a task of that name exists or existed recently."""
        try:
            self.client.create_task(
                parent=queue_path(self._config, queue), task=task, timeout=timeout, retry=CREATE_RETRY
            )
        except gexc.AlreadyExists:
            return False
        return True

    def batch_create_tasks(self, tasks: list[tasks_v2.Task], *, queue: str, timeout: float = 30.0) -> None:
        """Create up to 100 tasks of one queue in one call (all or nothing)."""
        parent = queue_path(self._config, queue)
        request = tasks_v2.BatchCreateTasksRequest.pb()(parent=parent)
        for t in tasks:  # raw protobuf, as build_task: proto-plus would convert each again
            request.requests.add(parent=parent).task.CopyFrom(tasks_v2.Task.pb(t))
        operation = self.client.batch_create_tasks(
            request=tasks_v2.BatchCreateTasksRequest.wrap(request), timeout=timeout, retry=CREATE_RETRY
        )
        operation.result(timeout=timeout)

    def delete_task(self, name: str, *, timeout: float = 10.0) -> bool:
        """Delete a task; False when it is already gone."""
        try:
            self.client.delete_task(name=name, timeout=timeout)
        except gexc.NotFound:
            return False
        return True


def make_client(config: Config) -> tasks_v2.CloudTasksClient:
    """A CloudTasksClient for Google, or for the emulator when CLOUD_TASKS_EMULATOR_HOST is set."""
    if config.emulator_host:
        import grpc
        from google.cloud.tasks_v2.services.cloud_tasks.transports import (
            CloudTasksGrpcTransport,
        )

        channel = grpc.insecure_channel(config.emulator_host, options=EMULATOR_CHANNEL_OPTIONS)
        return tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))
    return tasks_v2.CloudTasksClient()


def sync_queues(client: tasks_v2.CloudTasksClient, config: Config, specs: list[QueueSpec]) -> list[str]:
    """Create or update each queue; returns one line per queue saying what happened."""
    lines = []
    parent = f"projects/{config.project}/locations/{config.location}"
    for spec in specs:
        queue = build_queue(config, spec)
        try:
            actual = client.get_queue(name=queue.name)
        except gexc.NotFound:
            client.create_queue(parent=parent, queue=queue)
            lines.append(f"created {spec.name}")
            continue
        differences = queue_differences(actual, queue)
        if not differences:
            lines.append(f"unchanged {spec.name}")
            continue
        client.update_queue(
            queue=queue, update_mask={"paths": ["rate_limits", "retry_config"]}
        )
        lines.append(f"updated {spec.name}: " + "; ".join(differences))
    return lines


_FIELDS: tuple[tuple[str, Callable[[Any], float]], ...] = (
    ("rate_limits.max_dispatches_per_second", lambda q: q.rate_limits.max_dispatches_per_second),
    ("rate_limits.max_concurrent_dispatches", lambda q: q.rate_limits.max_concurrent_dispatches),
    ("retry_config.max_attempts", lambda q: q.retry_config.max_attempts),
    ("retry_config.max_retry_duration", lambda q: _seconds(q.retry_config.max_retry_duration)),
    ("retry_config.min_backoff", lambda q: _seconds(q.retry_config.min_backoff)),
    ("retry_config.max_backoff", lambda q: _seconds(q.retry_config.max_backoff)),
    ("retry_config.max_doublings", lambda q: q.retry_config.max_doublings),
)


def _seconds(value: Any) -> float:
    if value is None:
        return 0.0
    if hasattr(value, "total_seconds"):
        return float(value.total_seconds())
    return float(value.seconds) + float(value.nanos) / 1e9


def queue_differences(actual: Any, wanted: Any) -> list[str]:
    """The settings (those sync_queues sets) in which a Cloud Tasks queue differs from its declaration."""
    out = []
    for field_name, get in _FIELDS:
        have, want = float(get(actual)), float(get(wanted))
        if not math.isclose(have, want, rel_tol=1e-6, abs_tol=1e-3):
            out.append(f"{field_name} is {have:g} in Cloud Tasks, {want:g} in queues.yaml")
    return out

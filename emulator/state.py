"""In-memory Cloud Tasks state: queues, tasks, tombstones, operations, and each RPC's rule.

One ``threading.Lock`` guards everything here. gRPC handler threads call the RPC methods; the
dispatcher (on its asyncio loop) calls ``take_due`` and ``finish_attempt``. Critical sections
are short and never do I/O. The dispatcher learns about work through ``Hooks``, which are
called with the lock held and must only schedule, never block.
"""

from __future__ import annotations

import base64
import heapq
import http
import itertools
import json
import math
import random
import re
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from google.cloud.location import locations_pb2
from google.cloud.tasks_v2 import types as T
from google.iam.v1 import policy_pb2
from google.longrunning import operations_pb2
from google.protobuf import empty_pb2
from google.rpc import status_pb2

from emulator import policy
from emulator import validation as v
from emulator.appengine import AppEngineRoutes
from emulator.durable import Journal
from emulator.validation import QUEUE_TOMBSTONE_S, ApiError, invalid

TaskPb = T.Task.pb()
QueuePb = T.Queue.pb()
CmekConfigPb = T.CmekConfig.pb()
BatchCreateTasksResponsePb = T.BatchCreateTasksResponse.pb()
BatchCreateTasksMetadataPb = T.BatchCreateTasksMetadata.pb()
BatchDeleteTasksMetadataPb = T.BatchDeleteTasksMetadata.pb()

VIEW_BASIC = int(T.Task.View.BASIC)
VIEW_FULL = int(T.Task.View.FULL)
MAX_QUEUE_PAGE = 9800
MAX_TASK_PAGE = 1000
MAX_BATCH_CREATE = 100
MAX_BATCH_DELETE = 1000
# Queues created through the API keep a task at most 31 days, dispatched or not.
TASK_RETENTION_S = 31 * 24 * 3600.0
# Finished long-running operations kept for GetOperation; oldest dropped first.
MAX_OPERATIONS = 10_000

_STATE_FILTER = re.compile(r'\s*state\s*[:=]\s*"?([A-Za-z_]+)"?\s*')
_CMEK_NAME = re.compile(rf"projects/({v.PROJECT_RE})/locations/({v.LOCATION_RE})/cmekConfig")
_PROJECT_NAME = re.compile(rf"projects/({v.PROJECT_RE})")


def set_timestamp(ts: Any, epoch: float) -> None:
    """Write an epoch time into a Timestamp, truncated to the microsecond as Google does."""
    seconds = math.floor(epoch)
    ts.seconds = seconds
    ts.nanos = int((epoch - seconds) * 1_000_000) * 1000


def timestamp_s(ts: Any) -> float:
    """Epoch seconds of a Timestamp."""
    return ts.seconds + ts.nanos / 1e9


@dataclass(frozen=True)
class RetryPolicy:
    """A RetryConfig in plain numbers, read on every failed attempt."""

    max_attempts: int
    max_retry_duration: float
    min_backoff: float
    max_backoff: float
    max_doublings: int

    @classmethod
    def from_pb(cls, rc: Any) -> RetryPolicy:
        """Read a (defaulted) RetryConfig message."""
        return cls(
            max_attempts=rc.max_attempts,
            max_retry_duration=v.duration_s(rc.max_retry_duration),
            min_backoff=v.duration_s(rc.min_backoff),
            max_backoff=v.duration_s(rc.max_backoff),
            max_doublings=rc.max_doublings,
        )

    def delay(self, retry: int) -> float:
        """Seconds before retry number ``retry``."""
        return policy.backoff_delay(
            retry,
            min_backoff=self.min_backoff,
            max_backoff=self.max_backoff,
            max_doublings=self.max_doublings,
        )


@dataclass(frozen=True)
class Target:
    """What a task sends, extracted once at creation so dispatch never touches protobufs."""

    app_engine: bool
    method: str
    url: str  # the full URL of an HTTP task; the relative URI of an App Engine task
    headers: tuple[tuple[str, str], ...]
    body: bytes
    oidc: tuple[str, str] | None  # (service account email, audience or "")
    oauth: tuple[str, str] | None  # (service account email, scope)
    routing: tuple[str, str, str] = ("", "", "")  # App Engine: (service, version, instance)


def target_of(task: Any) -> Target:
    """Extract the request a task sends."""
    if task.WhichOneof("message_type") == "http_request":
        req = task.http_request
        oidc = oauth = None
        if req.HasField("oidc_token"):
            oidc = (req.oidc_token.service_account_email, req.oidc_token.audience)
        elif req.HasField("oauth_token"):
            scope = req.oauth_token.scope or v.DEFAULT_OAUTH_SCOPE
            oauth = (req.oauth_token.service_account_email, scope)
        return Target(False, v.method_name(req.http_method), req.url,
                      tuple(req.headers.items()), req.body, oidc, oauth)
    req = task.app_engine_http_request
    r = req.app_engine_routing
    return Target(True, v.method_name(req.http_method), req.relative_uri or "/",
                  tuple(req.headers.items()), req.body, None, None,
                  (r.service, r.version, r.instance))


class TaskRecord:
    """One task in a queue, with its delivery counters."""

    __slots__ = (
        "queue", "task_id", "pb", "target", "create_ts", "schedule_ts", "deadline_s", "retry",
        "dispatch_count", "response_count", "execution_count", "first_dispatch_ts",
        "last_schedule_ts", "last_dispatch_ts", "last_response_ts", "last_status",
        "prev_http", "prev_reason", "inflight", "heap_seq", "deleted",
    )

    def __init__(self, queue: QueueRecord, task_id: str, pb: Any, target: Target,
                 create_ts: float, schedule_ts: float, deadline_s: float,
                 retry: RetryPolicy | None) -> None:
        self.queue = queue
        self.task_id = task_id
        self.pb = pb  # the task as created: name, request, deadline, retry config, create time
        self.target = target
        self.create_ts = create_ts
        self.schedule_ts = schedule_ts
        self.deadline_s = deadline_s
        self.retry = retry  # the task's own retry config, or None for the queue's
        self.dispatch_count = 0
        self.response_count = 0
        # Responses that were not 5xx: Google's X-CloudTasks-TaskExecutionCount.
        self.execution_count = 0
        self.first_dispatch_ts: float | None = None
        self.last_schedule_ts: float | None = None
        self.last_dispatch_ts: float | None = None
        self.last_response_ts: float | None = None
        self.last_status: tuple[int, str] | None = None
        self.prev_http = 0
        self.prev_reason = ""
        self.inflight = 0
        self.heap_seq = -1  # the sequence number of this task's live heap entry, -1 if none
        self.deleted = False


APP_ENGINE_RETRY_REASON = "App Error"
HTTP_USER_AGENT = "Google-Cloud-Tasks"
APP_ENGINE_USER_AGENT = "AppEngine-Google; (+http://code.google.com/appengine)"


@dataclass(frozen=True)
class QueueStats:
    """A queue's statistics, as v2beta3's ``Queue.stats`` reports them."""

    tasks_count: int
    oldest_estimated_arrival_time: float | None
    executed_last_minute_count: int
    concurrent_dispatches_count: int
    effective_execution_rate: float


@dataclass(eq=False)
class Attempt:
    """One dispatch of a task: everything the HTTP request needs, snapshotted under the lock."""

    task: TaskRecord
    queue: QueueRecord
    queue_id: str
    task_id: str
    target: Target
    retry_count: int
    execution_count: int
    eta: float
    previous_response: int | None
    retry_reason: str | None
    deadline_s: float
    http_target: Any | None
    dispatched_at: float
    forced: bool
    routing: tuple[str, str, str] = ("", "", "")  # App Engine: the queue's override, else the task's


class QueueRecord:
    """A queue: its configuration, its tasks, its schedule heap and its tombstones."""

    def __init__(self, qn: v.QueueName, pb: Any, mono: float) -> None:
        self.qn = qn
        self.name = qn.name
        self.pb = pb
        self.tasks: dict[str, TaskRecord] = {}
        # (schedule time, sequence, task); entries whose sequence no longer matches the
        # task's heap_seq are stale and skipped, so rescheduling never searches the heap.
        self.heap: list[tuple[float, int, TaskRecord]] = []
        # task id -> time its name may be reused; insertion order is expiry order.
        self.tombstones: OrderedDict[str, float] = OrderedDict()
        self.inflight = 0
        self.deleted = False
        # Times of the last successful attempts, for v2beta3's QueueStats (the last minute).
        self.executed: deque[float] = deque(maxlen=100_000)
        self.iam_policy: Any | None = None
        self.iam_version = 0
        rl = pb.rate_limits
        self.bucket = policy.TokenBucket(rl.max_dispatches_per_second, rl.max_burst_size, mono)
        self.max_concurrent = rl.max_concurrent_dispatches
        self.retry = RetryPolicy.from_pb(pb.retry_config)
        self.http_target = _copy_or_none(pb, "http_target")
        # Owned by the dispatcher (touched under the lock or on its loop).
        self.event: Any = None
        self.wake_pending = False

    def configure(self, pb: Any, mono: float) -> None:
        """Adopt a new configuration (from UpdateQueue)."""
        self.pb = pb
        rl = pb.rate_limits
        self.bucket.reconfigure(rl.max_dispatches_per_second, rl.max_burst_size, mono)
        self.max_concurrent = rl.max_concurrent_dispatches
        self.retry = RetryPolicy.from_pb(pb.retry_config)
        self.http_target = _copy_or_none(pb, "http_target")

    @property
    def running(self) -> bool:
        """Whether the queue may dispatch."""
        return bool(self.pb.state == v.QUEUE_RUNNING)


def _copy_or_none(pb: Any, field: str) -> Any | None:
    # The dispatcher reads this copy without the lock; it is replaced, never mutated.
    if not pb.HasField(field):
        return None
    out = type(getattr(pb, field))()
    out.CopyFrom(getattr(pb, field))
    return out


class Hooks(Protocol):
    """How state tells the dispatcher about work; called with the state lock held."""

    def queue_added(self, q: QueueRecord) -> None:
        """A queue was created."""

    def wake(self, q: QueueRecord) -> None:
        """The queue may have something to dispatch now."""

    def run_now(self, attempt: Attempt) -> None:
        """Send this attempt now (RunTask)."""


class NullHooks:
    """Hooks that do nothing: state without a dispatcher (unit tests)."""

    def queue_added(self, q: QueueRecord) -> None:
        """Ignore."""

    def wake(self, q: QueueRecord) -> None:
        """Ignore."""

    def run_now(self, attempt: Attempt) -> None:
        """Ignore."""


@dataclass(frozen=True)
class _Prepared:
    """A validated CreateTaskRequest, ready to insert under the lock."""

    task_id: str | None
    pb: Any
    task_in: Any
    target: Target
    schedule_ts: float
    deadline_s: float
    view: int


def _encode_token(kind: str, parent: str, last: str) -> str:
    raw = json.dumps([kind, parent, last]).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii")


def _decode_token(token: str, kind: str, parent: str) -> str:
    if not token:
        return ""
    try:
        k, p, last = json.loads(base64.urlsafe_b64decode(token.encode("ascii")))
    except (ValueError, TypeError, UnicodeError):
        raise invalid("Invalid page_token") from None
    if k != kind or p != parent or not isinstance(last, str):
        raise invalid("Invalid page_token")
    return last


def _page_size(requested: int, maximum: int) -> int:
    if requested < 0:
        raise invalid("page_size must not be negative")
    return min(requested or maximum, maximum)


def _status(err: ApiError) -> status_pb2.Status:
    return status_pb2.Status(code=policy.code_number(err.code), message=err.message)


class State:
    """All queues and tasks of one emulator, and the RPC rules that change them."""

    def __init__(
        self,
        *,
        dedup_window_s: float = 3600.0,
        queue_tombstone_s: float = QUEUE_TOMBSTONE_S,
        max_dispatch_rate: float | None = v.DEFAULT_MAX_DISPATCHES_PER_SECOND,
        app_engine: AppEngineRoutes | None = None,
        hooks: Hooks | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lock = threading.Lock()
        self.queues: dict[str, QueueRecord] = {}
        self.dedup_window_s = dedup_window_s
        self.queue_tombstone_s = queue_tombstone_s
        # Deleted queue name -> time it may be created again (only with queue_tombstone_s).
        self.deleted_queues: dict[str, float] = {}
        self.max_rate = math.inf if max_dispatch_rate is None else max_dispatch_rate
        self.app_engine = app_engine or AppEngineRoutes("http://127.0.0.1:8080")
        self.hooks: Hooks = hooks or NullHooks()
        # What to keep across a restart (emulator/durable.py); by default, nothing.
        self.journal: Journal = Journal()
        self.clock = clock
        self.monotonic = monotonic
        self.operations: OrderedDict[str, operations_pb2.Operation] = OrderedDict()
        self.cmek: dict[str, str] = {}
        self._seq = itertools.count()
        self._random = random.Random()
        # Billable operations so far (Cloud Tasks bills every API call and every delivery
        # attempt as one operation): task RPCs by name, and "dispatch" for attempts.
        self.operation_counts: Counter[str] = Counter()

    # ----------------------------------------------------------------- queues

    def _queue(self, name: str) -> QueueRecord:
        q = self.queues.get(name)
        if q is None:
            raise ApiError(grpc.StatusCode.NOT_FOUND, v.QUEUE_MISSING)
        return q

    def _check_recreate(self, name: str) -> None:
        until = self.deleted_queues.get(name)
        if until is None:
            return
        if until > self.clock():
            raise ApiError(grpc.StatusCode.FAILED_PRECONDITION,
                           "The queue cannot be created because a queue with this name existed "
                           "too recently.")
        del self.deleted_queues[name]

    def _new_queue_pb(self, qn: v.QueueName, src: Any, paths: Sequence[str] | None) -> Any:
        base = QueuePb(name=qn.name)
        pb = v.apply_update(base, src, list(paths or []))
        pb.name = qn.name
        v.fill_queue_defaults(pb)
        v.validate_queue(pb, max_rate=self.max_rate)
        pb.state = v.QUEUE_RUNNING
        return pb

    @staticmethod
    def _queue_out(q: QueueRecord) -> Any:
        out = QueuePb()
        out.CopyFrom(q.pb)
        return out

    def create_queue(self, parent: str, queue: Any) -> Any:
        """CreateQueue: ALREADY_EXISTS if the name is taken."""
        v.parse_location(parent)
        if not queue.name:
            raise invalid("Queue.name is required")
        qn = v.parse_queue_name(queue.name)
        if qn.parent != parent:
            raise invalid(f"Queue name {queue.name!r} is not in parent {parent!r}")
        pb = self._new_queue_pb(qn, queue, None)
        with self.lock:
            if qn.name in self.queues:
                raise ApiError(grpc.StatusCode.ALREADY_EXISTS, v.ENTITY_EXISTS)
            self._check_recreate(qn.name)
            q = QueueRecord(qn, pb, self.monotonic())
            self.queues[qn.name] = q
            self.journal.queue(q)
            self.hooks.queue_added(q)
            return self._queue_out(q)

    def get_queue(self, name: str) -> Any:
        """GetQueue."""
        v.parse_queue_name(name)
        with self.lock:
            return self._queue_out(self._queue(name))

    def list_queues(self, parent: str, filter_: str, page_size: int,
                    page_token: str) -> tuple[list[Any], str]:
        """ListQueues, in lexicographical order, with an optional ``state`` filter."""
        v.parse_location(parent)
        want: int | None = None
        if filter_.strip():
            m = _STATE_FILTER.fullmatch(filter_)
            if not m or m.group(1).upper() not in T.Queue.State.__members__:
                raise invalid(f"Unsupported filter {filter_!r}: the emulator filters on "
                              "state only, e.g. 'state: PAUSED'")
            want = int(T.Queue.State.__members__[m.group(1).upper()])
        size = _page_size(page_size, MAX_QUEUE_PAGE)
        after = _decode_token(page_token, "queues", parent + "|" + filter_)
        with self.lock:
            names = sorted(
                n for n, q in self.queues.items()
                if q.qn.parent == parent and n > after and (want is None or q.pb.state == want)
            )
            page = [self._queue_out(self.queues[n]) for n in names[:size]]
        token = _encode_token("queues", parent + "|" + filter_, names[size - 1]) \
            if len(names) > size else ""
        return page, token

    def update_queue(self, queue: Any, paths: Sequence[str]) -> Any:
        """UpdateQueue: masked fields (all if no mask); creates the queue if it does not exist."""
        if not queue.name:
            raise invalid("Queue.name is required")
        qn = v.parse_queue_name(queue.name)
        with self.lock:
            q = self.queues.get(qn.name)
            if q is None:
                self._check_recreate(qn.name)
                pb = self._new_queue_pb(qn, queue, paths)
                q = QueueRecord(qn, pb, self.monotonic())
                self.queues[qn.name] = q
                self.journal.queue(q)
                self.hooks.queue_added(q)
                return self._queue_out(q)
            new = v.apply_update(q.pb, queue, list(paths))
            v.fill_queue_defaults(new)
            v.validate_queue(new, max_rate=self.max_rate)
            q.configure(new, self.monotonic())
            self.journal.queue(q)
            self.hooks.wake(q)
            return self._queue_out(q)

    def delete_queue(self, name: str) -> empty_pb2.Empty:
        """DeleteQueue: the queue and its tasks go; the name is reusable after queue_tombstone_s."""
        v.parse_queue_name(name)
        with self.lock:
            q = self.queues.get(name)
            if q is None:
                raise ApiError(grpc.StatusCode.NOT_FOUND, v.ENTITY_MISSING)
            del self.queues[name]
            if self.queue_tombstone_s > 0:
                now = self.clock()
                self.deleted_queues = {n: t for n, t in self.deleted_queues.items() if t > now}
                self.deleted_queues[name] = now + self.queue_tombstone_s
            q.deleted = True
            self.journal.queue(q)
            for rec in q.tasks.values():
                rec.deleted = True
            q.tasks.clear()
            q.heap.clear()
            self.hooks.wake(q)  # so its dispatch loop notices and ends
        return empty_pb2.Empty()

    def purge_queue(self, name: str) -> Any:
        """PurgeQueue: delete every task created before now; their names stay reserved."""
        v.parse_queue_name(name)
        with self.lock:
            q = self._queue(name)
            now = self.clock()
            for rec in list(q.tasks.values()):
                if rec.create_ts <= now:
                    self._bury(q, rec, now)
            q.heap = [e for e in q.heap if not e[2].deleted]
            heapq.heapify(q.heap)
            set_timestamp(q.pb.purge_time, now)
            self.journal.queue(q)
            return self._queue_out(q)

    def pause_queue(self, name: str) -> Any:
        """PauseQueue: tasks are held (attempts in flight finish)."""
        v.parse_queue_name(name)
        with self.lock:
            q = self._queue(name)
            q.pb.state = v.QUEUE_PAUSED
            self.journal.queue(q)
            return self._queue_out(q)

    def resume_queue(self, name: str) -> Any:
        """ResumeQueue: the queue runs again and releases the tasks it held."""
        v.parse_queue_name(name)
        with self.lock:
            q = self._queue(name)
            q.pb.state = v.QUEUE_RUNNING
            self.journal.queue(q)
            self.hooks.wake(q)
            return self._queue_out(q)

    # ------------------------------------------------------------------ tasks

    def _prepare(self, qn: v.QueueName, task: Any, view: int, now: float) -> _Prepared:
        task_id = None
        if task.name:
            tqn, task_id = v.parse_task_name(task.name)
            if tqn.name != qn.name:
                raise invalid(f"The queue name from request ('{qn.name}') must be the same as the "
                              f"queue name in the named task ('{task.name.rsplit('/tasks/', 1)[0]}').")
        v.validate_task_target(task)
        if task.ByteSize() > v.MAX_TASK_BYTES:
            raise invalid(f"Task size too large: {task.ByteSize()} bytes; the maximum is "
                          f"{v.MAX_TASK_BYTES} bytes")
        deadline = v.dispatch_deadline_s(task)
        schedule = now
        if task.HasField("schedule_time"):
            wanted = timestamp_s(task.schedule_time)
            if wanted > now + v.MAX_SCHEDULE_AHEAD_S:
                raise invalid("schedule_time is more than 30 days in the future")
            schedule = max(wanted, now)
        schedule = math.floor(schedule * 1e6) / 1e6
        pb = TaskPb()
        kind = task.WhichOneof("message_type")
        request = getattr(pb, kind)
        request.CopyFrom(getattr(task, kind))
        # As recorded from Cloud Tasks: the method defaults to POST, and the stored headers
        # gain the User-Agent it sends (App Engine: also Content-Length, and the octet-stream
        # Content-Type of a body that has none).
        if not request.http_method:
            request.http_method = v.HTTP_POST
        headers = {k.lower(): k for k in request.headers}
        if kind == "http_request":
            v.set_duration(pb.dispatch_deadline, deadline)
            request.headers[headers.pop("user-agent", "User-Agent")] = HTTP_USER_AGENT
        else:
            if task.HasField("dispatch_deadline"):
                pb.dispatch_deadline.CopyFrom(task.dispatch_deadline)
            own = request.headers.get(headers.get("user-agent", "User-Agent"), "")
            request.headers[headers.pop("user-agent", "User-Agent")] = f"{own} {APP_ENGINE_USER_AGENT}".strip()
            if request.body:
                request.headers[headers.get("content-length", "Content-Length")] = str(len(request.body))
                if "content-type" not in headers:
                    request.headers["Content-Type"] = "application/octet-stream"
            # AppEngineRouting.host is output only: where the task goes.
            r = request.app_engine_routing
            r.host = self.app_engine.netloc(r.service, r.version, r.instance)
        if task.HasField("retry_config"):
            pb.retry_config.CopyFrom(task.retry_config)
        # create_time is truncated to the second, as Google documents.
        pb.create_time.seconds = math.floor(now)
        return _Prepared(task_id, pb, task, target_of(task), schedule, deadline, view)

    def _new_task_id(self, q: QueueRecord) -> str:
        # Google's generated ids are long decimal strings.
        while True:
            task_id = str(self._random.randrange(10**18, 10**19))
            if task_id not in q.tasks and task_id not in q.tombstones:
                return task_id

    def _insert(self, q: QueueRecord, prep: _Prepared, now: float) -> TaskRecord:
        self._sweep_tombstones(q, now)
        task_id = prep.task_id
        if task_id is None:
            task_id = self._new_task_id(q)
        elif task_id in q.tasks or self._tombstoned(q, task_id, now):
            raise ApiError(grpc.StatusCode.ALREADY_EXISTS, v.ENTITY_EXISTS)
        retry = None
        if prep.task_in.HasField("retry_config"):
            retry = RetryPolicy.from_pb(v.resolve_retry_config(q.pb.retry_config, prep.task_in))
        pb = TaskPb()
        pb.CopyFrom(prep.pb)
        pb.name = f"{q.name}/tasks/{task_id}"
        rec = TaskRecord(q, task_id, pb, prep.target, now, prep.schedule_ts, prep.deadline_s,
                         retry)
        q.tasks[task_id] = rec
        self._push(q, rec)
        self.hooks.wake(q)
        return rec

    def create_task(self, parent: str, task: Any, view: int) -> Any:
        """CreateTask, with de-duplication on explicit names."""
        qn = v.parse_queue_name(parent)
        now = self.clock()
        prep = self._prepare(qn, task, view, now)
        with self.lock:
            self.operation_counts["CreateTask"] += 1
            q = self._queue(qn.name)
            return self._render(self._insert(q, prep, now), view)

    def get_task(self, name: str, view: int) -> Any:
        """GetTask: NOT_FOUND once a task has succeeded, been exhausted or deleted."""
        qn, task_id = v.parse_task_name(name)
        with self.lock:
            return self._render(self._task(qn.name, task_id), view)

    def list_tasks(self, parent: str, view: int, page_size: int,
                   page_token: str) -> tuple[list[Any], str]:
        """ListTasks, ordered by task id (Google promises no order)."""
        qn = v.parse_queue_name(parent)
        size = _page_size(page_size, MAX_TASK_PAGE)
        after = _decode_token(page_token, "tasks", qn.name)
        with self.lock:
            q = self._queue(qn.name)
            ids = sorted(i for i in q.tasks if i > after)
            page = [self._render(q.tasks[i], view) for i in ids[:size]]
        token = _encode_token("tasks", qn.name, ids[size - 1]) if len(ids) > size else ""
        return page, token

    def delete_task(self, name: str) -> empty_pb2.Empty:
        """DeleteTask: the name stays reserved for the de-duplication window."""
        qn, task_id = v.parse_task_name(name)
        with self.lock:
            q = self._queue(qn.name)
            rec = self._task(qn.name, task_id)
            self._bury(q, rec, self.clock())
        return empty_pb2.Empty()

    def run_task(self, name: str, view: int) -> Any:
        """RunTask: dispatch now, whatever the schedule, rate limits or pause."""
        qn, task_id = v.parse_task_name(name)
        with self.lock:
            q = self._queue(qn.name)
            rec = self._task(qn.name, task_id)
            attempt = self._begin_attempt(q, rec, self.clock(), forced=True)
            out = self._render(rec, view)
            self.hooks.run_now(attempt)
            return out

    def batch_create_tasks(self, parent: str, requests: Sequence[Any],
                           request_id: str) -> operations_pb2.Operation:
        """BatchCreateTasks: up to 100 tasks; each succeeds or fails on its own."""
        qn = v.parse_queue_name(parent)
        if not requests:
            raise invalid("requests must not be empty")
        if len(requests) > MAX_BATCH_CREATE:
            raise invalid(f"At most {MAX_BATCH_CREATE} tasks can be created in a batch")
        for i, r in enumerate(requests):
            if r.parent and r.parent != parent:
                raise invalid(f"requests[{i}].parent {r.parent!r} differs from {parent!r}")
        op_name = f"{qn.parent}/operations/{request_id}" if request_id else ""
        with self.lock:
            if op_name and op_name in self.operations:
                return self.operations[op_name]
            self._queue(qn.name)
        start = self.clock()
        prepared: list[_Prepared | ApiError] = []
        for r in requests:
            try:
                prepared.append(self._prepare(qn, r.task, r.response_view, start))
            except ApiError as err:
                prepared.append(err)
        tasks: list[Any] = []
        meta = BatchCreateTasksMetadataPb()
        with self.lock:
            self.operation_counts["BatchCreateTasks"] += 1
            q = self._queue(qn.name)
            for i, prep in enumerate(prepared):
                if isinstance(prep, ApiError):
                    meta.failed_requests[i].CopyFrom(_status(prep))
                    continue
                try:
                    tasks.append(self._render(self._insert(q, prep, start), prep.view))
                except ApiError as err:
                    meta.failed_requests[i].CopyFrom(_status(err))
        set_timestamp(meta.start_time, start)
        set_timestamp(meta.end_time, self.clock())
        states = T.BatchCreateTasksMetadata.State
        meta.state = int(states.SUCCEEDED if not meta.failed_requests
                         else states.FAILED if not tasks else states.PARTIALLY_SUCCEEDED)
        response = BatchCreateTasksResponsePb()
        response.tasks.extend(tasks)
        return self._operation(qn, request_id, meta, response)

    def batch_delete_tasks(self, parent: str, names: Sequence[str],
                           request_id: str) -> operations_pb2.Operation:
        """BatchDeleteTasks: up to 1000 names; each succeeds or fails on its own."""
        qn = v.parse_queue_name(parent)
        if not names:
            raise invalid("names must not be empty")
        if len(names) > MAX_BATCH_DELETE:
            raise invalid(f"At most {MAX_BATCH_DELETE} tasks can be deleted in a batch")
        op_name = f"{qn.parent}/operations/{request_id}" if request_id else ""
        meta = BatchDeleteTasksMetadataPb()
        start = self.clock()
        with self.lock:
            if op_name and op_name in self.operations:
                return self.operations[op_name]
            q = self._queue(qn.name)
            for i, name in enumerate(names):
                try:
                    tqn, task_id = v.parse_task_name(name)
                    if tqn.name != qn.name:
                        raise invalid(f"Task {name!r} is not in queue {qn.name!r}")
                    self._bury(q, self._task(qn.name, task_id), start)
                except ApiError as err:
                    meta.failed_requests[i].CopyFrom(_status(err))
        set_timestamp(meta.start_time, start)
        set_timestamp(meta.end_time, self.clock())
        states = T.BatchDeleteTasksMetadata.State
        deleted = len(names) - len(meta.failed_requests)
        meta.state = int(states.SUCCEEDED if not meta.failed_requests
                         else states.FAILED if not deleted else states.PARTIALLY_SUCCEEDED)
        return self._operation(qn, request_id, meta, empty_pb2.Empty())

    def _operation(self, qn: v.QueueName, request_id: str, meta: Any,
                   response: Any) -> operations_pb2.Operation:
        op_id = request_id or f"{self._random.getrandbits(64):016x}"
        op = operations_pb2.Operation(name=f"{qn.parent}/operations/{op_id}", done=True)
        op.metadata.Pack(meta)
        op.response.Pack(response)
        with self.lock:
            self.operations[op.name] = op
            while len(self.operations) > MAX_OPERATIONS:
                self.operations.popitem(last=False)
        return op

    def get_operation(self, name: str) -> operations_pb2.Operation:
        """GetOperation for the batch operations this emulator answered."""
        with self.lock:
            op = self.operations.get(name)
        if op is None:
            raise ApiError(grpc.StatusCode.NOT_FOUND, v.ENTITY_MISSING)
        return op

    def _task(self, queue_name: str, task_id: str) -> TaskRecord:
        q = self._queue(queue_name)
        rec = q.tasks.get(task_id)
        if rec is None:
            gone = self._tombstoned(q, task_id, self.clock())
            raise ApiError(grpc.StatusCode.NOT_FOUND, v.TASK_GONE if gone else v.ENTITY_MISSING)
        return rec

    def _render(self, rec: TaskRecord, view: int) -> Any:
        out = TaskPb()
        out.CopyFrom(rec.pb)
        set_timestamp(out.schedule_time, rec.schedule_ts)
        out.dispatch_count = rec.dispatch_count
        out.response_count = rec.response_count
        if rec.first_dispatch_ts is not None:
            set_timestamp(out.first_attempt.dispatch_time, rec.first_dispatch_ts)
        if rec.last_dispatch_ts is not None:
            last = out.last_attempt
            set_timestamp(last.schedule_time, rec.last_schedule_ts or rec.last_dispatch_ts)
            set_timestamp(last.dispatch_time, rec.last_dispatch_ts)
            if rec.last_response_ts is not None and rec.last_status is not None:
                set_timestamp(last.response_time, rec.last_response_ts)
                last.response_status.code, last.response_status.message = rec.last_status
        full = view == VIEW_FULL
        out.view = VIEW_FULL if full else VIEW_BASIC
        if not full:
            # BASIC leaves out the body, which can be large or sensitive.
            kind = out.WhichOneof("message_type")
            if kind:
                getattr(out, kind).ClearField("body")
        return out

    # ------------------------------------------------------ tombstones, heap

    def _bury(self, q: QueueRecord, rec: TaskRecord, now: float) -> None:
        """Remove a finished or deleted task, reserving its name for the de-dup window."""
        rec.deleted = True
        q.tasks.pop(rec.task_id, None)
        if self.dedup_window_s > 0:
            q.tombstones[rec.task_id] = now + self.dedup_window_s
            q.tombstones.move_to_end(rec.task_id)
        self.journal.task(rec)

    def _tombstoned(self, q: QueueRecord, task_id: str, now: float) -> bool:
        until = q.tombstones.get(task_id)
        if until is None:
            return False
        if until <= now:
            del q.tombstones[task_id]
            return False
        return True

    @staticmethod
    def _sweep_tombstones(q: QueueRecord, now: float) -> None:
        while q.tombstones:
            task_id, until = next(iter(q.tombstones.items()))
            if until > now:
                break
            q.tombstones.popitem(last=False)

    def sweep(self) -> None:
        """Drop expired tombstones everywhere (called periodically, so memory stays bounded)."""
        with self.lock:
            now = self.clock()
            for q in self.queues.values():
                self._sweep_tombstones(q, now)

    def _push(self, q: QueueRecord, rec: TaskRecord) -> None:
        seq = next(self._seq)
        rec.heap_seq = seq
        heapq.heappush(q.heap, (rec.schedule_ts, seq, rec))
        self.journal.task(rec)
        if len(q.heap) > 2 * len(q.tasks) + 1024:
            # Stale entries pile up when tasks are deleted or run early; rebuild now and then.
            q.heap = [e for e in q.heap if e[2].heap_seq == e[1] and not e[2].deleted]
            heapq.heapify(q.heap)

    # --------------------------------------------------------------- dispatch

    def take_due(self, q: QueueRecord, limit: int) -> tuple[list[Attempt], float | None, bool]:
        """Start the attempts a queue may make now.

        Returns the attempts, how long to wait before looking again (None: until woken),
        and whether the queue still exists.
        """
        with self.lock:
            q.wake_pending = False
            if q.deleted:
                return [], None, False
            if not q.running:
                return [], None, True
            now = self.clock()
            mono = self.monotonic()
            heap = q.heap
            out: list[Attempt] = []
            wait: float | None = None
            while True:
                if len(out) >= limit:
                    wait = 0.0
                    break
                if q.inflight >= q.max_concurrent:
                    break  # a finishing attempt wakes the queue
                while heap and (heap[0][2].heap_seq != heap[0][1] or heap[0][2].deleted):
                    heapq.heappop(heap)
                if not heap:
                    break
                due, _, rec = heap[0]
                if due > now:
                    wait = due - now
                    break
                if not q.bucket.try_take(mono):
                    wait = q.bucket.wait_time(mono)
                    break
                heapq.heappop(heap)
                out.append(self._begin_attempt(q, rec, now, forced=False))
            return out, wait, True

    @staticmethod
    def _routing(q: QueueRecord, target: Target) -> tuple[str, str, str]:
        """An App Engine task's routing: the queue's override when it has one."""
        if q.pb.HasField("app_engine_routing_override"):
            o = q.pb.app_engine_routing_override
            return (o.service, o.version, o.instance)
        return target.routing

    def _begin_attempt(self, q: QueueRecord, rec: TaskRecord, now: float,
                       forced: bool) -> Attempt:
        retried = rec.dispatch_count > 0
        attempt = Attempt(
            task=rec,
            queue=q,
            queue_id=q.qn.queue_id,
            task_id=rec.task_id,
            target=rec.target,
            retry_count=rec.dispatch_count,
            execution_count=rec.execution_count,
            eta=rec.schedule_ts,
            previous_response=rec.prev_http if retried else None,
            retry_reason=rec.prev_reason if retried else None,
            deadline_s=rec.deadline_s,
            http_target=q.http_target,
            dispatched_at=now,
            forced=forced,
            routing=self._routing(q, rec.target),
        )
        rec.dispatch_count += 1
        self.journal.task(rec)
        self.operation_counts["dispatch"] += 1
        if rec.first_dispatch_ts is None:
            rec.first_dispatch_ts = now
        rec.last_schedule_ts = rec.schedule_ts
        rec.last_dispatch_ts = now
        rec.last_response_ts = None
        rec.last_status = None
        rec.inflight += 1
        q.inflight += 1
        rec.heap_seq = -1  # out of the schedule while in flight
        return attempt

    def finish_attempt(self, attempt: Attempt, http_status: int | None,
                       error: grpc.StatusCode | None = None, message: str = "") -> str:
        """Record an attempt's outcome: delete on 2xx, retry or give up otherwise.

        ``http_status`` is None when no answer came (``error`` says why). Returns what
        happened: "done", "retry", "exhausted" or "gone" (deleted meanwhile).
        """
        with self.lock:
            q, rec = attempt.queue, attempt.task
            q.inflight -= 1
            rec.inflight -= 1
            if rec.deleted:
                return "gone"
            self.journal.task(rec)
            now = self.clock()
            rec.last_response_ts = now
            if http_status is not None:
                rec.response_count += 1
                # Recorded from Cloud Tasks: App Engine's X-AppEngine-TaskExecutionCount counts
                # every response, a 503 too; an HTTP target's counts those that were not 5xx.
                if rec.target.app_engine or not 500 <= http_status <= 599:
                    rec.execution_count += 1
                code = policy.http_status_to_code(http_status)
                rec.last_status = (policy.code_number(code), _http_message(http_status))
                if 200 <= http_status <= 299:
                    q.executed.append(now)
                    self._bury(q, rec, now)
                    return "done"
                rec.prev_http = http_status
                # The retry reason after an answer: empty for an HTTP target (whatever the
                # status), "App Error" for App Engine, as real Cloud Tasks sends them.
                rec.prev_reason = APP_ENGINE_RETRY_REASON if rec.target.app_engine else ""
            else:
                code = error or grpc.StatusCode.UNAVAILABLE
                rec.last_status = (policy.code_number(code), message or code.name)
                rec.prev_http = 0
                rec.prev_reason = code.name
            retry = rec.retry or q.retry
            if now - rec.create_ts > TASK_RETENTION_S or policy.retries_exhausted(
                attempts=rec.dispatch_count,
                first_attempt_at=rec.first_dispatch_ts or now,
                now=now,
                max_attempts=retry.max_attempts,
                max_retry_duration=retry.max_retry_duration,
            ):
                self._bury(q, rec, now)
                return "exhausted"
            if rec.inflight == 0:
                rec.schedule_ts = now + retry.delay(rec.dispatch_count)
                self._push(q, rec)
            return "retry"

    def queue_stats(self, name: str) -> QueueStats:
        """v2beta3's QueueStats of a queue: its tasks, the oldest one's schedule time, the
        tasks done in the last minute, the attempts in flight."""
        with self.lock:
            q = self._queue(name)
            now = self.clock()
            while q.executed and q.executed[0] < now - 60:
                q.executed.popleft()
            return QueueStats(
                tasks_count=len(q.tasks),
                oldest_estimated_arrival_time=min((t.schedule_ts for t in q.tasks.values()), default=None),
                executed_last_minute_count=len(q.executed),
                concurrent_dispatches_count=q.inflight,
                effective_execution_rate=q.pb.rate_limits.max_dispatches_per_second
                if q.running else 0.0,
            )

    # --------------------------------------------------- IAM, CMEK, locations

    def get_iam_policy(self, resource: str) -> policy_pb2.Policy:
        """GetIamPolicy: the policy last set on a queue, or an empty one."""
        v.parse_queue_name(resource)
        with self.lock:
            q = self._queue(resource)
            if q.iam_policy is not None:
                return q.iam_policy
            return policy_pb2.Policy(etag=str(q.iam_version).encode())

    def set_iam_policy(self, resource: str, new: policy_pb2.Policy) -> policy_pb2.Policy:
        """SetIamPolicy: replaces the queue's policy; a stale etag is ABORTED."""
        v.parse_queue_name(resource)
        with self.lock:
            q = self._queue(resource)
            if new.etag and new.etag != str(q.iam_version).encode():
                raise ApiError(grpc.StatusCode.ABORTED, "The policy's etag is stale")
            q.iam_version += 1
            stored = policy_pb2.Policy()
            stored.CopyFrom(new)
            stored.etag = str(q.iam_version).encode()
            q.iam_policy = stored
            return stored

    def test_iam_permissions(self, resource: str, permissions: Sequence[str]) -> list[str]:
        """TestIamPermissions: the emulator grants everything on queues that exist."""
        with self.lock:
            exists = resource in self.queues
        return [p for p in permissions if exists and p.startswith("cloudtasks.")]

    def get_cmek_config(self, name: str) -> Any:
        """GetCmekConfig: no key unless one was set."""
        if not _CMEK_NAME.fullmatch(name):
            raise invalid(f"Invalid CMEK config name {name!r}")
        with self.lock:
            return CmekConfigPb(name=name, kms_key=self.cmek.get(name, ""))

    def update_cmek_config(self, config: Any) -> Any:
        """UpdateCmekConfig: stores the key name; nothing is encrypted."""
        if not _CMEK_NAME.fullmatch(config.name):
            raise invalid(f"Invalid CMEK config name {config.name!r}")
        with self.lock:
            self.cmek[config.name] = config.kms_key
            self.journal.settings()
        return CmekConfigPb(name=config.name, kms_key=config.kms_key)

    def get_location(self, name: str) -> locations_pb2.Location:
        """GetLocation: any well-formed location exists."""
        _, location = v.parse_location(name)
        return locations_pb2.Location(name=name, location_id=location, display_name=location)

    def list_locations(self, name: str) -> list[locations_pb2.Location]:
        """ListLocations: the locations that hold queues in the project."""
        if not _PROJECT_NAME.fullmatch(name):
            raise invalid(f"Invalid project name {name!r}")
        with self.lock:
            parents = sorted({q.qn.parent for q in self.queues.values()
                              if q.qn.parent.startswith(name + "/")})
        return [self.get_location(p) for p in parents]


def _http_message(status: int) -> str:
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return f"HTTP status {status} {phrase}".strip()

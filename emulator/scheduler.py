"""Cloud Scheduler v1, emulated: the jobs, their cron in their time zone, and the HTTP fires.

Served on the same gRPC port as Cloud Tasks (service ``google.cloud.scheduler.v1.CloudScheduler``),
with the proto-plus types of google-cloud-scheduler, so the real client works unchanged:
Create, Get, List, Update, Delete, Pause, Resume and RunJob. A job fires at each cron time
(cronsim, in its time zone) with Cloud Scheduler's headers (X-CloudScheduler,
X-CloudScheduler-JobName, X-CloudScheduler-ScheduleTime) and an OIDC token from the
emulator's key; a failed attempt is retried as its retry config says. ``state``,
``schedule_time``, ``last_attempt_time`` and ``status`` are kept as Google keeps them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import aiohttp
import grpc
from cronsim import CronSim, CronSimError
from google.cloud.scheduler_v1 import types as S
from google.protobuf import empty_pb2, timestamp_pb2
from google.rpc import status_pb2

from emulator.clock import RealClock
from emulator.rpc import Rpc, generic_handler
from emulator.state import _decode_token, _encode_token, _page_size
from emulator.validation import ApiError, invalid

logger = logging.getLogger("emulator")

SERVICE = "google.cloud.scheduler.v1.CloudScheduler"
USER_AGENT = "Google-Cloud-Scheduler"
JobPb = S.Job.pb()
_LOCATION = re.compile(r"projects/([A-Za-z0-9\-:.]+)/locations/([A-Za-z0-9\-]+)")
_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,500}")
MAX_PAGE = 500
# Google's documented defaults and limits (Job, RetryConfig reference).
DEFAULT_DEADLINE_S = 180.0
MIN_DEADLINE_S, MAX_HTTP_DEADLINE_S = 15.0, 1800.0
DEFAULT_MIN_BACKOFF_S, DEFAULT_MAX_BACKOFF_S, DEFAULT_MAX_DOUBLINGS = 5.0, 3600.0, 5
ENABLED, PAUSED = int(S.Job.State.ENABLED), int(S.Job.State.PAUSED)
_UPDATABLE = {"description", "schedule", "time_zone", "http_target", "app_engine_http_target",
              "pubsub_target", "retry_config", "attempt_deadline"}
_TARGETS = ("http_target", "app_engine_http_target", "pubsub_target")
# HTTP status of a failed attempt → the google.rpc code Cloud Scheduler records in `status`.
_HTTP_CODES = {400: 3, 401: 16, 403: 7, 404: 5, 409: 10, 429: 8, 499: 1, 500: 13, 501: 12, 503: 14, 504: 4}


def _seconds(d: Any) -> float:
    return d.seconds + d.nanos / 1e9


def _timestamp(ts: float) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromNanoseconds(int(round(ts * 1e9)))
    return out


def rfc3339(ts: float) -> str:
    """A fire time as X-CloudScheduler-ScheduleTime carries it (UTC, Z)."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _parse_job_name(name: str) -> tuple[str, str]:
    parent, sep, job_id = name.rpartition("/jobs/")
    if not sep or not _LOCATION.fullmatch(parent) or not _JOB_ID.fullmatch(job_id):
        raise invalid(f"Job name {name!r} must be projects/PROJECT/locations/LOCATION/jobs/JOB_ID "
                      "(JOB_ID: letters, digits, hyphens or underscores, at most 500)")
    return parent, job_id


def _not_found(name: str) -> ApiError:
    return ApiError(grpc.StatusCode.NOT_FOUND, f"Job not found: {name}")


def next_fire(job: Any, after: float) -> float:
    """The first cron time of a job strictly after `after` (Unix seconds), in its time zone."""
    tz = ZoneInfo(job.time_zone or "UTC")
    start = datetime.fromtimestamp(after, tz)
    return next(iter(CronSim(job.schedule, start))).timestamp()


def check_job(job: Any) -> None:
    """Google's rules for a job's schedule, time zone, target, retry config and deadline."""
    if not job.schedule:
        raise invalid("Job.schedule is required (unix-cron, e.g. '0 2 * * *')")
    try:
        CronSim(job.schedule, datetime.now(UTC))
    except CronSimError as e:
        raise invalid(f"Schedule {job.schedule!r} is not valid unix-cron: {e}") from None
    try:
        ZoneInfo(job.time_zone or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        raise invalid(f"Time zone {job.time_zone!r} is not a valid tz database name") from None
    targets = [t for t in _TARGETS if job.HasField(t)]
    if len(targets) != 1:
        raise invalid("A job needs exactly one target: http_target, app_engine_http_target or pubsub_target")
    if job.HasField("http_target"):
        uri = job.http_target.uri
        if not uri.startswith(("http://", "https://")):
            raise invalid(f"HttpTarget.uri {uri!r} must be an http:// or https:// URL")
        if job.http_target.body and job.http_target.http_method not in (0, 1, 4, 6):  # POST, PUT, PATCH
            raise invalid("A body is allowed only with POST, PUT or PATCH")
    r = job.retry_config
    if not 0 <= r.retry_count <= 5:
        raise invalid("RetryConfig.retry_count must be 0 to 5")
    if job.HasField("attempt_deadline"):
        d = _seconds(job.attempt_deadline)
        if not MIN_DEADLINE_S <= d <= MAX_HTTP_DEADLINE_S:
            raise invalid("attempt_deadline must be 15s to 30m for HTTP targets")


@dataclass
class JobRecord:
    """One Cloud Scheduler job: its message as Get answers it, and its next fire."""

    pb: Any
    next_fire: float | None = None  # Unix seconds; None while paused
    running: set[asyncio.Task[None]] = field(default_factory=set)


class SchedulerState:
    """Every job of the emulated Cloud Scheduler, and the RPC rules that change them."""

    def __init__(self, *, clock: RealClock) -> None:
        self.clock = clock
        self.lock = threading.RLock()
        self.jobs: dict[str, JobRecord] = {}
        self.wake: Callable[[], None] = lambda: None
        self.run_now: Callable[[str, float], None] = lambda name, ts: None

    def _out(self, rec: JobRecord) -> Any:
        out = JobPb()
        out.CopyFrom(rec.pb)
        if rec.next_fire is not None:
            out.schedule_time.CopyFrom(_timestamp(rec.next_fire))
        else:
            out.ClearField("schedule_time")
        return out

    def _get(self, name: str) -> JobRecord:
        _parse_job_name(name)
        rec = self.jobs.get(name)
        if rec is None:
            raise _not_found(name)
        return rec

    def _defaults(self, job: Any) -> None:
        if not job.time_zone:
            job.time_zone = "UTC"
        r = job.retry_config
        if not r.HasField("min_backoff_duration"):
            r.min_backoff_duration.FromSeconds(int(DEFAULT_MIN_BACKOFF_S))
        if not r.HasField("max_backoff_duration"):
            r.max_backoff_duration.FromSeconds(int(DEFAULT_MAX_BACKOFF_S))
        if not r.max_doublings:
            r.max_doublings = DEFAULT_MAX_DOUBLINGS
        if not job.HasField("attempt_deadline"):
            job.attempt_deadline.FromSeconds(int(DEFAULT_DEADLINE_S))

    def list_jobs(self, parent: str, page_size: int, page_token: str) -> tuple[list[Any], str]:
        """ListJobs, by name."""
        if not _LOCATION.fullmatch(parent):
            raise invalid(f"Parent {parent!r} must be projects/PROJECT/locations/LOCATION")
        size = _page_size(page_size, MAX_PAGE)
        after = _decode_token(page_token, "jobs", parent)
        with self.lock:
            names = sorted(n for n in self.jobs if n.rpartition("/jobs/")[0] == parent and n > after)
            page = [self._out(self.jobs[n]) for n in names[:size]]
        token = _encode_token("jobs", parent, names[size - 1]) if len(names) > size else ""
        return page, token

    def get_job(self, name: str) -> Any:
        """GetJob."""
        with self.lock:
            return self._out(self._get(name))

    def create_job(self, parent: str, job: Any) -> Any:
        """CreateJob: ENABLED, its first fire at the next cron time; ALREADY_EXISTS for a name in use."""
        if not _LOCATION.fullmatch(parent):
            raise invalid(f"Parent {parent!r} must be projects/PROJECT/locations/LOCATION")
        pb = JobPb()
        pb.CopyFrom(job)
        if not pb.name:
            pb.name = f"{parent}/jobs/{uuid.uuid4().hex}"
        if _parse_job_name(pb.name)[0] != parent:
            raise invalid(f"Job name {pb.name!r} is not under {parent!r}")
        check_job(pb)
        self._defaults(pb)
        for f in ("state", "status", "schedule_time", "last_attempt_time", "user_update_time"):
            pb.ClearField(f)
        pb.state = ENABLED
        pb.user_update_time.CopyFrom(_timestamp(self.clock.time()))
        with self.lock:
            if pb.name in self.jobs:
                raise ApiError(grpc.StatusCode.ALREADY_EXISTS, f"Job {pb.name} already exists")
            rec = self.jobs[pb.name] = JobRecord(pb, next_fire(pb, self.clock.time()))
            out = self._out(rec)
        self.wake()
        return out

    def update_job(self, job: Any, paths: list[str]) -> Any:
        """UpdateJob: the masked fields (every updatable one without a mask); the state is kept."""
        unknown = [p for p in paths if p.split(".")[0] not in _UPDATABLE]
        if unknown:
            raise invalid(f"Field {unknown[0]!r} cannot be updated")
        with self.lock:
            rec = self._get(job.name)
            pb = JobPb()
            pb.CopyFrom(rec.pb)
            for path in {p.split(".")[0] for p in paths} or _UPDATABLE:
                if path in ("description", "schedule", "time_zone"):
                    if paths or getattr(job, path):  # without a mask, only what the job gives
                        setattr(pb, path, getattr(job, path))
                elif job.HasField(path):
                    for t in _TARGETS if path in _TARGETS else (path,):
                        pb.ClearField(t)
                    getattr(pb, path).CopyFrom(getattr(job, path))
                elif paths and path not in _TARGETS:
                    pb.ClearField(path)  # masked and absent: back to its default
            check_job(pb)
            self._defaults(pb)
            pb.user_update_time.CopyFrom(_timestamp(self.clock.time()))
            rec.pb = pb
            if pb.state == ENABLED:
                rec.next_fire = next_fire(pb, self.clock.time())
            out = self._out(rec)
        self.wake()
        return out

    def delete_job(self, name: str) -> empty_pb2.Empty:
        """DeleteJob: no further fires (one in flight finishes)."""
        with self.lock:
            self._get(name)
            del self.jobs[name]
        self.wake()
        return empty_pb2.Empty()

    def pause_job(self, name: str) -> Any:
        """PauseJob: no fires until ResumeJob (FAILED_PRECONDITION unless ENABLED or PAUSED)."""
        with self.lock:
            rec = self._get(name)
            rec.pb.state = PAUSED
            rec.next_fire = None
            out = self._out(rec)
        self.wake()
        return out

    def resume_job(self, name: str) -> Any:
        """ResumeJob: the next fire is the next cron time from now (missed ones are not run)."""
        with self.lock:
            rec = self._get(name)
            rec.pb.state = ENABLED
            rec.next_fire = next_fire(rec.pb, self.clock.time())
            out = self._out(rec)
        self.wake()
        return out

    def run_job(self, name: str) -> Any:
        """RunJob: fire now, whatever the schedule (its schedule time is now, to the second)."""
        with self.lock:
            rec = self._get(name)
            out = self._out(rec)
        self.run_now(name, float(int(self.clock.time())))
        return out

    def take_due(self) -> tuple[list[tuple[str, float]], float | None]:
        """The fires due now (each job's next fire moves on), and when the next one is due."""
        now = self.clock.time()
        due = []
        with self.lock:
            for name, rec in self.jobs.items():
                if rec.next_fire is not None and rec.next_fire <= now:
                    due.append((name, rec.next_fire))
                    rec.next_fire = next_fire(rec.pb, max(now, rec.next_fire))
            upcoming = [rec.next_fire for rec in self.jobs.values() if rec.next_fire is not None]
        return due, (min(upcoming) if upcoming else None)

    def record_attempt(self, name: str, started: float, code: int, message: str) -> None:
        """Keep last_attempt_time and status of a job (still there) after an attempt."""
        with self.lock:
            rec = self.jobs.get(name)
            if rec is None:
                return
            rec.pb.last_attempt_time.CopyFrom(_timestamp(started))
            rec.pb.status.CopyFrom(status_pb2.Status(code=code, message=message))

    def snapshot(self, name: str) -> Any | None:
        """A copy of a job's message, or None once it is deleted."""
        with self.lock:
            rec = self.jobs.get(name)
            return self._out(rec) if rec is not None else None


def backoff_s(retry: Any, n: int) -> float:
    """The wait before retry `n` (1: the first), by the job's retry config."""
    lo = _seconds(retry.min_backoff_duration) or DEFAULT_MIN_BACKOFF_S
    hi = _seconds(retry.max_backoff_duration) or DEFAULT_MAX_BACKOFF_S
    doublings = retry.max_doublings
    k = max(n, 1) - 1
    interval = lo * 2.0 ** min(k, doublings)
    if k > doublings:
        interval *= k - doublings + 1
    return min(interval, hi)


class SchedulerDispatcher:
    """On the emulator's loop: sleeps until the next fire, then sends it (and its retries)."""

    def __init__(self, state: SchedulerState, *, id_token: Callable[[str, str], str], app_engine_host: str,
                 clock: RealClock) -> None:
        self.state = state
        self.id_token = id_token
        self.app_engine_host = app_engine_host
        self.clock = clock
        self.loop: asyncio.AbstractEventLoop | None = None
        self.session: aiohttp.ClientSession | None = None
        self.event: asyncio.Event | None = None
        self._main: asyncio.Task[None] | None = None
        self._fires: set[asyncio.Task[None]] = set()
        state.wake = self.wake
        state.run_now = self.run_now

    def wake(self) -> None:
        """Look again (a job was created, changed, paused, resumed or deleted); any thread."""
        if self.loop is not None and self.event is not None:
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self.event.set)

    def run_now(self, name: str, schedule_ts: float) -> None:
        """Fire a job at once (RunJob); any thread."""
        if self.loop is not None:
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self._launch, name, schedule_ts)

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.event = asyncio.Event()
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False)
        self._main = asyncio.create_task(self._run(), name="scheduler")

    async def close(self) -> None:
        tasks = [t for t in (self._main, *self._fires) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.session is not None:
            await self.session.close()

    async def _run(self) -> None:
        assert self.event is not None
        while True:
            self.event.clear()
            due, next_due = self.state.take_due()
            for name, ts in due:
                self._launch(name, ts)
            if next_due is None:
                await self.event.wait()
            else:
                await self.clock.wait_until(self.event, next_due)

    def _launch(self, name: str, schedule_ts: float) -> None:
        task = asyncio.create_task(self._fire(name, schedule_ts))
        self._fires.add(task)
        task.add_done_callback(self._fires.discard)

    async def _fire(self, name: str, schedule_ts: float) -> None:
        """One fire: attempts until one succeeds or the retry config gives up."""
        first = self.clock.monotonic()
        retries = 0
        while True:
            job = self.state.snapshot(name)
            if job is None:
                return  # deleted meanwhile
            started = self.clock.time()
            code, message = await self._attempt(job, schedule_ts)
            ended = self.clock.time()  # the backoff counts from here, before anyone sees the status
            self.state.record_attempt(name, started, code, message)
            logger.info("scheduler fire job=%s schedule_time=%s retry=%d code=%d",
                        name.rsplit("/", 1)[-1], rfc3339(schedule_ts), retries, code)
            if code == 0:
                return
            r = job.retry_config
            limit = _seconds(r.max_retry_duration)
            elapsed = self.clock.monotonic() - first
            if retries >= r.retry_count and (limit <= 0 or elapsed >= limit):
                return
            retries += 1
            await self.clock.sleep_until(ended + backoff_s(r, retries))

    async def _attempt(self, job: Any, schedule_ts: float) -> tuple[int, str]:
        """Send one attempt; (google.rpc code, message): 0 for a 2xx."""
        assert self.session is not None
        job_id = job.name.rsplit("/", 1)[-1]
        headers = {"X-CloudScheduler": "true", "X-CloudScheduler-JobName": job_id,
                   "X-CloudScheduler-ScheduleTime": rfc3339(schedule_ts)}
        if job.HasField("http_target"):
            t = job.http_target
            url, method, body = t.uri, S.HttpMethod(t.http_method or 1).name, t.body or None
            headers.update(t.headers)
            headers["User-Agent"] = USER_AGENT
            if t.HasField("oidc_token"):
                headers["Authorization"] = "Bearer " + self.id_token(t.oidc_token.service_account_email,
                                                                     t.oidc_token.audience or url)
            elif t.HasField("oauth_token"):
                headers["Authorization"] = f"Bearer emulator-oauth-token-{t.oauth_token.scope}"
        elif job.HasField("app_engine_http_target"):
            t = job.app_engine_http_target
            url = self.app_engine_host.rstrip("/") + (t.relative_uri or "/")
            method, body = S.HttpMethod(t.http_method or 1).name, t.body or None
            headers.update(t.headers)
            headers["User-Agent"] = "AppEngine-Google; (+http://code.google.com/appengine)"
        else:
            return 12, "the emulator sends HTTP and App Engine targets only (no Pub/Sub)"
        if body is not None and not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = "application/octet-stream"
        try:
            status = await self.clock.within(_seconds(job.attempt_deadline) or DEFAULT_DEADLINE_S,
                                             self._send(method, url, headers, body))
        except TimeoutError:
            return 4, "attempt deadline exceeded"
        except (aiohttp.ClientError, OSError, ValueError) as e:
            return 14, f"{type(e).__name__}: {e}"
        if 200 <= status < 300:
            return 0, ""
        return _HTTP_CODES.get(status, 13 if status >= 500 else 9), f"HTTP {status}"

    async def _send(self, method: str, url: str, headers: dict[str, str], body: bytes | None) -> int:
        assert self.session is not None
        async with self.session.request(method, url, headers=headers, data=body,
                                        timeout=aiohttp.ClientTimeout(total=None)) as resp:
            await resp.read()
            return resp.status


class CloudSchedulerService:
    """The RPC handlers over one ``SchedulerState``."""

    def __init__(self, state: SchedulerState) -> None:
        self.state = state

    def methods(self) -> dict[str, Rpc]:
        """Every method by name (served over gRPC and REST)."""
        job = S.Job
        return {
            "ListJobs": Rpc(S.ListJobsRequest, S.ListJobsResponse, self.list_jobs),
            "GetJob": Rpc(S.GetJobRequest, job, lambda r: job.wrap(self.state.get_job(r.name))),
            "CreateJob": Rpc(S.CreateJobRequest, job,
                             lambda r: job.wrap(self.state.create_job(r.parent, job.pb(r.job)))),
            "UpdateJob": Rpc(S.UpdateJobRequest, job, self.update_job),
            "DeleteJob": Rpc(S.DeleteJobRequest, empty_pb2.Empty, lambda r: self.state.delete_job(r.name)),
            "PauseJob": Rpc(S.PauseJobRequest, job, lambda r: job.wrap(self.state.pause_job(r.name))),
            "ResumeJob": Rpc(S.ResumeJobRequest, job, lambda r: job.wrap(self.state.resume_job(r.name))),
            "RunJob": Rpc(S.RunJobRequest, job, lambda r: job.wrap(self.state.run_job(r.name))),
        }

    def generic_handler(self) -> grpc.GenericRpcHandler:
        """The service, ready for ``grpc.Server.add_generic_rpc_handlers``."""
        return generic_handler(SERVICE, self.methods())

    def list_jobs(self, request: Any) -> Any:
        """ListJobs."""
        r = S.ListJobsRequest.pb(request)
        jobs, token = self.state.list_jobs(r.parent, r.page_size, r.page_token)
        out = S.ListJobsResponse.pb()(next_page_token=token)
        out.jobs.extend(jobs)
        return S.ListJobsResponse.wrap(out)

    def update_job(self, request: Any) -> Any:
        """UpdateJob."""
        r = S.UpdateJobRequest.pb(request)
        return S.Job.wrap(self.state.update_job(r.job, list(r.update_mask.paths)))

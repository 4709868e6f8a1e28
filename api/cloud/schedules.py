"""schedules.yaml: cron schedules fired by Cloud Scheduler and Pub/Sub push triggers.

This module reads the file and speaks to Cloud Scheduler (build the jobs, sync them); what a
fire or a pushed message does to jobs is api/orchestration/triggers.py. Cron maths is
cronsim's (the library healthchecks.io runs on), in the schedule's IANA time zone.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from cronsim import CronSim, CronSimError
from google.api_core import exceptions as gexc
from google.cloud import scheduler_v1
from google.protobuf import field_mask_pb2

from api.cloud.queues import QueuesInvalid, parse_duration
from api.cloud.tasks import EMULATOR_CHANNEL_OPTIONS, PerProcessClient
from api.config import Config

NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
OVERLAP = ("allow", "skip", "cancel_previous")
PAYLOAD_MODES = ("data", "message")
# What a schedule's or a trigger's `job` may say (a create request without depends_on and run_at).
JOB_FIELDS = {"type", "payload", "queue", "labels", "max_attempts", "timeout_s"}
SCHEDULE_PATH = "/handlers/schedule"

Overlap = Literal["allow", "skip", "cancel_previous"]


class SchedulesInvalid(Exception):
    """schedules.yaml cannot be read as schedules and triggers; the message names the field."""


@dataclass(frozen=True)
class ScheduleRetry:
    """Cloud Scheduler's retry config for a job (its own, not a queue's)."""

    retry_count: int = 3  # retries after a failed attempt (0 to 5)
    max_retry_duration: float = 0.0  # seconds; 0: no limit
    min_backoff: float = 5.0
    max_backoff: float = 3600.0
    max_doublings: int = 5


@dataclass(frozen=True)
class ScheduleSpec:
    """One schedule of schedules.yaml."""

    name: str
    cron: str
    time_zone: str = "UTC"
    job: dict[str, Any] = field(default_factory=dict)
    overlap: Overlap = "allow"
    description: str = ""
    paused: bool | None = None  # None: `sync` leaves the Cloud Scheduler job's state alone
    retry: ScheduleRetry = field(default_factory=ScheduleRetry)
    attempt_deadline: float = 180.0

    def fire_times(self, after: datetime) -> Iterator[datetime]:
        """The fire times after `after`, in UTC, as Cloud Scheduler computes them."""
        for t in CronSim(self.cron, after.astimezone(ZoneInfo(self.time_zone))):
            yield t.astimezone(UTC)

    def next_fire_times(self, after: datetime, count: int = 3) -> list[datetime]:
        """The next `count` fire times after `after`."""
        times = self.fire_times(after)
        return [next(times) for _ in range(count)]


@dataclass(frozen=True)
class TriggerSpec:
    """One Pub/Sub push subscription and the job each of its messages creates."""

    name: str
    subscription: str  # its short id (the envelope's `subscription` ends with it)
    job: dict[str, Any]
    payload: Literal["data", "message"] = "data"
    topic: str | None = None  # `triggers sync` creates the subscription on it when given
    description: str = ""

    def matches(self, subscription: str) -> bool:
        """Whether a push envelope's `subscription` (a full path) is this trigger's."""
        return subscription == self.subscription or subscription.endswith("/subscriptions/" + self.subscription)


@dataclass(frozen=True)
class Schedules:
    """Every schedule and trigger of schedules.yaml (none when there is no file)."""

    schedules: dict[str, ScheduleSpec] = field(default_factory=dict)
    triggers: dict[str, TriggerSpec] = field(default_factory=dict)
    source: str = "schedules.yaml"

    def __contains__(self, name: object) -> bool:
        return name in self.schedules

    def __getitem__(self, name: str) -> ScheduleSpec:
        return self.schedules[name]

    def trigger_for(self, subscription: str) -> TriggerSpec | None:
        """The trigger a push subscription belongs to."""
        return next((t for t in self.triggers.values() if t.matches(subscription)), None)

    @classmethod
    def load(cls, path: Path, *, required: bool = False) -> Schedules:
        """Read the file; a missing file is no schedules, unless `required`."""
        try:
            raw = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            if required:
                raise SchedulesInvalid(f"{path}: not found (set SCHEDULES_FILE)") from None
            return cls(source=str(path))
        except yaml.YAMLError as e:
            raise SchedulesInvalid(f"{path}: not YAML: {e}") from None
        return cls.parse(raw, source=str(path))

    @classmethod
    def parse(cls, raw: Any, *, source: str = "schedules.yaml") -> Schedules:
        """Build the schedules from the parsed YAML document; SchedulesInvalid names the field."""
        if raw is None:
            return cls(source=source)
        if not isinstance(raw, dict) or set(raw) - {"schedules", "triggers"}:
            raise SchedulesInvalid(f"{source}: expected `schedules:` and/or `triggers:` mappings")
        schedules = {str(n): _schedule(str(n), b, source) for n, b in _mapping(raw, "schedules", source).items()}
        triggers = {str(n): _trigger(str(n), b, source) for n, b in _mapping(raw, "triggers", source).items()}
        return cls(schedules, triggers, source)


def _mapping(raw: dict[str, Any], key: str, source: str) -> dict[Any, Any]:
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SchedulesInvalid(f"{source}: `{key}` must be a mapping of names")
    return value


def _fail(source: str, where: str, message: str) -> SchedulesInvalid:
    return SchedulesInvalid(f"{source}: {where}: {message}")


def _name(kind: str, name: str, body: Any, source: str, known: set[str]) -> dict[str, Any]:
    if not NAME.match(name):
        raise _fail(source, f"{kind} {name!r}", f"a name must match {NAME.pattern}")
    if not isinstance(body, dict):
        raise _fail(source, name, "must be a mapping")
    unknown = sorted(set(body) - known)
    if unknown:
        raise _fail(source, f"{name}.{unknown[0]}", f"unknown field; known: {', '.join(sorted(known))}")
    return body


def _job(where: str, body: Any, source: str) -> dict[str, Any]:
    if not isinstance(body, dict) or not isinstance(body.get("type"), str):
        raise _fail(source, f"{where}.job", "must be a mapping with a `type`")
    unknown = sorted(set(body) - JOB_FIELDS)
    if unknown:
        raise _fail(source, f"{where}.job.{unknown[0]}", f"unknown field; known: {', '.join(sorted(JOB_FIELDS))}")
    return dict(body)


def _duration(where: str, value: Any, source: str) -> float:
    try:
        return parse_duration(value)
    except QueuesInvalid as e:
        raise _fail(source, where, str(e)) from None


def _schedule(name: str, body: Any, source: str) -> ScheduleSpec:
    known = {"cron", "time_zone", "job", "overlap", "description", "paused", "retry", "attempt_deadline"}
    body = _name("schedule", name, body, source, known)
    cron = body.get("cron")
    if not isinstance(cron, str) or len(cron.split()) != 5:
        raise _fail(source, f"{name}.cron", "a unix-cron expression of five fields, e.g. \"0 2 * * *\"")
    try:
        CronSim(cron, datetime.now(UTC))
    except CronSimError as e:
        raise _fail(source, f"{name}.cron", f"{cron!r} is not valid cron: {e}") from None
    tz = str(body.get("time_zone", "UTC"))
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise _fail(source, f"{name}.time_zone", f"{tz!r} is not an IANA time zone (e.g. Europe/Paris)") from None
    overlap = body.get("overlap", "allow")
    if overlap not in OVERLAP:
        raise _fail(source, f"{name}.overlap", f"{overlap!r}: use {', '.join(OVERLAP)}")
    paused = body.get("paused")
    if paused is not None and not isinstance(paused, bool):
        raise _fail(source, f"{name}.paused", "true or false")
    retry = body.get("retry") or {}
    r_known = {"retry_count", "max_retry_duration", "min_backoff", "max_backoff", "max_doublings"}
    if not isinstance(retry, dict) or set(retry) - r_known:
        raise _fail(source, f"{name}.retry", f"a mapping of {', '.join(sorted(r_known))}")
    spec_retry = ScheduleRetry(
        retry_count=int(retry.get("retry_count", 3)),
        max_retry_duration=_duration(f"{name}.retry.max_retry_duration", retry.get("max_retry_duration", 0), source),
        min_backoff=_duration(f"{name}.retry.min_backoff", retry.get("min_backoff", "5s"), source),
        max_backoff=_duration(f"{name}.retry.max_backoff", retry.get("max_backoff", "1h"), source),
        max_doublings=int(retry.get("max_doublings", 5)),
    )
    if not 0 <= spec_retry.retry_count <= 5:
        raise _fail(source, f"{name}.retry.retry_count", "0 to 5 (Cloud Scheduler's limit)")
    deadline = _duration(f"{name}.attempt_deadline", body.get("attempt_deadline", "3m"), source)
    if not 15 <= deadline <= 1800:
        raise _fail(source, f"{name}.attempt_deadline", "15s to 30m (Cloud Scheduler's limits for HTTP targets)")
    return ScheduleSpec(
        name=name, cron=cron, time_zone=tz, job=_job(name, body.get("job"), source), overlap=overlap,
        description=str(body.get("description", "")), paused=paused, retry=spec_retry, attempt_deadline=deadline,
    )


def _trigger(name: str, body: Any, source: str) -> TriggerSpec:
    body = _name("trigger", name, body, source, {"subscription", "topic", "job", "payload", "description"})
    subscription = body.get("subscription")
    if not isinstance(subscription, str) or not re.fullmatch(r"[A-Za-z][\w.~+%-]{2,254}", subscription):
        raise _fail(source, f"{name}.subscription", "the push subscription's id (3 to 255 letters, digits, -_.~+%)")
    payload = body.get("payload", "data")
    if payload not in PAYLOAD_MODES:
        raise _fail(source, f"{name}.payload", f"{payload!r}: use data (the message's JSON data) or message "
                                               "(data and attributes as fields)")
    topic = body.get("topic")
    if topic is not None and not isinstance(topic, str):
        raise _fail(source, f"{name}.topic", "a topic id or projects/P/topics/T")
    return TriggerSpec(name=name, subscription=subscription, job=_job(name, body.get("job"), source),
                       payload=payload, topic=topic, description=str(body.get("description", "")))


# Cloud Scheduler


def make_scheduler_client(config: Config) -> scheduler_v1.CloudSchedulerClient:
    """A CloudSchedulerClient for Google, or for the emulator (which serves it too)."""
    if config.scheduler_emulator:
        import grpc
        from google.cloud.scheduler_v1.services.cloud_scheduler.transports import CloudSchedulerGrpcTransport

        channel = grpc.insecure_channel(config.scheduler_emulator, options=EMULATOR_CHANNEL_OPTIONS)
        return scheduler_v1.CloudSchedulerClient(transport=CloudSchedulerGrpcTransport(channel=channel))
    return scheduler_v1.CloudSchedulerClient()


def scheduler_parent(config: Config) -> str:
    """projects/P/locations/L, where the Cloud Scheduler jobs live."""
    return f"projects/{config.project}/locations/{config.scheduler_region}"


def scheduler_job_name(config: Config, schedule: str) -> str:
    """The Cloud Scheduler job of a schedule: named from it, so `sync` is idempotent."""
    return f"{scheduler_parent(config)}/jobs/{config.scheduler_job_prefix}{schedule}"


def schedule_from_job_name(config: Config, job_name: str) -> str | None:
    """The schedule a Cloud Scheduler job name (full, or its id alone) stands for; None if not ours."""
    job_id = job_name.rsplit("/", 1)[-1]
    prefix = config.scheduler_job_prefix
    return job_id[len(prefix):] if job_id.startswith(prefix) and len(job_id) > len(prefix) else None


def build_scheduler_job(config: Config, spec: ScheduleSpec) -> scheduler_v1.Job:
    """The Cloud Scheduler job for a schedule: POST /handlers/schedule with an OIDC token."""
    target = scheduler_v1.HttpTarget(
        uri=config.handler_base_url + SCHEDULE_PATH,
        http_method=scheduler_v1.HttpMethod.POST,
        headers={"Content-Type": "application/json"},
        body=json.dumps({"schedule": spec.name}).encode(),
    )
    if config.scheduler_identity:
        target.oidc_token = scheduler_v1.OidcToken(service_account_email=config.scheduler_identity,
                                                   audience=config.audience)
    r = spec.retry
    return scheduler_v1.Job(
        name=scheduler_job_name(config, spec.name),
        description=spec.description,
        schedule=spec.cron,
        time_zone=spec.time_zone,
        http_target=target,
        retry_config=scheduler_v1.RetryConfig(
            retry_count=r.retry_count,
            max_retry_duration=timedelta(seconds=r.max_retry_duration),
            min_backoff_duration=timedelta(seconds=r.min_backoff),
            max_backoff_duration=timedelta(seconds=r.max_backoff),
            max_doublings=r.max_doublings,
        ),
        attempt_deadline=timedelta(seconds=spec.attempt_deadline),
    )


# The fields `sync` sets, and so compares and updates.
_SYNCED = ("description", "schedule", "time_zone", "http_target", "retry_config", "attempt_deadline")


def _differences(actual: scheduler_v1.Job, wanted: scheduler_v1.Job) -> list[str]:
    a, w = scheduler_v1.Job.pb(actual), scheduler_v1.Job.pb(wanted)
    return [f for f in _SYNCED if getattr(a, f) != getattr(w, f)]


def sync_schedules(client: scheduler_v1.CloudSchedulerClient, config: Config, schedules: Schedules) -> list[str]:
    """Make Cloud Scheduler hold exactly the file's schedules: create, update, pause or resume
    as `paused:` says (when it says), delete the jobs it owns that the file no longer has.
    One line per schedule saying what happened."""
    lines = []
    existing = SchedulerClient(config, client=client).jobs()
    paused_state = scheduler_v1.Job.State.PAUSED
    for spec in schedules.schedules.values():
        wanted = build_scheduler_job(config, spec)
        actual = existing.pop(spec.name, None)
        if actual is None:
            actual = client.create_job(parent=scheduler_parent(config), job=wanted)
            what = "created"
        else:
            diff = _differences(actual, wanted)
            if diff:
                actual = client.update_job(job=wanted, update_mask=field_mask_pb2.FieldMask(paths=list(diff)))
                what = "updated " + ", ".join(diff)
            else:
                what = "unchanged"
        is_paused = actual.state == paused_state
        if spec.paused is True and not is_paused:
            client.pause_job(name=wanted.name)
            what += ", paused"
        elif spec.paused is False and is_paused:
            client.resume_job(name=wanted.name)
            what += ", resumed"
        elif is_paused:
            what += " (paused)"
        lines.append(f"{what} {spec.name}")
    for name, job in existing.items():
        with contextlib.suppress(gexc.NotFound):  # deleted meanwhile
            client.delete_job(name=job.name)
        lines.append(f"deleted {name}")
    return lines


class SchedulerClient(PerProcessClient[scheduler_v1.CloudSchedulerClient]):
    """The process's CloudSchedulerClient, and what the app asks Cloud Scheduler."""

    def __init__(self, config: Config, *, client: scheduler_v1.CloudSchedulerClient | None = None) -> None:
        super().__init__(config, make_scheduler_client, client=client)

    def jobs(self, *, timeout: float = 10.0) -> dict[str, scheduler_v1.Job]:
        """The Cloud Scheduler jobs of the schedules, by schedule name."""
        out = {}
        for job in self.client.list_jobs(parent=scheduler_parent(self._config), timeout=timeout):
            name = schedule_from_job_name(self._config, job.name)
            if name is not None:
                out[name] = job
        return out

    def run(self, schedule: str, *, timeout: float = 10.0) -> scheduler_v1.Job:
        """Fire now, as Cloud Scheduler's RunJob."""
        return self.client.run_job(name=scheduler_job_name(self._config, schedule), timeout=timeout)

    def pause(self, schedule: str, *, timeout: float = 10.0) -> scheduler_v1.Job:
        """PauseJob: no fires until resumed."""
        return self.client.pause_job(name=scheduler_job_name(self._config, schedule), timeout=timeout)

    def resume(self, schedule: str, *, timeout: float = 10.0) -> scheduler_v1.Job:
        """ResumeJob."""
        return self.client.resume_job(name=scheduler_job_name(self._config, schedule), timeout=timeout)

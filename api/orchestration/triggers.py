"""What a schedule's fire and a pushed Pub/Sub message do: create their job, exactly once.

A fire is delivered at least once (Cloud Scheduler retries, and may deliver twice); its job
is created at most once per (schedule, fire time), by the primary key of `schedule_fires`,
and its overlap policy is applied in the same transaction (api/store/triggers.py). A pushed
message creates at most one job per (trigger, messageId), by a unique index; a message that
can create none is acknowledged and recorded, never left to be redelivered forever.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import uuid
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from google.api_core import exceptions as gexc
from google.auth.exceptions import DefaultCredentialsError
from pydantic import ValidationError
from sqlalchemy.engine import Row

from api.cloud.schedules import Schedules
from api.errors import InvalidRequest, ScheduleNotFound
from api.orchestration import lifecycle
from api.orchestration.requests import CreateJob
from api.state import AppState
from api.store import dependencies
from api.store import jobs as store
from api.store import triggers as fires

logger = logging.getLogger(__name__)


def job_request(job: dict[str, Any], payload: dict[str, Any] | None = None) -> CreateJob:
    """The create request a schedule's or trigger's `job` stands for (the message's payload
    over the job's own); pydantic's ValidationError if it is not one."""
    body = dict(job)
    if payload is not None:
        body["payload"] = {**(job.get("payload") or {}), **payload}
    return CreateJob.model_validate(body)


def check(state: AppState, schedules: Schedules | None = None) -> list[str]:
    """Each schedule's and trigger's job checked as a create would be (type, payload, queue,
    limits): one line per problem, naming the schedule and the field."""
    schedules = schedules or state.schedules
    problems = []
    # A trigger's payload comes with each message: only its type, queue and limits are known now.
    entries = [(f"{n}.job", s.job, False) for n, s in schedules.schedules.items()]
    entries += [(f"{n}.job", t.job, True) for n, t in schedules.triggers.items()]
    for where, job, by_message in entries:
        try:
            req = job_request(job)
            errors = lifecycle.check_job(state, req) + lifecycle.no_unique_key(req, "schedules and triggers")
        except ValidationError as e:
            errors = lifecycle.field_errors(e)
        if by_message:
            errors = [e for e in errors if not e["field"].startswith("payload")]
        problems += [f"{schedules.source}: {where}.{err['field']}: {err['message']}" for err in errors]
    return problems


@dataclass(frozen=True)
class Fire:
    """What a delivered fire did: created its job, skipped (overlap), or was delivered before."""

    outcome: str  # created | skipped
    duplicate: bool
    scheduled_for: datetime
    job: Row[Any] | None
    previous_job_id: uuid.UUID | None


def fire_schedule(state: AppState, name: str, scheduled_for: datetime) -> Fire:
    """Create the schedule's job for this fire time, once, as its overlap policy says."""
    spec = state.schedules.schedules.get(name)
    if spec is None:
        raise ScheduleNotFound(f"no schedule {name!r} in {state.schedules.source}", schedule=name)
    new = replace(lifecycle.new_job(state, job_request(spec.job), owner=None),
                  schedule=name, scheduled_for=scheduled_for)
    released: list[Any] = []
    cancelled: list[Row[Any]] = []
    with state.engine.begin() as conn:
        fires.lock_schedule(conn, name)
        before = fires.fire_of(conn, name, scheduled_for)
        if before is not None:
            job = store.get_job(conn, before.job_id) if before.job_id else None
            return Fire(before.outcome, True, scheduled_for, job, before.previous_job_id)
        active = fires.active_jobs(conn, name)
        previous = active[-1].id if active else None
        if spec.overlap == "skip" and active:
            fires.record_fire(conn, name, scheduled_for, outcome="skipped", job_id=None, previous_job_id=previous)
            return Fire("skipped", False, scheduled_for, None, previous)
        if spec.overlap == "cancel_previous":
            for a in active:
                row = store.request_cancel(conn, a.id)
                if row is not None and row.state == "CANCELLED":
                    cancelled.append(row)
                    if row.has_dependents:
                        released += dependencies.release(conn, [row.id])
        row = store.insert_job(conn, new)
        assert row is not None  # no idempotency key: nothing to conflict with
        if spec.overlap != "cancel_previous":
            previous = None
        fires.record_fire(conn, name, scheduled_for, outcome="created", job_id=row.id, previous_job_id=previous)
    if released:
        lifecycle.continue_released(state, released)
    for c in cancelled:
        lifecycle.delete_cancelled_task(state, c)
    return Fire("created", False, scheduled_for, lifecycle.enqueue_ready(state, [row])[0], previous)


@dataclass(frozen=True)
class Pushed:
    """What a pushed message did: its job (new or from an earlier delivery), or a rejection."""

    job: Row[Any] | None = None
    duplicate: bool = False
    rejected: str | None = None
    errors: list[dict[str, str]] | None = None


def parse_envelope(body: Any) -> tuple[str, str, dict[str, Any]]:
    """(subscription, messageId, message) of a Pub/Sub push envelope; 400 naming the field."""
    if not isinstance(body, dict):
        raise InvalidRequest("a Pub/Sub push envelope is a JSON object",
                             errors=[{"field": "", "message": "not an object"}])
    message, subscription = body.get("message"), body.get("subscription")
    if not isinstance(message, dict):
        raise InvalidRequest("the envelope has no message", errors=[{"field": "message", "message": "an object"}])
    if not isinstance(subscription, str) or not subscription:
        raise InvalidRequest("the envelope names no subscription",
                             errors=[{"field": "subscription", "message": "projects/P/subscriptions/S"}])
    message_id = message.get("messageId", message.get("message_id"))
    if not isinstance(message_id, str) or not 1 <= len(message_id) <= 256:
        raise InvalidRequest("the message has no messageId",
                             errors=[{"field": "message.messageId", "message": "1 to 256 characters"}])
    data = message.get("data", "")
    if not isinstance(data, str):
        raise InvalidRequest("message.data must be base64 text",
                             errors=[{"field": "message.data", "message": "base64"}])
    attributes = message.get("attributes") or {}
    if not isinstance(attributes, dict) or not all(isinstance(v, str) for v in attributes.values()):
        raise InvalidRequest("message.attributes must map names to strings",
                             errors=[{"field": "message.attributes", "message": "an object of strings"}])
    return subscription, message_id, message


def _payload(mode: str, message: dict[str, Any], message_id: str) -> dict[str, Any] | str:
    """The job payload a message makes, or why it makes none."""
    try:
        raw = base64.b64decode(message.get("data", ""), validate=True)
    except (binascii.Error, ValueError):
        return "message.data is not base64"
    try:
        decoded: Any = json.loads(raw) if raw else {}
    except (UnicodeDecodeError, ValueError):
        decoded = None
    if mode == "data":
        if not isinstance(decoded, dict):
            return "message.data is not a JSON object (the trigger's payload is `data`)"
        return decoded
    if decoded is None:
        try:
            decoded = raw.decode()
        except UnicodeDecodeError:
            decoded = base64.b64encode(raw).decode()
    return {"data": decoded, "attributes": dict(message.get("attributes") or {}), "message_id": message_id,
            "publish_time": message.get("publishTime", message.get("publish_time"))}


def push_message(state: AppState, body: Any) -> Pushed:
    """Create the job a pushed message asks for, once per (trigger, messageId)."""
    subscription, message_id, message = parse_envelope(body)
    trigger = state.schedules.trigger_for(subscription)
    if trigger is None:
        return _reject(state, subscription, message_id, None, f"no trigger for subscription {subscription}")
    payload = _payload(trigger.payload, message, message_id)
    if isinstance(payload, str):
        return _reject(state, subscription, message_id, trigger.name, payload)
    try:
        req = job_request(trigger.job, payload)
        errors = lifecycle.check_job(state, req) + lifecycle.no_unique_key(req, "schedules and triggers")
    except ValidationError as e:
        errors = lifecycle.field_errors(e)
    if errors:
        return _reject(state, subscription, message_id, trigger.name, "the job is not valid", errors)
    new = replace(lifecycle.new_job(state, req, owner=None), trigger=trigger.name, message_id=message_id)
    with state.engine.begin() as conn:
        row = store.insert_message_job(conn, new)
        if row is None:
            return Pushed(job=store.job_of_message(conn, trigger.name, message_id), duplicate=True)
    return Pushed(job=lifecycle.enqueue_ready(state, [row])[0])


def _reject(state: AppState, subscription: str, message_id: str, trigger: str | None, reason: str,
            errors: list[dict[str, str]] | None = None) -> Pushed:
    with state.engine.begin() as conn:
        first = fires.record_rejection(conn, subscription=subscription, message_id=message_id, trigger=trigger,
                                       reason=reason, errors=errors)
    if first:
        logger.warning("pushed message acknowledged without a job",
                       extra={"subscription": subscription, "message_id": message_id, "trigger": trigger,
                              "reason": reason})
    return Pushed(rejected=reason, errors=errors)


def scheduler_jobs(state: AppState) -> tuple[dict[str, Any], bool]:
    """Cloud Scheduler's jobs of the schedules, and whether it answered (a read shows the file
    alone when it did not)."""
    if not state.schedules.schedules or state.scheduler is None:
        return {}, state.scheduler is not None
    try:
        return state.scheduler.jobs(), True
    except (gexc.GoogleAPIError, DefaultCredentialsError):  # down, or no credentials to ask it with
        return {}, False

"""/v1/schedules…: the schedules of schedules.yaml as they stand, and fire, pause, resume.

The file says what a schedule is; Cloud Scheduler says whether it is paused and when it last
ran; PostgreSQL says what each fire did. Pause, resume and run go through Cloud Scheduler,
so production and the dashboard agree (docs/schedules.md: how `schedules sync` treats them).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, request
from google.api_core import exceptions as gexc
from google.cloud import scheduler_v1
from sqlalchemy.engine import Row

from api.cloud.schedules import ScheduleSpec, scheduler_job_name
from api.errors import Forbidden, ScheduleNotFound, SchedulerUnavailable
from api.state import AppState
from api.store import triggers as fires
from api.store.engine import autocommit
from api.times import rfc3339
from api.web.http import authenticate, check_params, current_state, json_response, principal

bp = Blueprint("schedules", __name__)
bp.before_request(authenticate)

NEXT_FIRES = 3
_PAUSED = scheduler_v1.Job.State.PAUSED


def _fire(row: Row[Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {"scheduled_for": rfc3339(row.scheduled_for), "outcome": row.outcome,
            "job_id": str(row.job_id) if row.job_id else None, "job_state": row.job_state,
            "previous_job_id": str(row.previous_job_id) if row.previous_job_id else None,
            "fired_time": rfc3339(row.fired_time)}


def schedule_resource(state: AppState, spec: ScheduleSpec, job: scheduler_v1.Job | None, last: Row[Any] | None,
                      *, scheduler_known: bool) -> dict[str, Any]:
    """A schedule as the API shows it: the file's definition, Cloud Scheduler's state, the last fire."""
    if job is not None:
        paused = job.state == _PAUSED
        scheduler = {"name": job.name, "state": job.state.name,
                     "schedule_time": rfc3339(job.schedule_time) if job.schedule_time else None,
                     "last_attempt_time": rfc3339(job.last_attempt_time) if job.last_attempt_time else None,
                     "status_code": job.status.code if job.status else 0,
                     "status_message": job.status.message if job.status else ""}
    else:
        paused = bool(spec.paused)
        scheduler = {"name": scheduler_job_name(state.config, spec.name),
                     "state": "NOT_SYNCED" if scheduler_known else "UNKNOWN"}
    return {
        "name": spec.name, "cron": spec.cron, "time_zone": spec.time_zone, "description": spec.description,
        "overlap": spec.overlap, "paused": paused,
        "job": {k: v for k, v in spec.job.items() if k != "payload"} | {"payload": spec.job.get("payload", {})},
        "next_fire_times": [] if paused else [rfc3339(t) for t in spec.next_fire_times(datetime.now(UTC), NEXT_FIRES)],
        "last_fire": _fire(last),
        "scheduler": scheduler,
    }


def _scheduler_jobs(state: AppState) -> tuple[dict[str, scheduler_v1.Job], bool]:
    """Cloud Scheduler's jobs of the schedules, and whether it answered (a read shows the file
    alone when it did not)."""
    if not state.schedules.schedules or state.scheduler is None:
        return {}, state.scheduler is not None
    try:
        return state.scheduler.jobs(), True
    except gexc.GoogleAPIError:
        return {}, False


def _spec(state: AppState, name: str) -> ScheduleSpec:
    spec = state.schedules.schedules.get(name)
    if spec is None:
        raise ScheduleNotFound(f"no schedule {name!r} in {state.schedules.source}", schedule=name)
    return spec


@bp.get("/v1/schedules")
def list_schedules() -> Response:
    """Every schedule (and trigger) of schedules.yaml as it stands."""
    check_params(request.args, ())
    state = current_state()
    jobs, known = _scheduler_jobs(state)
    with autocommit(state.engine) as conn:
        last = fires.last_fires(conn)
    return json_response({
        "schedules": [schedule_resource(state, s, jobs.get(n), last.get(n), scheduler_known=known)
                      for n, s in sorted(state.schedules.schedules.items())],
        "triggers": [{"name": t.name, "subscription": t.subscription, "topic": t.topic, "payload": t.payload,
                      "description": t.description, "job": t.job} for t in state.schedules.triggers.values()],
    })


@bp.get("/v1/schedules/<name>")
def get_schedule(name: str) -> Response:
    """One schedule, with its latest fires."""
    check_params(request.args, ())
    state = current_state()
    spec = _spec(state, name)
    jobs, known = _scheduler_jobs(state)
    with autocommit(state.engine) as conn:
        recent = fires.recent_fires(conn, name)
    out = schedule_resource(state, spec, jobs.get(name), recent[0] if recent else None, scheduler_known=known)
    out["fires"] = [_fire(r) for r in recent]
    return json_response(out)


def _act(name: str, action: str) -> Response:
    state = current_state()
    if not principal().admin:
        raise Forbidden(f"only an admin may {action} a schedule: it acts for every user")
    _spec(state, name)
    assert state.scheduler is not None
    try:
        job = getattr(state.scheduler, action)(name)
    except gexc.NotFound:
        raise ScheduleNotFound(f"schedule {name!r} has no Cloud Scheduler job: run `cloudjobs schedules sync`",
                               schedule=name) from None
    except gexc.GoogleAPIError as e:
        raise SchedulerUnavailable(f"Cloud Scheduler did not {action} {name!r}: {type(e).__name__}",
                                   headers={"Retry-After": "5"}) from None
    with autocommit(state.engine) as conn:
        last = fires.last_fires(conn).get(name)
    return json_response(schedule_resource(state, state.schedules[name], job, last, scheduler_known=True),
                         status=202 if action == "run" else 200)


@bp.post("/v1/schedules/<name>:run")
def run_schedule(name: str) -> Response:
    """Fire now, through Cloud Scheduler's RunJob (the fire arrives at /handlers/schedule)."""
    return _act(name, "run")


@bp.post("/v1/schedules/<name>:pause")
def pause_schedule(name: str) -> Response:
    """Pause in Cloud Scheduler: no fires until resumed."""
    return _act(name, "pause")


@bp.post("/v1/schedules/<name>:resume")
def resume_schedule(name: str) -> Response:
    """Resume in Cloud Scheduler."""
    return _act(name, "resume")

"""/v1/schedules…: the schedules of schedules.yaml as they stand, and fire, pause, resume.

The file says what a schedule is; Cloud Scheduler says whether it is paused and when it last
ran; PostgreSQL says what each fire did. Pause, resume and run go through Cloud Scheduler,
so production and the dashboard agree (docs/schedules.md: how `schedules sync` treats them).
"""

from __future__ import annotations

from flask import Blueprint, Response, request
from google.api_core import exceptions as gexc
from google.auth.exceptions import DefaultCredentialsError

from api.cloud.schedules import ScheduleSpec
from api.errors import Forbidden, ScheduleNotFound, SchedulerUnavailable
from api.orchestration import triggers
from api.state import AppState
from api.store import triggers as fires
from api.store.engine import autocommit
from api.web.http import authenticate, check_params, current_state, json_response, principal
from api.web.resources import fire_resource, schedule_resource

bp = Blueprint("schedules", __name__)
bp.before_request(authenticate)


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
    jobs, known = triggers.scheduler_jobs(state)
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
    jobs, known = triggers.scheduler_jobs(state)
    with autocommit(state.engine) as conn:
        recent = fires.recent_fires(conn, name)
    out = schedule_resource(state, spec, jobs.get(name), recent[0] if recent else None, scheduler_known=known)
    out["fires"] = [fire_resource(r) for r in recent]
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
    except (gexc.GoogleAPIError, DefaultCredentialsError) as e:
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

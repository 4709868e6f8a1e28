"""Queue controls: GET /v1/queues (each queue of queues.yaml with its Cloud Tasks state and its
jobs), POST /v1/queues/{name}:pause and :resume (Cloud Tasks PauseQueue/ResumeQueue; admins).

docs/operations.md says what each figure is and what to alert on."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response
from google.api_core import exceptions as gexc
from google.cloud import tasks_v2

from api.cloud.queues import QueueSpec
from api.cloud.tasks import queue_path
from api.errors import Forbidden, QueueNotFound, TasksUnavailable
from api.state import AppState
from api.store import operations as op_store
from api.web.http import authenticate, current_state, json_response, principal

bp = Blueprint("queues", __name__)
bp.before_request(authenticate)

ACTIVE = ("WAITING", "CREATED", "QUEUED", "RUNNING")

@bp.get("/v1/queues")
def list_queues() -> Response:
    """Every queue of queues.yaml: its settings, Cloud Tasks' state, and its jobs."""
    return json_response({"queues": queues_overview(current_state(), scope=principal().scope)})


def queues_overview(state: AppState, *, scope: str | None) -> list[dict[str, Any]]:
    """Every queue of queues.yaml as GET /v1/queues and the dashboard's queues page show it;
    the jobs counted are `scope`'s (all with None)."""
    with state.engine.connect() as conn:
        live = op_store.live_jobs(conn, scope=scope)
        recent = op_store.recent_attempts(conn, scope=scope)
    return [queue_resource(state, spec, [r for r in live if r.queue == name], recent.get(name))
            for name, spec in state.queues.specs.items()]


def queue_resource(state: AppState, spec: QueueSpec, live: list[Any], recent: Any) -> dict[str, Any]:
    """A queue as GET /v1/queues shows it."""
    counts = {s: 0 for s in ACTIVE}
    oldest = None
    for r in live:
        counts[r.state] = r.n
        if r.oldest_s is not None:
            oldest = max(oldest or 0.0, r.oldest_s)

    def window(ok: int, bad: int) -> dict[str, Any]:
        return {"completed": ok, "failed": bad, "failure_rate": round(bad / (ok + bad), 4) if ok + bad else None}

    return {
        "name": spec.name,
        "cloud_tasks": cloud_tasks_state(state, spec.name),
        "rate_limits": {"max_dispatches_per_second": spec.max_dispatches_per_second,
                        "max_concurrent_dispatches": spec.max_concurrent_dispatches},
        "retry": {"max_attempts": spec.retry.max_attempts, "min_backoff_s": spec.retry.min_backoff,
                  "max_backoff_s": spec.retry.max_backoff},
        "jobs_per_task": spec.jobs_per_task,
        "concurrency_per_key": spec.per_key.concurrency,
        "jobs": counts,
        "oldest_waiting_s": round(oldest, 3) if oldest is not None else None,
        "last_5m": window(recent.ok_5m if recent else 0, recent.bad_5m if recent else 0),
        "last_1h": window(recent.ok_1h if recent else 0, recent.bad_1h if recent else 0),
    }


def cloud_tasks_state(state: AppState, name: str) -> str:
    """RUNNING, PAUSED or DISABLED as Cloud Tasks says; NOT_SYNCED (no queue: `cloudjobs queues
    sync`), or UNKNOWN when Cloud Tasks does not answer."""
    try:
        queue = state.tasks.client.get_queue(name=queue_path(state.config, name), timeout=5)
    except gexc.NotFound:
        return "NOT_SYNCED"
    except gexc.GoogleAPIError:
        return "UNKNOWN"
    return tasks_v2.Queue.State(queue.state).name


@bp.post("/v1/queues/<name>:pause")
def pause(name: str) -> Response:
    """Hold the queue's dispatches (Cloud Tasks PauseQueue); admins only."""
    return _control(name, "pause")


@bp.post("/v1/queues/<name>:resume")
def resume(name: str) -> Response:
    """Dispatch again (Cloud Tasks ResumeQueue); admins only."""
    return _control(name, "resume")


def _control(name: str, action: str, *, via: str = "api") -> Response:
    state = current_state()
    set_queue_paused(state, name, pause=action == "pause", via=via)
    return json_response({"name": name, "cloud_tasks": cloud_tasks_state(state, name)})


def set_queue_paused(state: AppState, name: str, *, pause: bool, via: str) -> None:
    """Pause or resume a queue of queues.yaml in Cloud Tasks, audited; 404 for another name,
    403 for a caller who is not an admin."""
    if name not in state.queues:
        raise QueueNotFound(f"no queue {name!r} in queues.yaml")
    if not principal().admin:
        raise Forbidden("only an admin may pause or resume a queue")
    path = queue_path(state.config, name)
    try:
        if pause:
            state.tasks.client.pause_queue(name=path, timeout=10)
        else:
            state.tasks.client.resume_queue(name=path, timeout=10)
    except gexc.NotFound:
        raise QueueNotFound(f"queue {name!r} is not in Cloud Tasks yet: run `cloudjobs queues sync`") from None
    except gexc.GoogleAPIError as e:
        raise TasksUnavailable(f"Cloud Tasks did not answer ({type(e).__name__}); try again") from None
    with state.engine.begin() as conn:
        op_store.audit(conn, principal=principal().owner, action="queue.pause" if pause else "queue.resume",
                       target=f"queues/{name}", jobs_touched=None, via=via)

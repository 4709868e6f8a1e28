"""Creating jobs: validate against the type and queue, insert, commit, then enqueue."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from google.api_core import exceptions as gexc
from pydantic import ValidationError
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import DBAPIError, IntegrityError

from api.cloud.queues import MAX_JOBS_PER_TASK
from api.cloud.tasks import build_task, is_shared, jobs_time_budget, shared_task_id, task_id_for, task_path
from api.errors import IdempotencyKeyReused, InvalidRequest, JobStateConflict, UniqueKeyTaken, ValidationFailed
from api.observability import metrics
from api.observability import traces as observability
from api.orchestration import webhooks
from api.orchestration.coalesce import TaskFill
from api.orchestration.flow import check_flow, interval_of, key_settings
from api.orchestration.requests import CreateJob
from api.state import AppState
from api.store import dependencies, flow
from api.store import jobs as store
from api.store.engine import autocommit
from api.store.tables import TERMINAL

logger = logging.getLogger(__name__)

MAX_SCHEDULE_AHEAD = timedelta(days=30)
_compact_json = json.JSONEncoder(separators=(",", ":")).encode  # one encoder, not one per job
MAX_IDEMPOTENCY_KEY = 255
FLOW_FIELDS = ("unique_key", "unique_for_s", "unique_mode", "concurrency_key", "priority", "throttle_key",
               "callback_url")


def json_size(value: Any) -> int:
    """The size of a JSON value as the limits count it: compact, ASCII-escaped."""
    return len(_compact_json(value))


def unstorable(value: Any, path: str = "payload") -> str | None:
    """The path of the first string PostgreSQL's JSONB cannot hold (NUL, lone surrogates)."""
    if isinstance(value, str):
        if "\x00" in value:
            return path
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            bad = unstorable(k, path) or unstorable(v, f"{path}.{k}")
            if bad:
                return bad
    elif isinstance(value, list):
        for i, v in enumerate(value):
            bad = unstorable(v, f"{path}[{i}]")
            if bad:
                return bad
    return None


def field_errors(e: ValidationError, prefix: str = "") -> list[dict[str, str]]:
    """Pydantic's errors as problem+json `errors` entries: a dotted field and a message."""
    out = []
    for err in e.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in err["loc"])
        out.append({"field": f"{prefix}{loc}" if loc else prefix.rstrip("."), "message": err["msg"]})
    return out


def parse_create(state: AppState, body: Any) -> CreateJob:
    """Validate a create request against its model, job type and queue; raise 422 if not."""
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    try:
        req = CreateJob.model_validate(body)
    except ValidationError as e:
        raise ValidationFailed("the job is not valid", errors=field_errors(e)) from None
    errors = check_job(state, req)
    if errors:
        raise ValidationFailed("the job is not valid", errors=errors)
    return req


def check_job(state: AppState, req: CreateJob) -> list[dict[str, str]]:
    """Field errors of a job that its model alone cannot see: type, payload, queue, limits."""
    jt = state.registry.types.get(req.type)
    if jt is None:
        known = ", ".join(sorted(state.registry.types))
        return [{"field": "type", "message": f"unknown job type {req.type!r}; known: {known}"}]
    errors: list[dict[str, str]] = []
    for name, value in (("payload", req.payload), ("labels", req.labels)):
        if bad := unstorable(value, name):
            return [{"field": bad, "message": "text may not hold NUL characters or unpaired surrogates"}]
    size = json_size(req.payload)
    if size > state.config.max_payload_bytes:
        return [{"field": "payload", "message": f"{size} bytes; at most {state.config.max_payload_bytes}"}]
    try:
        jt.parse(req.payload)
    except ValidationError as e:
        errors += field_errors(e, "payload.")
    queue = req.queue or jt.queue or state.queues.route(req.type)
    if queue not in state.queues:
        known = ", ".join(state.queues.specs)
        return errors + [{"field": "queue", "message": f"unknown queue {queue!r}; known: {known}"}]
    spec = state.queues[queue]
    if req.max_attempts and spec.retry.max_attempts > 0 and req.max_attempts > spec.retry.max_attempts:
        errors.append({
            "field": "max_attempts",
            "message": f"at most {spec.retry.max_attempts}, the queue's max_attempts",
        })
    if req.timeout_s and req.timeout_s > spec.dispatch_deadline:
        errors.append({
            "field": "timeout_s",
            "message": f"at most {spec.dispatch_deadline:g}, the queue's dispatch deadline",
        })
    if req.run_at and req.run_at - datetime.now(UTC) > MAX_SCHEDULE_AHEAD:
        errors.append({"field": "run_at", "message": "at most 30 days ahead"})
    errors += check_flow(spec, jt, req)
    if req.callback_url is not None:
        errors += check_callback(state, req.callback_url)
    return errors


def no_unique_key(req: CreateJob, where: str) -> list[dict[str, str]]:
    """A unique key where no create answers with its holder (workflow steps, schedule and
    trigger jobs, which have their own once-only rules), refused."""
    if req.unique_key is None:
        return []
    return [{"field": "unique_key", "message": f"unique keys are for creates through the API, not for {where}"}]


def check_callback(state: AppState, url: str, field: str = "callback_url") -> list[dict[str, str]]:
    """A callback URL that cloudjobs can sign and will call (docs/webhooks.md), or its error."""
    if why := webhooks.check_url(url, allow_private=state.config.webhook_allow_private):
        return [{"field": field, "message": why}]
    if not state.config.webhook_secrets:
        return [{"field": field, "message": "this deployment has no WEBHOOK_SECRETS to sign webhooks with"}]
    if state.config.webhook_queue not in state.queues:
        return [{"field": field, "message": f"queues.yaml has no queue {state.config.webhook_queue!r} for webhooks"}]
    return []


def new_job(
    state: AppState, req: CreateJob, *, idempotency_key: str | None = None, owner: str | None = None
) -> store.NewJob:
    """The row for a validated request, with its defaults resolved."""
    jt = state.registry[req.type]
    queue = req.queue or jt.queue or state.queues.route(req.type)
    spec = state.queues[queue]
    queue_max = spec.retry.max_attempts if spec.retry.max_attempts > 0 else 1000
    max_attempts = min(req.max_attempts or jt.max_attempts or queue_max, queue_max)
    timeout_s = min(req.timeout_s or jt.timeout_s, int(spec.dispatch_deadline))
    job_id = uuid.uuid4()
    return store.NewJob(
        id=job_id,
        type=req.type,
        queue=queue,
        payload=req.payload,
        max_attempts=max_attempts,
        timeout_s=timeout_s,
        labels=req.labels,
        task_name=task_path(state.config, queue, task_id_for(job_id)),
        # A run_at in the past means now; it must not skew queue-wait history.
        scheduled_time=req.run_at if req.run_at and req.run_at > datetime.now(UTC) else None,
        idempotency_key=idempotency_key,
        request_hash=request_hash(req) if idempotency_key else None,
        owner=owner,
        depends_on=tuple(req.depends_on),
        on_dependency_failure=req.on_dependency_failure if req.depends_on else None,
        **_flow_values(state, req, spec),
    )


def _flow_values(state: AppState, req: CreateJob, spec: Any) -> dict[str, Any]:
    """A job's flow-control columns, its limits resolved (api/orchestration/flow.py), and its
    callback: its own, its type's, or the deployment's."""
    jt = state.registry.types.get(req.type)
    callback = req.callback_url or (jt.callback_url if jt else None) or state.config.webhook_url
    if req.unique_key is None and req.concurrency_key is None and req.throttle_key is None and callback is None \
            and req.priority == 0:
        return {}
    limit, throttle = key_settings(spec, jt, req)
    return {"unique_key": req.unique_key, "unique_for_s": req.unique_for_s, "unique_mode": req.unique_mode,
            "concurrency_key": req.concurrency_key, "concurrency_limit": limit, "priority": req.priority,
            "throttle_key": throttle, "callback_url": callback}


def request_hash(req: CreateJob) -> str:
    """A digest of the request, to tell a replay from another request under the same key."""
    # A request's digest leaves out the options it does not use (dependencies, flow control),
    # so that it is what it was before they existed.
    plain = set() if req.depends_on else {"depends_on", "on_dependency_failure"}
    plain |= {f for f in FLOW_FIELDS if getattr(req, f) == CreateJob.model_fields[f].default}
    canonical = json.dumps(req.model_dump(mode="json", exclude=plain), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_idempotency_key(key: str | None) -> str | None:
    """The Idempotency-Key header, if any, within its limits."""
    if key is None:
        return None
    if not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY or not key.isprintable():
        raise InvalidRequest(f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable characters")
    return key


def create_job(
    state: AppState, req: CreateJob, *, idempotency_key: str | None, owner: str | None
) -> tuple[Row[Any], bool]:
    """Insert and commit the job, then enqueue it; returns the job and whether it is new.

    Commit first, then enqueue: a task must never reach the handler before its row exists.
    The row is inserted QUEUED, so a create costs one INSERT and one CreateTask. If the
    enqueue fails, the job is put back to CREATED, durable, and the sweeper enqueues it
    later; if the process dies in between, the sweeper finds a QUEUED job without a task
    (docs/semantics.md). The INSERT commits by itself (one round trip): the read of a
    replay's original needs no transaction with it.
    """
    new = new_job(state, req, idempotency_key=idempotency_key, owner=owner)
    if new.unique_key is not None:
        return _create_unique(state, new, idempotency_key=idempotency_key, owner=owner)
    if not new.depends_on and not new.keyed and state.coalescer is not None and (limit := _share_limit(state, new)) > 1:
        return _create_coalesced(state, new, limit, idempotency_key=idempotency_key, owner=owner)
    if new.depends_on:
        # The parents are locked and their states read in the insert's transaction.
        with state.engine.begin() as conn:
            [new], parents = with_dependencies(conn, [new], owner=owner, field="depends_on")
            row = store.insert_job(conn, new)
            if row is not None:
                insert_edges(conn, [row], [new], parents)
    else:
        with autocommit(state.engine) as conn:
            row = store.insert_job(conn, new)
    if row is None:
        return _replayed(state, new, idempotency_key, owner), False
    metrics.created([row])
    return enqueue_ready(state, [row])[0], True


MAX_UNIQUE_TRIES = 5


def _create_unique(state: AppState, new: store.NewJob, *, idempotency_key: str | None,
                   owner: str | None) -> tuple[Row[Any], bool]:
    """A create with a unique key: the job, or the one holding the key (api/store/flow.py).

    In `replace` mode a holder that has not started is cancelled (REPLACED) in the insert's
    transaction. A holder that let go of its key between the insert and the read, or a
    concurrent replace, makes it try again (a few times: each try either inserts or finds a
    holder that is there)."""
    key = new.unique_key
    assert key is not None
    for _ in range(MAX_UNIQUE_TRIES):
        replaced = None
        with state.engine.begin() as conn:
            parents: dict[uuid.UUID, str] = {}
            if new.depends_on:
                [new], parents = with_dependencies(conn, [new], owner=owner, field="depends_on")
            flow.release_expired_keys(conn, [key], owner=owner)
            if new.unique_mode == "replace":
                holder = flow.key_holders(conn, [key], owner=owner, lock=True).get(key)
                if holder is not None:
                    replaced = flow.replace_holder(conn, holder, new.id)
            row = store.insert_job(conn, new)
            if row is None:
                existing = _conflict(conn, new, idempotency_key, owner)
                if existing is None:
                    continue  # let go meanwhile: insert again
                if new.unique_mode == "replace" and existing.unique_key == new.unique_key \
                        and existing.started_time is None and existing.state in ("WAITING", "CREATED", "QUEUED") \
                        and existing.idempotency_key != idempotency_key:
                    continue  # a concurrent replace won this try: replace it in turn
                return existing, False
            if parents:
                insert_edges(conn, [row], [new], parents)
            released = dependencies.release(conn, [replaced.id]) if replaced is not None and replaced.has_dependents else []
        if replaced is not None:
            after_ended(state, [replaced, *released])
            delete_cancelled_task(state, replaced)
        metrics.created([row])
        return enqueue_ready(state, [row])[0], True
    raise UniqueKeyTaken("the unique key changed hands too often; try again", unique_key=new.unique_key)


def _conflict(conn: Connection, new: store.NewJob, idempotency_key: str | None, owner: str | None) -> Row[Any] | None:
    """What a create that inserted nothing meets: the replay of its Idempotency-Key, or the
    job holding its unique key; None if neither is there any more."""
    if idempotency_key is not None:
        existing = store.job_by_idempotency_key(conn, idempotency_key, owner=owner)
        if existing is not None:
            if existing.request_hash != new.request_hash:
                raise IdempotencyKeyReused("this Idempotency-Key was used with a different request",
                                           job_id=str(existing.id))
            return existing
    if new.unique_key is None:
        return None
    return flow.key_holders(conn, [new.unique_key], owner=owner).get(new.unique_key)


def _replayed(state: AppState, new: store.NewJob, idempotency_key: str | None, owner: str | None) -> Row[Any]:
    """The job an idempotent replay names (the INSERT found its key taken)."""
    with autocommit(state.engine) as conn:
        existing = store.job_by_idempotency_key(conn, idempotency_key or "", owner=owner)
    if existing is None:  # deleted between the two statements; treat as a conflict
        raise IdempotencyKeyReused("the Idempotency-Key is in use; try again")
    if existing.request_hash != new.request_hash:
        raise IdempotencyKeyReused(
            "this Idempotency-Key was used with a different request", job_id=str(existing.id)
        )
    return existing


def _share_limit(state: AppState, new: store.NewJob) -> int:
    """How many jobs may share this job's task: its queue's jobs_per_task, capped by its type's."""
    spec = state.queues[new.queue]
    jt = state.registry.types.get(new.type)
    return min(spec.jobs_per_task, jt.jobs_per_task or spec.jobs_per_task) if jt else spec.jobs_per_task


def _create_coalesced(state: AppState, new: store.NewJob, limit: int, *, idempotency_key: str | None,
                      owner: str | None) -> tuple[Row[Any], bool]:
    """A single create that shares a task with the creates of this process that arrive within
    CREATE_COALESCE_MS (api/orchestration/coalesce.py)."""
    coalescer = state.coalescer
    assert coalescer is not None
    spec = state.queues[new.queue]
    key = (new.queue, new.scheduled_time)
    group, leader = coalescer.join(
        key, new.id, limit=limit, budget_s=jobs_time_budget(spec),
        timeout_s=new.timeout_s, name_for=lambda first: task_path(state.config, new.queue, shared_task_id(first)))
    new = replace(new, task_name=group.name)
    row = None
    try:
        with autocommit(state.engine) as conn:
            row = store.insert_job(conn, new)
    finally:
        coalescer.report(group, new.id, row)  # None: not in the task (a replay, or the INSERT failed)
        if leader:
            coalescer.lead(group, key, lambda rows: enqueue(state, rows))
    if row is None:
        return _replayed(state, new, idempotency_key, owner), False
    metrics.created([row])
    after = coalescer.outcome(group, new.id)
    if after is not None:
        return after, True
    # Committed too late for the group's task: a task of its own.
    with state.engine.begin() as conn:
        alone = store.unshare(conn, [row], state="QUEUED")
    return (enqueue(state, alone)[0] if alone else row), True


def with_dependencies(
    conn: Connection, new: list[store.NewJob], *, owner: str | None, field: str
) -> tuple[list[store.NewJob], dict[uuid.UUID, str]]:
    """Each job as it must be inserted, given its dependencies' states now: WAITING for the
    ones not yet terminal, FAILED or CANCELLED at once when one already failed and its
    policy says so, QUEUED (the default) when all are done; and the parents' states. Locks
    the parents (see dependencies.lock_parents); an unknown or foreign one is a 422 naming it.

    A parent among `new` itself (children a job submits together) is waited for, and marked
    as having dependents."""
    together = {j.id for j in new}
    states = dependencies.lock_parents(
        conn, [[p for p in j.depends_on if p not in together] for j in new], owner=owner, field=field
    )
    states.update(dict.fromkeys(together, "CREATED"))
    needed = {p for j in new for p in j.depends_on if p in together}
    out = []
    for j in new:
        if j.id in needed:
            j = replace(j, has_dependents=True)
        if not j.depends_on:
            out.append(j)
            continue
        pending = [p for p in j.depends_on if states[p] not in TERMINAL]
        failed = sorted((p for p in j.depends_on if states[p] in ("FAILED", "CANCELLED")), key=str)
        if failed and j.on_dependency_failure != "run":
            error = {"code": "DEPENDENCY_FAILED", "message": f"dependency {failed[0]} ended {states[failed[0]]}"}
            ended = "FAILED" if j.on_dependency_failure == "fail" else "CANCELLED"
            out.append(replace(j, state=ended, error=error, waiting_on=len(pending)))
        else:
            out.append(replace(j, state="WAITING" if pending else None, waiting_on=len(pending)))
    return out, states


def insert_edges(
    conn: Connection, rows: Sequence[Any], new: Sequence[store.NewJob], parents: dict[uuid.UUID, str]
) -> None:
    """The dependency edges of the jobs that were inserted (an edge to a terminal parent is done)."""
    inserted = {r.id for r in rows}
    dependencies.insert_edges(conn, [
        (j.id, p, parents[p] in TERMINAL) for j in new if j.id in inserted for p in j.depends_on
    ])


def insert_children(conn: Connection, children: list[store.NewJob], *, owner: str | None) -> list[Any]:
    """The jobs a job submitted (ctx.submit), inserted in its finishing transaction, with their
    dependencies on each other and on jobs that exist; their rows (QUEUED ones to enqueue)."""
    new, parents = with_dependencies(conn, children, owner=owner, field="ctx.submit[{k}].depends_on")
    rows = store.insert_jobs(conn, new)
    metrics.created(rows)
    insert_edges(conn, rows, new, parents)
    # A child its policy ended at once (a dependency that had failed) releases its siblings.
    ended = [r.id for r in rows if r.has_dependents and r.state in TERMINAL]
    return [*rows, *(dependencies.release(conn, ended) if ended else [])]


def enqueue_ready(state: AppState, rows: list[Any]) -> list[Any]:
    """Enqueue the rows that are QUEUED, and the keyed ones their keys admit; WAITING ones wait
    for their release or their key, and ones that a dependency's policy ended at creation are
    done (their webhooks sent)."""
    ready = [r for r in rows if r.state == "QUEUED"]
    if len(ready) == len(rows):
        return enqueue(state, rows)
    after: dict[uuid.UUID, Any] = {}
    if ready:
        after.update((r.id, r) for r in enqueue(state, ready))
    waiting = [r for r in rows if r.state == "WAITING" and r.waiting_on == 0 and flow.is_keyed(r)]
    if waiting:
        after.update((r.id, r) for r in admit_and_enqueue(state, waiting))
    if any(getattr(r, "callback_url", None) is not None and r.state in TERMINAL for r in rows):
        send_webhooks(state, [r.id for r in rows if r.state in TERMINAL])
    return [after.get(r.id, r) for r in rows]


def admit_and_enqueue(state: AppState, rows: Sequence[Any]) -> list[Any]:
    """After a commit that put keyed jobs in their keys' lines or took them out of a slot: what
    their keys have room for admitted (in a transaction of its own, the keys' locks first) and
    enqueued; the admitted jobs as they are now. A failure here loses nothing: the sweeper's
    `admit_missed` admits a job left waiting with its key free."""
    keyed = [r for r in rows if flow.is_keyed(r)]
    if not keyed:
        return []
    try:
        with state.engine.begin() as conn:
            admitted = flow.admit(conn, keyed, interval=interval_of(state))
    except DBAPIError as e:
        logger.warning("could not admit keyed jobs; the sweeper will", extra={"error": type(e).__name__})
        return []
    return enqueue(state, admitted) if admitted else []


def send_webhooks(state: AppState, job_ids: Sequence[uuid.UUID]) -> None:
    """After a commit that ended jobs with callbacks: their events' delivery tasks. A failure
    loses nothing: the sweeper sends an event whose task was never created."""
    try:
        webhooks.send(state, list(job_ids))
    except (DBAPIError, gexc.GoogleAPIError) as e:
        logger.warning("could not send webhook events; the sweeper will", extra={"error": type(e).__name__})


def after_ended(state: AppState, rows: Sequence[Any]) -> None:
    """After a commit that ended jobs or moved them out of their keys' slots: the next jobs of
    those keys admitted, and the completion webhooks of the ones that ended sent."""
    freed = [r for r in rows if getattr(r, "concurrency_limit", None) is not None]
    if freed:
        try:
            with autocommit(state.engine) as conn:  # most keys have nobody waiting: one cheap read
                freed = flow.waited_for(conn, freed)
        except DBAPIError as e:
            logger.warning("could not look for jobs waiting for freed slots; the sweeper will",
                           extra={"error": type(e).__name__})
            freed = []
        admit_and_enqueue(state, freed)
    ended = [r.id for r in rows if getattr(r, "callback_url", None) is not None and r.state in TERMINAL]
    if ended:
        send_webhooks(state, ended)


MAX_BATCH = 500


def parse_batch(state: AppState, body: Any) -> list[CreateJob]:
    """Validate `{jobs: [...]}`: all or nothing, errors named by index (`jobs[3].payload.x`)."""
    if not isinstance(body, dict) or not isinstance(body.get("jobs"), list):
        raise InvalidRequest("the body must be a JSON object with a list `jobs`")
    items = body["jobs"]
    if not 1 <= len(items) <= MAX_BATCH:
        raise ValidationFailed(
            f"a batch holds 1 to {MAX_BATCH} jobs, not {len(items)}",
            errors=[{"field": "jobs", "message": f"1 to {MAX_BATCH} jobs"}],
        )
    if set(body) - {"jobs"}:
        extra = sorted(set(body) - {"jobs"})
        raise ValidationFailed("unknown fields", errors=[{"field": k, "message": "unknown field"} for k in extra])
    reqs, errors = [], []
    for i, item in enumerate(items):
        prefix = f"jobs[{i}]."
        if not isinstance(item, dict):
            errors.append({"field": f"jobs[{i}]", "message": "must be an object"})
            continue
        try:
            req = CreateJob.model_validate(item)
        except ValidationError as e:
            errors += field_errors(e, prefix)
            continue
        errors += [{**err, "field": prefix + err["field"]} for err in check_job(state, req)]
        reqs.append(req)
    if errors:
        first = errors[0]["field"].split(".")[0]
        raise ValidationFailed(f"the batch is refused: {first} is not valid", errors=errors)
    return reqs


def create_jobs(
    state: AppState, reqs: list[CreateJob], *, idempotency_key: str | None, owner: str | None
) -> tuple[list[Row[Any]], bool]:
    """Insert a batch in one statement and one transaction, then enqueue it.

    With an Idempotency-Key, job i takes the key `KEY:i`; a replay of the whole batch returns
    the original jobs. Race-free: the INSERT skips taken keys (waiting for a concurrent
    insert of the same keys to commit or roll back), so of concurrent replays exactly one
    inserts and the others answer what it stored. A batch that finds only some of its keys
    taken, or the keys taken by other requests, is refused and inserts nothing.
    """
    new = [
        new_job(state, req, idempotency_key=f"{idempotency_key}:{i}" if idempotency_key else None, owner=owner)
        for i, req in enumerate(reqs)
    ]
    replaced: list[Any] = []
    fresh: list[Any] = []
    replay = False
    with state.engine.begin() as conn:
        parents: dict[uuid.UUID, str] = {}
        if any(j.depends_on for j in new):
            new, parents = with_dependencies(conn, new, owner=owner, field="jobs[{k}].depends_on")
        unique = [j for j in new if j.unique_key is not None]
        if unique and idempotency_key is not None:
            # A replay of a batch some of whose items were answered by the holders of their
            # keys: those items have no job of their own under the key (read before the insert).
            existing = store.jobs_by_idempotency_keys(conn, [j.idempotency_key or "" for j in new], owner=owner)
            if existing:
                rows, fresh = _replay_unique_batch(conn, new, existing, owner=owner)
                replay = True
        if not replay:
            if unique:
                replaced = _take_unique_keys(conn, unique, owner=owner)
            new = share_tasks(state, new)
            rows = store.insert_jobs(conn, new)
            if parents:
                insert_edges(conn, rows, new, parents)
        if len(rows) < len(new):
            if idempotency_key is not None:
                mine = {r.id for r in rows}  # this transaction's own rows are not another request's
                existing = [e for e in store.jobs_by_idempotency_keys(conn, [j.idempotency_key or "" for j in new],
                                                                      owner=owner) if e.id not in mine]
                if existing:
                    replay = not rows and len(existing) == len(new) and all(
                        e.request_hash == j.request_hash for e, j in zip(existing, new, strict=True)
                    )
                    if not replay:  # the transaction rolls back what this batch inserted
                        raise IdempotencyKeyReused("this Idempotency-Key was used with a different batch")
                    return existing, False
            rows = _with_holders(conn, new, rows, owner=owner)
        if replaced:
            replaced += dependencies.release(conn, [r.id for r in replaced if r.has_dependents])
    if replay:
        after = {r.id: r for r in enqueue_ready(state, fresh)} if fresh else {}
        return [after.get(r.id, r) for r in rows], False
    mine = {j.id for j in new}
    metrics.created(r for r in rows if r.id in mine)  # not the holders that answered some items
    if replaced:
        after_ended(state, replaced)
        for r in replaced:
            delete_cancelled_task(state, r)
    return enqueue_ready(state, rows), True


def _replay_unique_batch(conn: Connection, new: list[store.NewJob], existing: list[Any], *,
                         owner: str | None) -> tuple[list[Any], list[Any]]:
    """The answer to a replayed batch with unique keys: each item's own job where the first
    request stored one, else the job holding its key now — or, if none holds it any more, a
    job created for it now (as the first request would have, had the key been free); and
    the jobs created now."""
    by_key = {e.idempotency_key: e for e in existing}
    if any((e := by_key.get(j.idempotency_key)) is not None and e.request_hash != j.request_hash for j in new):
        raise IdempotencyKeyReused("this Idempotency-Key was used with a different batch")
    rest = [j for j in new if j.idempotency_key not in by_key]
    if any(j.unique_key is None for j in rest):  # an item the first request would have stored
        raise IdempotencyKeyReused("this Idempotency-Key was used with a different batch")
    holders = flow.key_holders(conn, [j.unique_key or "" for j in rest], owner=owner) if rest else {}
    free = [j for j in rest if j.unique_key not in holders]
    inserted = {r.id: r for r in store.insert_jobs(conn, free)} if free else {}
    metrics.created(inserted.values())
    if len(inserted) < len(free):  # taken meanwhile by a concurrent create: its job holds it
        holders |= flow.key_holders(conn, [j.unique_key or "" for j in free if j.id not in inserted], owner=owner)
    answer = _answers(new, lambda j: by_key.get(j.idempotency_key) or inserted.get(j.id)
                      or holders.get(j.unique_key or ""))
    return answer, list(inserted.values())


def _take_unique_keys(conn: Connection, unique: list[store.NewJob], *, owner: str | None) -> list[Any]:
    """Before a batch's insert: expired keys let go, and the holders its `replace` items may
    replace cancelled (REPLACED); the jobs it cancelled."""
    flow.release_expired_keys(conn, [j.unique_key or "" for j in unique], owner=owner)
    replacing = {j.unique_key or "": j for j in unique if j.unique_mode == "replace"}
    if not replacing:
        return []
    replaced = []
    holders = flow.key_holders(conn, list(replacing), owner=owner, lock=True)
    for key, holder in holders.items():
        if (done := flow.replace_holder(conn, holder, replacing[key].id)) is not None:
            replaced.append(done)
    return replaced


def _with_holders(conn: Connection, new: list[store.NewJob], rows: list[Any], *, owner: str | None) -> list[Any]:
    """A batch's answer when some jobs were not inserted: each of those answered by the job
    holding its unique key (another batch item's, or an earlier job's)."""
    inserted = {r.id: r for r in rows}
    keys = [j.unique_key for j in new if j.id not in inserted and j.unique_key is not None]
    holders = flow.key_holders(conn, keys, owner=owner) if keys else {}
    return _answers(new, lambda j: inserted.get(j.id) or holders.get(j.unique_key or ""))


def _answers(new: list[store.NewJob], pick: Callable[[store.NewJob], Any]) -> list[Any]:
    """Each item's answer; an item with none lost its key's holder between the insert and the
    read (it let the key go): 409, the batch is sent again."""
    out = []
    for i, j in enumerate(new):
        row = pick(j)
        if row is None:
            raise UniqueKeyTaken(f"jobs[{i}]: its unique key changed hands; send the batch again",
                                 unique_key=j.unique_key)
        out.append(row)
    return out


def cancel_job(state: AppState, job_id: uuid.UUID, *, scope: str | None) -> Row[Any] | None:
    """Cancel a job: at once if it has not started, cooperatively if it runs. Idempotent.

    Returns the job, or None if there is none; raises JobStateConflict for a finished job.
    """
    released: list[Any] = []
    with state.engine.begin() as conn:
        row = store.request_cancel(conn, job_id, owner=scope)
        if row is not None and row.state == "CANCELLED" and row.has_dependents:
            released = dependencies.release(conn, [row.id])
        if row is None:
            current = store.get_job(conn, job_id, owner=scope)
            if current is None:
                return None
            if current.state in ("COMPLETED", "FAILED"):
                raise JobStateConflict(f"the job is {current.state}; it cannot be cancelled", state=current.state)
            return current  # already cancelled, or cancellation already requested
    if released:
        continue_released(state, released)
    if row.state == "CANCELLED":
        after_ended(state, [row])
    delete_cancelled_task(state, row)
    return row


def delete_cancelled_task(state: AppState, row: Row[Any]) -> None:
    """Delete the task of a job cancelled before it ran, best effort: a task left behind finds
    the job CANCELLED and is acknowledged. A WAITING job had no task, and a shared task carries
    other jobs (it finds this one CANCELLED)."""
    if row.state != "CANCELLED" or row.waiting_on != 0 or is_shared(row.task_name):
        return
    try:
        state.tasks.delete_task(row.task_name)
    except gexc.GoogleAPIError as e:
        logger.warning("could not delete a cancelled job's task", extra={"job_id": str(row.id), "error": type(e).__name__})


def retry_job(state: AppState, job_id: uuid.UUID, *, scope: str | None) -> Row[Any] | None:
    """Run a FAILED or CANCELLED job again (same id, attempts go on). Idempotent.

    Returns the job, or None if there is none; raises JobStateConflict for a COMPLETED job,
    and UniqueKeyTaken when another job took its unique key meanwhile.
    """
    try:
        with state.engine.begin() as conn:
            row = store.retry_job(conn, job_id, owner=scope)
            if row is None:
                current = store.get_job(conn, job_id, owner=scope)
                if current is None:
                    return None
                if current.state == "COMPLETED":
                    raise JobStateConflict("the job COMPLETED; there is nothing to retry", state=current.state)
                return current  # already retried: it is on its way
    except IntegrityError as e:
        if "jobs_unique_key_idx" not in str(e.orig):
            raise
        raise UniqueKeyTaken("another job holds this job's unique key; it cannot run again while that one does",
                             job_id=str(job_id)) from None
    if row.state == "WAITING":  # keyed: in its key's line again
        return enqueue_ready(state, [row])[0]
    return enqueue(state, [row])[0]


# Cloud Tasks' BatchCreateTasks takes at most this many tasks, all for one queue.
TASK_BATCH = 100


def enqueue(state: AppState, rows: list[Row[Any]]) -> list[Row[Any]]:
    """Create each job's task; returns the rows as they are now.

    One CreateTask per task, or one BatchCreateTasks per 100 tasks of a queue (a shared task
    counts once, whatever its jobs: 500 jobs in tasks of 100 are one call). CREATED jobs
    (the sweeper's, a retry's) are marked QUEUED once their task exists; QUEUED ones (new
    jobs, inserted QUEUED) go back to CREATED if their task could not be created.
    """
    by_task: dict[tuple[str, str], list[Row[Any]]] = {}
    for row in rows:
        by_task.setdefault((row.queue, row.task_name), []).append(row)
    by_queue: dict[str, list[list[Row[Any]]]] = {}
    for (queue, _), members in by_task.items():
        by_queue.setdefault(queue, []).append(members)
    enqueued: list[uuid.UUID] = []
    for queue, tasks in by_queue.items():
        for i in range(0, len(tasks), TASK_BATCH):
            enqueued += _create_tasks(state, queue, tasks[i : i + TASK_BATCH])
    done = set(enqueued)
    if len(done) < len(rows):
        state.enqueue_backlog.set()
    elif done and state.enqueue_backlog.is_set():
        _drain_backlog(state)
    to_mark = [r.id for r in rows if r.state == "CREATED" and r.id in done]
    to_revert = [r for r in rows if r.state == "QUEUED" and r.id not in done]
    if not to_mark and not to_revert:
        return rows
    moved: dict[uuid.UUID, Row[Any]] = {}
    try:
        with state.engine.begin() as conn:
            if to_mark:
                moved.update((r.id, r) for r in store.mark_queued(conn, to_mark))
                # A job the handler already claimed moved on from CREATED; read it as it is now.
                for job_id in set(to_mark) - set(moved):
                    current = store.get_job(conn, job_id)
                    if current is not None:
                        moved[job_id] = current
            if to_revert:
                moved.update((r.id, r) for r in store.mark_not_enqueued(conn, to_revert))
    except DBAPIError as e:
        if not to_revert:
            raise
        # Still not lost: a QUEUED job without a task is found by the sweeper.
        logger.warning("could not mark unenqueued jobs CREATED", extra={"error": type(e).__name__})
    return [moved.get(r.id, r) for r in rows]


def _drain_backlog(state: AppState) -> None:
    """Cloud Tasks answers again after a failure: send the jobs left CREATED meanwhile, in the
    background, now rather than at the next sweep. One drain per process at a time; the
    sweeper remains the net (a job enqueued twice is one task: task names are fixed)."""
    if not state.draining.acquire(blocking=False):
        return
    state.enqueue_backlog.clear()

    def drain() -> None:
        try:
            while True:
                with state.engine.begin() as conn:
                    rows = store.unshare(conn, store.stale_created(conn, older_than_s=0,
                                                                   limit=state.config.sweep_batch))
                if not rows:
                    return
                after = enqueue(state, rows)
                if any(r.state == "CREATED" for r in after):
                    return  # failing again: the flag is set, the next success drains
        except Exception as e:  # the sweeper still covers every job left
            logger.warning("draining the enqueue backlog stopped", extra={"error": type(e).__name__})
        finally:
            state.draining.release()

    threading.Thread(target=drain, name="cloudjobs-enqueue-backlog", daemon=True).start()


def _create_tasks(state: AppState, queue: str, members: list[list[Row[Any]]]) -> list[uuid.UUID]:
    """Create these tasks, each given as the rows of its jobs (a shared task carries them in
    one body); the ids of the jobs whose task now exists."""
    now = datetime.now(UTC)
    headers = observability.trace_headers()  # the attempt logs under the creator's trace
    tasks = [
        build_task(
            job_id=[r.id for r in group] if len(group) > 1 else group[0].id,
            task_name=group[0].task_name,
            config=state.config,
            spec=state.queues[group[0].queue],
            timeout_s=sum(r.timeout_s for r in group),
            schedule_time=group[0].scheduled_time if group[0].scheduled_time > now else None,
            headers=headers,
        )
        for group in members
    ]
    if len(tasks) > 1:
        try:
            state.tasks.batch_create_tasks(tasks, queue=queue)
            return [r.id for group in members for r in group]
        except gexc.ServiceUnavailable:
            # Still unavailable after CREATE_RETRY: one by one would only wait as long per job.
            logger.warning("enqueue failed, jobs stay CREATED for the sweeper", extra={"jobs": sum(len(g) for g in members)})
            return []
        except gexc.GoogleAPIError as e:
            # ALREADY_EXISTS for one task fails the batch. One by one tells the tasks apart,
            # and a task that exists counts as enqueued.
            logger.info("batch enqueue fell back to one by one", extra={"error": type(e).__name__})
    done = []
    for group, task in zip(members, tasks, strict=True):
        try:
            state.tasks.create_task(task, queue=queue)  # ALREADY_EXISTS counts as enqueued
        except gexc.GoogleAPIError as e:
            # Not lost: the row is committed as CREATED and the sweeper enqueues it later.
            logger.warning(
                "enqueue failed, job stays CREATED for the sweeper",
                extra={"job_id": str(group[0].id), "jobs": len(group), "error": type(e).__name__},
            )
            if isinstance(e, gexc.ServiceUnavailable):
                break  # the rest would fail the same way, each after its own retries
            continue
        done += [r.id for r in group]
    return done


def share_tasks(state: AppState, new: list[store.NewJob]) -> list[store.NewJob]:
    """Jobs of a batch grouped into shared tasks where their queue allows (queues.yaml's
    `jobs_per_task`, capped by each type's): jobs of one queue and one schedule time, as many
    as both limits allow and as long as their timeouts, run one after another, fit the queue's
    dispatch deadline. Jobs that wait for others keep a task of their own."""
    open_fills: dict[tuple[str, Any], TaskFill] = {}
    fills: list[TaskFill] = []
    for i, j in enumerate(new):
        limit = _share_limit(state, j)
        if j.state is not None or limit <= 1:
            continue
        fill = open_fills.get((j.queue, j.scheduled_time))
        if fill is None or not fill.fits(limit, j.timeout_s):
            fill = open_fills[(j.queue, j.scheduled_time)] = TaskFill(MAX_JOBS_PER_TASK, jobs_time_budget(state.queues[j.queue]))
            fills.append(fill)
        fill.add(i, limit, j.timeout_s)
    out = list(new)
    for fill in fills:
        if len(fill.members) < 2:
            continue
        first = new[fill.members[0]]
        name = task_path(state.config, first.queue, shared_task_id(first.id))
        for i in fill.members:
            out[i] = replace(out[i], task_name=name)
    return out


def continue_released(state: AppState, released: Sequence[Any]) -> None:
    """After a release committed: the dependents its policy ended release theirs in turn, and
    the QUEUED ones get their tasks (api/store/dependencies.py has the rules).

    Nothing is lost if this process dies first: a QUEUED job without a task is sent by the
    sweeper, and a waiting dependent whose parent ended without releasing it is released by
    the sweeper's `release_missed`.
    """
    moved = list(released)
    if any(r.has_dependents and r.state in ("FAILED", "CANCELLED") for r in moved):
        try:
            with state.engine.begin() as conn:
                moved += dependencies.cascade(conn, moved)
        except DBAPIError as e:
            logger.warning("could not release the dependents of failed dependents; the sweeper will",
                           extra={"error": type(e).__name__})
    queued = [r for r in moved if r.state == "QUEUED"]
    if queued:
        enqueue(state, queued)
    # keyed dependents now wait for their keys; the ones a policy ended have their webhooks
    admit_and_enqueue(state, [r for r in moved if r.state == "WAITING" and r.waiting_on == 0])
    ended = [r.id for r in moved if r.callback_url is not None and r.state in TERMINAL]
    if ended:
        send_webhooks(state, ended)

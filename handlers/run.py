"""Running the jobs a Cloud Task names: claim, run, finish (the work behind POST /handlers/run).

No Flask here: api/web/callbacks.py parses the request and answers Cloud Tasks."""

from __future__ import annotations

import json
import logging
import time
import traceback
import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from sqlalchemy.engine import Row

from api.errors import Problem, ValidationFailed
from api.observability import metrics
from api.observability import traces as observability
from api.orchestration import lifecycle
from api.orchestration.lifecycle import continue_released
from api.state import AppState
from api.store import dependencies, steps
from api.store import jobs as store
from api.store.engine import CLAIM_RETRY, OUTAGE_RETRY, autocommit
from api.store.tables import TERMINAL
from handlers import holder
from handlers.registry import JobContext, Parent, Permanent, Retry, UnknownJobType

if TYPE_CHECKING:
    from api.cloud.queues import QueueSpec

logger = logging.getLogger(__name__)


class RunOutcome:
    """What happened to each job a delivery named."""

    def __init__(self) -> None:
        self.states: dict[str, str] = {}
        self.retry: list[uuid.UUID] = []
        self.lease_held: list[uuid.UUID] = []


def run_jobs(state: AppState, ids: Sequence[uuid.UUID], delivery: store.Delivery) -> RunOutcome:
    """Claim the jobs, run each claimed one, and finish them all in one statement.

    The claim and the finish each commit on their own, one round trip apiece: the claim's
    lease must be visible while the jobs run, and nothing else need commit with either.
    """
    outcome = RunOutcome()
    claimed, current, released = _claim(state, ids, holder.this_process())
    if released:
        continue_released(state, released)
    for job_id, row in current.items():
        if row is None:
            # Purged or never ours: nothing to run, so the task is done.
            logger.warning("task for an unknown job", extra={"job_id": str(job_id)})
            outcome.states[str(job_id)] = "UNKNOWN"
        elif row.state == "RUNNING":
            outcome.lease_held.append(job_id)
            outcome.states[str(job_id)] = row.state
        else:
            # A duplicate of a finished job, or one cancelled before it ran.
            outcome.states[str(job_id)] = row.state
    finishes: list[store.Finish] = []
    timed: dict[uuid.UUID, tuple[Row[Any], observability.AttemptClock]] = {}
    for row in claimed:
        with observability.attempt(job_id=row.id, attempt=row.attempts, queue=row.queue) as clock:
            finishes.append(execute(state, row, delivery))
        timed[row.id] = (row, clock)
    plain = [f for f in finishes if not f.children]
    finished = _finish(state, plain)
    released = list(finished.released)
    moved = finished.states
    for f in finishes:
        if f.children:
            states, freed = _finish_with_children(state, f, timed[f.job_id][0].owner)
            moved.update(states)
            released += freed
    if released:
        continue_released(state, released)
    # Jobs that ended free their keys' slots and have their webhooks sent (after the commit).
    ended = [SimpleNamespace(**{**ran._mapping, "state": moved[f.job_id]})
             for f in finishes
             if ((ran := timed[f.job_id][0]).concurrency_limit is not None or ran.callback_url is not None)
             and moved.get(f.job_id) in TERMINAL]
    if ended:
        lifecycle.after_ended(state, ended)
    for f in finishes:
        # A finish that moved nothing lost its lease to a later attempt, which now owns it.
        new_state = moved.get(f.job_id, "SUPERSEDED")
        ran, clock = timed[f.job_id]
        observability.log_attempt(
            job_type=ran.type, queue=ran.queue, finish=f, state=new_state, seconds=clock.seconds
        )
        metrics.finished(ran.queue, ran.type, new_state, f.outcome, clock.seconds)
        outcome.states[str(f.job_id)] = new_state
        if new_state == "QUEUED":
            outcome.retry.append(f.job_id)
    return outcome


@CLAIM_RETRY
def _claim(
    state: AppState, ids: Sequence[uuid.UUID], me: str
) -> tuple[list[Row[Any]], dict[uuid.UUID, Row[Any] | None], list[Any]]:
    """Claim what can be claimed; the rows of the rest, and the dependents a settled cancel freed.

    Retried through a database blip for up to 2 s (a delivery that waits a moment beats one
    that spends an attempt of the queue's on a 503): a claim that matched nothing before
    matches the same again, and one whose answer was lost leaves the job RUNNING under this
    process, which a later delivery waits out as for any lost answer."""
    with autocommit(state.engine) as conn:
        claimed = store.claim_jobs(conn, ids, lease_margin_s=state.config.lease_margin_s, holder=me)
        got = {r.id for r in claimed}
        unclaimed = [i for i in ids if i not in got]
        released = []
        if unclaimed:
            # Cancelled while queued, or while an attempt that has since died held it.
            settled = store.settle_cancelled(conn, unclaimed)
            if settled:
                released = dependencies.release(conn, settled)
        found = store.get_jobs(conn, unclaimed) if unclaimed else {}  # one statement for a shared task's
        current = {i: found.get(i) for i in unclaimed}
        # Held by a process of this machine that is gone (a worker killed mid-attempt): take
        # the job over now rather than when its lease runs out.
        dead = {i: r.lease_holder for i, r in current.items()
                if r is not None and r.state == "RUNNING" and holder.is_dead(r.lease_holder)}
        if dead:
            taken = store.claim_jobs(conn, list(dead), lease_margin_s=state.config.lease_margin_s,
                                     holder=me, dead=sorted({h for h in dead.values() if h}))
            claimed += taken
            for took in taken:
                del current[took.id]
    return claimed, current, released


@OUTAGE_RETRY
def _finish(state: AppState, finishes: list[store.Finish]) -> store.Finished:
    with autocommit(state.engine) as conn:
        return store.finish_jobs(conn, finishes)


def _backoff(row: Row[Any], spec: QueueSpec | None, delivery: store.Delivery) -> float | None:
    """When Cloud Tasks should deliver the next attempt, in seconds from now: the queue's
    backoff after this delivery's retry count (Cloud Tasks decides; this says what to expect)."""
    if spec is None:
        return None
    retries = delivery.retry_count if delivery.retry_count is not None else row.attempts - row.attempts_base - 1
    return spec.retry.backoff_s(retries + 1)


def execute(state: AppState, row: Row[Any], delivery: store.Delivery) -> store.Finish:
    """Run one claimed job's function and decide how its attempt ends."""
    attempt = row.attempts
    spec = state.queues.specs.get(row.queue)
    # One clock: the lease is the database's (claim and finish compare with its now()); the
    # attempt's own time is measured here on the monotonic clock, so a wall clock that is
    # ahead of or behind the database's neither cuts an attempt short nor lets it overrun.
    began = time.monotonic()

    def finish(job_state: str, outcome: str, **kw: Any) -> store.Finish:
        return store.Finish(row.id, attempt, job_state, outcome, delivery=delivery, **kw)

    def failed(code: str, message: str, *, retryable: bool, outcome: str | None = None,
               trace: str | None = None) -> store.Finish:
        error = {"code": code, "message": message[:2000]}
        if retryable and not is_last_attempt(row, spec, delivery, ran_s=time.monotonic() - began):
            return finish("QUEUED", outcome or "RETRY", error=error, retry_in_s=_backoff(row, spec, delivery),
                          traceback=trace)
        return finish("FAILED", outcome or "FAILED", error=error, traceback=trace)

    try:
        jt = state.registry[row.type]
        payload = jt.parse(row.payload)
    except UnknownJobType:
        return failed("UNKNOWN_TYPE", f"no job function for type {row.type!r}", retryable=False)
    except ValidationError as e:
        return failed("INVALID_PAYLOAD", f"the payload no longer fits its schema: {e}", retryable=False)

    ctx = JobContext(
        job_id=row.id,
        attempt=attempt,
        deadline=datetime.now(UTC) + timedelta(seconds=row.timeout_s),
        _report=lambda fraction, message: _progress(state, row.id, attempt, fraction, message),
        _check_cancel=lambda: _cancel_requested(state, row.id),
        # Only a job created with depends_on has a policy, and parents to read.
        parents=_parents(state, row.id) if row.on_dependency_failure is not None else {},
        workflow_id=row.workflow_id,
        step_name=row.step,
        _submit=lambda type, payload, options: _child(state, row, children, type, payload, options),
        _load_steps=lambda: _step_results(state, row.id),
        _record_step=lambda name, result, started: _record_step(state, row, name, result, started),
    )
    children: list[store.NewJob] = []
    log = {"job_id": str(row.id), "attempt": attempt, "type": row.type, "queue": row.queue}
    try:
        result = jt.fn(payload, ctx)
    except Permanent as e:
        logger.info("job failed permanently", extra=log)
        return failed(e.code or "PERMANENT", e.message or "the job failed", retryable=False)
    except Retry as e:
        logger.info("job asked for a retry", extra=log)
        return failed(e.code or "RETRY", e.message or "the job asked for a retry", retryable=True)
    except Exception as e:  # a job function's bug is the job's failure, not the handler's
        if state.config.log_payloads:
            logger.exception("job raised", extra=log)
        else:
            # An exception's message often quotes the job's input: the log gets the type, the
            # frames and the message without the payload's values, cut short (LOG_PAYLOADS=true
            # logs it whole). The job's own error, which only its owner reads, keeps it all.
            frames = "".join(traceback.format_list(traceback.extract_tb(e.__traceback__)))
            logger.warning("job raised", extra={
                **log, "exception": type(e).__name__, "error_message": redacted(str(e), row.payload),
                "stack_trace": f"Traceback (most recent call last):\n{frames}{type(e).__name__}",
            })
        return failed("EXCEPTION", f"{type(e).__name__}: {e}", retryable=True, trace=kept_traceback(e))
    try:
        json.dumps(result)
    except (TypeError, ValueError) as e:
        return failed("RESULT_NOT_JSON", f"the job's result is not JSON: {e}", retryable=False)
    if time.monotonic() - began > row.timeout_s:
        # Its lease may already be another attempt's: an overrun is a timeout, whatever it returned.
        return failed(
            "TIMED_OUT", f"the attempt ran past its {row.timeout_s}s timeout",
            retryable=True, outcome="TIMED_OUT",
        )
    return finish("COMPLETED", "COMPLETED", result=result, children=tuple(children))


LOGGED_MESSAGE_CHARS = 200
MAX_TRACEBACK_CHARS = 8000


def kept_traceback(e: BaseException) -> str:
    """The traceback an attempt keeps: Python's, its last MAX_TRACEBACK_CHARS (where it raised)."""
    text = "".join(traceback.format_exception(e))
    return text if len(text) <= MAX_TRACEBACK_CHARS else "…" + text[-MAX_TRACEBACK_CHARS:]


def redacted(message: str, payload: Any) -> str:
    """`message` with every string and number of `payload` (of 4 characters or more) blanked, cut short."""
    values: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
        elif isinstance(node, str | int | float) and not isinstance(node, bool) and len(str(node)) >= 4:
            values.append(str(node))

    walk(payload)
    for value in sorted(set(values), key=len, reverse=True):
        message = message.replace(value, "[payload]")
    if len(message) > LOGGED_MESSAGE_CHARS:
        message = message[:LOGGED_MESSAGE_CHARS] + "…"
    return message


def is_last_attempt(row: Row[Any], spec: Any, delivery: store.Delivery, *, ran_s: float = 0.0) -> bool:
    """Whether no attempt follows this one: the job's own limit, or the queue's retry config.

    `ran_s` is how long this attempt has run since its claim."""
    if row.attempts - row.attempts_base >= row.max_attempts:
        return True
    if spec is None or delivery.retry_count is None:
        return False
    # The job's age by the database's clock at the claim, then this attempt's run time: the
    # app's wall clock, which may be off, is never compared with a time the database wrote.
    age = row.started_age_s + ran_s if row.started_age_s is not None else None
    return bool(spec.attempts_exhausted(delivery.retry_count, age))


@OUTAGE_RETRY
def _finish_with_children(state: AppState, f: store.Finish, owner: str | None) -> tuple[dict[uuid.UUID, str], list[Any]]:
    """A COMPLETED finish and the children its attempt submitted, in one transaction: if the
    finish moves nothing (a later attempt holds the job), no child is created."""
    try:
        with state.engine.begin() as conn:
            finished = store.finish_jobs(conn, [f])
            if finished.states.get(f.job_id) != "COMPLETED":
                conn.rollback()
                return finished.states, []
            children = lifecycle.insert_children(conn, list(f.children), owner=owner)
    except ValidationFailed as e:
        # A dependency vanished between ctx.submit and the finish (purged): the job fails.
        error = {"code": "CHILD_REFUSED", "message": f"a submitted job was refused: {e.detail}"}
        with state.engine.begin() as conn:
            finished = store.finish_jobs(conn, [replace(f, state="FAILED", outcome="FAILED", result=None,
                                                        error=error, children=())])
        return finished.states, list(finished.released)
    return finished.states, [*finished.released, *children]


def _child(
    state: AppState, row: Row[Any], children: list[store.NewJob], type: str, payload: dict[str, Any],
    options: dict[str, Any],
) -> str:
    """ctx.submit: a child validated as POST /v1/jobs would validate it, kept for the finish."""
    if options.keys() & {"unique_key", "unique_for_s", "unique_mode"}:
        raise ValueError(f"ctx.submit({type!r}): unique keys are for creates through the API, not for children")
    body = {"type": type, "payload": payload, **options}
    if "depends_on" in options:
        body["depends_on"] = [str(i) for i in options["depends_on"]]
    try:
        req = lifecycle.parse_create(state, body)
    except Problem as e:
        details = "; ".join(f"{err['field']}: {err['message']}" for err in getattr(e, "errors", None) or [])
        raise ValueError(f"ctx.submit({type!r}): {e.detail}" + (f" ({details})" if details else "")) from None
    new = lifecycle.new_job(state, req, owner=row.owner)
    known = {c.id for c in children}
    outside = [p for p in new.depends_on if p not in known]
    if outside:
        with state.engine.connect() as conn:
            found = dependencies.existing(conn, outside, owner=row.owner)
        if missing := [str(p) for p in outside if p not in found]:
            raise ValueError(f"ctx.submit({type!r}): depends_on names no job of this job's owner: {missing[0]}")
    children.append(new)
    return str(new.id)


def _step_results(state: AppState, job_id: uuid.UUID) -> dict[str, Any]:
    with state.engine.connect() as conn:
        return steps.results(conn, job_id)


def _record_step(state: AppState, row: Row[Any], name: str, result: Any, started: datetime) -> Any:
    """Store a step's result at once, in a statement of its own (it must outlive a failure of
    the attempt); the result that stands."""
    try:
        size = lifecycle.json_size(result)  # measured as a payload is
    except (TypeError, ValueError) as e:
        raise ValueError(f"the result of step {name!r} is not JSON: {e}") from None
    if size > state.config.max_payload_bytes:
        raise ValueError(f"the result of step {name!r} is {size} bytes; at most {state.config.max_payload_bytes}")
    if bad := lifecycle.unstorable(result, f"step {name!r}"):
        raise ValueError(f"the result of {bad} holds text PostgreSQL cannot store (NUL, unpaired surrogates)")
    return _store_step(state, row.id, name, row.attempts, result, started)


@OUTAGE_RETRY
def _store_step(state: AppState, job_id: uuid.UUID, name: str, attempt: int, result: Any, started: datetime) -> Any:
    with autocommit(state.engine) as conn:
        return steps.record(conn, job_id, name, attempt=attempt, result=result, started=started)


def _parents(state: AppState, job_id: uuid.UUID) -> dict[str, Parent]:
    with state.engine.connect() as conn:
        rows = dependencies.parents(conn, job_id)
    out: dict[str, Parent] = {}
    for r in rows:
        parent = Parent(job_id=r.id, step=r.step, state=r.state, result=r.result, error=r.error)
        out[str(r.id)] = parent
        if r.step is not None:
            out[r.step] = parent
    return out


def _progress(state: AppState, job_id: uuid.UUID, attempt: int, fraction: float | None, message: str | None) -> None:
    with state.engine.begin() as conn:
        store.set_progress(conn, job_id, attempt, fraction, message)


def _cancel_requested(state: AppState, job_id: uuid.UUID) -> bool:
    with state.engine.connect() as conn:
        return store.cancel_requested(conn, job_id)

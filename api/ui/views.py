"""The dashboard (/ui): jobs, a job and its attempts, and report charts, rendered on the server;
and operators' actions: cancel and retry a job, cancel or retry every job a filter matches
(with a confirmation showing the count), pause and resume queues, the audit log.

Every state-changing POST is CSRF-protected (Origin, and a token tied to an HttpOnly cookie),
scoped as the API is, and audited.
Authentication is the API's (the same authenticator, the same owner scoping); with AUTH=keys
a browser may also present its key in the `cloudjobs_key` cookie set by /ui/login. See
docs/dashboard.md for the CSP and CSRF decisions.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit

from flask import Blueprint, Response, g, redirect, render_template, request, url_for
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as BaseResponse

from api.errors import (
    Forbidden,
    InvalidRequest,
    JobNotFound,
    Problem,
    Unauthenticated,
    WorkflowNotFound,
)
from api.orchestration import lifecycle, operations, triggers
from api.reporting.reports import BUCKETS, ReportQuery, run_report
from api.store import dependencies
from api.store import jobs as store
from api.store import operations as op_store
from api.store import steps as step_store
from api.store import triggers as fire_store
from api.store import webhooks as webhook_store
from api.store import workflows as workflow_store
from api.store.tables import STATES, TERMINAL, WORKFLOW_STATES
from api.ui import charts, dag
from api.web import operations as operation_views
from api.web import paging
from api.web import queues as queue_views
from api.web.auth import Principal
from api.web.http import check_params, current_state, filter_digest, parse_filter, parse_job_id, parse_workflow_id
from api.web.resources import (
    attempts_resource,
    callbacks_resource,
    job_resource,
    schedule_resource,
    steps_resource,
    workflow_resource,
)

bp = Blueprint(
    "ui",
    __name__,
    url_prefix="/ui",
    template_folder="templates",
    static_folder="static/ui",
    static_url_path="/static",
)

COOKIE = "cloudjobs_key"
# No inline script or style at all: the stylesheet is a file, charts colour with attributes.
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
# Unauthenticated pages: the login form, logout, the stylesheet.
OPEN = {"ui.login", "ui.logout", "ui.static"}
WINDOWS = {  # the reports page's windows and the bucket each is charted by
    "1h": (timedelta(hours=1), "minute"),
    "6h": (timedelta(hours=6), "hour"),
    "24h": (timedelta(hours=24), "hour"),
    "7d": (timedelta(days=7), "day"),
    "30d": (timedelta(days=30), "day"),
}
FILTERS = ("state", "type", "queue", "label", "schedule", "trigger", "error_code")
COMPLETED, FAILED, OTHER = "#16a34a", "#dc2626", "#9ca3af"
P50, P95 = "#2563eb", "#f59e0b"


# ---- authentication --------------------------------------------------------------------


@bp.before_request
def _authenticate() -> None:
    if request.endpoint in OPEN:
        return
    g.principal = _principal()


def _principal() -> Principal:
    state = current_state()
    key = request.cookies.get(COOKIE)
    if state.config.api_auth == "keys" and key and "Authorization" not in request.headers:
        return state.authenticator.key_principal(key)
    return state.authenticator.principal(request)


def principal() -> Principal:
    """The caller of this dashboard request."""
    return g.principal  # type: ignore[no-any-return]


def _same_origin() -> bool:
    """Whether a POST comes from a page of this app (Origin, else Referer, must match)."""
    source = request.headers.get("Origin") or request.headers.get("Referer")
    if not source or source == "null":
        return False
    parts = urlsplit(source)
    schemes = {request.scheme}
    if _https():
        schemes.add("https")
    return parts.scheme in schemes and parts.netloc == request.host


def _cookie_path() -> str:
    return request.script_root + (bp.url_prefix or "")


def _https() -> bool:
    # Behind Cloud Run's or App Engine's front end the app sees http; the proxy says https.
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip()
    return request.is_secure or forwarded == "https"


@bp.route("/login", methods=["GET", "POST"])
def login() -> Response | str | tuple[str, int]:
    """A form to paste an API key; POST checks it and keeps it in an HttpOnly cookie."""
    state = current_state()
    if state.config.api_auth != "keys":
        return redirect(url_for("ui.jobs"), code=303)  # type: ignore[return-value]
    if request.method == "GET":
        return render_template("ui/login.html", error=None)
    if not _same_origin():
        return render_template(
            "ui/login.html", error="Refused: the form was not sent from this site."
        ), 403
    key = request.form.get("key", "").strip()
    try:
        state.authenticator.key_principal(key)
    except Unauthenticated as e:
        return render_template("ui/login.html", error=e.detail), 401
    resp = redirect(url_for("ui.jobs"), code=303)
    resp.set_cookie(
        COOKIE, key, httponly=True, samesite="Strict", secure=_https(), path=_cookie_path()
    )
    return resp  # type: ignore[return-value]


@bp.route("/logout", methods=["GET", "POST"])
def logout() -> Response:
    """Forget the key cookie (harmless if forged: it only logs out)."""
    resp = redirect(url_for("ui.login"), code=303)
    _forget(resp)
    return resp  # type: ignore[return-value]


def _forget(resp: BaseResponse) -> None:
    resp.delete_cookie(
        COOKIE, path=_cookie_path(), httponly=True, samesite="Strict", secure=_https()
    )


# ---- pages ------------------------------------------------------------------------------


@bp.get("")
@bp.get("/")
@bp.get("/jobs")
def jobs() -> str:
    """Jobs, newest first, filtered by state, type, queue and label, paged by keyset."""
    state = current_state()
    page = _page(FILTERS, "", "ui.jobs", store.list_jobs)
    return render_template(
        "ui/jobs.html",
        jobs=[job_resource(r) for r in page.rows],
        refresh=any(r.state not in TERMINAL for r in page.rows),
        next_url=page.next_url,
        first_url=page.first_url,
        chosen=page.chosen,
        states=STATES,
        types=sorted(state.registry.types),
        queues=sorted(state.queues.specs),
        schedules=sorted(state.schedules.schedules),
        triggers=sorted(state.schedules.triggers),
    )


@dataclass
class _Page:
    rows: list[Any]
    next_url: str | None
    first_url: str | None
    chosen: dict[str, str]


def _page(filters: tuple[str, ...], scope_prefix: str, endpoint: str, list_rows: Callable[..., list[Any]]) -> _Page:
    """A list page: the request's filters (any other parameter is a 400), the rows of this
    page by keyset, and the links to the next and the first page, filters kept."""
    state = current_state()
    args = MultiDict([(k, v.strip()) for k, v in request.args.items(multi=True) if v.strip()])
    check_params(args, (*filters, "page_size", "page_token"))
    flt = parse_filter(args, owner=principal().scope)
    size = paging.page_size(args.get("page_size"))
    scope = scope_prefix + filter_digest(flt)
    after = None
    if token := args.get("page_token"):
        after = paging.decode(state.config.page_token_key, token, scope)
    with state.engine.connect() as conn:
        rows = list_rows(conn, flt, limit=size + 1, after=after)
    next_url = None
    kept = [(k, v) for k, v in args.items(multi=True) if k != "page_token"]
    if len(rows) > size:
        rows = rows[:size]
        token = paging.encode(state.config.page_token_key, (rows[-1].created_time, rows[-1].id), scope)
        next_url = url_for(endpoint) + "?" + _query(kept + [("page_token", token)])
    first_url = url_for(endpoint) + "?" + _query(kept) if after else None
    return _Page(rows, next_url, first_url, {k: args.get(k, "") for k in filters})


def _query(pairs: list[tuple[str, str]]) -> str:
    return urlencode(pairs)


@bp.get("/jobs/<job_id>")
def job(job_id: str) -> str:
    """One job, its payload, result, error and progress, and its attempts."""
    state = current_state()
    jid = parse_job_id(job_id)
    with state.engine.connect() as conn:
        row = store.get_job(conn, jid, owner=principal().scope)
        if row is None:
            raise JobNotFound(f"no job {job_id}")
        attempts = attempts_resource(row, store.list_attempts(conn, jid))
        durable = steps_resource(step_store.list_steps(conn, jid))
        parents = dependencies.parents(conn, jid) if row.on_dependency_failure is not None else []
        callbacks = callbacks_resource(webhook_store.events_of_job(conn, jid)) if row.callback_url else []
    resource = job_resource(row)
    return render_template(
        "ui/job.html",
        job=resource,
        attempts=attempts,
        steps=durable,
        parents=parents,
        callbacks=callbacks,
        notice=request.args.get("notice"),
        logs_url="https://console.cloud.google.com/logs/query;" + urlencode(
            {"query": f'jsonPayload.job_id="{row.id}"'}) + "?" + urlencode({"project": state.config.project}),
        pretty=_pretty,
        refresh=row.state not in TERMINAL,
    )


MAX_STEPS_LISTED = 1000


@bp.get("/workflows")
def workflows() -> str:
    """Workflows, newest first, filtered by state and label, paged by keyset."""
    page = _page(("state", "label"), "workflows:", "ui.workflows", workflow_store.list_workflows)
    return render_template(
        "ui/workflows.html",
        workflows=[workflow_resource(r, None) for r in page.rows],
        next_url=page.next_url,
        first_url=page.first_url,
        chosen=page.chosen,
        states=WORKFLOW_STATES,
    )


@bp.get("/workflows/<workflow_id>")
def workflow(workflow_id: str) -> str:
    """One workflow: its DAG drawn with each step's state, and its steps."""
    state = current_state()
    wid = parse_workflow_id(workflow_id)
    with state.engine.connect() as conn:
        row = workflow_store.get_workflow(conn, wid, owner=principal().scope)
        if row is None:
            raise WorkflowNotFound(f"no workflow {workflow_id}")
        resource = workflow_resource(row, workflow_store.steps(conn, wid))
    return render_template(
        "ui/workflow.html",
        workflow=resource,
        drawing=dag.layout(resource["steps"]),
        max_drawn=dag.MAX_DRAWN,
        steps=resource["steps"][:MAX_STEPS_LISTED],
        refresh=row.state == "RUNNING",
    )


@bp.get("/schedules")
def schedules() -> str:
    """The schedules of schedules.yaml: cron, Cloud Scheduler's state, next and last fires; the triggers."""
    check_params(request.args, ())
    state = current_state()
    jobs, known = triggers.scheduler_jobs(state)
    with state.engine.connect() as conn:
        last = fire_store.last_fires(conn)
    return render_template(
        "ui/schedules.html",
        schedules=[schedule_resource(state, s, jobs.get(n), last.get(n), scheduler_known=known)
                   for n, s in sorted(state.schedules.schedules.items())],
        triggers=sorted(state.schedules.triggers.values(), key=lambda t: t.name),
        source=state.schedules.source,
        scheduler_known=known,
    )


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


@bp.get("/reports")
def reports() -> str:
    """Throughput, failure rate and run-time percentiles over a window, as SVG and tables."""
    state = current_state()
    window = request.args.get("window", "24h")
    if window not in WINDOWS:
        window = "24h"
    span, bucket = WINDOWS[window]
    end = datetime.now(UTC)
    # Narrowed to one type or queue of this deployment (anything else is ignored, as an unknown window is).
    only = {k: v for k, v in (("type", request.args.get("type")), ("queue", request.args.get("queue")))
            if v and v in (state.registry.types if k == "type" else state.queues.specs)}
    q = ReportQuery(start=end - span, end=end, owner=principal().scope, bucket=bucket, limit=10,
                    type=only.get("type"), queue=only.get("queue"))
    series = run_report(state.reporting_engine, "timeseries", q)
    summaries: list[dict[str, Any] | None] = [*run_report(state.reporting_engine, "summary", q)]
    [summary] = summaries or [None]
    failures = run_report(state.reporting_engine, "failures", q)
    points = fill_buckets(series, start=q.start, end=q.end, bucket=bucket)
    labels = [_label(p["bucket"], bucket) for p in points]
    return render_template(
        "ui/reports.html",
        window=window,
        windows=list(WINDOWS),
        only=only,
        types=sorted(state.registry.types),
        queues=sorted(state.queues.specs),
        bucket=bucket,
        start=q.start,
        end=q.end,
        summary=summary,
        failures=failures,
        rows=[p for p in points if p["jobs"]],
        throughput=charts.bar_chart(
            f"Jobs created per {bucket}",
            labels,
            [
                charts.Series("completed", [p["completed"] for p in points], COMPLETED),
                charts.Series("failed", [p["failed"] for p in points], FAILED),
                charts.Series(
                    "other", [p["jobs"] - p["completed"] - p["failed"] for p in points], OTHER
                ),
            ],
        ),
        failure_rate=charts.line_chart(
            f"Failure rate per {bucket}",
            labels,
            [
                charts.Series("failed / finished", [p["failure_rate"] for p in points], FAILED),
            ],
            y_format=lambda v: f"{v:.0%}",
            y_max=1.0,
        ),
        run_time=charts.line_chart(
            f"Run time per {bucket} (seconds)",
            labels,
            [
                charts.Series("p50", [p["run_p50_s"] for p in points], P50),
                charts.Series("p95", [p["run_p95_s"] for p in points], P95),
            ],
            y_format=lambda v: f"{v:.3g}s",
        ),
    )


def fill_buckets(
    rows: list[dict[str, Any]], *, start: datetime, end: datetime, bucket: str
) -> list[dict[str, Any]]:
    """Every bucket of the window in order, empty ones as zeros, with a failure rate."""
    step = BUCKETS[bucket]
    origin = datetime.fromtimestamp(start.timestamp() // step * step, UTC)
    count = int((end - origin).total_seconds() // step) + 1
    empty = {
        "jobs": 0,
        "completed": 0,
        "failed": 0,
        "cancelled": 0,
        "retries": 0,
        "run_p50_s": None,
        "run_p95_s": None,
    }
    points: list[dict[str, Any]] = [
        {"bucket": origin + timedelta(seconds=i * step), **empty} for i in range(count)
    ]
    for row in rows:
        at = datetime.fromisoformat(row["bucket"].replace("Z", "+00:00"))
        i = int((at - origin).total_seconds() // step)
        if 0 <= i < count:
            p = points[i]
            for k in empty:
                if k.startswith("run_"):
                    p[k] = row[k] if p[k] is None else max(p[k], row[k] or 0)
                else:
                    p[k] += row[k] or 0
    for p in points:
        finished = p["completed"] + p["failed"] + p["cancelled"]
        p["failure_rate"] = p["failed"] / finished if finished else None
    return points


def _label(at: datetime, bucket: str) -> str:
    return at.strftime("%d %b" if bucket == "day" else "%H:%M")


# ---- errors and headers -----------------------------------------------------------------


@bp.errorhandler(Problem)
def _problem(e: Problem) -> Response | tuple[str, int]:
    if isinstance(e, Unauthenticated) and current_state().config.api_auth == "keys":
        resp = redirect(url_for("ui.login"), code=303)
        if request.cookies.get(COOKIE):  # revoked or unknown: forget it
            _forget(resp)
        return resp  # type: ignore[return-value]
    return render_template(
        "ui/error.html", status=e.status, title=e.title, detail=e.detail
    ), e.status


@bp.errorhandler(HTTPException)
def _http(e: HTTPException) -> tuple[str, int]:
    return render_template(
        "ui/error.html", status=e.code, title=e.name, detail=e.description
    ), e.code or 500


@bp.after_request
def _headers(resp: Response) -> Response:
    # Runs before the app-wide after_app_request, whose setdefault keeps these.
    resp.headers["Content-Security-Policy"] = CSP
    # Not no-referrer: with it, a browser sends `Origin: null` on the login POST and the
    # same-origin check could not tell the dashboard's own form from anyone else's.
    resp.headers["Referrer-Policy"] = "same-origin"
    return resp


@bp.context_processor
def _context() -> dict[str, Any]:
    return {"keys_login": current_state().config.api_auth == "keys"}


@bp.app_template_filter("ui_time")
def _when(value: str | None) -> str:
    """An RFC 3339 time as `2026-01-01 10:00:00Z`, or a dash."""
    if not value:
        return "—"
    return value.replace("T", " ")[:19] + "Z"


# A step's box in the workflow graph, by state: (fill, stroke), as the state badges colour them.
STATE_COLOURS = {
    "COMPLETED": ("#dcfce7", "#16a34a"), "FAILED": ("#fee2e2", "#dc2626"), "CANCELLED": ("#e5e7eb", "#6b7280"),
    "RUNNING": ("#dbeafe", "#2563eb"), "QUEUED": ("#fef3c7", "#d97706"), "CREATED": ("#fef3c7", "#d97706"),
    "WAITING": ("#f9fafb", "#9ca3af"),
}


@bp.app_template_global("state_fill")
def _state_fill(state: str) -> str:
    return STATE_COLOURS.get(state, ("#ffffff", "#9ca3af"))[0]


@bp.app_template_global("state_stroke")
def _state_stroke(state: str) -> str:
    return STATE_COLOURS.get(state, ("#ffffff", "#9ca3af"))[1]


@bp.app_template_global("job_url")
def _job_url(job_id: str | uuid.UUID) -> str:
    return url_for("ui.job", job_id=str(job_id))


# ---- actions (docs/dashboard.md: CSRF) ------------------------------------------------------

CSRF_COOKIE = "cloudjobs_csrf"


def _csrf_secret() -> str:
    """This browser's CSRF secret: its cookie's, or a new one set with the response."""
    secret = request.cookies.get(CSRF_COOKIE) or g.get("csrf_new")
    if not secret:
        secret = g.csrf_new = secrets.token_urlsafe(32)
    return str(secret)


@bp.app_template_global("csrf_token")
def csrf_token() -> str:
    """The token a form of this page carries: an HMAC of the browser's CSRF cookie."""
    key = current_state().config.page_token_key.encode()
    return hmac.new(key, b"csrf:" + _csrf_secret().encode(), hashlib.sha256).hexdigest()


@bp.after_request
def _set_csrf_cookie(resp: Response) -> Response:
    if secret := g.get("csrf_new"):
        resp.set_cookie(CSRF_COOKIE, secret, httponly=True, samesite="Strict", secure=_https(), path=_cookie_path())
    return resp


def _check_csrf() -> None:
    """A state-changing POST must come from a page of this app (Origin) and carry the token of
    the browser's CSRF cookie: 403 otherwise, before anything changes."""
    sent = request.form.get("csrf_token", "")
    if not _same_origin() or not request.cookies.get(CSRF_COOKIE) or not hmac.compare_digest(sent, csrf_token()):
        raise Forbidden("refused: the form did not come from this dashboard (CSRF); reload the page and try again")


def _audit(action: str, target: str, jobs_touched: int | None, details: dict[str, Any] | None = None) -> None:
    with current_state().engine.begin() as conn:
        op_store.audit(conn, principal=principal().owner, action=action, target=target, jobs_touched=jobs_touched,
                       via="dashboard", details=details)


@bp.post("/jobs/<job_id>/<any(cancel, retry):action>")
def job_action(job_id: str, action: str) -> Response:
    """Cancel or retry one job from its page (scoped as the API is), audited; back to the page."""
    _check_csrf()
    state = current_state()
    jid = parse_job_id(job_id)
    act = lifecycle.cancel_job if action == "cancel" else lifecycle.retry_job
    try:
        row = act(state, jid, scope=principal().scope)
    except Problem as e:
        return redirect(url_for("ui.job", job_id=job_id, notice=e.detail), code=303)  # type: ignore[return-value]
    if row is None:
        raise JobNotFound(f"no job {job_id}")
    _audit(f"job.{action}", f"jobs/{jid}", 1)
    notice = "Cancelled." if action == "cancel" else "Sent to run again."
    return redirect(url_for("ui.job", job_id=job_id, notice=notice), code=303)  # type: ignore[return-value]


BULK_KINDS = {"cancel": "batchCancel", "retry": "batchRetry"}


@bp.post("/jobs/bulk")
def bulk() -> Response | str:
    """Cancel or retry every job the list's filters match: first a confirmation with the count
    (a dry run), then, confirmed, an operation (its page follows it)."""
    _check_csrf()
    state = current_state()
    action = request.form.get("action", "")
    if action not in BULK_KINDS:
        raise InvalidRequest("action must be cancel or retry")
    args = MultiDict([(k, v.strip()) for k, v in request.form.items(multi=True) if k in FILTERS and v.strip()])
    flt = parse_filter(args, owner=principal().scope)
    kind = BULK_KINDS[action]
    if request.form.get("confirm") != "yes":
        with state.engine.connect() as conn:
            count = op_store.count_matching(conn, kind, flt, None, principal().scope)
        return render_template("ui/confirm.html", action=action, count=count, chosen=dict(args.items()),
                               back=url_for("ui.jobs") + "?" + urlencode(list(args.items(multi=True))))
    op = operations.start(state, kind, flt=flt, ids=None, principal=principal().owner, scope=principal().scope,
                          idempotency_key=None, body_hash="", via="dashboard")
    return redirect(url_for("ui.operation", op_id=str(op.id)), code=303)  # type: ignore[return-value]


@bp.get("/operations/<op_id>")
def operation(op_id: str) -> str:
    """A bulk operation's counts; refreshes until it is done."""
    op = operation_views.find_operation(op_id, scope=principal().scope)
    return render_template("ui/operation.html", op=op, refresh=not op.done)


@bp.get("/queues")
def queues() -> str:
    """The queues: Cloud Tasks' state, live jobs, oldest, recent failures; pause and resume."""
    rows = queue_views.queues_overview(current_state(), scope=principal().scope)
    return render_template("ui/queues.html", queues=rows, admin=principal().admin,
                           notice=request.args.get("notice"))


@bp.post("/queues/<name>/<any(pause, resume):action>")
def queue_action(name: str, action: str) -> Response:
    """Pause or resume a queue (admins), audited; back to the queues page."""
    _check_csrf()
    queue_views.set_queue_paused(current_state(), name, pause=action == "pause", via="dashboard")
    notice = f"{name} {'paused' if action == 'pause' else 'resumed'}."
    return redirect(url_for("ui.queues", notice=notice), code=303)  # type: ignore[return-value]


AUDIT_PAGE = 100


@bp.get("/audit")
def audit() -> str:
    """Who did what, when, to how many jobs (admins)."""
    if not principal().admin:
        raise Forbidden("the audit log is for admins")
    before = request.args.get("before")
    with current_state().engine.connect() as conn:
        rows = op_store.audit_entries(conn, limit=AUDIT_PAGE + 1, before=int(before) if before and before.isdigit() else None)
    more = len(rows) > AUDIT_PAGE
    rows = rows[:AUDIT_PAGE]
    return render_template("ui/audit.html", entries=rows,
                           next_url=url_for("ui.audit", before=rows[-1].id) if more else None)


@bp.get("/find")
def find_job() -> Response:
    """Search by id: a whole id, or its first characters (hex, dashes optional)."""
    raw = request.args.get("id", "").strip().lower().replace("-", "")
    if len(raw) == 32:
        return redirect(url_for("ui.job", job_id=str(uuid.UUID(raw))), code=303)  # type: ignore[return-value]
    if not 4 <= len(raw) <= 32 or any(c not in "0123456789abcdef" for c in raw):
        raise InvalidRequest("give a job id, or at least its first 4 characters (hex)")
    with current_state().engine.connect() as conn:
        found = store.job_ids_with_prefix(conn, raw, owner=principal().scope, limit=2)
    if len(found) != 1:
        raise JobNotFound(f"{'no job' if not found else 'more than one job'} starts with {raw}")
    return redirect(url_for("ui.job", job_id=str(found[0])), code=303)  # type: ignore[return-value]

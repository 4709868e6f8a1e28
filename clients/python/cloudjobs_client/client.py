"""A Python client for the cloudjobs REST API.

    from cloudjobs_client.client import Client

    jobs = Client("https://jobs.example.com", api_key="cj_...")
    job = jobs.submit("resize", {"url": "gs://b/cat.png", "width": 200})
    job = jobs.wait(job.id, timeout=300)
    if job.state == "COMPLETED":
        print(job.result)

Requests that fail for a passing reason (429, 502, 503, 504, a refused or dropped
connection, an answer whose body broke off) are retried with exponential backoff by
urllib3's Retry, POSTs included: every submit carries an Idempotency-Key, made once per
submit call when the caller gives none and kept across its retries, so a retried submit
returns the job the first attempt made instead of making a second. Cancel and retry
are idempotent on the server. Errors the API answers with are raised as ApiError subclasses
that carry the problem+json document's fields.
"""

from __future__ import annotations

import builtins
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import MaxRetryError, ProtocolError, ReadTimeoutError
from urllib3.util.retry import Retry

from cloudjobs_client.workflows import Step, Workflow, steps_of

__all__ = [
    "ApiError",
    "Attempt",
    "Client",
    "Conflict",
    "Job",
    "JobError",
    "NotFound",
    "Progress",
    "Unauthorized",
    "Unavailable",
    "ValidationFailed",
]

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_RETRIES = 5
# The server holds a ?wait= request at most this long.
MAX_WAIT_S = 60.0
# batchCreate takes at most this many jobs; submit_many sends more in several batches.
MAX_BATCH = 500
MAX_PAGE_SIZE = 500
# Passing trouble: rate limited, a front end or the database unavailable for a moment.
RETRY_STATUSES = frozenset({429, 502, 503, 504})


# -- results ---------------------------------------------------------------------------------


def _time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _rfc3339(value: datetime | str) -> str:
    if isinstance(value, str):
        return value
    if value.tzinfo is None:
        raise ValueError("give an aware datetime (with a tzinfo), not a naive one")
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class JobError:
    """Why a job failed: a code and a message."""

    code: str
    message: str


@dataclass(frozen=True)
class Progress:
    """How far a running job has got, as its function reported."""

    fraction: float | None
    message: str | None


@dataclass(frozen=True)
class Job:
    """A job as the API returned it; `raw` is the JSON it came from."""

    id: str
    type: str
    queue: str
    state: str
    done: bool
    payload: dict[str, Any]
    result: Any
    error: JobError | None
    attempts: int
    max_attempts: int
    timeout_s: int | None
    progress: Progress | None
    labels: dict[str, str]
    created_time: datetime
    scheduled_time: datetime | None
    started_time: datetime | None
    done_time: datetime | None
    updated_time: datetime | None
    raw: dict[str, Any] = field(repr=False, compare=False)
    run: int = 0
    run_attempts: int = 0
    next_attempt_time: datetime | None = None
    waiting_reason: str | None = None  # while WAITING: dependencies, concurrency or throttle

    @property
    def attempt_text(self) -> str:
        """`attempt 2 of 5` in the first run; `attempt 2 of 5 in this run (total 7)` after a retry."""
        text = f"attempt {self.run_attempts} of {self.max_attempts}"
        if self.attempts != self.run_attempts:
            text += f" in this run (total {self.attempts})"
        return text

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Job:
        """A Job from the API's JSON; fields the client does not know stay in `raw`."""
        error, progress = d.get("error"), d.get("progress")
        return cls(
            id=d["id"],
            type=d["type"],
            queue=d["queue"],
            state=d["state"],
            done=bool(d["done"]),
            payload=d.get("payload") or {},
            result=d.get("result"),
            error=JobError(error.get("code", ""), error.get("message", "")) if error else None,
            attempts=d.get("attempts", 0),
            max_attempts=d.get("max_attempts", 0),
            timeout_s=d.get("timeout_s"),
            progress=Progress(progress.get("fraction"), progress.get("message")) if progress else None,
            labels=d.get("labels") or {},
            created_time=datetime.fromisoformat(d["created_time"]),
            scheduled_time=_time(d.get("scheduled_time")),
            started_time=_time(d.get("started_time")),
            done_time=_time(d.get("done_time")),
            updated_time=_time(d.get("updated_time")),
            raw=dict(d),
            # servers before run/run_attempts counted one run: every attempt was in it
            run=d.get("run", 0),
            run_attempts=d.get("run_attempts", d.get("attempts", 0)),
            next_attempt_time=_time(d.get("next_attempt_time")),
            waiting_reason=d.get("waiting_reason"),
        )

    @property
    def succeeded(self) -> bool:
        """Whether the job COMPLETED."""
        return self.state == "COMPLETED"


@dataclass(frozen=True)
class Attempt:
    """One delivery of a job that reached the handler."""

    number: int
    outcome: str
    error: JobError | None
    started_time: datetime
    finished_time: datetime
    duration_s: float
    task_name: str | None
    retry_count: int | None
    execution_count: int | None
    retry_reason: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Attempt:
        """An Attempt from the API's JSON."""
        error = d.get("error")
        return cls(
            number=d["number"],
            outcome=d["outcome"],
            error=JobError(error.get("code", ""), error.get("message", "")) if error else None,
            started_time=datetime.fromisoformat(d["started_time"]),
            finished_time=datetime.fromisoformat(d["finished_time"]),
            duration_s=float(d.get("duration_s", 0.0)),
            task_name=d.get("task_name"),
            retry_count=d.get("retry_count"),
            execution_count=d.get("execution_count"),
            retry_reason=d.get("retry_reason"),
            raw=dict(d),
        )


# -- errors ----------------------------------------------------------------------------------


class ApiError(Exception):
    """The API refused or failed a request; the fields are those of its problem+json."""

    def __init__(
        self,
        status: int | None,
        title: str,
        detail: str = "",
        *,
        errors: builtins.list[dict[str, Any]] | None = None,
        type: str | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{status or 'no answer'} {title}: {detail}" if detail else title)
        self.status = status
        self.title = title
        self.detail = detail
        self.errors = errors or []
        self.type = type
        self.body = dict(body or {})


class ValidationFailed(ApiError):
    """400 or 422: the request, or one of its fields, is not acceptable; see `errors`."""


class Unauthorized(ApiError):
    """401 or 403: no API key, a key the server does not accept, or one without the right."""


class NotFound(ApiError):
    """404: no such job (or not one this key may see)."""


class Conflict(ApiError):
    """409: the job's state forbids this, or an Idempotency-Key was reused with another body."""


class Unavailable(ApiError):
    """The service did not answer, or answered 5xx, after every retry; `status` None: no answer."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: ValidationFailed,
    401: Unauthorized,
    403: Unauthorized,
    404: NotFound,
    409: Conflict,
    422: ValidationFailed,
}


def error_from(resp: requests.Response) -> ApiError:
    """The exception for an error response: problem+json when it is one, else its text."""
    cls = _BY_STATUS.get(resp.status_code, Unavailable if resp.status_code >= 500 else ApiError)
    try:
        body = resp.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        text = resp.text.strip()[:500]
        return cls(resp.status_code, resp.reason or "Error", text)
    return cls(
        resp.status_code,
        str(body.get("title") or resp.reason or "Error"),
        str(body.get("detail") or ""),
        errors=body.get("errors") if isinstance(body.get("errors"), builtins.list) else None,
        type=body.get("type"),
        body=body,
    )


# -- the client ------------------------------------------------------------------------------


class Client:
    """The cloudjobs REST API, over one HTTP session with retries."""

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
        backoff: float = 0.5,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._session = requests.Session()
        self._session.headers["User-Agent"] = "cloudjobs-client/1"
        self._session.headers["Accept"] = "application/json, application/problem+json"
        if api_key:
            self._session.headers["Authorization"] = f"Bearer {api_key}"
        retry = Retry(
            total=retries,
            connect=retries,
            read=retries,
            status=retries,
            other=0,
            backoff_factor=backoff,  # 0, then 2×backoff, 4×backoff … between attempts
            backoff_max=30,
            status_forcelist=RETRY_STATUSES,
            # POST too: submits carry an Idempotency-Key, cancel and retry are idempotent.
            allowed_methods=frozenset({"GET", "POST"}),
            respect_retry_after_header=True,
            raise_on_status=False,  # the last answer is raised as an ApiError, with its problem
        )
        self._retry = retry
        adapter = HTTPAdapter(max_retries=retry)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)

    def close(self) -> None:
        """Close the HTTP session's connections."""
        self._session.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- jobs ------------------------------------------------------------------------------

    def submit(
        self,
        type: str,
        payload: Mapping[str, Any] | None = None,
        *,
        queue: str | None = None,
        run_at: datetime | str | None = None,
        max_attempts: int | None = None,
        timeout_s: int | None = None,
        labels: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        depends_on: Iterable[str] | None = None,
        on_dependency_failure: str | None = None,
        unique_key: str | None = None,
        unique_for_s: int | None = None,
        unique_mode: str | None = None,
        concurrency_key: str | None = None,
        priority: int | None = None,
        throttle_key: str | None = None,
        callback_url: str | None = None,
    ) -> Job:
        """Create a job. Safe to retry: the same key returns the same job, never a second.

        With `depends_on` (ids of your jobs) it waits, WAITING, until they have all ended;
        `on_dependency_failure` says what a failed one does to it: fail, cancel or run.
        Flow control (the server's docs/flow-control.md): `unique_key` returns the job that
        holds the key instead of creating another (`unique_mode="replace"` replaces one that
        has not started); `concurrency_key` and `throttle_key` share their key's limits, and
        `priority` orders the jobs waiting for one. `callback_url` is POSTed the job, signed,
        when it ends (docs/webhooks.md)."""
        body = _job_body(
            {
                "type": type,
                "payload": payload,
                "queue": queue,
                "run_at": run_at,
                "max_attempts": max_attempts,
                "timeout_s": timeout_s,
                "labels": labels,
                "depends_on": None if depends_on is None else [str(i) for i in depends_on],
                "on_dependency_failure": on_dependency_failure,
                "unique_key": unique_key,
                "unique_for_s": unique_for_s,
                "unique_mode": unique_mode,
                "concurrency_key": concurrency_key,
                "priority": priority,
                "throttle_key": throttle_key,
                "callback_url": callback_url,
            }
        )
        key = idempotency_key or str(uuid.uuid4())
        return Job.from_json(self._call("POST", "/v1/jobs", json=body, headers={"Idempotency-Key": key}))

    def submit_many(
        self, jobs: Iterable[Mapping[str, Any]], *, idempotency_key: str | None = None
    ) -> builtins.list[Job]:
        """Create jobs with batchCreate, in order; each mapping is a submit's fields.

        A batch of up to 500 is all or nothing; more are sent as several batches, each all
        or nothing. Calling again with the same key returns the same jobs.
        """
        bodies = [_job_body(j) for j in jobs]
        key = idempotency_key or str(uuid.uuid4())
        out: builtins.list[Job] = []
        for n, start in enumerate(range(0, len(bodies), MAX_BATCH)):
            chunk = bodies[start : start + MAX_BATCH]
            batch_key = key if len(bodies) <= MAX_BATCH else f"{key}.{n}"
            answer = self._call(
                "POST",
                "/v1/jobs:batchCreate",
                json={"jobs": chunk},
                headers={"Idempotency-Key": batch_key},
            )
            out += [Job.from_json(j) for j in answer["jobs"]]
        return out

    def get(self, job_id: str) -> Job:
        """The job now."""
        return Job.from_json(self._call("GET", _job_path(job_id)))

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """The job once it is done, or as it is when `timeout` seconds have passed (check .done).

        Uses ?wait= in slices of at most 60 s, so the server answers as soon as it is done.
        `timeout=None` waits for as long as it takes.
        """
        last = None
        for job in self.watch(job_id, timeout=timeout, interval=MAX_WAIT_S):
            last = job
        assert last is not None  # watch yields at least once
        return last

    def watch(self, job_id: str, *, timeout: float | None = None, interval: float = 1.0) -> Iterator[Job]:
        """The job now, then again every `interval` seconds or as soon as it is done.

        Ends after yielding the done job, or when `timeout` seconds have passed. Each step
        is one ?wait=interval request, so the end is seen at once and progress is fresh.
        """
        interval = min(max(interval, 0.001), MAX_WAIT_S)
        deadline = None if timeout is None else time.monotonic() + timeout
        job = self.get(job_id)
        yield job
        while not job.done:
            remaining = interval if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                return
            step = round(max(min(interval, remaining), 0.001), 3)
            started = time.monotonic()
            job = Job.from_json(self._call("GET", _job_path(job_id), params={"wait": f"{step:g}"}, wait=step))
            yield job
            # A server with too many waiters answers at once; do not turn that into a busy loop.
            elapsed = time.monotonic() - started
            if not job.done and elapsed < min(step, 1.0):
                time.sleep(min(step, 1.0) - elapsed)

    def list(
        self,
        *,
        state: str | Iterable[str] | None = None,
        type: str | Iterable[str] | None = None,
        queue: str | Iterable[str] | None = None,
        labels: Mapping[str, str] | None = None,
        created_after: datetime | str | None = None,
        created_before: datetime | str | None = None,
        page_size: int = 100,
    ) -> Iterator[Job]:
        """Every job that matches, newest first, fetched a page at a time as you iterate."""
        params = _filters(page_size, labels, created_after, created_before, state=state, type=type, queue=queue)
        for item in self._pages("/v1/jobs", "jobs", params):
            yield Job.from_json(item)

    def attempts(self, job_id: str) -> builtins.list[Attempt]:
        """The job's attempts, oldest first."""
        answer = self._call("GET", _job_path(job_id) + "/attempts")
        return [Attempt.from_json(a) for a in answer["attempts"]]

    def callbacks(self, job_id: str) -> builtins.list[dict[str, Any]]:
        """The job's completion webhooks: each event (one per terminal transition) with its
        deliveries, as the API gives them."""
        return list(self._call("GET", _job_path(job_id) + "/callbacks")["callbacks"])

    def steps(self, job_id: str) -> builtins.list[dict[str, Any]]:
        """The job's durable steps (ctx.step): name, attempt, result and times, as the API gives them."""
        return list(self._call("GET", _job_path(job_id) + "/steps")["steps"])

    def cancel(self, job_id: str) -> Job:
        """Cancel the job (idempotent); a running one stops cooperatively. Conflict if it ended."""
        return Job.from_json(self._call("POST", _job_path(job_id) + ":cancel"))

    def retry(self, job_id: str) -> Job:
        """Run a FAILED or CANCELLED job again (idempotent). Conflict if it COMPLETED."""
        return Job.from_json(self._call("POST", _job_path(job_id) + ":retry"))

    # -- workflows -------------------------------------------------------------------------

    def submit_workflow(
        self,
        steps: Step | Any,
        *,
        name: str,
        labels: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> Workflow:
        """Create a workflow from a composition (`chain`, `group`, `chord`), a Step, or a list
        of steps; all its steps are stored in one transaction. Safe to retry, like submit."""
        body: dict[str, Any] = {"name": name, "steps": steps_of(steps)}
        if labels:
            body["labels"] = dict(labels)
        key = idempotency_key or str(uuid.uuid4())
        return Workflow.from_json(self._call("POST", "/v1/workflows", json=body, headers={"Idempotency-Key": key}))

    def get_workflow(self, workflow_id: str) -> Workflow:
        """The workflow now, with its steps."""
        return Workflow.from_json(self._call("GET", _workflow_path(workflow_id)))

    def wait_workflow(self, workflow_id: str, timeout: float | None = None) -> Workflow:
        """The workflow once every step has ended, or as it is after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = MAX_WAIT_S if deadline is None else deadline - time.monotonic()
            step = round(max(min(MAX_WAIT_S, remaining), 0.001), 3)
            wf = Workflow.from_json(self._call("GET", _workflow_path(workflow_id),
                                               params={"wait": f"{step:g}"}, wait=step))
            if wf.done or (deadline is not None and time.monotonic() >= deadline):
                return wf

    def list_workflows(
        self,
        *,
        state: str | Iterable[str] | None = None,
        labels: Mapping[str, str] | None = None,
        created_after: datetime | str | None = None,
        created_before: datetime | str | None = None,
        page_size: int = 100,
    ) -> Iterator[Workflow]:
        """Every workflow that matches, newest first (without their steps), a page at a time."""
        params = _filters(page_size, labels, created_after, created_before, state=state)
        for item in self._pages("/v1/workflows", "workflows", params):
            yield Workflow.from_json(item)

    def cancel_workflow(self, workflow_id: str) -> Workflow:
        """Cancel every step not yet ended (idempotent). Conflict once it COMPLETED or FAILED."""
        return Workflow.from_json(self._call("POST", _workflow_path(workflow_id) + ":cancel"))

    def retry_workflow(self, workflow_id: str) -> Workflow:
        """Run the FAILED and CANCELLED steps, and everything after them, again."""
        return Workflow.from_json(self._call("POST", _workflow_path(workflow_id) + ":retry"))

    # -- schedules -------------------------------------------------------------------------

    def list_schedules(self) -> dict[str, Any]:
        """Every schedule and trigger of the service's schedules.yaml: `{"schedules": [...],
        "triggers": [...]}`, each schedule with its next fire times and last fire."""
        return dict(self._call("GET", "/v1/schedules"))

    def get_schedule(self, name: str) -> dict[str, Any]:
        """One schedule, with its latest fires."""
        return dict(self._call("GET", _schedule_path(name)))

    def run_schedule(self, name: str) -> dict[str, Any]:
        """Fire a schedule now (Cloud Scheduler's RunJob; admins only)."""
        return dict(self._call("POST", _schedule_path(name) + ":run"))

    def pause_schedule(self, name: str) -> dict[str, Any]:
        """Pause a schedule in Cloud Scheduler (admins only)."""
        return dict(self._call("POST", _schedule_path(name) + ":pause"))

    def resume_schedule(self, name: str) -> dict[str, Any]:
        """Resume a paused schedule (admins only)."""
        return dict(self._call("POST", _schedule_path(name) + ":resume"))

    # -- HTTP ------------------------------------------------------------------------------

    def _pages(self, path: str, key: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """The items of a keyset-paged list, one page fetched at a time."""
        while True:
            page = self._call("GET", path, params=params)
            yield from page[key]
            token = page.get("next_page_token")
            if not token:
                return
            params["page_token"] = token

    def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        wait: float = 0.0,
    ) -> Any:
        # urllib3 retries what fails before the answer's headers. An answer whose body breaks
        # off (a connection reset or cut mid-body, a chunk left unfinished, a read that times
        # out halfway) surfaces only while requests reads it, so the body is read here and the
        # request sent again under a Retry of the same policy, with the same headers: a submit
        # keeps its Idempotency-Key and makes one job.
        budget = self._retry.new()
        while True:
            try:
                resp = self._session.request(
                    method,
                    self.url + path,
                    params=params,
                    json=json,
                    headers=dict(headers or {}),
                    # A waiting request is answered after up to `wait` seconds, by design.
                    timeout=(self.timeout, self.timeout + wait),
                    stream=True,  # the headers only: the body is read below, where a break is retried
                )
                broken = _read_body(resp)
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.RetryError) as e:
                reason = e.args[0] if e.args else e
                reason = getattr(reason, "reason", None) or reason  # urllib3's MaxRetryError wraps it
                raise Unavailable(None, "Unreachable", f"{method} {self.url}{path}: {reason}") from e
            if broken is None:
                break
            resp.close()
            try:
                budget = budget.increment(method, self.url + path, error=broken)
            except MaxRetryError as e:
                raise Unavailable(None, "Broken answer", f"{method} {self.url}{path}: {broken}") from e
            budget.sleep()
        if resp.status_code >= 400:
            raise error_from(resp)
        return resp.json()


def _read_body(resp: requests.Response) -> ProtocolError | ReadTimeoutError | None:
    """Read the whole body now; the urllib3 error that broke it off, or None if it came whole."""
    try:
        resp.content  # noqa: B018 (reading is the point: a break here can still be retried)
    except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError) as e:
        # requests wraps urllib3's ProtocolError (reset, IncompleteRead, a bad chunk) or DecodeError.
        cause = e.args[0] if e.args else None
        return cause if isinstance(cause, ProtocolError) else ProtocolError(str(e))
    except requests.ConnectionError as e:
        # requests reports a read timeout in the middle of the body as a ConnectionError.
        cause = e.args[0] if e.args else None
        if isinstance(cause, ReadTimeoutError):
            return cause
        raise
    return None


def _filters(
    page_size: int, labels: Mapping[str, str] | None, created_after: datetime | str | None,
    created_before: datetime | str | None, **lists: str | Iterable[str] | None,
) -> dict[str, Any]:
    """A list request's query: the page size, each filter given (lists comma-joined)."""
    params: dict[str, Any] = {"page_size": min(max(page_size, 1), MAX_PAGE_SIZE)}
    for name, value in lists.items():
        if value:
            params[name] = value if isinstance(value, str) else ",".join(value)
    if labels:
        params["label"] = [f"{k}:{v}" for k, v in labels.items()]
    if created_after is not None:
        params["created_after"] = _rfc3339(created_after)
    if created_before is not None:
        params["created_before"] = _rfc3339(created_before)
    return params


def _workflow_path(workflow_id: str) -> str:
    return "/v1/workflows/" + quote(str(workflow_id), safe="")


def _job_path(job_id: str) -> str:
    return "/v1/jobs/" + quote(str(job_id), safe="")


def _job_body(fields: Mapping[str, Any]) -> dict[str, Any]:
    """A create request's body: the fields given, run_at as RFC 3339, nothing that is None."""
    body = {k: v for k, v in fields.items() if v is not None}
    if "type" not in body:
        raise ValueError("a job needs a type")
    body.setdefault("payload", {})
    if "run_at" in body:
        body["run_at"] = _rfc3339(body["run_at"])
    if "labels" in body:
        body["labels"] = dict(body["labels"])
    return body


def _schedule_path(name: str) -> str:
    if not name or "/" in name or ":" in name:
        raise ValueError(f"not a schedule name: {name!r}")
    return f"/v1/schedules/{name}"

"""`cloudjobs submit | get | list | watch | attempts | callbacks | cancel | retry | workflows | schedules`: the REST API
for people.

Each command talks to `--url` (else `CLOUDJOBS_URL`, else http://127.0.0.1:8080) with the key
in `CLOUDJOBS_API_KEY`, through cloudjobs_client.client. `--output json` prints the API's JSON instead of
text. Exit status: 0 done (a waited-for job COMPLETED); 1 a waited-for job FAILED or was
CANCELLED, or the service failed (5xx, unreachable); 2 the request was refused (4xx) or the
command line is wrong; 124 `--timeout` passed before the job was done.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

if TYPE_CHECKING:
    from cloudjobs_client.client import ApiError, Client, Job
    from cloudjobs_client.workflows import Workflow

T = TypeVar("T")

COMMANDS = ("submit", "get", "list", "watch", "attempts", "callbacks", "cancel", "retry", "workflows", "schedules")
DEFAULT_URL = "http://127.0.0.1:8080"
EXIT_FAILED = 1
EXIT_REFUSED = 2
EXIT_TIMEOUT = 124  # as timeout(1)
CLI_RETRIES = 3  # a person at a terminal would rather see the error than wait long for it
BAR_WIDTH = 20
COLOURS = {"COMPLETED": "32", "FAILED": "31", "CANCELLED": "33", "RUNNING": "36"}


class UsageError(Exception):
    """A command-line value that cannot be used; the message says which and why."""


def register(subparsers: Any) -> dict[str, Any]:
    """Add the client commands to the `cloudjobs` parser's subparsers; the action subparsers
    of the commands that have actions (the server adds `schedules sync` to them)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help=f"the cloudjobs API (default: $CLOUDJOBS_URL, else {DEFAULT_URL})")
    common.add_argument("-o", "--output", choices=("text", "json"), default="text", help="text (default) or json")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return subparsers.add_parser(name, parents=[common], help=help, description=help)  # type: ignore[no-any-return]

    p = command("submit", "create a job; with --wait, follow it until it is done")
    p.add_argument("type", help="the job type, e.g. echo")
    p.add_argument("--payload", default="{}", help="a JSON object, @FILE, or - for stdin")
    p.add_argument("--queue", help="a queue of queues.yaml (default: routed by type)")
    p.add_argument("--label", action="append", default=[], metavar="K=V", help="repeatable")
    p.add_argument("--max-attempts", type=int)
    p.add_argument("--depends-on", action="append", default=[], metavar="JOB_ID",
                   help="wait for these jobs to end first (repeatable, or comma-separated)")
    p.add_argument("--on-dependency-failure", choices=("fail", "cancel", "run"),
                   help="what a failed dependency does to this job (default: fail)")
    p.add_argument("--idempotency-key", help="default: a new one per command")
    p.add_argument("--unique-key", help="return the job of yours holding this key instead of creating another")
    p.add_argument("--unique-for", type=int, metavar="SECONDS",
                   help="with --unique-key: hold the key this long after the job started")
    p.add_argument("--replace", action="store_true",
                   help="with --unique-key: replace a holder that has not started (the latest wins)")
    p.add_argument("--concurrency-key", help="share this key's concurrency limit and rate (queues.yaml)")
    p.add_argument("--priority", type=int, help="among jobs waiting for the key, higher first (default 0)")
    p.add_argument("--throttle-key", help="pace the job by this key's rate_per_key")
    p.add_argument("--callback-url", help="POST the job here, signed, when it ends")
    p.add_argument("--wait", action="store_true", help="show progress until the job is done")
    p.add_argument("--timeout", type=float, help="with --wait: stop waiting after S seconds")

    p = command("get", "show a job")
    p.add_argument("job_id")

    p = command("list", "list jobs, newest first")
    p.add_argument("--state", action="append", default=[], help="repeatable, or comma-separated")
    p.add_argument("--type", action="append", default=[], help="repeatable, or comma-separated")
    p.add_argument("--queue", action="append", default=[], help="repeatable, or comma-separated")
    p.add_argument("--label", action="append", default=[], metavar="K=V", help="repeatable")
    p.add_argument("--limit", type=int, default=20, help="at most N jobs (0: all); default 20")

    p = command("watch", "follow a job until it is done")
    p.add_argument("job_id")
    p.add_argument("--timeout", type=float, help="stop watching after S seconds")

    for name, text in (
        ("attempts", "show a job's attempts"),
        ("callbacks", "show a job's completion webhooks and their deliveries"),
        ("cancel", "cancel a job"),
        ("retry", "run a FAILED or CANCELLED job again"),
    ):
        command(name, text).add_argument("job_id")

    wf = subparsers.add_parser("workflows", help="submit, list, show, watch, cancel or retry workflows",
                               description="Workflows: a DAG of steps in one request (docs/workflows.md).")
    actions = wf.add_subparsers(dest="action", required=True)

    def action(name: str, help: str) -> argparse.ArgumentParser:
        return actions.add_parser(name, parents=[common], help=help, description=help)  # type: ignore[no-any-return]

    p = action("submit", "create a workflow from a JSON file; with --wait, follow it until it ends")
    p.add_argument("file", help='a JSON file {"name", "labels", "steps": [...]} or a list of steps; - for stdin')
    p.add_argument("--name", help="the workflow's name (overrides the file's)")
    p.add_argument("--label", action="append", default=[], metavar="K=V", help="repeatable")
    p.add_argument("--idempotency-key", help="default: a new one per command")
    p.add_argument("--wait", action="store_true", help="follow it until every step has ended")
    p.add_argument("--timeout", type=float, help="with --wait: stop waiting after S seconds")
    p = action("list", "list workflows, newest first")
    p.add_argument("--state", action="append", default=[], help="repeatable, or comma-separated")
    p.add_argument("--label", action="append", default=[], metavar="K=V", help="repeatable")
    p.add_argument("--limit", type=int, default=20, help="at most N workflows (0: all); default 20")
    action("get", "show a workflow and its steps").add_argument("workflow_id")
    p = action("watch", "follow a workflow until every step has ended")
    p.add_argument("workflow_id")
    p.add_argument("--timeout", type=float, help="stop watching after S seconds")
    action("cancel", "cancel every step not yet ended").add_argument("workflow_id")
    action("retry", "run the failed and cancelled steps, and what follows them, again").add_argument("workflow_id")

    sched = subparsers.add_parser("schedules", help="list, show, run, pause or resume schedules",
                                  description="Schedules of schedules.yaml, fired by Cloud Scheduler (docs/schedules.md).")
    sched_actions = sched.add_subparsers(dest="action", required=True)

    def sched_action(name: str, help: str) -> argparse.ArgumentParser:
        return sched_actions.add_parser(name, parents=[common], help=help, description=help)  # type: ignore[no-any-return]

    sched_action("list", "every schedule: cron, next fire, last fire and its job")
    sched_action("get", "one schedule and its latest fires").add_argument("name")
    sched_action("run", "fire a schedule now (admins)").add_argument("name")
    sched_action("pause", "pause a schedule in Cloud Scheduler (admins)").add_argument("name")
    sched_action("resume", "resume a paused schedule (admins)").add_argument("name")
    return {"workflows": actions, "schedules": sched_actions}


def run(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> int:
    """Run one client command; the exit status."""
    from cloudjobs_client.client import ApiError, Client

    if getattr(args, "log_level", "INFO").upper() != "DEBUG":
        # urllib3 logs each retry as a warning; a person needs only the outcome.
        logging.getLogger("urllib3").setLevel(logging.ERROR)
    env = os.environ if env is None else env
    url = args.url or env.get("CLOUDJOBS_URL") or DEFAULT_URL
    client = Client(url, api_key=env.get("CLOUDJOBS_API_KEY") or None, retries=CLI_RETRIES)
    try:
        return _HANDLERS[args.command](client, args)
    except ApiError as e:
        _problem(e)
        return EXIT_REFUSED if e.status is not None and 400 <= e.status < 500 else EXIT_FAILED
    except UsageError as e:
        print(f"cloudjobs {args.command}: {e}", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    finally:
        client.close()


# -- commands --------------------------------------------------------------------------------


def _submit(client: Client, args: argparse.Namespace) -> int:
    job = client.submit(
        args.type,
        _payload(args.payload),
        queue=args.queue,
        labels=_labels(args.label),
        max_attempts=args.max_attempts,
        idempotency_key=args.idempotency_key,
        depends_on=_multi(args.depends_on) or None,
        on_dependency_failure=args.on_dependency_failure,
        unique_key=args.unique_key,
        unique_for_s=args.unique_for,
        unique_mode="replace" if args.replace else None,
        concurrency_key=args.concurrency_key,
        priority=args.priority,
        throttle_key=args.throttle_key,
        callback_url=args.callback_url,
    )
    if args.wait:
        return _follow(client, job.id, args)
    return _show(args, job.raw, lambda: print(job.id))  # the id alone, so that ID=$(cloudjobs submit …) works


def _get(client: Client, args: argparse.Namespace) -> int:
    job = client.get(args.job_id)
    return _show(args, job.raw, lambda: _describe(job))


def _show(args: argparse.Namespace, raw: Any, text: Callable[[], None]) -> int:
    """The API's JSON with --output json, else the text."""
    if args.output == "json":
        _json(raw)
    else:
        text()
    return 0


def _list(client: Client, args: argparse.Namespace) -> int:
    limit = args.limit if args.limit > 0 else None
    found = client.list(
        state=_multi(args.state) or None,
        type=_multi(args.type) or None,
        queue=_multi(args.queue) or None,
        labels=_labels(args.label) or None,
        page_size=min(limit + 1 if limit else 500, 500),  # one more than shown: are there more?
    )
    jobs = _take(found, limit, "list", "jobs")
    if args.output == "json":
        _json([j.raw for j in jobs])
        return 0
    rows = [
        [
            j.id,
            j.type,
            j.queue,
            j.state,
            _attempts_cell(j),
            _when(j.created_time),
            _progress_text(j),
            ",".join(f"{k}={v}" for k, v in sorted(j.labels.items())),
        ]
        for j in jobs
    ]
    header = ["ID", "TYPE", "QUEUE", "STATE", "ATTEMPTS", "CREATED", "PROGRESS", "LABELS"]
    _table(header, rows)
    return 0


def _take(found: Iterable[T], limit: int | None, command: str, what: str) -> list[T]:
    """At most `limit` items; when more match, one line on stderr says so (stdout stays the
    table, or the JSON)."""
    items: list[T] = []
    for item in found:
        if limit is not None and len(items) >= limit:
            print(f"cloudjobs {command}: more than {limit} {what} match; --limit N for more, --limit 0 for all",
                  file=sys.stderr)
            break
        items.append(item)
    return items


def _watch(client: Client, args: argparse.Namespace) -> int:
    return _follow(client, args.job_id, args)


def _attempts(client: Client, args: argparse.Namespace) -> int:
    attempts = client.attempts(args.job_id)
    if args.output == "json":
        _json([a.raw for a in attempts])
        return 0
    rows = [
        [
            str(a.number),
            a.outcome,
            _when(a.started_time),
            f"{a.duration_s:.3f}s",
            "" if a.retry_count is None else str(a.retry_count),
            f"{a.error.code}: {a.error.message}" if a.error else "",
        ]
        for a in attempts
    ]
    _table(["#", "OUTCOME", "STARTED", "DURATION", "RETRY COUNT", "ERROR"], rows)
    return 0


def _callbacks(client: Client, args: argparse.Namespace) -> int:
    events = client.callbacks(args.job_id)
    if args.output == "json":
        _json(events)
        return 0
    rows = [
        [e["id"], e["type"], e["state"], str(d["number"]), _when(_time(d["started_time"])),
         "" if d["status_code"] is None else str(d["status_code"]), d["error"] or ""]
        for e in events for d in (e["deliveries"] or [{"number": 0, "started_time": e["created_time"],
                                                       "status_code": None, "error": "not delivered yet"}])
    ]
    _table(["EVENT", "TYPE", "STATE", "#", "SENT", "STATUS", "ERROR"], rows)
    return 0


def _cancel(client: Client, args: argparse.Namespace) -> int:
    return _show_state(client.cancel(args.job_id), args)


def _retry(client: Client, args: argparse.Namespace) -> int:
    return _show_state(client.retry(args.job_id), args)


def _workflows(client: Client, args: argparse.Namespace) -> int:
    return _WORKFLOW_ACTIONS[args.action](client, args)


def _workflow_submit(client: Client, args: argparse.Namespace) -> int:
    spec = _json_file(args.file)
    if isinstance(spec, list):
        spec = {"steps": spec}
    if not isinstance(spec, dict) or not isinstance(spec.get("steps"), list):
        raise UsageError(f"{args.file}: a JSON object with a list `steps`, or a list of steps")
    labels = {**(spec.get("labels") or {}), **_labels(args.label)}
    name = args.name or spec.get("name")
    if not name:
        raise UsageError(f"{args.file}: a workflow needs a name: --name, or `name` in the file")
    try:
        wf = client.submit_workflow(spec["steps"], name=name, labels=labels or None,
                                    idempotency_key=args.idempotency_key)
    except ValueError as e:  # two steps of one name, a step without a type: said before sending
        raise UsageError(f"{args.file}: {e}") from None
    if args.wait:
        return _follow_workflow(client, wf.id, args)
    return _show(args, wf.raw, lambda: print(wf.id))  # alone, so that WF=$(cloudjobs workflows submit …) works


def _workflow_list(client: Client, args: argparse.Namespace) -> int:
    limit = args.limit if args.limit > 0 else None
    found = client.list_workflows(state=_multi(args.state) or None, labels=_labels(args.label) or None,
                                  page_size=min(limit + 1 if limit else 500, 500))
    flows = _take(found, limit, "workflows list", "workflows")
    if args.output == "json":
        _json([w.raw for w in flows])
        return 0
    rows = [[w.id, w.name or "", w.state, _step_counts(w), _when(w.created_time), _when(w.done_time)]
            for w in flows]
    _table(["ID", "NAME", "STATE", "STEPS", "CREATED", "ENDED"], rows)
    return 0


def _workflow_get(client: Client, args: argparse.Namespace) -> int:
    wf = client.get_workflow(args.workflow_id)
    return _show(args, wf.raw, lambda: _describe_workflow(wf))


def _workflow_watch(client: Client, args: argparse.Namespace) -> int:
    return _follow_workflow(client, args.workflow_id, args)


def _workflow_cancel(client: Client, args: argparse.Namespace) -> int:
    return _show_workflow_state(client.cancel_workflow(args.workflow_id), args)


def _workflow_retry(client: Client, args: argparse.Namespace) -> int:
    return _show_workflow_state(client.retry_workflow(args.workflow_id), args)


_WORKFLOW_ACTIONS: dict[str, Callable[[Client, argparse.Namespace], int]] = {
    "submit": _workflow_submit,
    "list": _workflow_list,
    "get": _workflow_get,
    "watch": _workflow_watch,
    "cancel": _workflow_cancel,
    "retry": _workflow_retry,
}


def _schedules(client: Client, args: argparse.Namespace) -> int:
    if args.action == "list":
        found = client.list_schedules()
        if args.output == "json":
            _json(found)
            return 0
        rows = [[s["name"], s["cron"], s["time_zone"], "paused" if s["paused"] else "enabled",
                 _when(_time(s["next_fire_times"][0])) if s["next_fire_times"] else "-",
                 _last_fire(s.get("last_fire"))] for s in found["schedules"]]
        _table(["NAME", "CRON", "TIME ZONE", "STATE", "NEXT FIRE", "LAST FIRE"], rows)
        for t in found["triggers"]:
            print(f"trigger {t['name']}: subscription {t['subscription']} -> {t['job']['type']}")
        return 0
    calls = {"get": client.get_schedule, "run": client.run_schedule, "pause": client.pause_schedule,
             "resume": client.resume_schedule}
    try:
        found = calls[args.action](args.name)
    except ValueError as e:
        raise UsageError(str(e)) from None

    def text() -> None:
        state = "paused" if found["paused"] else "enabled"
        print(f"{found['name']}  {found['cron']} ({found['time_zone']})  {state}  overlap={found['overlap']}")
        if args.action == "run":
            print("fired: Cloud Scheduler delivers it to /handlers/schedule now")
        for t in found["next_fire_times"]:
            print(f"  next  {_when(_time(t))}")
        for f in found.get("fires") or ([found["last_fire"]] if found.get("last_fire") else []):
            print(f"  fired {_last_fire(f)}")

    return _show(args, found, text)


def _time(raw: str | None) -> datetime | None:
    return datetime.fromisoformat(raw.replace("Z", "+00:00")) if raw else None


def _last_fire(fire: dict[str, Any] | None) -> str:
    if not fire:
        return "-"
    what = f"job {fire['job_id']} {fire['job_state']}" if fire.get("job_id") else fire["outcome"]
    return f"{_when(_time(fire['scheduled_for']))} {what}"


_HANDLERS: dict[str, Callable[[Client, argparse.Namespace], int]] = {
    "schedules": _schedules,
    "workflows": _workflows,
    "submit": _submit,
    "get": _get,
    "list": _list,
    "watch": _watch,
    "attempts": _attempts,
    "callbacks": _callbacks,
    "cancel": _cancel,
    "retry": _retry,
}


# -- following a job -------------------------------------------------------------------------


def _follow(client: Client, job_id: str, args: argparse.Namespace) -> int:
    """Show the job until it is done (or --timeout passes); the exit status for how it ended."""
    as_json = args.output == "json"
    # Progress goes to the terminal: stdout in text mode; in json mode stdout carries only
    # the JSON, so progress goes to stderr, and only when that is a terminal.
    stream = sys.stderr if as_json else sys.stdout
    shown = not as_json or stream.isatty()
    line = ProgressLine(stream, live=stream.isatty())
    if not as_json:
        print(job_id)  # in full, once: the progress line shows only its start
    started = time.monotonic()
    job = None
    for job in client.watch(job_id, timeout=args.timeout, interval=1.0):
        if shown:
            line.show(job, time.monotonic() - started)
    assert job is not None
    if shown:
        line.end()
    if as_json:
        _json(job.raw)
    elif job.done:
        if job.error:
            print(f"error: {job.error.code}: {job.error.message}")
        elif job.result is not None:
            print("result: " + json.dumps(job.result))
    if not job.done:
        print(f"cloudjobs: {job.id} is still {job.state} after {args.timeout:g}s", file=sys.stderr)
        return EXIT_TIMEOUT
    return 0 if job.state == "COMPLETED" else EXIT_FAILED


def _follow_workflow(client: Client, workflow_id: str, args: argparse.Namespace) -> int:
    """A line each time the steps' counts change, then the steps; the exit status for how it ended."""
    as_json = args.output == "json"
    stream = sys.stderr if as_json else sys.stdout
    if not as_json:
        print(workflow_id)
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    last = ""
    while True:
        remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        wf = client.wait_workflow(workflow_id, timeout=min(remaining, 2.0) if remaining is not None else 2.0)
        line = f"{wf.state}  {_step_counts(wf)}"
        if line != last and (not as_json or stream.isatty()):
            print(line, file=stream, flush=True)
            last = line
        if wf.done or (deadline is not None and time.monotonic() >= deadline):
            break
    if as_json:
        _json(wf.raw)
    else:
        _steps_table(wf)
    if not wf.done:
        print(f"cloudjobs: workflow {wf.id} is still {wf.state} after {args.timeout:g}s", file=sys.stderr)
        return EXIT_TIMEOUT
    return 0 if wf.state == "COMPLETED" else EXIT_FAILED


def _step_counts(wf: Workflow) -> str:
    """`3/5 done, 1 failed`: steps ended of all, and the failed and cancelled ones."""
    text = f"{wf.step_count - wf.active}/{wf.step_count} done"
    if wf.failed:
        text += f", {wf.failed} failed"
    if wf.cancelled:
        text += f", {wf.cancelled} cancelled"
    return text


def _describe_workflow(wf: Workflow) -> None:
    for k, v in (("id", wf.id), ("name", wf.name or ""), ("state", wf.state), ("steps", _step_counts(wf)),
                 ("labels", ",".join(f"{k}={v}" for k, v in sorted(wf.labels.items()))),
                 ("created", _when(wf.created_time)), ("ended", _when(wf.done_time))):
        if v:
            print(f"{k:<8}  {v}")
    print()
    _steps_table(wf)


def _steps_table(wf: Workflow) -> None:
    rows = [[s.name, s.state, s.type, str(s.attempts), ",".join(s.needs), s.job_id,
             f"{s.error.get('code', '')}: {s.error.get('message', '')}" if s.error else ""] for s in wf.steps]
    _table(["STEP", "STATE", "TYPE", "ATTEMPTS", "NEEDS", "JOB", "ERROR"], rows)


def _show_workflow_state(wf: Workflow, args: argparse.Namespace) -> int:
    return _show(args, wf.raw, lambda: print(f"{wf.id}  {wf.state}  {_step_counts(wf)}"))


class ProgressLine:
    """One terminal line rewritten in place (a TTY), or one printed line per change."""

    def __init__(self, stream: TextIO, *, live: bool) -> None:
        self.stream = stream
        self.live = live
        self.colour = live and "NO_COLOR" not in os.environ
        self._last: tuple[Any, ...] | None = None

    def show(self, job: Job, elapsed: float) -> None:
        """Show the job's state, progress bar, message and the time since we started."""
        if self.live:
            width = shutil.get_terminal_size((100, 20)).columns
            text = render(job, elapsed, colour=self.colour, width=width - 1)
            self.stream.write("\r\x1b[2K" + text)
            self.stream.flush()
            return
        key = (job.state, job.attempts, job.progress, job.error)
        if key != self._last:  # a pipe or a log gets a line per change, not per refresh
            self._last = key
            self.stream.write(render(job, elapsed, colour=False) + "\n")
            self.stream.flush()

    def end(self) -> None:
        """Leave the line as it is and move below it."""
        if self.live:
            self.stream.write("\n")
            self.stream.flush()


def render(job: Job, elapsed: float, *, colour: bool = False, width: int | None = None) -> str:
    """`0b9f3c1e  RUNNING   1/3  [########------------]  40%  resizing  12.5s` (attempt 1 of 3)."""
    state = f"{job.state:<9}"
    fraction = job.progress.fraction if job.progress else None
    if job.state == "COMPLETED":
        fraction = 1.0
    if fraction is None:
        bar, pct = "[" + " " * BAR_WIDTH + "]", "    "
    else:
        fraction = min(max(fraction, 0.0), 1.0)
        filled = round(fraction * BAR_WIDTH)
        bar = "[" + "#" * filled + "-" * (BAR_WIDTH - filled) + "]"
        pct = f"{fraction:>4.0%}"
    message = (job.progress.message if job.progress else None) or ""
    if job.state == "QUEUED" and job.error:  # waiting to retry: why, and until when
        message = _error_text(job)
        if job.next_attempt_time is not None:
            message = f"next attempt {_next_attempt(job)} after {message}"
    head = f"{job.id[:8]}  {state} {_attempts_cell(job)}  {bar} {pct}  "
    tail = f"  {_duration(elapsed)}"
    if width is not None:
        # The message gives way first: the line must fit, or \r cannot rewrite it.
        room = width - len(head) - len(tail)
        if len(message) > room:
            message = message[: max(room - 1, 0)] + ("…" if room > 0 else "")
    line = head + message + tail
    if width is not None:
        line = line[:width]
    if colour and job.state in COLOURS:
        line = line.replace(state, f"\x1b[{COLOURS[job.state]}m{state}\x1b[0m", 1)
    return line


# -- output helpers --------------------------------------------------------------------------


def _describe(job: Job) -> None:
    fields = [
        ("id", job.id),
        ("type", job.type),
        ("queue", job.queue),
        ("state", job.state + (f" (for its {job.waiting_reason})" if job.waiting_reason else "")),
        ("attempts", job.attempt_text),
        ("unique key", job.raw.get("unique_key", "")),
        ("concurrency", f"{job.raw['concurrency_key']} (at most {job.raw.get('concurrency_limit') or 'any'}, "
                        f"priority {job.raw.get('priority', 0)})" if job.raw.get("concurrency_key") else ""),
        ("callback", job.raw.get("callback_url", "")),
        ("last error" if not job.done else "", _error_text(job) if not job.done else ""),
        ("next attempt", _next_attempt(job)),
        ("progress", _progress_text(job)),
        ("labels", ", ".join(f"{k}={v}" for k, v in sorted(job.labels.items()))),
        ("created", _when(job.created_time)),
        ("scheduled", _when(job.scheduled_time)),
        ("started", _when(job.started_time)),
        ("done", _when(job.done_time)),
        ("payload", json.dumps(job.payload)),
        ("result", "" if job.result is None else json.dumps(job.result)),
        ("error", _error_text(job) if job.done else ""),
    ]
    width = max(len(k) for k, _ in fields)
    for k, v in fields:
        if v:
            print(f"{k:<{width}}  {v}")


def _show_state(job: Job, args: argparse.Namespace) -> int:
    return _show(args, job.raw, lambda: print(f"{job.id}  {job.state}"))


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    for r in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _attempts_cell(job: Job) -> str:
    """`2/5` for the run's attempts; `2/5 (7)` when earlier runs add to the total."""
    cell = f"{job.run_attempts}/{job.max_attempts}"
    return cell if job.attempts == job.run_attempts else f"{cell} ({job.attempts})"


def _error_text(job: Job) -> str:
    return f"{job.error.code}: {job.error.message}" if job.error else ""


def _next_attempt(job: Job) -> str:
    """When a job waiting to retry should run again: `2026-12-03 17:02:10Z (in 25s)`."""
    if job.state != "QUEUED" or job.next_attempt_time is None:
        return ""
    wait = (job.next_attempt_time - datetime.now(UTC)).total_seconds()
    return f"{_when(job.next_attempt_time)} ({'in ' + _duration(wait) if wait > 0 else 'due'})"


def _progress_text(job: Job) -> str:
    if not job.progress:
        return ""
    parts = []
    if job.progress.fraction is not None:
        parts.append(f"{job.progress.fraction:.0%}")
    if job.progress.message:
        parts.append(job.progress.message)
    return " ".join(parts)


def _when(value: datetime | None) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%SZ")


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def _json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def _problem(e: ApiError) -> None:
    status = f" ({e.status})" if e.status else ""
    print(
        f"cloudjobs: {e.title}{status}: {e.detail}" if e.detail else f"cloudjobs: {e.title}{status}",
        file=sys.stderr,
    )
    for err in e.errors:
        print(f"  {err.get('field', '')}: {err.get('message', '')}", file=sys.stderr)


# -- parsing ---------------------------------------------------------------------------------


def _payload(raw: str) -> dict[str, Any]:
    if raw == "-":
        text = sys.stdin.read()
    elif raw.startswith("@"):
        try:
            with open(raw[1:], encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise UsageError(f"--payload {raw}: {e.strerror}") from None
    else:
        text = raw
    try:
        value = json.loads(text)
    except ValueError as e:
        raise UsageError(f"--payload is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise UsageError("--payload must be a JSON object")
    return value


def _json_file(path: str) -> Any:
    """A JSON document, or YAML for a .yaml/.yml file (with PyYAML: `cloudjobs-client[yaml]`)."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"{path}: {e.strerror}") from None
    if path.endswith((".yaml", ".yml")):
        try:
            import yaml
        except ImportError:
            raise UsageError(f"{path}: reading YAML needs PyYAML: pip install 'cloudjobs-client[yaml]'") from None
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise UsageError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    try:
        return json.loads(text)
    except ValueError as e:
        raise UsageError(f"{path} is not valid JSON: {e}") from None


def _labels(raw: Iterable[str]) -> dict[str, str]:
    labels = {}
    for item in raw:
        # KEY=VALUE or KEY:VALUE, as the API and the dashboard take (keys hold neither).
        cut = min((i for i in (item.find("="), item.find(":")) if i >= 0), default=-1)
        if cut <= 0:
            raise UsageError(f"--label {item!r} must be KEY=VALUE (or KEY:VALUE)")
        labels[item[:cut]] = item[cut + 1:]
    return labels


def _multi(raw: Iterable[str]) -> list[str]:
    return [v for item in raw for v in item.split(",") if v]


def main(argv: Sequence[str] | None = None) -> int:
    """`cloudjobs-client COMMAND …`: the client commands alone, for who installed only this package."""
    parser = argparse.ArgumentParser(prog="cloudjobs-client", description="The cloudjobs REST API from a shell.")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())

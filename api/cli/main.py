"""The `cloudjobs` command: dev, the database commands, queues sync, types, the emulator, and the client's."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

from cloudjobs_client import cli as cli_client

from api.cli import doctor
from api.cli.devstate import CommandFailed, command_config
from api.config import ConfigurationInvalid
from api.observability import logs

logger = logging.getLogger(__name__)


class Parser(argparse.ArgumentParser):
    """argparse, with a mistake said in one line (and exit status 2) instead of the usage."""

    def error(self, message: str) -> NoReturn:
        """Print `prog: message (prog --help)` on stderr and exit 2."""
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def duration(raw: str) -> float:
    """An argparse type: seconds from 90s, 15m, 24h, 7d or 2w."""
    from api.cloud.queues import QueuesInvalid, parse_duration

    try:
        return parse_duration(raw)
    except QueuesInvalid:
        raise argparse.ArgumentTypeError(f"not a duration: {raw!r} (use 90s, 15m, 24h, 7d, 2w)") from None


def timestamp(raw: str) -> datetime:
    """An argparse type: an RFC 3339 time (UTC when it names no zone)."""
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an RFC 3339 time: {raw!r} (e.g. 2026-01-31T12:00:00Z)") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def start_time(raw: str) -> datetime | float:
    """An argparse type: an RFC 3339 time, or a duration (seconds back from the window's end)."""
    try:
        return duration(raw)
    except argparse.ArgumentTypeError:
        pass
    try:
        return timestamp(raw)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"not an RFC 3339 time or a duration: {raw!r} (e.g. 2026-01-31T12:00:00Z, 24h, 2w)") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Run a cloudjobs command."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["emulator"]:
        # The emulator owns its flags (--host, --port, --http-port, --key-file, ...).
        from api.cli.dev import run_emulator

        return run_emulator(args_list[1:])
    parser = Parser(prog="cloudjobs", description="A job orchestrator for Google Cloud.")
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)
    # Every command that needs the database finds `cloudjobs dev`'s through its data folder.
    near_dev = Parser(add_help=False)
    near_dev.add_argument("--data-dir", help="cloudjobs dev's folder, whose dev.json names its database when "
                          "DATABASE_URL is unset (default .cloudjobs here, or CLOUDJOBS_DATA_DIR)")

    dev = sub.add_parser("dev", help="run everything locally: PostgreSQL, the emulator, the app", parents=[near_dev])
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=8080, help="the app's port (default 8080)")
    dev.add_argument("--emulator-port", type=int, default=None,
                     help="the emulator's gRPC port (default 8123, or a free one when that is taken)")
    dev.add_argument("--queues", default="queues.yaml", help="the queues file")
    dev.add_argument("--reload", action=argparse.BooleanOptionalAction, default=True,
                     help="restart the app when a .py file under this folder changes (default on)")
    dev.add_argument("--sweep-every", type=duration, default=60.0,
                     help="run the sweeper this often, as Cloud Scheduler does in production (default 1m; 0: never)")

    sub.add_parser("migrate", help="upgrade the database schema to the latest version", parents=[near_dev])
    sub.add_parser("sweep", help="enqueue jobs whose enqueue was lost; settle jobs whose task is gone",
                   parents=[near_dev])
    sub.add_parser("rollup", help="bring the reporting rollups up to date (the sweeper does it too)",
                   parents=[near_dev])

    rep = sub.add_parser("report", help="reports over job history", parents=[near_dev])
    rep.add_argument("name", choices=["summary", "timeseries", "failures"])
    # The API's names (from, to, group_by); --since and --by are kept as their aliases.
    rep.add_argument("--from", "--since", dest="start", type=start_time, default=24 * 3600.0,
                     help="RFC 3339, or a duration back from --to: 90m, 24h, 7d, 2w (default 24h)")
    rep.add_argument("--to", dest="end", type=timestamp, help="RFC 3339 (default now)")
    rep.add_argument("--group-by", "--by", dest="by", choices=["type", "queue", "none"], default="none")
    rep.add_argument("--type")
    rep.add_argument("--queue")
    rep.add_argument("--bucket", choices=["minute", "hour", "day"], default="hour")
    rep.add_argument("--limit", type=int, default=20)
    rep.add_argument("--format", choices=["table", "csv", "json"], default="table")

    seed = sub.add_parser("seed-history", help="generate realistic job history (for trying reports)",
                          parents=[near_dev])
    seed.add_argument("--jobs", type=int, required=True)
    seed.add_argument("--days", type=float, default=30.0)

    purge = sub.add_parser("purge", help="delete finished jobs older than a cutoff, in batches", parents=[near_dev])
    purge.add_argument("--older-than", type=duration, required=True, help="e.g. 90d, 12w")
    purge.add_argument("--batch-size", type=int, default=10_000)

    keys = sub.add_parser("keys", help="API keys")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    kcreate = ksub.add_parser("create", help="create a key; it is shown once", parents=[near_dev])
    kcreate.add_argument("name")
    kcreate.add_argument("--admin", action="store_true", help="the key sees every job")
    ksub.add_parser("list", help="list keys (never their secrets)", parents=[near_dev])
    krevoke = ksub.add_parser("revoke", help="revoke a key by id or name", parents=[near_dev])
    krevoke.add_argument("key")

    queues = sub.add_parser("queues", help="Cloud Tasks queues")
    qsub = queues.add_subparsers(dest="queues_command", required=True)
    qsub.add_parser("sync", help="create or update the queues of queues.yaml", parents=[near_dev])

    types = sub.add_parser("types", help="the registered job types: schema, queue, timeout, limits",
                           parents=[near_dev])
    types.add_argument("--format", choices=["table", "json"], default="table")

    sub.add_parser("emulator", help="run the local Cloud Tasks emulator alone (see --help)", add_help=False)

    doctor.register(sub)

    actions = cli_client.register(sub)  # submit, get, list, watch, attempts, cancel, retry, workflows, schedules
    # `schedules sync` talks to Cloud Scheduler, not to the API: the server's own action.
    actions["schedules"].add_parser("sync", parents=[near_dev], help="create, update or delete the Cloud Scheduler "
                                    "jobs of schedules.yaml (pausing or resuming as `paused:` says)")
    triggers = sub.add_parser("triggers", help="Pub/Sub push triggers")
    tsub = triggers.add_subparsers(dest="triggers_command", required=True)
    tsub.add_parser("sync", parents=[near_dev], help="create the push subscriptions of schedules.yaml's "
                    "triggers that name a topic")

    args = parser.parse_args(args_list)
    if args.command == "dev":
        from api.cli.dev import run_dev

        return _one_line_errors(lambda: run_dev(args))  # dev sends its logs to its own log file
    logs.configure(args.log_level, json_logs=args.command != "emulator")
    # Alembic narrates its plugins and each migration at INFO; a command's output is its answer.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    if args.command in cli_client.COMMANDS and not (args.command == "schedules" and args.action == "sync"):
        return cli_client.run(args)
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "doctor": doctor.run, "migrate": _migrate, "report": _report, "seed-history": _seed,
        "purge": _purge, "keys": _keys, "sweep": _sweep, "rollup": _rollup, "queues": _queues_sync,
        "types": _types, "schedules": _schedules_sync, "triggers": _triggers_sync,
    }
    return _one_line_errors(lambda: commands[args.command](args))


def _one_line_errors(run: Callable[[], int]) -> int:
    """Run a command; what stops it for a reason the user can fix is one line and exit 2."""
    try:
        return run()
    except Exception as e:
        line = explain(e)
        if line is None:
            raise  # a bug: its traceback is what to report
        print(f"cloudjobs: {line}", file=sys.stderr)
        return 2


def explain(e: BaseException) -> str | None:
    """The one line that says what went wrong and what to do, for errors a user can fix."""
    import sqlalchemy.exc
    from google.api_core import exceptions as gexc
    from google.auth.exceptions import DefaultCredentialsError

    from api.cloud.queues import QueuesInvalid
    from api.cloud.schedules import SchedulesInvalid
    from api.store.driver import sqlstate

    if isinstance(e, CommandFailed):
        return str(e)
    if isinstance(e, ConfigurationInvalid):
        return f"configuration: {e}"
    if isinstance(e, QueuesInvalid | SchedulesInvalid):
        return str(e)
    if isinstance(e, DefaultCredentialsError):
        return ("no Google credentials for Cloud Tasks: run `gcloud auth application-default login`, "
                "or set CLOUD_TASKS_EMULATOR_HOST (`cloudjobs dev` runs an emulator; next to it "
                "the commands use it)")
    if isinstance(e, sqlalchemy.exc.ProgrammingError) and sqlstate(e) == "42P01":
        return "the database has no cloudjobs schema (or an older one): run `cloudjobs migrate`"
    if isinstance(e, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError):
        first = " ".join(str(e.orig).split())[:300]
        return f"cannot reach the database: {first} (check DATABASE_URL, or that `cloudjobs dev` runs)"
    if isinstance(e, gexc.GoogleAPIError | gexc.RetryError):
        return f"Google Cloud: {type(e).__name__}: {' '.join(str(e).split())[:300]}"
    if isinstance(e, ModuleNotFoundError) and e.name is not None:
        return (f"cannot import {e.name!r} ({e}): JOB_MODULES names modules importable from this "
                "folder or the environment")
    return None


def _migrate(args: argparse.Namespace) -> int:
    from api.store import migrate

    engine = _engine(args)
    try:
        migrate.upgrade(engine)
    finally:
        engine.dispose()
    print("database at head")
    return 0


def _engine(args: argparse.Namespace, reporting: bool = False) -> Any:
    """An engine of one connection on the command's database (dev's, next to it)."""
    from api.store.engine import create_engine

    config = command_config(args.data_dir)
    url = config.reporting_database_url if reporting else None
    return create_engine(config, url=url, pool_size=1)


def _report(args: argparse.Namespace) -> int:
    from api.errors import InvalidRequest
    from api.reporting import reports

    end = args.end or datetime.now(UTC)
    start = args.start if isinstance(args.start, datetime) else end - timedelta(seconds=args.start)
    q = reports.ReportQuery(start=start, end=end, type=args.type, queue=args.queue, group_by=args.by,
                            bucket=args.bucket, limit=args.limit)
    engine = _engine(args, reporting=True)
    try:
        rows = reports.run_report(engine, args.name, q)
    except InvalidRequest as e:
        raise CommandFailed(e.detail) from None
    finally:
        engine.dispose()
    print(format_rows(rows, args.format), end="")
    return 0


def format_rows(rows: list[dict[str, Any]], fmt: str) -> str:
    """Rows as an aligned table, CSV or JSON."""
    import csv
    import io
    import json

    if fmt == "json":
        return json.dumps(rows, indent=2) + "\n"
    if not rows:
        return "" if fmt == "csv" else "(no rows)\n"
    columns = list(rows[0])
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue()

    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3f}"
        return str(v)

    table = [columns] + [[cell(r[c]) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    lines = []
    for n, row in enumerate(table):
        cells = (v.rjust(w) if n and _numeric(v) else v.ljust(w) for v, w in zip(row, widths, strict=True))
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"


def _numeric(v: str) -> bool:
    try:
        float(v)
    except ValueError:
        return False
    return True


def _seed(args: argparse.Namespace) -> int:
    from api.reporting import rollups
    from api.reporting.history import seed_history

    engine = _engine(args)
    try:
        seconds = seed_history(engine, jobs=args.jobs, days=args.days)
        rolled = rollups.refresh(engine)
    finally:
        engine.dispose()
    print(f"seeded {args.jobs} jobs over {args.days:g} days in {seconds:.1f}s; rolled up {rolled.hours} hours")
    return 0


def _rollup(args: argparse.Namespace) -> int:
    from api.reporting import rollups

    engine = _engine(args)
    try:
        r = rollups.refresh(engine)
    finally:
        engine.dispose()
    until = r.rolled_until.isoformat() if r.rolled_until else "-"
    print(f"rolled up {r.hours} hours and {r.days} days; history before {until} is rolled up")
    return 0


def _purge(args: argparse.Namespace) -> int:
    from api.reporting import rollups
    from api.reporting.history import purge

    cutoff = datetime.now(UTC) - timedelta(seconds=args.older_than)
    engine = _engine(args)
    try:
        n = purge(engine, cutoff=cutoff, batch=args.batch_size)
        rollups.refresh(engine)  # the purged hours, now emptier
    finally:
        engine.dispose()
    print(f"purged {n} jobs finished before {cutoff.isoformat()}")
    return 0


def _keys(args: argparse.Namespace) -> int:
    from api.web import auth

    engine = _engine(args)
    try:
        with engine.begin() as conn:
            if args.keys_command == "create":
                try:
                    key = auth.create_key(conn, args.name, admin=args.admin)
                except auth.KeyNameTaken as e:
                    print(f"cloudjobs: {e}", file=sys.stderr)
                    return 1
                print(key)
                print(f"# the key for {args.name!r}; it is not stored and will not be shown again",
                      file=sys.stderr)
                return 0
            if args.keys_command == "list":
                print(f"{'ID':<14}{'NAME':<24}{'ADMIN':<7}{'CREATED':<22}REVOKED")
                for k in auth.list_keys(conn):
                    created = k.created_time.strftime("%Y-%m-%d %H:%M:%S")
                    revoked = k.revoked_time.strftime("%Y-%m-%d %H:%M:%S") if k.revoked_time else "-"
                    print(f"{k.id:<14}{k.name:<24}{'yes' if k.admin else 'no':<7}{created:<22}{revoked}")
                return 0
            if auth.revoke_key(conn, args.key) == 0:
                print(f"cloudjobs: no live key {args.key!r}", file=sys.stderr)
                return 1
            print(f"revoked {args.key}")
            return 0
    finally:
        engine.dispose()


def _sweep(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from api.cli.sweeper import build_sweeper

    # Next to dev: dev's database, emulator, handler URL, OIDC identity and queues, so the
    # tasks it creates are ones dev's app accepts.
    state, sweep = build_sweeper(command_config(args.data_dir))
    try:
        print(json.dumps(asdict(sweep(state))))
    finally:
        state.engine.dispose()
    return 0


def _queues_sync(args: argparse.Namespace) -> int:
    from api.cloud.queues import Queues
    from api.cloud.tasks import make_client, sync_queues

    config = command_config(args.data_dir, require_database=False)  # next to dev: its emulator
    queues = Queues.load(config.queues_file)
    for line in sync_queues(make_client(config), config, list(queues.specs.values())):
        print(line)
    return 0


def _schedules_sync(args: argparse.Namespace) -> int:
    from api.cloud.schedules import Schedules, make_scheduler_client, sync_schedules

    config = command_config(args.data_dir, require_database=False)  # next to dev: its emulator
    schedules = Schedules.load(config.schedules_file, required=True)
    _check_schedules(config, schedules)
    for line in sync_schedules(make_scheduler_client(config), config, schedules):
        print(line)
    return 0


def _triggers_sync(args: argparse.Namespace) -> int:
    from api.cloud.pubsub import sync_triggers
    from api.cloud.schedules import Schedules

    config = command_config(args.data_dir, require_database=False)
    schedules = Schedules.load(config.schedules_file, required=True)
    _check_schedules(config, schedules)
    for line in sync_triggers(config, schedules):
        print(line)
    return 0


def _check_schedules(config: Any, schedules: Any) -> None:
    """Refuse to sync a file whose jobs could never be created (unknown type or queue, a payload
    its type refuses): the same check as the app's at start."""
    problems = doctor.schedule_problems(config, schedules)
    if problems:
        raise CommandFailed("; ".join(problems))


def _types(args: argparse.Namespace) -> int:
    import json
    import os

    from api.cloud.queues import Queues
    from api.web.app import job_types
    from api.web.types import describe

    # Next to dev: its JOB_MODULES, demo types and queues; modules import from this folder.
    config = command_config(args.data_dir, require_database=False)
    sys.path.insert(0, os.getcwd())
    registry = job_types(config)
    if config.demo_job_types:
        from handlers.builtin import demo

        registry = registry.merged(demo)
    found = describe(registry, Queues.load(config.queues_file))
    if args.format == "json":
        print(json.dumps({"types": [t.as_json() for t in found]}, indent=2))
        return 0
    rows = [{
        "type": t.name, "queue": t.queue,
        "timeout_s": f"{t.timeout_s}" + (f" (cut from {t.declared_timeout_s})" if t.timeout_cut else ""),
        "max_attempts": t.max_attempts, "payload": _fields(t.schema),
    } for t in found]
    print(format_rows(rows, "table"), end="")
    return 0


def _fields(schema: dict[str, Any] | None) -> str:
    """A JSON Schema's top-level fields as `name: type`, required ones first, unmarked."""
    if schema is None:
        return "any object"
    required = set(schema.get("required", ()))
    parts = []
    for name, prop in (schema.get("properties") or {}).items():
        kind = prop.get("type") or "/".join(p.get("type", "?") for p in prop.get("anyOf", ())) or "any"
        parts.append(f"{name}: {kind}" + ("" if name in required else "?"))
    return ", ".join(parts) or "{}"


if __name__ == "__main__":
    sys.exit(main())

"""The `cloudjobs` command: dev, migrate, queues sync, emulator."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from cloudjobs_client import cli as cli_client

from api.cli import doctor
from api.config import Config, ConfigurationInvalid
from api.observability import logs

logger = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    """Run a cloudjobs command."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["emulator"]:
        # The emulator owns its flags (--host, --port, --http-port, --key-file, ...).
        from api.cli.dev import run_emulator

        return run_emulator(args_list[1:])
    parser = argparse.ArgumentParser(prog="cloudjobs", description="A job orchestrator for Google Cloud.")
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("dev", help="run everything locally: PostgreSQL, the emulator, the app")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=8080)
    dev.add_argument("--data-dir", default=".cloudjobs", help="where the embedded PostgreSQL keeps its data")
    dev.add_argument("--emulator-port", type=int, default=8123)
    dev.add_argument("--queues", default="queues.yaml", help="the queues file")

    sub.add_parser("migrate", help="upgrade the database schema to the latest version")
    sub.add_parser("sweep", help="enqueue jobs whose enqueue was lost; settle jobs whose task is gone")
    sub.add_parser("rollup", help="bring the reporting rollups up to date (the sweeper does it too)")

    rep = sub.add_parser("report", help="reports over job history")
    rep.add_argument("name", choices=["summary", "timeseries", "failures"])
    rep.add_argument("--since", default="24h", help="the window: 90m, 24h, 7d (default 24h)")
    rep.add_argument("--from", dest="start", help="RFC 3339; overrides --since")
    rep.add_argument("--to", dest="end", help="RFC 3339 (default now)")
    rep.add_argument("--by", choices=["type", "queue", "none"], default="none")
    rep.add_argument("--type")
    rep.add_argument("--queue")
    rep.add_argument("--bucket", choices=["minute", "hour", "day"], default="hour")
    rep.add_argument("--limit", type=int, default=20)
    rep.add_argument("--format", choices=["table", "csv", "json"], default="table")

    seed = sub.add_parser("seed-history", help="generate realistic job history (for trying reports)")
    seed.add_argument("--jobs", type=int, required=True)
    seed.add_argument("--days", type=float, default=30.0)

    purge = sub.add_parser("purge", help="delete finished jobs older than a cutoff, in batches")
    purge.add_argument("--older-than", required=True, help="e.g. 90d")
    purge.add_argument("--batch-size", type=int, default=10_000)

    keys = sub.add_parser("keys", help="API keys")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    kcreate = ksub.add_parser("create", help="create a key; it is shown once")
    kcreate.add_argument("name")
    kcreate.add_argument("--admin", action="store_true", help="the key sees every job")
    ksub.add_parser("list", help="list keys (never their secrets)")
    krevoke = ksub.add_parser("revoke", help="revoke a key by id or name")
    krevoke.add_argument("key")

    queues = sub.add_parser("queues", help="Cloud Tasks queues")
    qsub = queues.add_subparsers(dest="queues_command", required=True)
    qsub.add_parser("sync", help="create or update the queues of queues.yaml")

    sub.add_parser("emulator", help="run the local Cloud Tasks emulator alone (see --help)", add_help=False)

    doctor.register(sub)

    cli_client.register(sub)  # submit, get, list, watch, attempts, cancel, retry

    args = parser.parse_args(argv)
    logs.configure(args.log_level, json_logs=args.command not in ("dev", "emulator"))
    try:
        if args.command in cli_client.COMMANDS:
            return cli_client.run(args)
        if args.command == "dev":
            from api.cli.dev import run_dev

            return run_dev(args)
        if args.command == "doctor":
            return doctor.run(args)
        if args.command == "migrate":
            return _migrate()
        if args.command == "report":
            return _report(args)
        if args.command == "seed-history":
            return _seed(args)
        if args.command == "purge":
            return _purge(args)
        if args.command == "keys":
            return _keys(args)
        if args.command == "sweep":
            return _sweep()
        if args.command == "rollup":
            return _rollup()
        if args.command == "queues":
            return _queues_sync()
    except ConfigurationInvalid as e:
        print(f"cloudjobs: configuration: {e}", file=sys.stderr)
        return 2
    return 1


def _migrate() -> int:
    from api.store import migrate
    from api.store.engine import create_engine

    config = Config.from_env()
    engine = create_engine(config, pool_size=1)
    try:
        migrate.upgrade(engine)
    finally:
        engine.dispose()
    print("database at head")
    return 0


def _engine(reporting: bool = False) -> Any:
    from api.store.engine import create_engine

    config = Config.from_env()
    url = config.reporting_database_url if reporting else None
    return create_engine(config, url=url, pool_size=1)


def _report(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime, timedelta

    from api.cloud.queues import parse_duration
    from api.errors import InvalidRequest
    from api.reporting import reports

    def when(raw: str) -> datetime:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    end = when(args.end) if args.end else datetime.now(UTC)
    start = when(args.start) if args.start else end - timedelta(seconds=parse_duration(args.since))
    q = reports.ReportQuery(start=start, end=end, type=args.type, queue=args.queue, group_by=args.by,
                            bucket=args.bucket, limit=args.limit)
    engine = _engine(reporting=True)
    try:
        rows = reports.run_report(engine, args.name, q)
    except InvalidRequest as e:
        print(f"cloudjobs: {e.detail}", file=sys.stderr)
        return 2
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
        lines.append("  ".join(v.rjust(w) if n and _numeric(v) else v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
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

    engine = _engine()
    try:
        seconds = seed_history(engine, jobs=args.jobs, days=args.days)
        rolled = rollups.refresh(engine)
    finally:
        engine.dispose()
    print(f"seeded {args.jobs} jobs over {args.days:g} days in {seconds:.1f}s; rolled up {rolled.hours} hours")
    return 0


def _rollup() -> int:
    from api.reporting import rollups

    engine = _engine()
    try:
        r = rollups.refresh(engine)
    finally:
        engine.dispose()
    until = r.rolled_until.isoformat() if r.rolled_until else "-"
    print(f"rolled up {r.hours} hours and {r.days} days; history before {until} is rolled up")
    return 0


def _purge(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime, timedelta

    from api.cloud.queues import parse_duration
    from api.reporting.history import purge

    cutoff = datetime.now(UTC) - timedelta(seconds=parse_duration(args.older_than))
    from api.reporting import rollups

    engine = _engine()
    try:
        n = purge(engine, cutoff=cutoff, batch=args.batch_size)
        rollups.refresh(engine)  # the purged hours, now emptier
    finally:
        engine.dispose()
    print(f"purged {n} jobs finished before {cutoff.isoformat()}")
    return 0


def _keys(args: argparse.Namespace) -> int:
    from api.store.engine import create_engine
    from api.web import auth

    engine = create_engine(Config.from_env(), pool_size=1)
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


def _sweep() -> int:
    import json
    from dataclasses import asdict

    from api.orchestration.sweep import sweep
    from api.state import AppState
    from handlers.registry import Registry

    # The sweep needs the database, the queues and Cloud Tasks, not a web app or job types.
    state = AppState.build(Config.from_env(), registry=Registry())
    try:
        print(json.dumps(asdict(sweep(state))))
    finally:
        state.engine.dispose()
    return 0


def _queues_sync() -> int:
    from api.cloud.queues import Queues
    from api.cloud.tasks import make_client, sync_queues

    config = Config.from_env()
    queues = Queues.load(config.queues_file)
    for line in sync_queues(make_client(config), config, list(queues.specs.values())):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The `cloudjobs` command: dev, migrate, queues sync, emulator."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from api import cli_client, logs
from api.config import Config, ConfigurationInvalid

logger = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    """Run a cloudjobs command."""
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

    queues = sub.add_parser("queues", help="Cloud Tasks queues")
    qsub = queues.add_subparsers(dest="queues_command", required=True)
    qsub.add_parser("sync", help="create or update the queues of queues.yaml")

    emu = sub.add_parser("emulator", help="run the local Cloud Tasks emulator alone")
    emu.add_argument("--host", default="127.0.0.1")
    emu.add_argument("--port", type=int, default=8123)
    emu.add_argument("--http-port", type=int, default=0, help="the certs endpoint's port (0: any)")
    emu.add_argument("--dedup-window", type=float, default=3600.0)
    emu.add_argument("--app-engine-host", default="http://127.0.0.1:8080")

    cli_client.register(sub)  # submit, get, list, watch, attempts, cancel, retry

    args = parser.parse_args(argv)
    logs.configure(args.log_level, json_logs=args.command not in ("dev", "emulator"))
    try:
        if args.command in cli_client.COMMANDS:
            return cli_client.run(args)
        if args.command == "dev":
            from api.dev import run_dev

            return run_dev(args)
        if args.command == "migrate":
            return _migrate()
        if args.command == "sweep":
            return _sweep()
        if args.command == "queues":
            return _queues_sync()
        if args.command == "emulator":
            from emulator import main as emulator_main

            return emulator_main([
                "--host", args.host, "--port", str(args.port), "--http-port", str(args.http_port),
                "--dedup-window", str(args.dedup_window), "--app-engine-host", args.app_engine_host,
            ])
    except ConfigurationInvalid as e:
        print(f"cloudjobs: configuration: {e}", file=sys.stderr)
        return 2
    return 1


def _migrate() -> int:
    from api import migrate
    from api.db import create_engine

    config = Config.from_env()
    engine = create_engine(config, pool_size=1)
    try:
        migrate.upgrade(engine)
    finally:
        engine.dispose()
    print("database at head")
    return 0


def _sweep() -> int:
    import json
    from dataclasses import asdict

    from api import create_app
    from handlers.sweep import sweep

    app = create_app(Config.from_env())
    print(json.dumps(asdict(sweep(app.extensions["cloudjobs"]))))
    return 0


def _queues_sync() -> int:
    from api.queues import Queues
    from api.tasks import make_client, sync_queues

    config = Config.from_env()
    queues = Queues.load(config.queues_file)
    for line in sync_queues(make_client(config), config, list(queues.specs.values())):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())

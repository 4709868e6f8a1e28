"""`cloudjobs dev`: embedded PostgreSQL, migrations, the emulator, the queues, the app."""

from __future__ import annotations

import argparse
import faulthandler
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DEV_SERVICE_ACCOUNT = "cloudjobs-tasks@local-project.iam.gserviceaccount.com"


def run_dev(args: argparse.Namespace) -> int:
    """Run everything in this process until Ctrl-C."""
    from werkzeug.serving import make_server

    from api import create_app
    from api.cli.devdb import start_embedded_postgres
    from api.cloud.queues import Queues
    from api.cloud.tasks import make_client, sync_queues
    from api.config import Config
    from api.store import migrate
    from api.store.engine import create_engine
    from emulator import Emulator

    if hasattr(signal, "SIGUSR1"):
        # `kill -USR1 <pid>` prints every thread's stack: for a dev server that seems stuck.
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    pg: Any = None
    database_url = os.environ.get("DATABASE_URL")
    if not database_url:
        database_url, pg = start_embedded_postgres(Path(args.data_dir) / "postgres")
        print(f"  postgres   embedded, data in {Path(args.data_dir) / 'postgres'}")
    base = Config.from_env()
    engine = create_engine(base, url=database_url, pool_size=1)
    migrate.upgrade(engine)
    engine.dispose()

    emu = Emulator(host=args.host, port=args.emulator_port, http_port=0).start()
    try:
        config = base.replace(
            database_url=database_url,
            emulator_host=emu.address,
            handler_base_url=f"http://{args.host}:{args.port}",
            handler_auth="oidc",
            # The tutorial's curl has no key: locally the API is open (the callback is not).
            api_auth="none",
            demo_job_types=True,  # sleep, echo and flaky, for the first curl
            tasks_service_account=DEV_SERVICE_ACCOUNT,
            oidc_audience=None,
            oidc_certs_url=emu.certs_url,
            queues_file=Path(args.queues),
        )
        queues = Queues.load(config.queues_file)
        sync_queues(make_client(config), config, list(queues.specs.values()))
        app = create_app(config)
        server = make_server(args.host, args.port, app, threaded=True)
        stop = threading.Event()
        # Both stop it, whatever the signal's disposition was when this process started: a
        # shell starts a background job (`cloudjobs dev &`) with SIGINT ignored, and Python
        # then installs no KeyboardInterrupt for it.
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        url = f"http://{args.host}:{args.port}"
        print(f"  emulator   {emu.address} (certs {emu.certs_url})")
        print(f"  queues     {', '.join(queues.specs)}")
        print(f"\ncloudjobs is running on {url}  (Ctrl-C stops everything)\n")
        print(f"  curl -s -X POST {url}/v1/jobs -H 'Content-Type: application/json' \\")
        print("       -d '{\"type\":\"sleep\",\"payload\":{\"worktime\":40}}'")
        print(f"  curl -s {url}/v1/jobs/$ID\n", flush=True)
        while not stop.wait(0.5):
            pass
        print("\nstopping...", flush=True)
        with _step("app"):
            server.shutdown()
            app.extensions["cloudjobs"].engine.dispose()
    finally:
        with _step("emulator"):
            emu.stop()
        if pg is not None:
            with _step("postgres"):
                pg.cleanup()
    return 0


def run_emulator(argv: list[str]) -> int:
    """`cloudjobs emulator …`: the local Cloud Tasks emulator alone, with its own flags."""
    from emulator import main as emulator_main

    return emulator_main(argv)


@contextmanager
def _step(name: str) -> Iterator[None]:
    """Prints how long a part took to stop, so a slow shutdown says which part it was."""
    start = time.monotonic()
    try:
        yield
    finally:
        print(f"  {name:<10} stopped in {time.monotonic() - start:.1f}s", flush=True)

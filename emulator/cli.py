"""Command line: ``cloudjobs emulator`` / ``python -m emulator``."""

from __future__ import annotations

import argparse
import logging
import math
import signal
import sys
import threading
from typing import NoReturn

from emulator.oidc import ISSUER as DEFAULT_ISSUER
from emulator.runtime import Emulator, queues_from_file
from emulator.validation import QUEUE_TOMBSTONE_S

DEFAULT_PORT = 8123
DEFAULT_HTTP_PORT = 8124


def _rate(text: str) -> float | None:
    value = float(text)
    # 0 or inf lifts the cap: any max_dispatches_per_second is accepted.
    return None if value == 0 or math.isinf(value) else value


def _service(text: str) -> tuple[str, str]:
    name, sep, url = text.partition("=")
    if not sep or not name or not url.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"expected SERVICE=URL (e.g. worker=http://127.0.0.1:8081), not {text!r}")
    return name, url


class _Parser(argparse.ArgumentParser):
    """A mistake on the command line is one line on stderr and exit status 2, not the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    """The argument parser (shared with ``cloudjobs emulator``)."""
    p = _Parser(
        prog="cloudjobs emulator",
        description="Run a local Cloud Tasks v2 and Cloud Scheduler v1 emulator (gRPC, one port) until Ctrl-C.",
    )
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"gRPC port (default {DEFAULT_PORT}; 0 picks a free one)")
    p.add_argument("--http-port", type=int, default=DEFAULT_HTTP_PORT,
                   help=f"port of the OIDC certs endpoint (default {DEFAULT_HTTP_PORT})")
    p.add_argument("--dedup-window", type=float, default=3600.0, metavar="SECONDS",
                   help="how long a finished or deleted task's name stays taken (default 3600)")
    p.add_argument("--queue-tombstone", type=float, default=QUEUE_TOMBSTONE_S, metavar="SECONDS",
                   help="how long a deleted queue's name cannot be reused, as Google's "
                        f"(default {QUEUE_TOMBSTONE_S:.0f}: 3 days; 0 for tests that recreate queues)")
    p.add_argument("--app-engine-host", default="http://127.0.0.1:8080", metavar="URL",
                   help="where App Engine tasks are sent (default http://127.0.0.1:8080)")
    p.add_argument("--app-engine-service", type=_service, action="append", default=[],
                   metavar="SERVICE=URL",
                   help="where App Engine tasks routed to SERVICE (or VERSION.SERVICE, "
                        "INSTANCE.VERSION.SERVICE) go; repeatable")
    p.add_argument("--state-dir", default=None, metavar="DIR",
                   help="keep queues, pending tasks and tombstones in DIR across restarts "
                        "(default: in memory only)")
    p.add_argument("--queues", default=None, metavar="FILE",
                   help="create (or update) the queues of this queues.yaml at start")
    p.add_argument("--project", default="local-project",
                   help="project of the --queues queues (default local-project)")
    p.add_argument("--location", default="us-central1",
                   help="location of the --queues queues (default us-central1)")
    p.add_argument("--oidc-issuer", default=DEFAULT_ISSUER, metavar="URL",
                   help=f"the iss claim of OIDC tokens and the discovery document (default {DEFAULT_ISSUER})")
    p.add_argument("--insecure-tls", action="store_true",
                   help="dispatch to HTTPS handlers without verifying their certificates "
                        "(self-signed local handlers)")
    p.add_argument("--key-file", default=None, metavar="PEM",
                   help="RSA private key to sign OIDC tokens with (default: a new key)")
    p.add_argument("--max-dispatch-rate", type=_rate, default=500.0, metavar="PER_SECOND",
                   help="highest max_dispatches_per_second a queue may set (Google: 500; "
                        "0 for no cap)")
    p.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the emulator until SIGINT or SIGTERM; returns the exit status."""
    p = parser()
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    queues = []
    if args.queues:
        try:
            queues = queues_from_file(args.queues, args.project, args.location)
        except (OSError, ValueError) as e:
            print(f"cloudjobs emulator: error: --queues {args.queues}: {e}", file=sys.stderr)
            return 2
    emu = Emulator(
        host=args.host,
        port=args.port,
        http_port=args.http_port,
        dedup_window_s=args.dedup_window,
        app_engine_host=args.app_engine_host,
        key_file=args.key_file,
        queue_tombstone_s=args.queue_tombstone,
        max_dispatch_rate=args.max_dispatch_rate,
        app_engine_services=dict(args.app_engine_service),
        state_dir=args.state_dir,
        verify_tls=not args.insecure_tls,
        oidc_issuer=args.oidc_issuer,
    )
    try:
        emu.start()
    except OSError as exc:
        print(f"error: {exc}", flush=True)
        return 1
    for line in emu.ensure_queues(queues):
        print(line, flush=True)
    print(f"Cloud Tasks (and Cloud Scheduler) emulator (gRPC) listening on {emu.address}\n"
          f"REST (v2, v2beta3; Cloud Scheduler v1) on {emu.http_url}\n"
          f"OIDC certs: {emu.certs_url} (JWKS: {emu.jwks_url})\n"
          f"App Engine tasks go to {emu.app_engine_host}\n"
          "\n"
          "Point the google-cloud-tasks client at it:\n"
          f"    export CLOUD_TASKS_EMULATOR_HOST={emu.address}\n"
          "    client = tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(\n"
          f"        channel=grpc.insecure_channel(\"{emu.address}\")))\n"
          "Verify task OIDC tokens with:\n"
          "    google.oauth2.id_token.verify_token(token, google.auth.transport.requests"
          f".Request(), audience=AUDIENCE, certs_url=\"{emu.certs_url}\")\n"
          "Ctrl-C to stop.", flush=True)
    stopping = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        stopping.set()

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        # A timed wait keeps the main thread responsive to signals.
        while not stopping.wait(0.5):
            pass
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        emu.stop()
    print("Cloud Tasks emulator stopped.", flush=True)
    return 0

"""The app of `cloudjobs dev`, in a process of its own so that a reload restarts only the app.

`cloudjobs dev` keeps PostgreSQL, the emulator, the sweeper and the listening socket; it starts
this module (`python -m api.cli.devapp --fd N`, in the user's folder, so job modules import
from there) with the app's settings as environment variables, and ends it with SIGTERM on a
reload or a stop. The socket outlives the process: requests that arrive during a restart wait
in its backlog instead of being refused.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from werkzeug.serving import WSGIRequestHandler, make_server

from api.cli import devlog

EXIT_APP_FAILED = 3  # the app did not build (a job module that does not import, a bad setting)

logger = logging.getLogger(__name__)


class RequestHandler(WSGIRequestHandler):
    """werkzeug's handler without its own line per request: the app logs each one already."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Nothing: api/web/telemetry.py has logged the request."""


def main(argv: Sequence[str] | None = None) -> int:
    """Build the app from the environment and serve it on the inherited socket until SIGTERM."""
    from api import create_app
    from api.config import Config

    parser = argparse.ArgumentParser(prog="cloudjobs dev (app)")
    parser.add_argument("--fd", type=int, required=True, help="the listening socket dev made")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log-file", type=Path, required=True)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # as dev: every thread's stack
    devlog.configure(args.log_file, args.log_level)
    # Ctrl-C reaches the whole terminal's process group; dev decides when the app stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # JOB_MODULES from the project folder
    try:
        app = create_app(Config.from_env())
    except Exception as e:  # whatever stops the app building is what the user must fix
        logger.debug("the app did not start", exc_info=True)  # the traceback, in the log file
        where = _where(e)
        print(f"error: the app did not start: {type(e).__name__}: {e}{where}", file=sys.stderr, flush=True)
        return EXIT_APP_FAILED
    state = app.extensions["cloudjobs"]
    print(f"  app        ready (pid {os.getpid()}); job types: {', '.join(sorted(state.registry.types)) or '-'}",
          flush=True)
    server = make_server(args.host, args.port, app, threaded=True, request_handler=RequestHandler, fd=args.fd)
    threading.Thread(target=server.serve_forever, name="dev-app", daemon=True).start()
    stop.wait()
    server.shutdown()
    logging.shutdown()
    # Requests still running (jobs) end with the process: dev reports them as interrupted,
    # and the queue or the sweeper runs them again. No interpreter teardown under them.
    os._exit(0)


def _where(e: BaseException) -> str:
    """` (file:line)` of the frame that raised, for a SyntaxError or the deepest user frame."""
    if isinstance(e, SyntaxError) and e.filename:
        return f" ({e.filename}:{e.lineno})"
    tb = e.__traceback__
    last = None
    while tb is not None:
        if not tb.tb_frame.f_code.co_filename.startswith(sys.prefix):
            last = tb
        tb = tb.tb_next
    if last is None:
        return ""
    return f" ({os.path.relpath(last.tb_frame.f_code.co_filename)}:{last.tb_lineno})"


if __name__ == "__main__":
    sys.exit(main())

"""`cloudjobs dev`: embedded PostgreSQL, migrations, the emulator, the queues, the sweeper, the app.

This process holds the parts that keep state (PostgreSQL, the emulator's tasks, the listening
socket, the sweeper's timer); the app runs in a child process (api/cli/devapp.py) that is
restarted when a .py file of the project changes. dev.json in the data folder says where
everything is, for the database commands (api/cli/devstate.py). The terminal shows dev's
summary, warnings and one line per request; everything else goes to the data folder's dev.log.
"""

from __future__ import annotations

import argparse
import base64
import errno
import faulthandler
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from api.cli import devlog, devstate
from api.cli.devstate import CommandFailed
from api.config import Config

DEV_SERVICE_ACCOUNT = "cloudjobs-tasks@local-project.iam.gserviceaccount.com"
DEFAULT_EMULATOR_PORT = 8123
LOG_FILE = "dev.log"


def say(line: str) -> None:
    """One line of dev's own output."""
    print(line, flush=True)


def run_dev(args: argparse.Namespace) -> int:
    """Run everything until Ctrl-C (or SIGTERM); a start-up mistake is CommandFailed."""
    if hasattr(signal, "SIGUSR1"):
        # `kill -USR1 <pid>` prints every thread's stack: for a dev server that seems stuck.
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    stop = threading.Event()
    # Both stop it, whatever the signal's disposition was when this process started: a
    # shell starts a background job (`cloudjobs dev &`) with SIGINT ignored, and Python
    # then installs no KeyboardInterrupt for it. A Ctrl-C during start-up stops it once up.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    # The app's process is forked from here while the emulator's gRPC threads run; it execs at
    # once, so gRPC's fork handlers have nothing to do (they only print that they skipped).
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    base = Config.from_env()
    folder = devstate.data_dir(args.data_dir, base)
    folder.mkdir(parents=True, exist_ok=True)
    other = devstate.read(folder)
    if other is not None and other.running:
        raise CommandFailed(f"a cloudjobs dev already runs with {folder} (pid {other.pid}, {other.app_url}): "
                            "stop it, or give this one another --data-dir")
    log_level = getattr(args, "log_level", "INFO")
    console = devlog.configure(folder / LOG_FILE, log_level)
    console.hold()  # nothing before the banner
    with _Parts() as parts:
        listener = _listen(args.host, args.port)
        parts.on_stop("", listener.close)
        emulator, moved = _start_emulator(args.host, args.emulator_port, folder / "emulator")
        try:
            database_url, pg = _database(base, folder)
        except BaseException:
            emulator.stop()
            raise
        if pg is not None:
            parts.on_stop("postgres", pg.cleanup)
        parts.on_stop("emulator", emulator.stop)
        app_url = f"http://{args.host}:{listener.getsockname()[1]}"
        queues_file, own_queues = _queues_file(args.queues, folder)
        settings = dev_settings(base, database_url=database_url, emulator=emulator, app_url=app_url,
                                queues_file=queues_file)
        config = Config.from_env(over=settings)
        _migrate(config)
        queues = _sync_queues(config)
        schedules = _sync_schedules(config)
        timer = _start_sweeper(config, args.sweep_every)
        parts.on_stop("", timer.stop)
        state = devstate.DevState(pid=os.getpid(), app_url=app_url, database_url=database_url,
                                  emulator=emulator.address, certs_url=emulator.certs_url,
                                  log_file=str((folder / LOG_FILE).resolve()), settings=settings)
        state.write(folder)
        parts.on_stop("", lambda: devstate.remove(folder, os.getpid()))

        _banner(app_url, folder, pg_embedded=pg is not None, emulator=emulator.address,
                emulator_rest=emulator.http_url, moved=moved,
                queues=queues, own_queues=own_queues, sweep_every=args.sweep_every, reload=args.reload,
                schedules=schedules)
        console.show_held()
        parts.announce = True
        # Jobs left by a previous dev: their tasks are back with the emulator's state (its
        # --state-dir is the data folder's); a job whose task is not (a deleted data folder, a
        # crash before the write) is sent again now, and RUNNING ones once their lease ends.
        timer.sweep_once(sweep_created_after_s=0, sweep_queued_after_s=0)

        app = _AppProcess(listener, args.host, folder / LOG_FILE, log_level, settings)
        parts.on_stop("app", lambda: _report_interrupted(config, app.stop()))
        listener.listen(128)
        app.start()
        if args.reload:
            _watch(Path.cwd(), config.queues_file, folder, stop, on_change=lambda why: _reload(app, config, why),
                   schedules_file=config.schedules_file.resolve())
        status = app.supervise(stop, reload=args.reload)
        say("\nstopping...")
        console.quiet = True  # the parts' farewells (cancelled dispatches, closed sockets) are the log's
    return status


def _database(base: Config, folder: Path) -> tuple[str, Any]:
    """DATABASE_URL's database, or an embedded PostgreSQL in the data folder (and its server)."""
    if base.database_url:
        return base.database_url, None
    from api.cli.devdb import start_embedded_postgres

    return start_embedded_postgres(folder / "postgres")


def _queues_file(arg: str, folder: Path) -> tuple[Path, bool]:
    """The queues file; in a project without one, a single `default` queue (and True)."""
    path = Path(arg)
    if path.exists() or arg != "queues.yaml":
        return path.resolve(), False
    own = folder / "queues.yaml"
    own.write_text("# cloudjobs dev's: there is no queues.yaml in the project folder (docs/queues.md)\n"
                   "queues:\n  default: {}\n")
    return own.resolve(), True


def dev_settings(base: Config, *, database_url: str, emulator: Any, app_url: str, queues_file: Path) -> dict[str, str]:
    """The app's settings, as environment variables: the child gets them, dev.json keeps them."""
    return {
        "DATABASE_URL": database_url,
        "GOOGLE_CLOUD_PROJECT": base.project,
        "CLOUD_TASKS_LOCATION": base.location,
        "CLOUD_TASKS_EMULATOR_HOST": emulator.address,
        "HANDLER_BASE_URL": app_url,
        # Even locally the callback is authenticated: the emulator signs OIDC tokens as this
        # account, and the app checks them against the emulator's certificates.
        "HANDLER_AUTH": "oidc",
        "TASKS_SERVICE_ACCOUNT": DEV_SERVICE_ACCOUNT,
        "OIDC_AUDIENCE": "",
        "OIDC_CERTS_URL": emulator.certs_url,
        # The tutorial's curl has no key: locally the API is open (the callback is not).
        "AUTH": "none",
        "DEMO_JOB_TYPES": "true",  # sleep, echo and flaky, for the first curl
        "QUEUES_FILE": str(queues_file),
        "JOB_MODULES": ",".join(base.job_modules),
        # The emulator is Cloud Scheduler too; schedules fire from it, signed as the same account.
        "CLOUD_SCHEDULER_EMULATOR_HOST": emulator.address,
        "CLOUD_SCHEDULER_LOCATION": base.scheduler_region,
        "SCHEDULER_SERVICE_ACCOUNT": DEV_SERVICE_ACCOUNT,
        "PUBSUB_SERVICE_ACCOUNT": DEV_SERVICE_ACCOUNT,
        "SCHEDULES_FILE": str(base.schedules_file.resolve()) if base.schedules_file.exists() else str(base.schedules_file),
        # Completion webhooks to receivers on this machine, signed with dev's own secret
        # (docs/webhooks.md): kept in the data folder, the same from one start to the next.
        "WEBHOOK_SECRETS": ",".join(base.webhook_secrets) or dev_webhook_secret(base.data_dir),
        "WEBHOOK_ALLOW_PRIVATE": "true",
    }


def dev_webhook_secret(data_dir: Path) -> str:
    """Dev's webhook secret: made once (whsec_, 32 random bytes), kept in the data folder."""
    path = data_dir / "webhook-secret"
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    path.touch(mode=0o600)
    path.write_text(secret + "\n")
    return secret


class _Parts:
    """What dev started, stopped in reverse order (each named step timed once dev was up)."""

    def __init__(self) -> None:
        self._stops: list[tuple[str, Callable[[], None]]] = []
        self.announce = False  # a start-up that failed says only why, not how each part stopped

    def on_stop(self, name: str, fn: Callable[[], None]) -> None:
        """Run `fn` at the stop, before whatever was registered earlier."""
        self._stops.append((name, fn))

    def __enter__(self) -> _Parts:
        return self

    def __exit__(self, *exc: object) -> None:
        for name, fn in reversed(self._stops):
            start = time.monotonic()
            try:
                fn()
            finally:
                if name and self.announce:
                    say(f"  {name:<10} stopped in {time.monotonic() - start:.1f}s")


def _listen(host: str, port: int) -> socket.socket:
    """The app's socket, bound here (a taken port fails before anything starts) to outlive the app's restarts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise CommandFailed(f"--port {port}: {host}:{port} is taken (another cloudjobs dev?); "
                                "pass another --port") from None
        raise CommandFailed(f"cannot listen on {host}:{port}: {e.strerror}") from None
    # Bound, not yet listening: until the app starts a connection is refused, not left waiting.
    sock.set_inheritable(True)
    return sock


def run_emulator(argv: list[str]) -> int:
    """`cloudjobs emulator …`: the local Cloud Tasks emulator alone, with its own flags."""
    from emulator import main as emulator_main

    return emulator_main(argv)


def _start_emulator(host: str, port: int | None, state_dir: Path) -> tuple[Any, bool]:
    """The emulator on `port`, or on 8123 or else a free port; and whether 8123 was taken. Its
    queues and pending tasks live in `state_dir` (the data folder's), so a restart keeps them. A
    queue deleted in development can be created again at once (no 3-day tombstone, as Google's)."""
    from emulator import Emulator

    wanted = DEFAULT_EMULATOR_PORT if port is None else port
    # Tried here first: gRPC says a failed bind on the terminal itself, before raising.
    if not wanted or _free(host, wanted):
        try:
            return Emulator(host=host, port=wanted, http_port=0, state_dir=state_dir, queue_tombstone_s=0).start(), False
        except OSError:
            pass  # taken between the try and the start
    if port is not None:
        raise CommandFailed(f"--emulator-port {port}: {host}:{port} is taken (another cloudjobs dev?); "
                            "pass another port, or leave the option out for a free one")
    return Emulator(host=host, port=0, http_port=0, state_dir=state_dir, queue_tombstone_s=0).start(), True


def _free(host: str, port: int) -> bool:
    """Whether nothing listens on host:port."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
            probe.listen()
        except OSError:
            return False
    return True


def _migrate(config: Config) -> None:
    from api.store import migrate
    from api.store.engine import create_engine

    engine = create_engine(config, pool_size=1)
    try:
        migrate.upgrade(engine)
    finally:
        engine.dispose()


def _sync_queues(config: Config) -> list[str]:
    from api.cloud.queues import Queues
    from api.cloud.tasks import make_client, sync_queues

    queues = Queues.load(config.queues_file)
    sync_queues(make_client(config), config, list(queues.specs.values()))
    return list(queues.specs)


def _sync_schedules(config: Config) -> list[str]:
    """schedules.yaml into the emulator's Cloud Scheduler, so schedules fire here as in production."""
    from api.cloud.schedules import Schedules, make_scheduler_client, sync_schedules

    schedules = Schedules.load(config.schedules_file)
    sync_schedules(make_scheduler_client(config), config, schedules)
    return list(schedules.schedules)


def _start_sweeper(config: Config, every_s: float) -> Any:
    from api.cli.sweeper import SweepTimer

    return SweepTimer(config, every_s, say=lambda line: say("  " + line)).start()


def _banner(url: str, folder: Path, *, pg_embedded: bool, emulator: str, emulator_rest: str, moved: bool,
            queues: list[str], own_queues: bool, sweep_every: float, reload: bool, schedules: list[str]) -> None:
    say(f"cloudjobs is running on {url}  (Ctrl-C stops everything)\n")
    say(f"  postgres   {'embedded, data in ' + str(folder / 'postgres') if pg_embedded else 'DATABASE_URL'}")
    say(f"  emulator   {emulator}" + (f" ({DEFAULT_EMULATOR_PORT} was taken)" if moved else "")
        + f"; REST {emulator_rest}; tasks kept in {folder / 'emulator'}")
    say(f"  queues     {', '.join(queues)}" + (" (no queues.yaml here: one default queue)" if own_queues else ""))
    say(f"  schedules  {', '.join(schedules)} (fired by the emulator's Cloud Scheduler)" if schedules
        else "  schedules  none (schedules.yaml declares them)")
    say(f"  sweeper    every {sweep_every:g}s" if sweep_every > 0 else "  sweeper    off")
    say(f"  reload     {'on: a change to a .py file here restarts the app' if reload else 'off'}")
    say(f"  log        {folder / LOG_FILE}; the database commands find dev through {folder / devstate.STATE_FILE}\n")
    say(f"  curl -s -X POST {url}/v1/jobs -H 'Content-Type: application/json' \\")
    say("       -d '{\"type\":\"sleep\",\"payload\":{\"worktime\":40}}'")
    say(f"  curl -s {url}/v1/jobs/$ID\n")


class _AppProcess:
    """The app's child process: started, restarted, stopped; its exit watched."""

    def __init__(self, listener: socket.socket, host: str, log_file: Path, log_level: str,
                 settings: dict[str, str]) -> None:
        self._cmd = [sys.executable, "-m", "api.cli.devapp", "--fd", str(listener.fileno()), "--host", host,
                     "--port", str(listener.getsockname()[1]), "--log-file", str(log_file.resolve()),
                     "--log-level", log_level]
        self._fd = listener.fileno()
        self._env = {**os.environ, **settings}
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self.restarted = threading.Event()

    def start(self) -> None:
        """Start the app (in this folder: `python -m` puts it on the import path)."""
        with self._lock:
            self._proc = subprocess.Popen(self._cmd, env=self._env, pass_fds=(self._fd,))

    def stop(self) -> bool:
        """Stop the app; whether it was running."""
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return False
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return True

    def restart(self) -> bool:
        """Stop and start again; whether it was running."""
        was = self.stop()
        self.start()
        self.restarted.set()
        return was

    def supervise(self, stop: threading.Event, *, reload: bool) -> int:
        """Wait for the stop; an app that fails to start ends dev (exit 2) unless a reload may fix it."""
        from api.cli.devapp import EXIT_APP_FAILED

        told = False
        while not stop.wait(0.2):
            with self._lock:
                code = self._proc.poll() if self._proc is not None else None
            if code is None:
                told = False
                continue
            if not reload:
                say(f"the app exited ({code}); stopping")
                return 2
            if not told:
                hint = "fix it" if code == EXIT_APP_FAILED else f"it exited ({code})"
                say(f"  app        not running: {hint}; a change to a .py file here starts it again")
                told = True
        return 0


def _reload(app: _AppProcess, config: Config, why: str) -> None:
    """Restart the app (re-sync the queues first if their file changed)."""
    say(f"  reload     {why}: restarting the app")
    if why.endswith(config.queues_file.name):
        from api.cloud.queues import QueuesInvalid

        try:
            _sync_queues(config)
        except QueuesInvalid as e:
            say(f"  queues     {e}: kept as they were")
    if why.endswith(config.schedules_file.name):
        from api.cloud.schedules import SchedulesInvalid

        try:
            _sync_schedules(config)
        except SchedulesInvalid as e:
            say(f"  schedules  {e}: kept as they were")
    _report_interrupted(config, app.restart())


def _watch(root: Path, queues_file: Path, folder: Path, stop: threading.Event,
           on_change: Callable[[str], None], schedules_file: Path | None = None) -> None:
    """Call `on_change` when a .py file under `root` (or the queues or schedules file) changes, in a thread.

    watchfiles (inotify, FSEvents, ReadDirectoryChangesW, with a polling fallback) batches a
    save's several events into one, and its default filter skips .venv, .git and caches.
    """
    import watchfiles

    ignore = str(folder.resolve())

    class Sources(watchfiles.DefaultFilter):
        def __call__(self, change: watchfiles.Change, path: str) -> bool:
            if path.startswith(ignore):
                return False
            watched = Path(path) in (queues_file, schedules_file)
            return (path.endswith(".py") or watched) and super().__call__(change, path)

    def run() -> None:
        for changes in watchfiles.watch(root, queues_file.parent, watch_filter=Sources(), stop_event=stop,
                                        debounce=400, raise_interrupt=False):
            paths = sorted({os.path.relpath(p, root) for _, p in changes})
            on_change(f"{paths[0]} changed" + (f" (and {len(paths) - 1} more)" if len(paths) > 1 else ""))

    threading.Thread(target=run, name="dev-reload", daemon=True).start()


def _report_interrupted(config: Config, was_running: bool) -> None:
    """Say which jobs the app was running when it stopped, and when they run again."""
    if not was_running:
        return
    import sqlalchemy as sa

    from api.store.engine import create_engine
    from api.store.tables import jobs

    engine = create_engine(config, pool_size=1)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(jobs.c.id, jobs.c.type).where(jobs.c.state == "RUNNING").order_by(jobs.c.id)
            ).all()
    finally:
        engine.dispose()
    if rows:
        names = ", ".join(f"{r.id} ({r.type})" for r in rows)
        say(f"  interrupted {len(rows)} running job(s): {names}; each runs again as a new attempt once "
            "its lease ends (its timeout + 30 s), retried by the queue or found by the sweeper")

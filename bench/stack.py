"""A whole local stack for benchmarks and the chaos run: database, emulator, gunicorn.

Loopback only, bounded, and torn down on exit.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from api.cloud.queues import Queues
from api.cloud.tasks import make_client, sync_queues
from api.config import Config
from api.store import migrate
from api.store.engine import create_engine, normalise_url

ROOT = Path(__file__).resolve().parent.parent
SERVICE_ACCOUNT = "tasks@bench-project.iam.gserviceaccount.com"
DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def fresh_database(server_url: str | None, *, prefix: str = "cloudjobs_bench_") -> Iterator[str]:
    """A new, migrated database on `server_url` (or an embedded PostgreSQL), dropped afterwards.

    `prefix` names it, so a run's databases can be told from another's on a shared server."""
    server = None
    if server_url is None:
        from api.cli.devdb import start_embedded_postgres

        server_url, server = start_embedded_postgres(Path(tempfile.mkdtemp(prefix="cloudjobs-bench-")) / "pg")
    server_url = normalise_url(server_url)
    name = f"{prefix}{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    engine = create_engine(Config(), url=url, pool_size=1)
    migrate.upgrade(engine)
    engine.dispose()
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
        if server is not None:
            server.cleanup()


@dataclass
class Stack:
    """A running stack."""

    url: str
    env: dict[str, str]
    config: Config
    emulator: Any
    gunicorn: subprocess.Popen[bytes]
    database_url: str

    def engine(self) -> sa.Engine:
        """An engine on the stack's database."""
        return create_engine(self.config, url=self.database_url, pool_size=2)


def stack_env(
    *,
    database_url: str,
    emulator: Any,
    url: str,
    queues_file: Path,
    project: str = "bench-project",
    service_account: str = SERVICE_ACCOUNT,
    log_level: str = "ERROR",
    **extra: str,
) -> dict[str, str]:
    """The environment of an app wired as in production: OIDC callbacks from the emulator.

    The tests' stacks and the benchmark's are built from this one function."""
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "GOOGLE_CLOUD_PROJECT": project,
        "CLOUD_TASKS_EMULATOR_HOST": emulator.address,
        "HANDLER_BASE_URL": url,
        "HANDLER_AUTH": "oidc",
        "DEMO_JOB_TYPES": "true",
        "AUTH": "none",
        "TASKS_SERVICE_ACCOUNT": service_account,
        "OIDC_CERTS_URL": emulator.certs_url,
        "QUEUES_FILE": str(queues_file),
        "LOG_LEVEL": log_level,
        **extra,
    }


def start_gunicorn(
    env: dict[str, str],
    port: int,
    *,
    workers: int = 2,
    app: str = "api:create_app()",
    args: list[str] | None = None,
    stderr: Any = subprocess.DEVNULL,
) -> subprocess.Popen[bytes]:
    """gunicorn with the production config file, on a loopback port."""
    return subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"),
         "--bind", f"127.0.0.1:{port}", "--workers", str(workers), *(args or []), app],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr,
    )


def wait_healthy(url: str, proc: subprocess.Popen[bytes], *, path: str = "/healthz", timeout: float = 60.0) -> None:
    """Wait until the server answers `path`; fail at once if it exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode()[-2000:] if proc.stderr else ""
            raise RuntimeError(f"gunicorn exited during start-up: {err}")
        try:
            if requests.get(url + path, timeout=5).ok:
                return
        except requests.RequestException:  # not listening yet, or a worker still booting
            time.sleep(0.1)
    raise RuntimeError(f"gunicorn did not answer {path} within {timeout:.0f}s")


def stop(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout`."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def running_stack(
    database_url: str,
    *,
    queues_file: Path,
    workers: int = 2,
    extra_env: dict[str, str] | None = None,
    gunicorn_args: list[str] | None = None,
) -> Iterator[Stack]:
    """The emulator in this process and gunicorn serving the app, as in production."""
    from emulator import Emulator

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with Emulator(host="127.0.0.1", port=0, http_port=0) as emu:
        # A worker service (docs/deploy.md, the split deployment): every thread may run a job, so
        # the loaders measure the callback path, not RUN_CONCURRENCY's 429s.
        threads = os.environ.get("GUNICORN_THREADS", "8")
        env = stack_env(database_url=database_url, emulator=emu, url=url, queues_file=queues_file,
                        **{"RUN_CONCURRENCY": threads, **(extra_env or {})})
        config = Config.from_env(env)
        sync_queues(make_client(config), config, list(Queues.load(queues_file).specs.values()))
        proc = start_gunicorn(env, port, workers=workers, args=gunicorn_args)
        try:
            wait_healthy(url, proc)
            yield Stack(url, env, config, emu, proc, database_url)
        finally:
            stop(proc)

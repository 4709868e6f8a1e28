"""Worker subprocesses for the peers: started together, stopped by their own pids."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence

from sqlalchemy.engine import make_url

STOP_TIMEOUT_S = 15.0


def libpq_url(url: str) -> str:
    """A SQLAlchemy URL (postgresql+pg8000://…) as a libpq URL for psycopg and asyncpg."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class Workers:
    """N copies of one worker command, each in its own process group."""

    def __init__(self, argv: Sequence[str], *, count: int, env: dict[str, str]) -> None:
        self.procs = [
            subprocess.Popen(
                list(argv),
                env={**os.environ, **env},
                stdout=subprocess.DEVNULL,
                stderr=sys.stderr,
                start_new_session=True,
            )
            for _ in range(count)
        ]

    @property
    def pids(self) -> list[int]:
        """The workers' pids."""
        return [p.pid for p in self.procs]

    def check(self) -> None:
        """Raise if a worker died."""
        for p in self.procs:
            if p.poll() is not None:
                raise RuntimeError(f"a worker exited with status {p.returncode}")

    def stop(self) -> None:
        """SIGTERM each worker's group (a worker may have children), then SIGKILL stragglers."""
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)

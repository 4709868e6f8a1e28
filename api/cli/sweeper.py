"""The sweeper from the command line: `cloudjobs sweep`, and the timer `cloudjobs dev` runs.

In production Cloud Scheduler calls POST /handlers/sweep every minute; dev has no scheduler
yet, so a thread does the same with the app's settings.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from api.config import Config
from api.state import AppState

logger = logging.getLogger(__name__)


def build_sweeper(config: Config) -> tuple[AppState, Callable[[AppState], Any]]:
    """The parts a sweep needs (the database, the queues, Cloud Tasks; no web app, no job types)."""
    from api.orchestration.sweep import sweep
    from handlers.registry import Registry

    return AppState.build(config, registry=Registry(), queues=None), sweep


class SweepTimer:
    """Sweeps every `interval_s` in a thread until stopped; says on the terminal what it fixed."""

    def __init__(self, config: Config, interval_s: float, *, say: Callable[[str], None]) -> None:
        self.state, self._sweep = build_sweeper(config)
        self.interval_s = interval_s
        self._say = say
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dev-sweeper", daemon=True)

    def sweep_once(self, **settings: int) -> dict[str, int]:
        """One sweep (with some sweep settings changed); what it did."""
        import sqlalchemy.exc
        from google.api_core import exceptions as gexc

        state = self.state
        if settings:
            state = AppState(**{**vars(state), "config": state.config.replace(**settings)})
        try:
            done: dict[str, int] = asdict(self._sweep(state))
        except (sqlalchemy.exc.SQLAlchemyError, gexc.GoogleAPIError, gexc.RetryError) as e:
            # Next minute's sweep tries again; the log file has the traceback.
            logger.warning("sweep failed: %s: %s", type(e).__name__, " ".join(str(e).split())[:200],
                           exc_info=True)
            return {}
        fixed = {k: v for k, v in done.items() if v and k not in ("still_owned", "rollup_hours")}
        if fixed:
            self._say("sweep      " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in fixed.items()))
        return done

    def start(self) -> SweepTimer:
        """Start sweeping every interval (the first sweep one interval from now)."""
        if self.interval_s > 0:
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop after the sweep in progress, if any; close the connections."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)
        self.state.engine.dispose()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sweep_once()

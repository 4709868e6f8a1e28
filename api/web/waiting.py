"""Waiting for a job to finish: `GET /v1/jobs/{id}?wait=S`, without polling the database.

One PostgreSQL LISTEN connection per process, held by a background thread, hears
`cloudjobs_job_done` and wakes the requests waiting on that job. A trigger sends it when a job
reaches a terminal state, but only if a request registered in `job_waiters` for that job
(migrations 0004 and 0007): a NOTIFY makes its transaction hold a database-wide lock across its
commit, which would line up every job's finish behind the one before it.

Registering cannot miss a job that is ending at that moment. The registration is one
statement that inserts the `job_waiters` row and then takes a share lock on the job's row,
and only once it has committed does the waiter read the job again:
- if the ending transaction had already updated the row, the share lock waits for it to commit,
  and the read after it sees the job done;
- otherwise the ending UPDATE waits for the registration to commit, and its trigger (which
  reads `job_waiters` with a snapshot taken after that) sees the row and notifies.
Each waiter also re-reads its job every `wait_fallback_s` seconds, so a lost notification, a
listener that is reconnecting, or a job finished by a statement that fired no trigger never
strands it: it costs at most that long.

The listener starts with the first waiter of a process (after gunicorn has forked), never in
create_app, and stops at process exit or on `close()`.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import os
import select
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from flask import current_app
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.exc import SQLAlchemyError

from api.errors import InvalidRequest
from api.state import AppState
from api.store import driver
from api.store.engine import autocommit
from api.store.tables import TERMINAL

logger = logging.getLogger(__name__)

CHANNEL = "cloudjobs_job_done"
MAX_WAIT_S = 60.0
# With nothing heard for this long the listener sends a query, so a connection that died
# without a word (a NAT or proxy dropping it) is noticed and replaced.
KEEPALIVE_S = 30.0
# How long the first waiter of a process gives the listener to connect before it relies on
# the fallback alone.
START_TIMEOUT_S = 2.0
_EXTENSION = "cloudjobs.waiters"
_LISTENER_ERRORS = driver.CONNECTION_ERRORS

Read = Callable[[Connection], "Row[Any] | None"]

# One statement, committed on its own: the row first, then the share lock (module docstring).
_ANNOUNCE = sa.text(
    """
    WITH registered AS (
        INSERT INTO job_waiters (job_id, waiter) VALUES (:job_id, :waiter)
    )
    SELECT 1 FROM jobs WHERE id = :job_id FOR SHARE
    """
)
_WITHDRAW = sa.text("DELETE FROM job_waiters WHERE job_id = :job_id AND waiter = :waiter")
_create_lock = threading.Lock()  # one JobWaiters per app, even when two requests race


def wait_seconds(raw: str | None) -> float | None:
    """The `wait` query parameter: None when absent; 400 unless 0 < S ≤ 60."""
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (0 < value <= MAX_WAIT_S):  # also refuses nan and inf
        raise InvalidRequest(
            f"wait must be a number of seconds above 0 and at most 60, not {raw!r}"
        )
    return value


def wait_until_done(
    state: AppState, row: Row[Any], timeout_s: float, read: Read
) -> Row[Any] | None:
    """The job once it is done, or as it is after `timeout_s`; None if it disappeared.

    `read(conn)` reads the job again, with the same filters the caller read it with.
    """
    if row.state in TERMINAL:
        return row
    return waiters_for(state).until_done(row, timeout_s, read)


def waiters_for(state: AppState) -> JobWaiters:
    """The current app's JobWaiters, made on first use."""
    app = current_app
    waiters = app.extensions.get(_EXTENSION)
    if waiters is None:
        with _create_lock:
            waiters = app.extensions.get(_EXTENSION)
            if waiters is None:
                waiters = JobWaiters(
                    state.engine,
                    fallback_s=state.config.wait_fallback_s,
                    max_waiters=state.config.wait_max_per_process,
                )
                app.extensions[_EXTENSION] = waiters
    return waiters  # type: ignore[no-any-return]


class JobWaiters:
    """Requests waiting on jobs, and the one LISTEN connection that wakes them."""

    def __init__(self, engine: Engine, *, fallback_s: float = 5.0, max_waiters: int = 4) -> None:
        self._engine = engine
        self.fallback_s = fallback_s
        self.max_waiters = max_waiters
        self._lock = threading.Lock()
        self._events: dict[uuid.UUID, set[threading.Event]] = {}
        self._active = 0
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self._stop = threading.Event()
        self._listening = threading.Event()
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._exit_hook = False
        self.listener_pid: int | None = None  # the listening backend's pid (tests, operators)

    # -- waiting ---------------------------------------------------------------------------

    def until_done(self, row: Row[Any], timeout_s: float, read: Read) -> Row[Any] | None:
        """Hold until the job is done or `timeout_s` passes; then the job as it is."""
        deadline = time.monotonic() + timeout_s
        if not self._admit():
            # Every waiter holds a server thread; past the cap answer now, as a poll would.
            return row
        try:
            self._ensure_listening(min(timeout_s, START_TIMEOUT_S))
            event = self._register(row.id)
            waiter = uuid.uuid4()
            try:
                self._announce(row.id, waiter)
                # Read again after registering: a job that ended between the caller's read
                # and the registration sent its notification to nobody.
                current = self._read(read)
                while current is not None and current.state not in TERMINAL:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    event.wait(min(remaining, self.fallback_s))
                    event.clear()  # before reading, so a notification during the read counts
                    current = self._read(read)
                return current
            finally:
                self._unregister(row.id, event)
                self._withdraw(row.id, waiter)
        finally:
            with self._lock:
                self._active -= 1

    def _announce(self, job_id: uuid.UUID, waiter: uuid.UUID) -> None:
        """Register in job_waiters, so the job's end is notified (see the module's docstring)."""
        with autocommit(self._engine) as conn:
            conn.execute(_ANNOUNCE, {"job_id": job_id, "waiter": waiter})

    def _withdraw(self, job_id: uuid.UUID, waiter: uuid.UUID) -> None:
        try:
            with autocommit(self._engine) as conn:
                conn.execute(_WITHDRAW, {"job_id": job_id, "waiter": waiter})
        except SQLAlchemyError as e:
            # The answer is ready; a row left behind costs one needless NOTIFY, and the
            # sweeper removes it (purge_stale_waiters).
            logger.warning("job waiters: could not remove a registration", extra={"error": repr(e)})

    def _read(self, read: Read) -> Row[Any] | None:
        # A connection only for the read: a waiter must not hold one of the pool's few.
        with self._engine.connect() as conn:
            return read(conn)

    def _admit(self) -> bool:
        with self._lock:
            if self._active >= self.max_waiters:
                return False
            self._active += 1
            return True

    def _register(self, job_id: uuid.UUID) -> threading.Event:
        event = threading.Event()
        with self._lock:
            self._events.setdefault(job_id, set()).add(event)
        return event

    def _unregister(self, job_id: uuid.UUID, event: threading.Event) -> None:
        with self._lock:
            events = self._events.get(job_id)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._events[job_id]

    def _wake(self, job_ids: set[uuid.UUID]) -> None:
        with self._lock:
            events = [e for i in job_ids for e in self._events.get(i, ())]
        for e in events:
            e.set()

    def _wake_all(self) -> None:
        with self._lock:
            events = [e for es in self._events.values() for e in es]
        for e in events:
            e.set()

    @property
    def waiting(self) -> int:
        """How many requests wait now."""
        with self._lock:
            return self._active

    # -- the listener ----------------------------------------------------------------------

    def _ensure_listening(self, timeout_s: float) -> None:
        """Start the listener if this process has none (the first waiter, or after a fork)."""
        with self._lock:
            started = not (
                self._thread is not None and self._thread.is_alive() and self._pid == os.getpid()
            )
            if started:
                self._start()
        if started:
            # Give it a moment to connect; one that is reconnecting is not waited for, the
            # fallback covers the gap.
            self._listening.wait(timeout_s)

    def _start(self) -> None:
        self._pid = os.getpid()
        self._stop.clear()
        self._listening.clear()
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(
            target=self._run, args=(self._wake_r,), name="cloudjobs-waiters", daemon=True
        )
        self._thread.start()
        if not self._exit_hook:
            atexit.register(_close_at_exit, weakref.ref(self))
            self._exit_hook = True

    def close(self) -> None:
        """Stop the listener and close its connection; waiters fall back to re-reading."""
        with self._lock:
            thread, wake_w = self._thread, self._wake_w
            self._thread = None
            if thread is None or self._pid != os.getpid():
                return
            self._stop.set()
        if wake_w is not None:
            with contextlib.suppress(OSError):  # closed already: the thread is leaving anyway
                wake_w.send(b"x")
        thread.join(timeout=5)
        for s in (self._wake_r, self._wake_w):
            if s is not None:
                s.close()
        self._wake_r = self._wake_w = None

    def _run(self, wake_r: socket.socket) -> None:
        backoff = 0.2
        while not self._stop.is_set():
            try:
                dbapi = self._connect()
            except _LISTENER_ERRORS as e:
                logger.warning("job waiters: cannot listen, retrying", extra={"error": repr(e)})
                self._stop.wait(backoff)
                backoff = min(backoff * 2, max(self.fallback_s, 1.0))
                continue
            backoff = 0.2
            self._listening.set()
            # Whatever ended while nobody listened: let every waiter look once.
            self._wake_all()
            try:
                self._listen(dbapi, wake_r)
            except _LISTENER_ERRORS as e:
                if not self._stop.is_set():
                    logger.warning(
                        "job waiters: listener lost its connection, reconnecting",
                        extra={"error": repr(e)},
                    )
            finally:
                self._listening.clear()
                self.listener_pid = None
                with contextlib.suppress(*_LISTENER_ERRORS):  # gone already: nothing to close
                    dbapi.close()
            self._wake_all()

    def _connect(self) -> Any:
        # A connection made the way the app's engine makes them (DATABASE_URL or the Cloud
        # SQL connector), then detached: it is this thread's alone, outside the pool.
        fairy = self._engine.raw_connection()
        fairy.detach()
        dbapi: Any = fairy.dbapi_connection
        try:
            # A blocked read on a dead connection must end, so that we reconnect.
            self.listener_pid = driver.of(dbapi).listen(dbapi, CHANNEL, read_timeout_s=KEEPALIVE_S)
        except BaseException:
            dbapi.close()
            raise
        return dbapi

    def _listen(self, dbapi: Any, wake_r: socket.socket) -> None:
        seam = driver.of(dbapi)
        sock = seam.fileno(dbapi)
        quiet_since = time.monotonic()
        while not self._stop.is_set():
            timeout = max(0.0, quiet_since + KEEPALIVE_S - time.monotonic())
            readable, _, _ = select.select([sock, wake_r], [], [], timeout)
            if self._stop.is_set():
                return
            # When the socket has something, collect it (pg8000 has no call that waits for a
            # notification: the driver seam sends the cheapest query and takes the ones read
            # with its reply). After KEEPALIVE_S of silence, ping.
            quiet = time.monotonic() - quiet_since >= KEEPALIVE_S
            if sock in readable or seam.buffered(dbapi) or quiet:
                heard, maybe_lost = seam.notifications(dbapi, ping=quiet)
                quiet_since = time.monotonic()
                self._dispatch(heard, maybe_lost)

    def _dispatch(self, notifications: list[tuple[str, str]], maybe_lost: bool) -> None:
        ids: set[uuid.UUID] = set()
        for channel, payload in notifications:
            if channel == CHANNEL:
                try:
                    ids.add(uuid.UUID(payload))
                except ValueError:
                    logger.warning(
                        "job waiters: a notification that is not a job id",
                        extra={"payload": payload[:100]},
                    )
        if maybe_lost:
            # The driver's buffer was full (pg8000 keeps the latest 100): some may be gone.
            self._wake_all()
        elif ids:
            self._wake(ids)


def _close_at_exit(ref: weakref.ref[JobWaiters]) -> None:
    waiters = ref()
    if waiters is not None:
        waiters.close()

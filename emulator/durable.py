"""Durable state, optional: queues, pending tasks (with their schedule times and counters),
task-name tombstones, deleted-queue tombstones and CMEK settings, kept in SQLite (the standard
library's ``sqlite3``) under ``--state-dir``, so a restart of the emulator loses nothing.

Write-behind: ``State`` marks what it changes (``Journal.queue`` / ``Journal.task``, called under
its lock, O(1)); a thread wakes every ``FLUSH_INTERVAL_S`` (10 ms), takes the marks and a snapshot
of the marked records under the lock, and writes them in one transaction outside it. A crash
loses at most the changes of the last interval; ``close()`` writes everything. The database is
in WAL mode with ``synchronous=NORMAL``: a committed write survives the process dying (the OS
has it); a power cut may lose the last transactions, which is as much as a dev tool needs.

A task that was in flight when the emulator stopped comes back due at its schedule time (its
attempt counted), so it is sent again, as Cloud Tasks does after it loses an attempt.
"""

from __future__ import annotations

import base64
import json
import logging
import sqlite3
import threading
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from emulator.state import QueueRecord, State, TaskRecord

logger = logging.getLogger("emulator")

FLUSH_INTERVAL_S = 0.01
FILE_NAME = "cloud-tasks.sqlite3"
SCHEMA = """
CREATE TABLE IF NOT EXISTS queues (
    name TEXT PRIMARY KEY,
    pb BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS tasks (
    queue TEXT NOT NULL,
    task_id TEXT NOT NULL,
    pb BLOB NOT NULL,
    target TEXT NOT NULL,
    counters TEXT NOT NULL,
    PRIMARY KEY (queue, task_id)
);
CREATE TABLE IF NOT EXISTS tombstones (
    queue TEXT NOT NULL,
    task_id TEXT NOT NULL,
    until REAL NOT NULL,
    PRIMARY KEY (queue, task_id)
);
CREATE TABLE IF NOT EXISTS deleted_queues (
    name TEXT PRIMARY KEY,
    until REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS cmek (
    name TEXT PRIMARY KEY,
    kms_key TEXT NOT NULL
);
"""
# TaskRecord fields kept as they are (numbers, times, short strings).
COUNTERS = ("create_ts", "schedule_ts", "deadline_s", "dispatch_count", "response_count",
            "execution_count", "first_dispatch_ts", "last_schedule_ts", "last_dispatch_ts",
            "last_response_ts", "last_status", "prev_http", "prev_reason")


class Journal:
    """What changed since the last flush; the default one (no state dir) keeps nothing."""

    def queue(self, q: QueueRecord) -> None:
        """A queue's configuration changed, or it was created or deleted."""

    def task(self, rec: TaskRecord) -> None:
        """A task was created, changed, or removed (done, exhausted, deleted, purged)."""

    def settings(self) -> None:
        """Emulator-wide settings (CMEK) changed."""


class SqliteJournal(Journal):
    """The journal of a state directory, flushed by its own thread."""

    def __init__(self, directory: Path | str) -> None:
        self.path = Path(directory) / FILE_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self.state: State | None = None
        self._queues: dict[str, QueueRecord] = {}
        self._tasks: dict[tuple[str, str], TaskRecord] = {}
        self._settings = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._write_lock = threading.Lock()

    # Marks, under the state lock.

    def queue(self, q: QueueRecord) -> None:
        self._queues[q.name] = q

    def task(self, rec: TaskRecord) -> None:
        self._tasks[(rec.queue.name, rec.task_id)] = rec

    def settings(self) -> None:
        self._settings = True

    # Loading, before the emulator starts.

    def load(self, state: State) -> int:
        """Fill ``state`` from the database; the number of tasks restored."""
        from google.cloud.tasks_v2 import types as T

        from emulator import validation as v
        from emulator.state import QueueRecord, RetryPolicy, Target, TaskRecord

        self.state = state
        now, mono = state.clock(), state.monotonic()
        # Expired tombstones go once, here; a flush only writes what changed.
        self.db.execute("DELETE FROM tombstones WHERE until <= ?", (now,))
        self.db.execute("DELETE FROM deleted_queues WHERE until <= ?", (now,))
        restored = 0
        with state.lock:
            for name, until in self.db.execute("SELECT name, until FROM deleted_queues"):
                if until > now:
                    state.deleted_queues[name] = until
            for name, kms_key in self.db.execute("SELECT name, kms_key FROM cmek"):
                state.cmek[name] = kms_key
            for name, blob in self.db.execute("SELECT name, pb FROM queues ORDER BY name"):
                pb = T.Queue.pb().FromString(blob)
                q = QueueRecord(v.parse_queue_name(name), pb, mono)
                state.queues[name] = q
            for queue, task_id, until in self.db.execute(
                    "SELECT queue, task_id, until FROM tombstones ORDER BY until"):
                if queue in state.queues and until > now:
                    state.queues[queue].tombstones[task_id] = until
            for queue, task_id, blob, target_json, counters_json in self.db.execute(
                    "SELECT queue, task_id, pb, target, counters FROM tasks"):
                owner = state.queues.get(queue)
                if owner is None:
                    continue
                pb = T.Task.pb().FromString(blob)
                t = json.loads(target_json)
                target = Target(app_engine=t["app_engine"], method=t["method"], url=t["url"],
                                headers=tuple(tuple(h) for h in t["headers"]),
                                body=base64.b64decode(t["body"]),
                                oidc=tuple(t["oidc"]) if t["oidc"] else None,
                                oauth=tuple(t["oauth"]) if t["oauth"] else None,
                                routing=tuple(t["routing"]))
                c = json.loads(counters_json)
                retry = None
                if pb.HasField("retry_config"):
                    retry = RetryPolicy.from_pb(v.resolve_retry_config(owner.pb.retry_config, pb))
                rec = TaskRecord(owner, task_id, pb, target, c["create_ts"], c["schedule_ts"],
                                 c["deadline_s"], retry)
                for key in COUNTERS[3:]:
                    value = c[key]
                    setattr(rec, key, tuple(value) if key == "last_status" and value else value)
                owner.tasks[task_id] = rec
                state._push(owner, rec)
                restored += 1
        return restored

    # Flushing.

    def start(self) -> None:
        """Start flushing every FLUSH_INTERVAL_S."""
        self._thread = threading.Thread(target=self._run, name="emulator-journal", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(FLUSH_INTERVAL_S):
            try:
                self.flush()
            except sqlite3.Error:
                logger.exception("could not write the emulator's state")

    def flush(self) -> None:
        """Write what changed since the last flush, in one transaction."""
        state = self.state
        if state is None:
            return
        with self._write_lock:
            with state.lock:
                if not (self._queues or self._tasks or self._settings):
                    return
                queues, self._queues = self._queues, {}
                tasks, self._tasks = self._tasks, {}
                settings, self._settings = self._settings, False
                rows = self._snapshot(state, queues, tasks, settings)
            self._write(*rows)

    @staticmethod
    def _snapshot(state: State, queues: dict[str, QueueRecord],
                  tasks: dict[tuple[str, str], TaskRecord], settings: bool) -> tuple[Any, ...]:
        live_queues, gone_queues = [], []
        for name, q in queues.items():
            if q.deleted or state.queues.get(name) is not q:
                gone_queues.append((name, state.deleted_queues.get(name)))
            else:
                live_queues.append((name, q.pb.SerializeToString()))
        live_tasks, gone_tasks = [], []
        for (queue, task_id), rec in tasks.items():
            if rec.deleted or rec.queue.deleted:
                gone_tasks.append((queue, task_id, rec.queue.tombstones.get(task_id)))
                continue
            target = asdict(rec.target)
            target["body"] = base64.b64encode(rec.target.body).decode("ascii")
            counters = {key: getattr(rec, key) for key in COUNTERS}
            live_tasks.append((queue, task_id, rec.pb.SerializeToString(), json.dumps(target),
                               json.dumps(counters)))
        cmek = dict(state.cmek) if settings else None
        return live_queues, gone_queues, live_tasks, gone_tasks, cmek

    def _write(self, live_queues: list[Any], gone_queues: list[Any], live_tasks: list[Any],
               gone_tasks: list[Any], cmek: dict[str, str] | None) -> None:
        db = self.db
        db.execute("BEGIN")
        try:
            db.executemany("INSERT OR REPLACE INTO queues VALUES (?, ?)", live_queues)
            for name, until in gone_queues:
                db.execute("DELETE FROM queues WHERE name = ?", (name,))
                db.execute("DELETE FROM tasks WHERE queue = ?", (name,))
                db.execute("DELETE FROM tombstones WHERE queue = ?", (name,))
                if until is not None:
                    db.execute("INSERT OR REPLACE INTO deleted_queues VALUES (?, ?)", (name, until))
            db.executemany("INSERT OR REPLACE INTO tasks VALUES (?, ?, ?, ?, ?)", live_tasks)
            for queue, task_id, until in gone_tasks:
                db.execute("DELETE FROM tasks WHERE queue = ? AND task_id = ?", (queue, task_id))
                if until is not None:
                    db.execute("INSERT OR REPLACE INTO tombstones VALUES (?, ?, ?)", (queue, task_id, until))
            if cmek is not None:
                db.execute("DELETE FROM cmek")
                db.executemany("INSERT INTO cmek VALUES (?, ?)", list(cmek.items()))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        """Stop the thread, write what is left, close the database."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.flush()
        self.db.close()

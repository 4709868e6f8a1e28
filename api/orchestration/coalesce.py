"""Single creates that arrive together in one process share a Cloud Task.

A `POST /v1/jobs` for a queue with `jobs_per_task` above 1 joins the process's open group for
its queue and schedule time before its INSERT, so its row records the group's task name. The
first to join leads: it waits up to CREATE_COALESCE_MS (or until the group is full), then for
every member's INSERT to commit, and creates one task naming the committed jobs; the others
wait for that and answer. A member whose INSERT did not happen (an idempotent replay, an
error) is left out of the task; one that committed too late for it is given a task of its
own. Nothing is lost if the process dies in between: the rows are QUEUED with a task name
Cloud Tasks does not have, which the sweeper finds (docs/semantics.md).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

# How long a leader waits for its members' INSERTs (milliseconds each, normally) to commit.
MEMBERS_TIMEOUT_S = 5.0


@dataclass
class TaskFill:
    """What one shared task holds so far: its jobs, the cap on their number, and their
    timeouts, which run one after another and must fit the task's time budget."""

    limit: int
    budget_s: float  # the timeouts they may add up to (the queue's deadline less headroom)
    seconds: int = 0
    members: list[Any] = field(default_factory=list)

    def fits(self, limit: int, timeout_s: int) -> bool:
        """Whether one more job, allowing `limit` jobs a task, fits."""
        return len(self.members) < min(self.limit, limit) and self.seconds + timeout_s <= self.budget_s

    def add(self, member: Any, limit: int, timeout_s: int) -> None:
        self.members.append(member)
        self.seconds += timeout_s
        self.limit = min(self.limit, limit)


@dataclass
class Group(TaskFill):
    """Jobs of one process bound for one shared task."""

    name: str = ""  # the task's full name
    rows: dict[uuid.UUID, Any] = field(default_factory=dict)  # id -> the inserted row, or None
    closed: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    cond: threading.Condition = field(default_factory=threading.Condition)
    after: dict[uuid.UUID, Any] = field(default_factory=dict)  # the rows as the enqueue left them


class Coalescer:
    """The open groups of one process, by (queue, schedule time)."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._lock = threading.Lock()
        self._open: dict[tuple[str, datetime | None], Group] = {}

    def join(self, key: tuple[str, datetime | None], job_id: uuid.UUID, *, limit: int, budget_s: float,
             timeout_s: int, name_for: Callable[[uuid.UUID], str]) -> tuple[Group, bool]:
        """The group this job goes in, and whether it leads it (it started it)."""
        with self._lock:
            group = self._open.get(key)
            leader = group is None or not group.fits(limit, timeout_s)
            if leader:
                if group is not None:
                    self._close(key, group)
                group = self._open[key] = Group(name=name_for(job_id), limit=limit, budget_s=budget_s)
            assert group is not None
            group.add(job_id, limit, timeout_s)
            if len(group.members) >= group.limit:
                self._close(key, group)
            return group, leader

    def _close(self, key: tuple[str, datetime | None], group: Group) -> None:
        if self._open.get(key) is group:
            del self._open[key]
        group.closed.set()

    def report(self, group: Group, job_id: uuid.UUID, row: Any) -> None:
        """A member's INSERT committed (`row`), or did not happen (None)."""
        with group.cond:
            group.rows[job_id] = row
            group.cond.notify_all()

    def lead(self, group: Group, key: tuple[str, datetime | None],
             enqueue: Callable[[list[Any]], list[Any]]) -> None:
        """Close the group when its window passes (or it fills), wait for its members' rows,
        create its task; the members wake when it is done."""
        try:
            group.closed.wait(self.window_s)
            with self._lock:
                self._close(key, group)
            with group.cond:
                group.cond.wait_for(lambda: len(group.rows) == len(group.members), timeout=MEMBERS_TIMEOUT_S)
                rows = [r for r in group.rows.values() if r is not None]
            if rows:
                group.after = {r.id: r for r in enqueue(rows)}
        finally:
            group.done.set()

    def outcome(self, group: Group, job_id: uuid.UUID) -> Any | None:
        """This member's row as the leader's enqueue left it; None if it was not in the task."""
        group.done.wait(self.window_s + MEMBERS_TIMEOUT_S + 60)
        return group.after.get(job_id)

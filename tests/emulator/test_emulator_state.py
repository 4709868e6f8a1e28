"""State with a fake clock and no dispatcher: scheduling, retries and tombstones, exactly."""

from __future__ import annotations

import grpc
import pytest
from google.cloud.tasks_v2 import types as T

from emulator.state import TASK_RETENTION_S, State
from emulator.validation import ApiError

QUEUE = "projects/p/locations/l/queues/q"


class Clock:
    """Wall and monotonic time that only move when told."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def wall(self) -> float:
        return self.now

    def mono(self) -> float:
        return self.now - 1_600_000_000.0


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def state(clock: Clock) -> State:
    return State(dedup_window_s=60, clock=clock.wall, monotonic=clock.mono)


def make_queue(state: State, **fields: object) -> None:
    state.create_queue("projects/p/locations/l", T.Queue.pb(T.Queue(name=QUEUE, **fields)))


def add(state: State, task_id: str, **fields: object) -> None:
    task = T.Task(name=f"{QUEUE}/tasks/{task_id}", http_request=T.HttpRequest(url="http://x"),
                  **fields)
    state.create_task(QUEUE, T.Task.pb(task), 1)


def due(state: State, limit: int = 100) -> tuple[list[str], float | None]:
    attempts, wait, alive = state.take_due(state.queues[QUEUE], limit)
    assert alive
    return [a.task_id for a in attempts], wait


def test_token_bucket_paces_dispatch(state: State, clock: Clock) -> None:
    make_queue(state, rate_limits=T.RateLimits(max_dispatches_per_second=2))
    for i in range(5):
        add(state, f"t{i}")
    ids, wait = due(state)
    assert ids == ["t0", "t1"] and wait == pytest.approx(0.5)
    clock.now += 0.5
    assert due(state) == (["t2"], pytest.approx(0.5))


def test_concurrency_slots_and_finish(state: State) -> None:
    make_queue(state, rate_limits=T.RateLimits(max_concurrent_dispatches=1))
    add(state, "a")
    add(state, "b")
    attempts, wait, _ = state.take_due(state.queues[QUEUE], 100)
    assert [a.task_id for a in attempts] == ["a"] and wait is None
    assert due(state) == ([], None)
    assert state.finish_attempt(attempts[0], 204) == "done"
    assert due(state)[0] == ["b"]


def test_limit_per_call_asks_to_come_back_at_once(state: State) -> None:
    make_queue(state)
    for i in range(5):
        add(state, f"t{i}")
    assert due(state, limit=3) == (["t0", "t1", "t2"], 0.0)


def test_future_task_waits_for_its_time(state: State, clock: Clock) -> None:
    make_queue(state)
    add(state, "later", schedule_time={"seconds": int(clock.now) + 10})
    assert due(state) == ([], pytest.approx(10))


def test_failure_backs_off_then_exhaustion_deletes(state: State, clock: Clock) -> None:
    make_queue(state, retry_config=T.RetryConfig(max_attempts=3, min_backoff={"seconds": 1},
                                                 max_backoff={"seconds": 10}, max_doublings=1))
    add(state, "t")
    delays = []
    for _ in range(3):
        [attempt], _, _ = state.take_due(state.queues[QUEUE], 100)
        outcome = state.finish_attempt(attempt, 500)
        if outcome == "retry":
            wait = due(state)[1]
            delays.append(wait)
            clock.now += wait or 0
    assert outcome == "exhausted"
    assert delays == [pytest.approx(1), pytest.approx(2)]
    with pytest.raises(ApiError) as err:
        add(state, "t")
    assert err.value.code == grpc.StatusCode.ALREADY_EXISTS
    clock.now += 61
    add(state, "t")


def test_retry_counts_in_attempts(state: State) -> None:
    make_queue(state, retry_config=T.RetryConfig(min_backoff={"seconds": 0}))
    add(state, "t")
    seen = []
    for status in [503, 404, 200]:
        [attempt], _, _ = state.take_due(state.queues[QUEUE], 100)
        seen.append((attempt.retry_count, attempt.execution_count, attempt.previous_response,
                     attempt.retry_reason))
        state.finish_attempt(attempt, status)
    # as real Cloud Tasks sends them for an HTTP target: an empty reason after any answer, and
    # a 503 not counted as an execution
    assert seen == [(0, 0, None, None), (1, 0, 503, ""), (2, 1, 404, "")]


def test_no_answer_is_recorded_with_its_code(state: State) -> None:
    make_queue(state)
    add(state, "t")
    [attempt], _, _ = state.take_due(state.queues[QUEUE], 100)
    state.finish_attempt(attempt, None, grpc.StatusCode.DEADLINE_EXCEEDED, "too slow")
    task = state.get_task(f"{QUEUE}/tasks/t", 1)
    assert task.dispatch_count == 1 and task.response_count == 0
    assert task.last_attempt.response_status.code == 4
    assert task.last_attempt.response_status.message == "too slow"


def test_tasks_past_retention_are_deleted_on_failure(state: State, clock: Clock) -> None:
    make_queue(state)
    add(state, "old")
    clock.now += TASK_RETENTION_S + 1
    [attempt], _, _ = state.take_due(state.queues[QUEUE], 100)
    assert state.finish_attempt(attempt, 500) == "exhausted"


def test_deleted_while_in_flight(state: State) -> None:
    make_queue(state)
    add(state, "t")
    [attempt], _, _ = state.take_due(state.queues[QUEUE], 100)
    state.delete_task(f"{QUEUE}/tasks/t")
    assert state.finish_attempt(attempt, 500) == "gone"
    assert state.queues[QUEUE].inflight == 0


def test_paused_queue_gives_nothing(state: State) -> None:
    make_queue(state)
    add(state, "t")
    state.pause_queue(QUEUE)
    assert due(state) == ([], None)
    state.resume_queue(QUEUE)
    assert due(state)[0] == ["t"]


def test_heap_stays_compact_when_tasks_come_and_go(state: State) -> None:
    make_queue(state)
    state.pause_queue(QUEUE)
    for i in range(3000):
        add(state, f"t{i}")
        state.delete_task(f"{QUEUE}/tasks/t{i}")
    assert len(state.queues[QUEUE].heap) <= 1024 + 2

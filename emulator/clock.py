"""The emulator's time: the real clock, or a manual one that tests move by hand.

Everything in the emulator that depends on time reads it here: schedule times, backoff
between attempts, dispatch deadlines, the task-name de-duplication window, queue tombstones,
rate limits. With ``ManualClock`` a test creates a task, calls ``advance(15)`` and sees the
deadline pass at once, instead of sleeping through it:

    clock = ManualClock()
    with Emulator(clock=clock) as emu:
        ...
        clock.advance(15.0)
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


class RealClock:
    """Wall and monotonic time as the operating system keeps them."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def wait(self, event: asyncio.Event, seconds: float) -> None:
        """Until `event` is set or `seconds` have passed, whichever comes first."""
        handle = asyncio.get_running_loop().call_later(seconds, event.set)
        try:
            await event.wait()
        finally:
            handle.cancel()

    async def sleep_until(self, when: float) -> None:
        """Until the wall clock reads `when`."""
        await self.sleep(max(when - self.time(), 0.0))

    async def wait_until(self, event: asyncio.Event, when: float) -> None:
        """Until `event` is set or the wall clock reads `when`, whichever comes first."""
        await self.wait(event, max(when - self.time(), 0.0))

    async def within(self, seconds: float, work: Awaitable[T]) -> T:
        """`work`'s result, or TimeoutError once `seconds` have passed (and `work` cancelled)."""
        async with asyncio.timeout(seconds):
            return await work


class ManualClock(RealClock):
    """Time that stands still until ``advance()``; safe to advance from any thread.

    Wall time starts at the real time (tasks' schedule times stay plausible); monotonic time
    starts at an arbitrary value. Both move together, only when told."""

    def __init__(self, start: float | None = None) -> None:
        self._lock = threading.Lock()
        self._wall0 = time.time() if start is None else start
        self._mono0 = 10_000.0
        self._elapsed = 0.0
        # (due on the monotonic clock, future to resolve, its loop)
        self._sleepers: list[tuple[float, asyncio.Future[None], asyncio.AbstractEventLoop]] = []

    def time(self) -> float:
        return self._wall0 + self._elapsed

    def monotonic(self) -> float:
        return self._mono0 + self._elapsed

    def advance(self, seconds: float) -> None:
        """Move time on; whatever was waiting for it wakes."""
        if seconds < 0:
            raise ValueError("time does not go back")
        with self._lock:
            self._elapsed += seconds
            now = self.monotonic()
            due = [s for s in self._sleepers if s[0] <= now]
            self._sleepers = [s for s in self._sleepers if s[0] > now]
        for _, future, loop in due:
            with contextlib.suppress(RuntimeError):  # a loop that closed meanwhile
                loop.call_soon_threadsafe(_resolve, future)

    async def sleep(self, seconds: float) -> None:
        """Until the clock has been advanced by `seconds`."""
        with self._lock:
            due = self.monotonic() + seconds
        await self._sleep_until(due)

    async def wait(self, event: asyncio.Event, seconds: float) -> None:
        await _first(event.wait(), self.sleep(seconds))

    async def wait_until(self, event: asyncio.Event, when: float) -> None:
        # The deadline is fixed under the lock, so an advance() made between the caller's
        # reading of the time and this wait still wakes it.
        await _first(event.wait(), self._sleep_until(self._mono0 + (when - self._wall0)))

    async def sleep_until(self, when: float) -> None:
        await self._sleep_until(self._mono0 + (when - self._wall0))

    async def _sleep_until(self, due: float) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if due <= self.monotonic():
                future.set_result(None)
            else:
                self._sleepers.append((due, future, loop))
        try:
            await future
        finally:
            with self._lock:
                self._sleepers = [s for s in self._sleepers if s[1] is not future]

    async def within(self, seconds: float, work: Awaitable[T]) -> T:
        job = asyncio.ensure_future(work)
        timer = asyncio.ensure_future(self.sleep(seconds))
        try:
            await asyncio.wait({job, timer}, return_when=asyncio.FIRST_COMPLETED)
            if job.done():
                return job.result()
            raise TimeoutError
        finally:
            for f in (job, timer):
                f.cancel()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _first(*awaitables: Awaitable[object]) -> None:
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()

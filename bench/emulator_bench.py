"""Benchmark of the Cloud Tasks emulator's dispatcher, on loopback only, bounded in time.

    python -m bench.emulator_bench

1. Throughput: tasks per second dispatched from an unlimited queue to a no-op handler
   (median of 3 runs), next to a floor measured in the same run (median of 3 runs, taken
   alternately with the emulator's): plain aiohttp POSTs to the same handler with the same
   concurrency, i.e. what the HTTP layer alone can do.
2. Rate limits: achieved against configured max_dispatches_per_second for 10, 100 and 500,
   after the initial burst of max_burst_size tasks.

The handler runs in its own process (an aiohttp app), so it does not share the GIL with the
emulator; its arrival times use the system-wide monotonic clock.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass

import aiohttp
import grpc
from google.cloud import tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

from emulator import Emulator

LOCATION = "projects/bench/locations/local"
THROUGHPUT_TASKS = 5000
CONCURRENCY = 100
RUNS = 3
RATES = (10.0, 100.0, 500.0)
# Tasks after the burst, in seconds of dispatch at the configured rate.
RATE_SECONDS = 3.0
BUDGET_S = 120.0


# ------------------------------------------------------------------ the handler process


def serve_handler(port: int) -> None:
    """A no-op handler: 200 to everything, recording arrival times per path."""
    from aiohttp import web

    times: dict[str, list[float]] = {}

    async def hit(request: web.Request) -> web.Response:
        await request.read()
        times.setdefault(request.path, []).append(time.monotonic())
        return web.Response(text="ok")

    async def stats(request: web.Request) -> web.Response:
        path = "/" + request.match_info["path"]
        got = times.get(path, [])
        if request.query.get("times"):
            return web.json_response({"count": len(got), "times": got})
        return web.json_response({"count": len(got)})

    app = web.Application()
    app.router.add_get("/stats/{path:.*}", stats)
    app.router.add_route("*", "/{tail:.*}", hit)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


class Handler:
    """The handler process, started and stopped by the benchmark."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.emulator_bench", "--serve-handler", str(self.port)])
        deadline = time.monotonic() + 10
        while True:
            try:
                self.stats("/ready")
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def url(self, path: str) -> str:
        """A URL on the handler."""
        return f"http://127.0.0.1:{self.port}{path}"

    def stats(self, path: str, times: bool = False) -> dict:
        """How many requests ``path`` received (and when)."""
        query = "?times=1" if times else ""
        with urllib.request.urlopen(self.url(f"/stats{path}{query}"), timeout=5) as r:
            return json.loads(r.read())

    def wait_for(self, path: str, n: int, timeout: float) -> None:
        """Poll until ``path`` has received ``n`` requests."""
        deadline = time.monotonic() + timeout
        while self.stats(path)["count"] < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path}: fewer than {n} requests after {timeout}s")
            time.sleep(0.01)

    def close(self) -> None:
        """Stop the process."""
        self.proc.terminate()
        self.proc.wait(5)


# ------------------------------------------------------------------------ measurements


def client_for(emu: Emulator) -> tasks_v2.CloudTasksClient:
    """The real client over an insecure channel."""
    channel = grpc.insecure_channel(emu.address)
    return tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))


def fill(client: tasks_v2.CloudTasksClient, queue: str, url: str, n: int) -> None:
    """Create ``n`` tasks in batches of 100 (the queue is paused meanwhile)."""
    for start in range(0, n, 100):
        size = min(100, n - start)
        client.batch_create_tasks(parent=queue, requests=[
            tasks_v2.CreateTaskRequest(parent=queue, task=tasks_v2.Task(
                http_request=tasks_v2.HttpRequest(url=url)))
            for _ in range(size)
        ]).result()


def floor_rate(handler: Handler, n: int, concurrency: int) -> float:
    """Plain aiohttp POSTs per second to the handler: the HTTP layer's own ceiling."""

    async def run() -> float:
        url = handler.url("/floor")
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            todo = iter(range(n))

            async def worker() -> None:
                for _ in todo:
                    async with session.post(url, data=b"") as resp:
                        await resp.read()

            start = time.monotonic()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return n / (time.monotonic() - start)

    return asyncio.run(run())


def unlimited_rate(handler: Handler, run: int, tasks: int = THROUGHPUT_TASKS,
                   state_dir: str | None = None) -> float:
    """Tasks per second from an unlimited queue, resume to last arrival (with durable state
    in ``state_dir``, if given)."""
    with Emulator(max_dispatch_rate=None, state_dir=state_dir) as emu:
        client = client_for(emu)
        name = f"{LOCATION}/queues/unlimited-{run}"
        client.create_queue(parent=LOCATION, queue=tasks_v2.Queue(
            name=name, rate_limits=tasks_v2.RateLimits(
                max_dispatches_per_second=math.inf, max_concurrent_dispatches=CONCURRENCY)))
        client.pause_queue(name=name)
        path = f"/unlimited/{run}/{bool(state_dir)}"
        fill(client, name, handler.url(path), tasks)
        start = time.monotonic()
        client.resume_queue(name=name)
        handler.wait_for(path, tasks, timeout=120)
        rate = tasks / (time.monotonic() - start)
        client.transport.close()
    return rate


@dataclass
class RateResult:
    """How closely one configured rate was held."""

    configured: float
    burst: int
    tasks: int
    steady: float  # from half a second after the burst to the last arrival
    overall: float  # all tasks, first to last arrival
    expected_overall: float  # what an exact token bucket gives for ``overall``


def held_rate(handler: Handler, rate: float) -> RateResult:
    """Dispatch burst + RATE_SECONDS * rate tasks at ``rate``; measure arrivals."""
    with Emulator() as emu:
        client = client_for(emu)
        name = f"{LOCATION}/queues/rate-{int(rate)}"
        q = client.create_queue(parent=LOCATION, queue=tasks_v2.Queue(
            name=name, rate_limits=tasks_v2.RateLimits(max_dispatches_per_second=rate)))
        burst = q.rate_limits.max_burst_size
        n = burst + int(rate * RATE_SECONDS) + 1
        client.pause_queue(name=name)
        path = f"/rate/{int(rate)}"
        fill(client, name, handler.url(path), n)
        client.resume_queue(name=name)
        handler.wait_for(path, n, timeout=RATE_SECONDS * 3 + 10)
        times = sorted(handler.stats(path, times=True)["times"])
        client.transport.close()
    # The burst itself takes a moment to arrive; measure the steady rate from half a second
    # of dispatch after it.
    k0 = burst + int(rate * 0.5)
    steady = (n - 1 - k0) / (times[-1] - times[k0])
    overall = (n - 1) / (times[-1] - times[0])
    expected = (n - 1) / ((n - 1 - burst) / rate)
    return RateResult(rate, burst, n, steady, overall, expected)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its tables."""
    parser = argparse.ArgumentParser(prog="python -m bench.emulator_bench")
    parser.add_argument("--serve-handler", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_handler:
        serve_handler(args.serve_handler)
        return 0

    began = time.monotonic()
    handler = Handler()
    try:
        # Floor and emulator runs alternate, so load from elsewhere hits both alike.
        floors: list[float] = []
        runs: list[float] = []
        for run in range(RUNS):
            floors.append(floor_rate(handler, THROUGHPUT_TASKS, CONCURRENCY))
            runs.append(unlimited_rate(handler, run))
            if time.monotonic() - began > BUDGET_S:
                break
        floor = statistics.median(floors)
        median = statistics.median(runs)
        print(f"Throughput: {THROUGHPUT_TASKS} tasks, unlimited queue, "
              f"max_concurrent_dispatches {CONCURRENCY}, no-op handler in its own process")
        print()
        print("| run | floor: plain aiohttp POSTs /s | emulator tasks/s |")
        print("| --- | ---: | ---: |")
        for i, (f, r) in enumerate(zip(floors, runs, strict=True), 1):
            print(f"| {i} | {f:,.0f} | {r:,.0f} |")
        print(f"| **median** | **{floor:,.0f}** | **{median:,.0f}** "
              f"({median / floor:.2f} of floor) |")
        print()
        print(f"Rate limits: burst + {RATE_SECONDS:g} s of tasks at the configured rate")
        print()
        print("| configured /s | max_burst_size | tasks | achieved, steady /s | ratio "
              "| achieved incl. burst /s | exact bucket incl. burst /s |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for rate in RATES:
            if time.monotonic() - began > BUDGET_S:
                print(f"| {rate:g} | skipped: time budget spent | | | | | |")
                continue
            res = held_rate(handler, rate)
            print(f"| {res.configured:g} | {res.burst} | {res.tasks} | {res.steady:.1f} | "
                  f"{res.steady / res.configured:.3f} | {res.overall:.1f} | "
                  f"{res.expected_overall:.1f} |")
        print()
        print(f"Total time {time.monotonic() - began:.1f} s")
    finally:
        handler.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

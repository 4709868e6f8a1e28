"""What REST and durable state cost the emulator, each against its own floor in the same run.

    python -m bench.emulator_transports [--rounds 3] [--creates 500] [--tasks 3000]

1. CreateTask one call at a time through the Python client: over REST against over gRPC
   (the floor), on one emulator.
2. The same gRPC creates with --state-dir (SQLite, written behind) against in memory.
3. Dispatch throughput from an unlimited queue to a no-op handler in its own process (as
   bench/emulator_bench.py), with --state-dir against in memory.

Rounds alternate the two sides of each pair; medians are printed, with each ratio.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

from google.auth.credentials import AnonymousCredentials
from google.cloud import tasks_v2

from bench.emulator_bench import Handler, client_for, unlimited_rate
from emulator import Emulator

LOCATION = "projects/bench/locations/local"


def rest_client(emu: Emulator) -> tasks_v2.CloudTasksClient:
    """The real client over REST to the emulator's HTTP port."""
    return tasks_v2.CloudTasksClient(transport="rest", credentials=AnonymousCredentials(),
                                     client_options={"api_endpoint": emu.http_url})


def creates_per_second(emu: Emulator, make_client: Callable[[Emulator], Any], queue: str, n: int) -> float:
    """CreateTask calls per second, one after the other, into a paused queue."""
    client = make_client(emu)
    task = {"http_request": {"url": "http://127.0.0.1:9/never", "body": b"x" * 200}}
    client.create_task(parent=queue, task=task)  # the connection is up before the clock starts
    start = time.perf_counter()
    for _ in range(n):
        client.create_task(parent=queue, task=task)
    rate = n / (time.perf_counter() - start)
    client.transport.close()
    return rate


def paused_queue(emu: Emulator, name: str) -> str:
    """A paused queue (nothing is dispatched while creates are timed)."""
    client = client_for(emu)
    queue = f"{LOCATION}/queues/{name}"
    client.create_queue(parent=LOCATION, queue={"name": queue})
    client.pause_queue(name=queue)
    client.transport.close()
    return queue


def main(argv: list[str] | None = None) -> int:
    """Run the three comparisons and print their medians and ratios."""
    parser = argparse.ArgumentParser(prog="python -m bench.emulator_transports")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--creates", type=int, default=500)
    parser.add_argument("--tasks", type=int, default=3000)
    args = parser.parse_args(argv)

    grpc_rates, rest_rates, memory_rates, durable_rates = [], [], [], []
    for run in range(args.rounds):
        with Emulator() as emu:
            queue = paused_queue(emu, f"t-{run}")
            grpc_rates.append(creates_per_second(emu, client_for, queue, args.creates))
            rest_rates.append(creates_per_second(emu, rest_client, queue, args.creates))
        memory_rates.append(grpc_rates[-1])
        with tempfile.TemporaryDirectory() as folder, Emulator(state_dir=folder) as emu:
            queue = paused_queue(emu, f"s-{run}")
            durable_rates.append(creates_per_second(emu, client_for, queue, args.creates))

    handler = Handler()
    try:
        memory_dispatch, durable_dispatch = [], []
        for run in range(args.rounds):
            memory_dispatch.append(unlimited_rate(handler, run, args.tasks))
            with tempfile.TemporaryDirectory() as folder:
                durable_dispatch.append(unlimited_rate(handler, run, args.tasks, folder))
    finally:
        handler.close()

    def row(label: str, floor: list[float], other: list[float], unit: str) -> None:
        f, o = statistics.median(floor), statistics.median(other)
        rounds = ", ".join(f"{a:,.0f}/{b:,.0f}" for a, b in zip(floor, other, strict=True))
        print(f"| {label} | {f:,.0f} {unit} | {o:,.0f} {unit} | {o / f:.2f} | {rounds} |")

    print(f"Medians of {args.rounds} rounds ({args.creates} creates, {args.tasks} dispatches per round)\n")
    print("| comparison | floor | measured | ratio | rounds (floor/measured) |")
    print("| --- | ---: | ---: | ---: | --- |")
    row("CreateTask: REST vs gRPC", grpc_rates, rest_rates, "calls/s")
    row("CreateTask: --state-dir vs memory (gRPC)", memory_rates, durable_rates, "calls/s")
    row("dispatch: --state-dir vs memory", memory_dispatch, durable_dispatch, "tasks/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

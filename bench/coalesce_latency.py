"""What grouping single creates into shared tasks costs a create at low load.

    python -m bench.coalesce_latency [--jobs 300] [--rounds 3] [--database-url URL]

One client, one `POST /v1/jobs` at a time (low load: nothing arrives to share the task), on
the `shared` queue of bench/bench.queues.yaml (100 jobs a task), against the same stack with
CREATE_COALESCE_MS=2 (the default) and =0 (a task per create), in alternating rounds. Prints
p50 and p99 of each and the difference of the medians: what the wait for company adds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import requests

from bench.stack import DEFAULT_SERVER, fresh_database, running_stack

HERE = Path(__file__).resolve().parent


def latencies(url: str, n: int) -> list[float]:
    """n creates one after another; each one's latency in milliseconds."""
    session = requests.Session()
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        resp = session.post(f"{url}/v1/jobs", json={"type": "echo", "queue": "shared", "payload": {"i": i},
                                                    "timeout_s": 5}, timeout=10)
        out.append((time.perf_counter() - t0) * 1000)
        assert resp.status_code == 202, resp.text
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    """Measure and print."""
    p = argparse.ArgumentParser(prog="python -m bench.coalesce_latency", description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=300)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--database-url", default=DEFAULT_SERVER)
    args = p.parse_args(argv)
    p50: dict[str, list[float]] = {"2": [], "0": []}
    p99: dict[str, list[float]] = {"2": [], "0": []}
    with fresh_database(args.database_url) as url:
        for _ in range(args.rounds):
            for ms in ("0", "2"):
                with running_stack(url, queues_file=HERE / "bench.queues.yaml",
                                   extra_env={"CREATE_COALESCE_MS": ms, "LOG_LEVEL": "WARNING"}) as stack:
                    latencies(stack.url, 50)  # warm-up: connections, caches
                    lat = latencies(stack.url, args.jobs)
                p50[ms].append(pct(lat, 0.5))
                p99[ms].append(pct(lat, 0.99))
                print(f"CREATE_COALESCE_MS={ms}: p50 {p50[ms][-1]:.2f} ms, p99 {p99[ms][-1]:.2f} ms", flush=True)
    on, off = statistics.median(p50["2"]), statistics.median(p50["0"])
    print(f"\nmedians of {args.rounds} rounds, {args.jobs} creates each, one at a time:")
    print(f"  a task per create (0 ms):  p50 {off:.2f} ms, p99 {statistics.median(p99['0']):.2f} ms")
    print(f"  coalescing (2 ms window):  p50 {on:.2f} ms, p99 {statistics.median(p99['2']):.2f} ms")
    print(f"  added at p50: {on - off:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

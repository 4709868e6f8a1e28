"""What flow control costs, end to end: the same jobs plain, keyed, and keyed at a binding limit.

    python -m bench.flow_control [--jobs 2000] [--rounds 3] [--database-url URL]

One stack (gunicorn, the emulator dispatching, PostgreSQL), bench/bench.queues.yaml. Each
round creates `--jobs` echo jobs in batches of 500 and times creation to the last COMPLETED:

- plain: the `default` queue, no key (the floor of this run);
- keyed, unbound: the `keyed` queue, 4 keys whose limit (1000) never binds: what admission
  itself costs (each job waits WAITING → admitted in the create's wake, each finish admits);
- keyed, 10 per key: 4 keys of the `keyed` queue's limit of 10, so at most 40 jobs in flight
  and every finish hands its slot on;
- unique: the plain jobs, each with a unique key of its own (the unique index and its trigger).

Prints jobs/s per mode (median of the rounds, with the range) and each as a ratio to plain.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
import sqlalchemy as sa

from bench.stack import DEFAULT_SERVER, fresh_database, running_stack

HERE = Path(__file__).resolve().parent
BATCH = 500

MODES: dict[str, Callable[[int, str], dict[str, Any]]] = {
    "plain": lambda i, run: {"type": "echo", "payload": {"i": i}},
    "keyed, unbound": lambda i, run: {"type": "echo", "queue": "keyed", "concurrency_key": f"unbound-{i % 4}",
                                      "payload": {"i": i}},
    "keyed, 10 per key": lambda i, run: {"type": "echo", "queue": "keyed", "concurrency_key": f"bound-{run}-{i % 4}",
                                         "payload": {"i": i}},
    "unique": lambda i, run: {"type": "echo", "unique_key": f"{run}-{i}", "payload": {"i": i}},
}


def one_run(url: str, engine: sa.Engine, make: Callable[[int, str], dict[str, Any]], n: int, run: str) -> float:
    """Create n jobs in batches and wait for the last to complete; jobs per second."""
    session = requests.Session()
    started = time.perf_counter()
    ids: list[str] = []
    for lo in range(0, n, BATCH):
        resp = session.post(f"{url}/v1/jobs:batchCreate", json={"jobs": [make(i, run) for i in range(lo, min(n, lo + BATCH))]},
                            timeout=60)
        assert resp.status_code == 202, resp.text
        ids += [j["id"] for j in resp.json()["jobs"]]
    deadline = time.monotonic() + 300
    while True:
        with engine.connect() as conn:
            left = conn.execute(sa.text("SELECT count(*) FROM jobs WHERE id = ANY(CAST(:i AS uuid[])) AND state <> 'COMPLETED'"),
                                {"i": ids}).scalar_one()
        if left == 0:
            return n / (time.perf_counter() - started)
        assert time.monotonic() < deadline, f"{left} jobs not done"
        time.sleep(0.02)


def main(argv: list[str] | None = None) -> int:
    """Measure and print."""
    p = argparse.ArgumentParser(prog="python -m bench.flow_control", description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--database-url", default=DEFAULT_SERVER)
    args = p.parse_args(argv)
    rates: dict[str, list[float]] = {m: [] for m in MODES}
    with fresh_database(args.database_url) as url:
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        with running_stack(url, queues_file=HERE / "bench.queues.yaml", extra_env={"LOG_LEVEL": "WARNING"}) as stack:
            one_run(stack.url, engine, MODES["plain"], 500, "warm")  # connections, caches, plans
            for r in range(args.rounds):
                for mode, make in MODES.items():  # interleaved: drift hits every mode alike
                    rates[mode].append(one_run(stack.url, engine, make, args.jobs, f"r{r}"))
        engine.dispose()
    floor = statistics.median(rates["plain"])
    print(f"{'mode':<20} {'jobs/s':>8}  {'range':>15}  vs plain")
    for mode, values in rates.items():
        med = statistics.median(values)
        print(f"{mode:<20} {med:8.0f}  {min(values):6.0f}–{max(values):<6.0f}  {med / floor:.2f}×")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

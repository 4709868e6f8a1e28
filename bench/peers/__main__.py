"""Drive one peer: start its workers, then run `one N` / `batch N` commands from stdin.

A peer module defines `Peer(database_url=, redis_url=, workers=, submitters=)` with `version`,
`settings` (one line for the docs), `start()`, `mark()` (before a run), `submit_one(n)`,
`submit_batch(n)`, `done()` (jobs finished since the mark) and `stop()`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from typing import Any

# Completion is polled: often enough to add under 1% to a run of seconds, rarely enough
# that the polling query costs the machine nothing measurable.
POLL_S = 0.05
RUN_TIMEOUT_S = 240.0


def run_one(peer: Any, mode: str, n: int) -> dict[str, Any]:
    """Submit n no-op jobs (one by one or batched) and wait until all are done."""
    peer.mark()
    started = time.perf_counter()
    if mode == "one":
        peer.submit_one(n)
    else:
        peer.submit_batch(n)
    submitted = time.perf_counter()
    deadline = started + RUN_TIMEOUT_S
    done = peer.done()
    while done < n:
        if time.perf_counter() > deadline:
            return {"error": f"timed out after {RUN_TIMEOUT_S:.0f}s with {done} of {n} done"}
        time.sleep(POLL_S)
        done = peer.done()
    elapsed = time.perf_counter() - started
    return {
        "jobs": n,
        "elapsed_s": round(elapsed, 4),
        "rate": n / elapsed,
        "submit_s": round(submitted - started, 4),
    }


def main(argv: list[str] | None = None) -> int:
    """Start the peer, answer commands, stop it."""
    p = argparse.ArgumentParser(prog="python -m bench.peers")
    p.add_argument("name")
    p.add_argument("--database-url", required=True, help="a fresh database for this peer")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument("--workers", type=int, default=2, help="worker processes (Celery: concurrency)")
    p.add_argument(
        "--submitters",
        type=int,
        default=16,
        help="concurrent submitters for one-by-one runs, as the HTTP loader's",
    )
    args = p.parse_args(argv)
    module = importlib.import_module(f"bench.peers.{args.name}_peer")
    try:
        peer = module.Peer(
            database_url=args.database_url,
            redis_url=args.redis_url,
            workers=args.workers,
            submitters=args.submitters,
        )
        peer.start()
    except Exception as e:
        # A peer that cannot run here says why, in one line the benchmark prints.
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}), flush=True)
        traceback.print_exc()
        return 1
    print(
        json.dumps({"ready": True, "version": peer.version, "settings": peer.settings}), flush=True
    )
    try:
        for line in sys.stdin:
            cmd = line.split()
            if not cmd or cmd[0] == "quit":
                break
            try:
                result = run_one(peer, cmd[0], int(cmd[1]))
            except Exception as e:
                traceback.print_exc()
                result = {"error": f"{type(e).__name__}: {e}"}
            print(json.dumps(result), flush=True)
    finally:
        peer.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Every report at two history sizes, over a 24-hour and a 30-day window.

    python -m bench.reports_bench --jobs 1000000 --jobs 5000000 [--days 180] [--runs 5]

Seeds a fresh database per size on the local server (`--database-url`), history spread over
`--days` (so a window is a slice of it, as in production) and ending now, rolls it up as the
sweeper would (`api.reporting.rollups.refresh`), then times each report (median of `--runs`, after one
warm-up) and prints a table with the sizes side by side. Loopback only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from api.config import Config
from api.reporting import rollups
from api.reporting.history import seed_history
from api.reporting.reports import ReportQuery, run_report
from api.store.engine import create_engine
from bench.stack import DEFAULT_SERVER, fresh_database

WINDOWS = {"24h": timedelta(hours=24), "30d": timedelta(days=30)}
# (label, report, window, parameters)
CASES: list[tuple[str, str, str, dict[str, Any]]] = [
    ("summary by type", "summary", "24h", {"group_by": "type"}),
    ("summary by type", "summary", "30d", {"group_by": "type"}),
    ("timeseries hourly by queue", "timeseries", "24h", {"group_by": "queue", "bucket": "hour"}),
    ("timeseries daily by queue", "timeseries", "30d", {"group_by": "queue", "bucket": "day"}),
    ("timeseries hourly by queue", "timeseries", "30d", {"group_by": "queue", "bucket": "hour"}),
    ("failures by type", "failures", "24h", {"group_by": "type"}),
    ("failures by type", "failures", "30d", {"group_by": "type"}),
]


def measure(url: str, *, runs: int) -> dict[tuple[str, str], tuple[float, float, float]]:
    """(label, window) → (median, min, max) milliseconds."""
    engine = create_engine(Config(), url=url, pool_size=1)
    out = {}
    try:
        with engine.connect() as conn:
            end = conn.execute(sa.text("SELECT now()")).scalar_one()
        for label, report, window, kw in CASES:
            q = ReportQuery(start=end - WINDOWS[window], end=end, **kw)
            run_report(engine, report, q)  # warm-up
            times = []
            for _ in range(runs):
                t = time.perf_counter()
                run_report(engine, report, q)
                times.append((time.perf_counter() - t) * 1000)
            out[(label, window)] = (statistics.median(times), min(times), max(times))
    finally:
        engine.dispose()
    return out


def main(argv: list[str] | None = None) -> int:
    """Seed, measure and print."""
    p = argparse.ArgumentParser(prog="python -m bench.reports_bench", description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, action="append", help="history size; repeat for several")
    p.add_argument("--days", type=float, default=180.0, help="the history spans this many days")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--database-url", default=DEFAULT_SERVER)
    args = p.parse_args(argv)
    sizes = args.jobs or [100_000]
    results = {}
    for n in sizes:
        with fresh_database(args.database_url) as url:
            engine = create_engine(Config(), url=url, pool_size=1)
            seconds = seed_history(engine, jobs=n, days=args.days)
            t = time.perf_counter()
            rolled = rollups.refresh(engine)
            refresh_s = time.perf_counter() - t
            with engine.connect() as conn:
                per_day = n / args.days
                attempts = conn.exec_driver_sql("SELECT count(*) FROM job_attempts").scalar_one()
            engine.dispose()
            print(f"seeded {n:,} jobs ({attempts:,} attempts, ~{per_day:,.0f}/day over {args.days:g} days) "
                  f"in {seconds:.0f}s; rolled up {rolled.hours:,} hours and {rolled.days} days in {refresh_s:.1f}s",
                  flush=True)
            results[n] = measure(url, runs=args.runs)
    header = f"{'report':<28}{'window':<8}" + "".join(f"{f'{n:,} jobs (ms)':>26}" for n in sizes)
    print(header)
    print("-" * len(header))
    for label, _, window, _ in CASES:
        cells = []
        for n in sizes:
            med, lo, hi = results[n][(label, window)]
            cells.append(f"{med:>10.1f} ({lo:.1f}–{hi:.1f})".rjust(26))
        print(f"{label:<28}{window:<8}" + "".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())

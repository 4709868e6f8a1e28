"""Every report at two history sizes, over a 24-hour and a 30-day window.

    python -m bench.reports_bench --jobs 1000000 --jobs 5000000 [--days 180] [--runs 5]

Seeds a fresh database per size on the local server (`--database-url`), history spread over
`--days` (so a window is a slice of it, as in production), then times each report (median of
`--runs`, after one warm-up) and prints a table with the sizes side by side. Loopback only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import timedelta

import sqlalchemy as sa

from api.config import Config
from api.db import create_engine
from api.history import seed_history
from api.reports import ReportQuery, run_report
from bench.stack import DEFAULT_SERVER, fresh_database

CASES = [
    ("summary", {"group_by": "type"}),
    ("timeseries", {"group_by": "queue"}),  # hourly buckets for 24 h, daily for 30 d
    ("failures", {"group_by": "type"}),
]
WINDOWS = {"24h": timedelta(hours=24), "30d": timedelta(days=30)}


def measure(url: str, *, runs: int) -> dict[tuple[str, str], tuple[float, float, float]]:
    """(report, window) → (median, min, max) milliseconds."""
    engine = create_engine(Config(), url=url, pool_size=1)
    out = {}
    try:
        with engine.connect() as conn:
            end = conn.execute(sa.text("SELECT now()")).scalar_one()
        for report, kw in CASES:
            for label, span in WINDOWS.items():
                bucket = "hour" if label == "24h" else "day"
                q = ReportQuery(start=end - span, end=end, bucket=bucket, **kw)
                run_report(engine, report, q)  # warm-up
                times = []
                for _ in range(runs):
                    t = time.perf_counter()
                    run_report(engine, report, q)
                    times.append((time.perf_counter() - t) * 1000)
                out[(report, label)] = (statistics.median(times), min(times), max(times))
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
            with engine.connect() as conn:
                per_day = n / args.days
                attempts = conn.exec_driver_sql("SELECT count(*) FROM job_attempts").scalar_one()
            engine.dispose()
            print(f"seeded {n:,} jobs ({attempts:,} attempts, ~{per_day:,.0f}/day over {args.days:g} days) "
                  f"in {seconds:.0f}s", flush=True)
            results[n] = measure(url, runs=args.runs)
    header = f"{'report':<12}{'window':<8}" + "".join(f"{f'{n:,} jobs (ms)':>26}" for n in sizes)
    print(header)
    print("-" * len(header))
    for report, _ in CASES:
        for label in WINDOWS:
            cells = []
            for n in sizes:
                med, lo, hi = results[n][(report, label)]
                cells.append(f"{med:>10.1f} ({lo:.1f}–{hi:.1f})".rjust(26))
            print(f"{report:<12}{label:<8}" + "".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What a NOTIFY in a writing transaction costs concurrent commits (why migration 0007 exists).

    python -m bench.notify_lock [--clients 16] [--seconds 8] [--runs 3] [--database-url URL]

Runs pgbench (PostgreSQL's own client, which must be on PATH) against a fresh database on the
server, with 16 clients each updating one random row of a 10,000-row table, three ways:

- update: the UPDATE alone, committed on its own;
- update + notify: the UPDATE and a `pg_notify` in one transaction, as every job's finish
  did while migration 0004's trigger notified unconditionally;
- update + probe: the UPDATE and a lookup of an (empty) `job_waiters`-like table in one
  transaction, as the trigger of migration 0007 does for a job nobody waits on.

A transaction that has sent a NOTIFY holds a database-wide lock from just before its commit
until the commit is flushed to disk, so such commits go one at a time. Prints transactions
per second, median of the runs, and each against the plain update.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from bench.stack import DEFAULT_SERVER, fresh_database

SCRIPTS = {
    "update": """
\\set id random(1, 10000)
UPDATE t SET n = n + 1 WHERE id = :id;
""",
    "update + notify": """
\\set id random(1, 10000)
BEGIN;
UPDATE t SET n = n + 1 WHERE id = :id;
SELECT pg_notify('bench', :id::text);
COMMIT;
""",
    "update + probe": """
\\set id random(1, 10000)
BEGIN;
UPDATE t SET n = n + 1 WHERE id = :id;
SELECT EXISTS (SELECT 1 FROM waiters WHERE id = :id);
COMMIT;
""",
}


def pgbench(url: str, script: Path, *, clients: int, seconds: int) -> float:
    """Transactions per second of one pgbench run."""
    u = make_url(url)
    cmd = ["pgbench", "-n", "-c", str(clients), "-j", "2", "-T", str(seconds), "-f", str(script),
           "-h", u.host or "127.0.0.1", "-p", str(u.port or 5432), "-U", u.username or "postgres", u.database or ""]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    m = re.search(r"tps = ([0-9.]+)", out)
    if m is None:
        raise RuntimeError(f"no tps in pgbench's output: {out[-500:]}")
    return float(m.group(1))


def main(argv: list[str] | None = None) -> int:
    """Run each script `--runs` times, interleaved; print the medians."""
    p = argparse.ArgumentParser(prog="python -m bench.notify_lock", description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=int, default=8)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--database-url", default=DEFAULT_SERVER)
    args = p.parse_args(argv)
    if shutil.which("pgbench") is None:
        print("pgbench is not on PATH (Debian: apt-get install postgresql-client)", file=sys.stderr)
        return 2
    with fresh_database(args.database_url, prefix="cloudjobs_notify_") as url, \
            tempfile.TemporaryDirectory() as tmp:
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE t (id int PRIMARY KEY, n int NOT NULL)"))
            conn.execute(sa.text("INSERT INTO t SELECT g, 0 FROM generate_series(1, 10000) g"))
            conn.execute(sa.text("CREATE UNLOGGED TABLE waiters (id int PRIMARY KEY)"))
        engine.dispose()
        files: dict[str, Path] = {}
        for name, text in SCRIPTS.items():
            files[name] = Path(tmp) / f"{len(files)}.sql"
            files[name].write_text(text)
        tps: dict[str, list[float]] = {name: [] for name in SCRIPTS}
        for _ in range(args.runs):
            for name, path in files.items():
                tps[name].append(pgbench(url, path, clients=args.clients, seconds=args.seconds))
    base = statistics.median(tps["update"])
    print(f"{args.clients} clients, {args.seconds} s a run, median of {args.runs}:")
    for name, values in tps.items():
        med = statistics.median(values)
        print(f"  {name:16} {med:8,.0f} tps  ({min(values):,.0f}-{max(values):,.0f})  {med / base:.2f}x update")
    return 0


if __name__ == "__main__":
    sys.exit(main())

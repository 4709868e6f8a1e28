"""PostgreSQL CPU per job for the two transitions of a run: claim, then finish with its attempt row.

    python -m bench.transition_cost [--jobs 2000] [--threads 1] [--rounds 3] [--unprepared]
                                    [--sql STATEMENT ...] [--database-url URL]

What `/handlers/run` asks of the database, without HTTP, the job function or the emulator:
on a fresh migrated database, each round inserts `--jobs` QUEUED jobs, then `--threads`
threads claim and finish them one by one (`api.store.jobs.claim_jobs` / `finish_jobs`, each on
an autocommit connection of the app's engine, as the handler does). Prints, per round, the
CPU time (user + system, by psutil) of the server processes working for that database per
job, and jobs per second. `--unprepared` runs with DB_PREPARED_STATEMENTS=false. The second round
onwards run after `ANALYZE jobs`, as autovacuum would have. Each line also says how many of
the round's updates of `jobs` were HOT (`pg_stat_user_tables.n_tup_hot_upd`: no index
written). `--sql` runs statements on the fresh database first, to see what a change of schema
would be worth (`--sql "DROP INDEX jobs_state_created_idx"`). Loopback server only; the
figures are CPU, so they move less with the machine's other load than throughput does.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import uuid

import sqlalchemy as sa

from api.config import Config
from api.store import jobs as store
from api.store.engine import autocommit, create_engine
from bench.stack import DEFAULT_SERVER, fresh_database
from bench.suite import process_cpu


def backend_cpu(engine: sa.Engine, pids: set[int]) -> float:
    """CPU seconds used so far by the server processes of this database (and `pids` seen before).

    Its backends and autovacuum workers, read from pg_stat_activity; not the server's shared
    processes (WAL writer, checkpointer), nor other databases' work on a shared server."""
    with engine.connect() as conn:
        pids.update(conn.execute(sa.text(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()")).scalars())
    # (an autovacuum worker that finished counts 0: its time is lost, not wrong)
    return sum(process_cpu(pid) for pid in pids)


def update_counts(engine: sa.Engine) -> tuple[int, int]:
    """Updates of `jobs` so far, and how many of them were HOT (the statistics are flushed first)."""
    with engine.connect() as conn:
        # a backend's counts reach pg_stat_user_tables when it is idle; wait for them
        time.sleep(1.1)
        conn.execute(sa.text("SELECT pg_stat_clear_snapshot()"))
        row = conn.execute(sa.text(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'jobs'")).one()
    return int(row.n_tup_upd), int(row.n_tup_hot_upd)


def new_job() -> store.NewJob:
    """A QUEUED echo job, as a create would insert it."""
    job_id = uuid.uuid4()
    return store.NewJob(id=job_id, type="echo", queue="default", payload={}, max_attempts=5, timeout_s=60,
                        labels={}, task_name=f"projects/p/locations/l/queues/default/tasks/job-{job_id.hex}-0")


def main(argv: list[str] | None = None) -> int:
    """Run the rounds and print one line each."""
    p = argparse.ArgumentParser(prog="python -m bench.transition_cost", description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--unprepared", action="store_true", help="DB_PREPARED_STATEMENTS=false")
    p.add_argument("--backlog", type=int, default=0,
                   help="QUEUED jobs inserted (and analyzed) first, as a busy queue would hold")
    p.add_argument("--sql", action="append", default=[], metavar="STATEMENT",
                   help="run on the fresh database before the rounds (repeatable)")
    p.add_argument("--database-url", default=DEFAULT_SERVER)
    args = p.parse_args(argv)
    with fresh_database(args.database_url, prefix="cloudjobs_transitions_") as url:
        engine = create_engine(Config(db_prepared_statements=not args.unprepared), url=url,
                               pool_size=args.threads)
        try:
            with engine.begin() as conn:
                for statement in args.sql:
                    conn.execute(sa.text(statement))
            for start in range(0, args.backlog, 10_000):
                with engine.begin() as conn:
                    store.insert_jobs(conn, [new_job() for _ in range(min(10_000, args.backlog - start))])
            if args.backlog:
                with engine.begin() as conn:
                    conn.execute(sa.text("ANALYZE jobs"))
            for n in range(args.rounds):
                with engine.begin() as conn:
                    ids = [r.id for r in store.insert_jobs(conn, [new_job() for _ in range(args.jobs)])]
                    if n:
                        conn.execute(sa.text("ANALYZE jobs"))

                def work(part: list[uuid.UUID]) -> None:
                    for job_id in part:
                        with autocommit(engine) as conn:
                            [claimed] = store.claim_jobs(conn, [job_id])
                        with autocommit(engine) as conn:
                            store.finish_jobs(conn, [store.Finish(job_id, claimed.attempts, "COMPLETED", "COMPLETED",
                                                                  result={})])

                threads = [threading.Thread(target=work, args=(ids[k :: args.threads],)) for k in range(args.threads)]
                pids: set[int] = set()
                updates = update_counts(engine)
                cpu, started = backend_cpu(engine, pids), time.perf_counter()
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                cpu, elapsed = backend_cpu(engine, pids) - cpu, time.perf_counter() - started
                total, hot = (b - a for a, b in zip(updates, update_counts(engine), strict=True))
                print(f"round {n + 1}: PostgreSQL {1000 * cpu / args.jobs:.2f} ms CPU a job, "
                      f"{args.jobs / elapsed:,.0f} jobs/s ({args.threads} threads, "
                      f"{'unprepared' if args.unprepared else 'prepared'}), "
                      f"{hot:,} of {total:,} updates HOT", flush=True)
        finally:
            engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())

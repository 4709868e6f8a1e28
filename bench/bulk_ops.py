"""How fast a redrive goes: a filtered batchRetry of N failed jobs, end to end, against what an
operator scripts without it (one :retry call per job).

    python -m bench.bulk_ops [--jobs 20000] [--rounds 3] [--database-url URL]

One stack (gunicorn, the emulator dispatching, PostgreSQL; bench/bench.queues.yaml with the
`default` queue paused, so that the retried jobs wait and only the operation runs, which
Cloud Tasks carries on through `shared`). Each
round inserts N FAILED jobs in one statement, then times `POST /v1/jobs:batchRetry` with a
filter (state and error code) until `GET /v1/operations/{id}` says done — its chunks, the
Cloud Tasks that carry it on, and the retried jobs' BatchCreateTasks calls included. Against
it, in the same round: 2,000 other failed jobs retried by `POST /v1/jobs/{id}:retry`, eight
requests at a time. Prints jobs/s of each (median of the rounds, with the range) and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
import sqlalchemy as sa

from bench.stack import DEFAULT_SERVER, fresh_database, running_stack

HERE = Path(__file__).resolve().parent

PER_JOB = 2000  # jobs retried one by one per round (enough for a steady rate)

_FAILED = sa.text(
    """
    INSERT INTO jobs (id, type, queue, state, payload, max_attempts, timeout_s, task_name, attempts, error, done_time)
    SELECT gen_random_uuid(), 'echo', 'default', 'FAILED', '{}'::jsonb, 3, 30,
           'projects/local-project/locations/us-central1/queues/default/tasks/f' || g, 3,
           jsonb_build_object('code', CAST(:code AS text), 'message', 'downstream down'), now()
    FROM generate_series(1, :n) g
    """
)


def main(argv: list[str] | None = None) -> int:
    """Measure and print."""
    p = argparse.ArgumentParser(prog="python -m bench.bulk_ops", description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=20_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--database-url", default=DEFAULT_SERVER)
    args = p.parse_args(argv)
    redrive: list[float] = []
    one_by_one: list[float] = []
    with fresh_database(args.database_url) as url:
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        # The operation is carried on through the `shared` queue; `default`, whose jobs it
        # retries, is paused so that they wait and only the operation runs.
        with running_stack(url, queues_file=HERE / "bench.queues.yaml",
                           extra_env={"LOG_LEVEL": "WARNING", "OPERATIONS_QUEUE": "shared"}) as stack:
            session = requests.Session()
            assert session.post(f"{stack.url}/v1/queues/default:pause", timeout=30).status_code == 200
            for r in range(args.rounds):
                code = f"DOWN_{r}"
                with engine.begin() as conn:
                    conn.execute(_FAILED, {"n": args.jobs, "code": code})
                started = time.perf_counter()
                op = session.post(f"{stack.url}/v1/jobs:batchRetry",
                                  json={"filter": {"state": "FAILED", "error_code": code}}, timeout=60).json()
                while not op["done"]:
                    time.sleep(0.05)
                    op = session.get(f"{stack.url}/v1/{op['name']}", timeout=60).json()
                redrive.append(args.jobs / (time.perf_counter() - started))
                assert op["response"]["succeeded"] == args.jobs, op
                # what an operator scripts without it: one :retry per job, 8 at a time
                code = f"PEER_{r}"
                with engine.begin() as conn:
                    conn.execute(_FAILED, {"n": PER_JOB, "code": code})
                    ids = [str(i) for i in conn.execute(sa.text("SELECT id FROM jobs WHERE error ->> 'code' = :c"),
                                                        {"c": code}).scalars()]
                started = time.perf_counter()
                with ThreadPoolExecutor(8) as pool:
                    answers = list(pool.map(lambda i: requests.post(f"{stack.url}/v1/jobs/{i}:retry", timeout=60), ids))
                one_by_one.append(PER_JOB / (time.perf_counter() - started))
                assert all(a.status_code == 200 for a in answers)
        engine.dispose()
    med, low = statistics.median(redrive), statistics.median(one_by_one)
    print(f"batchRetry by filter, end to end: {med:8.0f} jobs/s ({min(redrive):.0f}–{max(redrive):.0f})")
    print(f":retry one job at a time, 8 at once: {low:5.0f} jobs/s ({min(one_by_one):.0f}–{max(one_by_one):.0f})")
    print(f"ratio: {med / low:.1f}× scripting :retry")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

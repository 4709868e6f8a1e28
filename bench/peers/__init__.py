"""The peers: other Python job queues on the same PostgreSQL (and the machine's Redis).

Each peer runs in its own process, started by the benchmark as

    python -m bench.peers NAME --database-url URL [--redis-url URL] [--workers N]

It prepares its schema in the given (fresh) database, starts its workers as subprocesses,
then answers commands on stdin, one JSON line each on stdout:

    one N     submit N no-op jobs one by one, wait until all are done
    batch N   submit them in batches, wait until all are done
    quit      stop the workers and exit

So the workers start once and the benchmark can interleave the peers' runs with its own.
The peers' packages come from the `bench` extra (`pip install -e '.[bench]'`); nothing in
the test path imports this package.
"""

from __future__ import annotations

PEERS = ("procrastinate", "pgqueuer", "celery")

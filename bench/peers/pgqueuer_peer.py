"""pgqueuer on the same PostgreSQL (asyncpg): an async no-op entrypoint, worker processes."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from importlib.metadata import version

import asyncpg
from pgqueuer import AsyncpgDriver, Queries, QueueManager
from pgqueuer.models import Job

from bench.peers._proc import Workers, libpq_url

# Jobs a worker takes per dequeue; pgqueuer's default is 10.
BATCH_SIZE = 10
BATCH = 500  # jobs per enqueue call in batched runs, as cloudjobs' batchCreate


class Peer:
    """pgqueuer, driven by bench.peers."""

    def __init__(self, *, database_url: str, redis_url: str, workers: int, submitters: int) -> None:
        self.dsn = libpq_url(database_url)
        self.workers_n = workers
        self.submitters = submitters
        self.version = version("pgqueuer")
        # One by one, enqueue calls go one after another on one connection: concurrent calls
        # were slower here (16 on a pool: about half the rate), as they contend in
        # pgqueuer's enqueue trigger.
        self.settings = (
            f"{workers} worker processes, dequeue batch {BATCH_SIZE}, async no-op "
            f"entrypoint; one by one: sequential enqueue calls on one connection "
            f"(its fastest here); batched: enqueue of {BATCH} in one call"
        )
        self.loop = asyncio.new_event_loop()
        self.conn: asyncpg.Connection | None = None
        self.queries: Queries | None = None
        self.submitted = 0
        self.workers: Workers | None = None

    def start(self) -> None:
        async def setup() -> None:
            self.conn = await asyncpg.connect(self.dsn)
            self.queries = Queries(AsyncpgDriver(self.conn))
            await self.queries.install()

        self.loop.run_until_complete(setup())
        self.workers = Workers(
            [sys.executable, "-c", "from bench.peers.pgqueuer_peer import worker; worker()"],
            count=self.workers_n,
            env={"BENCH_PEER_DSN": self.dsn},
        )

    def mark(self) -> None:
        if self.workers is not None:
            self.workers.check()
        self.submitted = 0

    def submit_one(self, n: int) -> None:
        assert self.queries is not None
        q = self.queries

        async def enqueuer() -> None:
            for _ in range(n):
                await q.enqueue("noop", None)

        self.loop.run_until_complete(enqueuer())
        self.submitted += n

    def submit_batch(self, n: int) -> None:
        assert self.queries is not None
        q = self.queries

        async def batches() -> None:
            for i in range(0, n, BATCH):
                size = min(BATCH, n - i)
                await q.enqueue(["noop"] * size, [None] * size, [0] * size)

        self.loop.run_until_complete(batches())
        self.submitted += n

    def done(self) -> int:
        """Jobs submitted since the mark and no longer in the queue table (done and logged)."""
        assert self.conn is not None
        remaining = self.loop.run_until_complete(
            self.conn.fetchval("SELECT count(*) FROM pgqueuer")
        )
        return self.submitted - int(remaining)

    def stop(self) -> None:
        if self.workers is not None:
            self.workers.stop()
        if self.conn is not None:
            self.loop.run_until_complete(self.conn.close())
        self.loop.close()


def worker() -> None:
    """One worker process: run until SIGTERM."""

    async def run() -> None:
        conn = await asyncpg.connect(os.environ["BENCH_PEER_DSN"])
        qm = QueueManager(Queries(AsyncpgDriver(conn)))

        @qm.entrypoint("noop")
        async def noop(job: Job) -> None:
            """Nothing."""

        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, qm.shutdown.set)
        await qm.run(batch_size=BATCH_SIZE)
        await conn.close()

    asyncio.run(run())


if __name__ == "__main__":
    sys.exit("run bench.peers, or worker() from this module")

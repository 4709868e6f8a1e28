"""Procrastinate 3 on the same PostgreSQL: an async no-op task; workers use LISTEN/NOTIFY."""

from __future__ import annotations

import asyncio
import os
import sys
from importlib.metadata import version

import procrastinate
import psycopg

from bench.peers._proc import Workers, libpq_url

# A worker runs this many jobs at once; the task is async, so this costs little.
CONCURRENCY = 10
BATCH = 500  # as cloudjobs' batchCreate

app = procrastinate.App(
    connector=procrastinate.PsycopgConnector(
        conninfo=os.environ.get("BENCH_PEER_DSN", ""), min_size=1, max_size=4
    )
)


@app.task(name="noop")
async def noop() -> None:
    """Nothing."""


class Peer:
    """Procrastinate, driven by bench.peers."""

    def __init__(self, *, database_url: str, redis_url: str, workers: int, submitters: int) -> None:
        self.dsn = libpq_url(database_url)
        self.workers_n = workers
        self.submitters = submitters
        self.version = version("procrastinate")
        self.settings = (
            f"{workers} worker processes × concurrency {CONCURRENCY}, async no-op task, "
            f"LISTEN/NOTIFY; one by one: {submitters} concurrent defer_async; "
            f"batched: batch_defer_async of {BATCH}"
        )
        self.loop = asyncio.new_event_loop()
        self.app = procrastinate.App(
            connector=procrastinate.PsycopgConnector(
                conninfo=self.dsn, min_size=1, max_size=submitters
            )
        )
        self.task = self.app.task(name="noop")(_defer_only)
        self.conn = psycopg.connect(self.dsn, autocommit=True)
        self.watermark = 0
        self.workers: Workers | None = None

    def start(self) -> None:
        self.loop.run_until_complete(self.app.open_async())
        self.loop.run_until_complete(self.app.schema_manager.apply_schema_async())
        self.workers = Workers(
            [sys.executable, "-c", "from bench.peers.procrastinate_peer import worker; worker()"],
            count=self.workers_n,
            env={"BENCH_PEER_DSN": self.dsn},
        )

    def mark(self) -> None:
        if self.workers is not None:
            self.workers.check()
        row = self.conn.execute("SELECT coalesce(max(id), 0) FROM procrastinate_jobs").fetchone()
        self.watermark = int(row[0]) if row else 0

    def submit_one(self, n: int) -> None:
        async def deferrer(count: int) -> None:
            for _ in range(count):
                await self.task.defer_async()

        async def all_of_them() -> None:
            k = self.submitters
            await asyncio.gather(*(deferrer(n // k + (1 if i < n % k else 0)) for i in range(k)))

        self.loop.run_until_complete(all_of_them())

    def submit_batch(self, n: int) -> None:
        async def batches() -> None:
            for i in range(0, n, BATCH):
                await self.task.batch_defer_async(*[{}] * min(BATCH, n - i))

        self.loop.run_until_complete(batches())

    def done(self) -> int:
        row = self.conn.execute(
            "SELECT count(*) FROM procrastinate_jobs WHERE id > %s AND status = 'succeeded'",
            (self.watermark,),
        ).fetchone()
        return int(row[0]) if row else 0

    def stop(self) -> None:
        if self.workers is not None:
            self.workers.stop()
        self.loop.run_until_complete(self.app.close_async())
        self.loop.close()
        self.conn.close()


def _defer_only() -> None:
    """Never runs here: the deferring side only needs the task's name."""


def worker() -> None:
    """One worker process."""
    app.run_worker(concurrency=CONCURRENCY, listen_notify=True)


if __name__ == "__main__":
    sys.exit("run bench.peers, or worker() from this module")

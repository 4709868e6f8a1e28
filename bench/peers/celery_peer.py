"""Celery 5 with the machine's Redis as broker: a no-op task that counts itself done.

Celery keeps no job table: each task ends with one INCR of a counter, which is how the
benchmark sees it finish (cheaper than a result backend). Keys, queue and counter carry a
prefix unique to the run, and are deleted at the end.
"""

from __future__ import annotations

import os
import sys
import uuid
from importlib.metadata import version

import redis
from celery import Celery

from bench.peers._proc import Workers

PREFIX = os.environ.get("BENCH_CELERY_PREFIX", "cloudjobs-bench:")
QUEUE = PREFIX + "queue"
COUNTER = PREFIX + "done"

app = Celery(
    "cloudjobs_bench", broker=os.environ.get("BENCH_CELERY_BROKER", "redis://127.0.0.1:6379/0")
)
app.conf.update(
    task_ignore_result=True,
    task_default_queue=QUEUE,
    broker_transport_options={"global_keyprefix": PREFIX},
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)
_redis: redis.Redis | None = None


@app.task(name="noop")
def noop() -> None:
    """Count one job done."""
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(app.conf.broker_url)
    _redis.incr(COUNTER)


class Peer:
    """Celery, driven by bench.peers."""

    def __init__(self, *, database_url: str, redis_url: str, workers: int, submitters: int) -> None:
        self.redis_url = redis_url
        self.prefix = f"cloudjobs-bench-{uuid.uuid4().hex[:8]}:"
        self.concurrency = workers
        self.version = version("celery")
        self.settings = (
            f"one worker, prefork concurrency {workers}, Redis broker, no result "
            f"backend (the task INCRs a counter); one by one: sequential apply_async; "
            f"batched: not run (Celery has no batch enqueue)"
        )
        self.redis = redis.Redis.from_url(redis_url)
        self.base = 0
        self.workers: Workers | None = None
        self.app = Celery("cloudjobs_bench", broker=redis_url)
        self.app.conf.update(
            task_ignore_result=True,
            task_default_queue=self.prefix + "queue",
            broker_transport_options={"global_keyprefix": self.prefix},
        )

    def start(self) -> None:
        self.redis.ping()
        self.workers = Workers(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "bench.peers.celery_peer:app",
                "worker",
                "-c",
                str(self.concurrency),
                "-P",
                "prefork",
                "-Q",
                self.prefix + "queue",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-l",
                "WARNING",
            ],
            count=1,
            env={"BENCH_CELERY_PREFIX": self.prefix, "BENCH_CELERY_BROKER": self.redis_url},
        )

    def mark(self) -> None:
        if self.workers is not None:
            self.workers.check()
        self.base = int(self.redis.get(self.prefix + "done") or 0)

    def submit_one(self, n: int) -> None:
        send = self.app.send_task
        for _ in range(n):
            send("noop")

    def submit_batch(self, n: int) -> None:
        raise NotImplementedError("Celery has no batch enqueue")

    def done(self) -> int:
        return int(self.redis.get(self.prefix + "done") or 0) - self.base

    def stop(self) -> None:
        if self.workers is not None:
            self.workers.stop()
        keys = list(self.redis.scan_iter(match=self.prefix + "*", count=1000))
        if keys:
            self.redis.delete(*keys)
        self.redis.close()

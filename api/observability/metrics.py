"""Prometheus metrics (prometheus-client): what the processes count, and what PostgreSQL says
at scrape time. `GET /metrics` (admins; docs/operations.md) renders both.

Counted where it happens, in every process: jobs created and finished (by queue, type and
state), attempt durations (histograms by queue, type and outcome), the API's and the
handlers' latency (by route), webhook deliveries (by outcome) and the sweeper's actions.
Under gunicorn the workers' values are summed through prometheus-client's multiprocess mode
(`PROMETHEUS_MULTIPROC_DIR`, which gunicorn.conf.py sets to a fresh directory when unset).
Read from PostgreSQL at each scrape: live jobs by queue and state, and each queue's oldest
job due and not yet running — true whichever process did the work.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.engine import Engine

from api.store import operations as op_store

CONTENT_TYPE = CONTENT_TYPE_LATEST

JOBS_CREATED = Counter("cloudjobs_jobs_created", "Jobs created.", ["queue", "type"])
JOBS_FINISHED = Counter("cloudjobs_jobs_finished", "Jobs that reached a terminal state through an attempt.",
                        ["queue", "type", "state"])
ATTEMPT_SECONDS = Histogram("cloudjobs_attempt_duration_seconds", "Job attempts' run time.",
                            ["queue", "type", "outcome"],
                            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800))
REQUEST_SECONDS = Histogram("cloudjobs_http_request_duration_seconds", "Requests' latency, by route.",
                            ["route", "method", "status"],
                            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60))
WEBHOOK_DELIVERIES = Counter("cloudjobs_webhook_deliveries", "Completion webhook delivery attempts, by outcome.",
                             ["outcome"])
SWEEPER_ACTIONS = Counter("cloudjobs_sweeper_actions", "What the sweeper did, by action.", ["action"])


def created(rows: Iterable[Any]) -> None:
    """Jobs that were created (not a replay's)."""
    for r in rows:
        JOBS_CREATED.labels(r.queue, r.type).inc()


def finished(queue: str, job_type: str, state: str, outcome: str, seconds: float) -> None:
    """An attempt that ended, and the job's state after it."""
    ATTEMPT_SECONDS.labels(queue, job_type, outcome).observe(seconds)
    if state in ("COMPLETED", "FAILED", "CANCELLED"):
        JOBS_FINISHED.labels(queue, job_type, state).inc()


def swept(report: dict[str, int]) -> None:
    """A sweep's report: each action it took, counted."""
    for action, n in report.items():
        if n:
            SWEEPER_ACTIONS.labels(action).inc(n)


class DatabaseCollector(Collector):
    """Live jobs by queue and state, and each queue's oldest job due, read at scrape time."""

    def __init__(self, engine: Engine, queues: Sequence[str]) -> None:
        self.engine = engine
        self.queues = queues

    def collect(self) -> Iterator[GaugeMetricFamily]:
        live = GaugeMetricFamily("cloudjobs_jobs", "Jobs not yet terminal, by queue and state.",
                                 labels=["queue", "state"])
        oldest = GaugeMetricFamily("cloudjobs_oldest_waiting_seconds",
                                   "Age of each queue's oldest job that is due and not yet running (0: none).",
                                   labels=["queue"])
        with self.engine.connect() as conn:
            rows = op_store.live_jobs(conn, scope=None)
        counts = {(q, s): 0 for q in self.queues for s in ("WAITING", "CREATED", "QUEUED", "RUNNING")}
        ages = dict.fromkeys(self.queues, 0.0)
        for r in rows:
            counts[(r.queue, r.state)] = r.n
            if r.oldest_s is not None:
                ages[r.queue] = max(ages.get(r.queue, 0.0), r.oldest_s)
        for (q, s), n in sorted(counts.items()):
            live.add_metric([q, s], n)
        for q, age in sorted(ages.items()):
            oldest.add_metric([q], age)
        yield live
        yield oldest


def render(engine: Engine, queues: Sequence[str]) -> bytes:
    """The metrics page: every process's counts (multiprocess mode) or this one's, and the database's."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        for metric in (JOBS_CREATED, JOBS_FINISHED, ATTEMPT_SECONDS, REQUEST_SECONDS, WEBHOOK_DELIVERIES,
                       SWEEPER_ACTIONS):
            registry.register(metric)
    registry.register(DatabaseCollector(engine, queues))
    return generate_latest(registry)

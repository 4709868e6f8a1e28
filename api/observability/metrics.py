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
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from api.observability.traces import otel_missing
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
        if _otel is not None:
            _otel.created.add(1, {"queue": r.queue, "type": r.type})


def finished(queue: str, job_type: str, state: str, outcome: str, seconds: float) -> None:
    """An attempt that ended, and the job's state after it."""
    ATTEMPT_SECONDS.labels(queue, job_type, outcome).observe(seconds)
    if _otel is not None:
        _otel.attempt.record(seconds, {"queue": queue, "type": job_type, "outcome": outcome})
    if state in ("COMPLETED", "FAILED", "CANCELLED"):
        JOBS_FINISHED.labels(queue, job_type, state).inc()
        if _otel is not None:
            _otel.finished.add(1, {"queue": queue, "type": job_type, "state": state})


def request(route: str, method: str, status: int, seconds: float) -> None:
    """A request answered."""
    REQUEST_SECONDS.labels(route, method, str(status)).observe(seconds)
    if _otel is not None:
        _otel.request.record(seconds, {"route": route, "method": method, "status": status})


def webhook(outcome: str) -> None:
    """A webhook delivery attempt: delivered, retry, failed or refused."""
    WEBHOOK_DELIVERIES.labels(outcome).inc()
    if _otel is not None:
        _otel.webhooks.add(1, {"outcome": outcome})


def swept(report: dict[str, int]) -> None:
    """A sweep's report: each action it took, counted."""
    for action, n in report.items():
        if n:
            SWEEPER_ACTIONS.labels(action).inc(n)
            if _otel is not None:
                _otel.sweeper.add(n, {"action": action})


class _Otel:
    """The same measurements as OpenTelemetry instruments (OTEL_ENABLED)."""

    def __init__(self, meter: Any, engine: Engine) -> None:
        self.created = meter.create_counter("cloudjobs.jobs.created", unit="{job}", description="Jobs created.")
        self.finished = meter.create_counter("cloudjobs.jobs.finished", unit="{job}",
                                             description="Jobs that reached a terminal state through an attempt.")
        self.attempt = meter.create_histogram("cloudjobs.attempt.duration", unit="s",
                                              description="Job attempts' run time.")
        self.request = meter.create_histogram("cloudjobs.http.request.duration", unit="s",
                                              description="Requests' latency, by route.")
        self.webhooks = meter.create_counter("cloudjobs.webhook.deliveries", unit="{delivery}",
                                             description="Completion webhook delivery attempts, by outcome.")
        self.sweeper = meter.create_counter("cloudjobs.sweeper.actions", unit="{action}",
                                            description="What the sweeper did, by action.")
        self.engine = engine
        meter.create_observable_gauge("cloudjobs.jobs.live", callbacks=[self._live], unit="{job}",
                                      description="Jobs not yet terminal, by queue and state.")
        meter.create_observable_gauge("cloudjobs.queue.oldest_waiting", callbacks=[self._oldest], unit="s",
                                      description="Each queue's oldest job due and not yet running.")

    def _rows(self) -> list[Any]:
        try:
            with self.engine.connect() as conn:
                return op_store.live_jobs(conn, scope=None)
        except DBAPIError:  # the database is away: no reading this time
            return []

    def _live(self, _options: Any) -> Iterator[Any]:
        from opentelemetry.metrics import Observation

        for r in self._rows():
            yield Observation(r.n, {"queue": r.queue, "state": r.state})

    def _oldest(self, _options: Any) -> Iterator[Any]:
        from opentelemetry.metrics import Observation

        for r in self._rows():
            if r.oldest_s is not None:
                yield Observation(r.oldest_s, {"queue": r.queue, "state": r.state})


_otel: _Otel | None = None
_otel_lock = threading.Lock()
_otel_provider: Any = None


def enable_otel(engine: Engine, *, reader: Any = None) -> Any:
    """Export the metrics through OpenTelemetry too (OTEL_ENABLED): OTLP to
    OTEL_EXPORTER_OTLP_ENDPOINT (a collector, e.g. Cloud Run's sidecar, which writes them to
    Cloud Monitoring), every 60 s; `reader` replaces it (tests). Once per process; the provider."""
    global _otel, _otel_provider
    try:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource
    except ImportError as e:
        raise otel_missing(e) from None
    with _otel_lock:
        if _otel_provider is None:
            if reader is None:
                from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

                reader = PeriodicExportingMetricReader(OTLPMetricExporter())
            _otel_provider = MeterProvider(resource=Resource.create({"service.name": "cloudjobs"}),
                                           metric_readers=[reader])
            _otel = _Otel(_otel_provider.get_meter("cloudjobs"), engine)
    return _otel_provider


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

"""OpenTelemetry is optional: off, nothing of it loads; on without the extra, a clear refusal.

Each case runs in a fresh interpreter: OpenTelemetry's tracer provider is global to a process.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap

from api.config import Config
from tests.conftest import ROOT


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


OTEL_INSTALLED = _installed("opentelemetry.instrumentation.flask")
# Loaded by our code only when OTEL_ENABLED is true. (google-api-core itself imports
# opentelemetry's API when it is installed; that is not ours to stop.)
OURS = (
    "opentelemetry.instrumentation.flask",
    "opentelemetry.instrumentation.sqlalchemy",
    "opentelemetry.sdk.trace",
    "opentelemetry.exporter.cloud_trace",
)

PRELUDE = """
from pathlib import Path
from api import create_app
from api.observability import traces as observability
from api.config import Config, ConfigurationInvalid
config = Config(database_url="postgresql://nobody@127.0.0.1:1/none", handler_auth="none",
                queues_file=Path("queues.yaml"), project="p1")
"""


def run(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_otel_enabled_is_read_from_the_environment() -> None:
    assert Config.from_env({"OTEL_ENABLED": "true"}).otel_enabled is True
    assert Config.from_env({}).otel_enabled is False


def test_with_otel_off_nothing_of_it_is_imported_or_installed() -> None:
    out = run(
        """
        import sys
        app = create_app(config)
        print(any(m in sys.modules for m in {OURS!r}), observability._otel_provider)
    """.replace("{OURS!r}", repr(OURS))
    )
    assert out == "False None"


def test_otel_on_without_the_extra_refuses_to_start_and_says_what_to_install() -> None:
    # The extra is installed for the tests; hide it, as a machine without it would be.
    out = run("""
        import sys
        for name in ("opentelemetry.instrumentation.flask", "opentelemetry.instrumentation.sqlalchemy",
                     "opentelemetry.sdk", "opentelemetry.sdk.trace", "opentelemetry.exporter.cloud_trace"):
            sys.modules[name] = None
        try:
            create_app(config.replace(otel_enabled=True))
        except ConfigurationInvalid as e:
            print(e)
    """)
    assert "pip install 'cloudjobs[otel]'" in out


def test_otel_on_traces_requests_under_the_incoming_trace_and_propagates_the_span() -> None:
    out = run("""
        from flask import jsonify
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        app = create_app(config)
        spans = InMemorySpanExporter()
        observability.enable_otel(app, app.extensions["cloudjobs"], exporter=spans)
        app.add_url_rule("/probe", "probe", lambda: jsonify(observability.trace_headers()))
        tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        headers = app.test_client().get("/probe", headers={"traceparent": tp}).get_json()
        observability._otel_provider.force_flush()
        [span] = spans.get_finished_spans()
        print(format(span.context.trace_id, "032x"), headers["traceparent"].split("-")[1],
              headers["traceparent"].split("-")[2] == format(span.context.span_id, "016x"))
    """)
    assert out == "4bf92f3577b34da6a3ce929d0e0e4736 4bf92f3577b34da6a3ce929d0e0e4736 True"


def test_otel_metrics_record_what_prometheus_counts() -> None:
    # The same measurements, through OpenTelemetry's SDK to an in-memory reader; the database's
    # gauges read nothing from a database that is not there (no error, no reading).
    out = run("""
        from types import SimpleNamespace
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from api.observability import metrics
        app = create_app(config)
        reader = InMemoryMetricReader()
        metrics.enable_otel(app.extensions["cloudjobs"].engine, reader=reader)
        metrics.created([SimpleNamespace(queue="default", type="echo")] * 3)
        metrics.finished("default", "echo", "COMPLETED", "COMPLETED", 0.25)
        metrics.webhook("delivered")
        points = {}
        for rm in reader.get_metrics_data().resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    for p in m.data.data_points:
                        points[m.name] = getattr(p, "value", None) if hasattr(p, "value") else p.count
        print(points.get("cloudjobs.jobs.created"), points.get("cloudjobs.jobs.finished"),
              points.get("cloudjobs.attempt.duration"), points.get("cloudjobs.webhook.deliveries"),
              "cloudjobs.jobs.live" in points)
    """)
    assert out == "3 1 1 1 False"

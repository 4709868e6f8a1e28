"""gunicorn settings for Cloud Run and App Engine; each overridable from the environment."""

import os
import tempfile

bind = f"0.0.0.0:{os.environ.get('PORT', '8080')}"
# Threads serve many concurrent Cloud Tasks callbacks and pollers per process; job
# functions mostly wait on I/O. One worker per vCPU.
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "gthread")
workers = int(os.environ.get("WEB_CONCURRENCY", os.cpu_count() or 1))
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
# A job runs inside its request: the timeout must outlast the longest dispatch deadline.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "1860"))
graceful_timeout = 30
keepalive = 75  # above Google's front end idle timeout, so it closes connections first
accesslog = None
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "api.observability.logs.JsonFormatter"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json"}},
    "root": {"level": os.environ.get("LOG_LEVEL", "INFO"), "handlers": ["stderr"]},
    "loggers": {
        "gunicorn.error": {"level": os.environ.get("LOG_LEVEL", "INFO"), "handlers": ["stderr"], "propagate": False},
        # The app logs each request itself (api/observability.py: httpRequest, trace, no query
        # string); gunicorn's access line would repeat it, query string and all.
        "gunicorn.access": {"level": "WARNING", "handlers": [], "propagate": False},
    },
}


# Prometheus metrics summed over the workers (api/observability/metrics.py): each worker
# writes its counts to files here; set it to keep them somewhere else.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="cloudjobs-metrics-")


def child_exit(server, worker):  # noqa: ANN001, ANN201 (gunicorn's hook signature)
    """A worker's gauges leave with it; its counters stay counted."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def post_worker_init(worker):  # noqa: ANN001, ANN201 (gunicorn's hook signature)
    """Under gevent workers (GUNICORN_WORKER_CLASS=gevent), make gRPC cooperative too."""
    if worker_class == "gevent":
        import grpc.experimental.gevent

        grpc.experimental.gevent.init_gevent()

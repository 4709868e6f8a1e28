"""Configuration: the one place that reads the environment."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import ipaddress
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

logger = logging.getLogger(__name__)

HandlerAuth = Literal["oidc", "hmac", "appengine", "none"]
ApiAuth = Literal["keys", "google", "none"]
DbDriver = Literal["pg8000", "psycopg"]
GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"


class ConfigurationInvalid(Exception):
    """The configuration cannot run safely; the message says what to set."""


LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}
# The page-token key of local runs; a deployment must set its own (validate refuses this one).
DEFAULT_PAGE_TOKEN_KEY = "cloudjobs-page-token"


@dataclass(frozen=True)
class Config:
    """Everything the app needs to run; tests build one directly."""

    # Data
    database_url: str | None = None
    reporting_database_url: str | None = None  # a read replica for reports
    instance_connection_name: str | None = None  # Cloud SQL: "project:region:instance"
    db_user: str | None = None
    db_password: str | None = None
    db_name: str = "postgres"
    db_iam_auth: bool = False
    db_pool_size: int = 8
    db_max_overflow: int = 5
    db_prepared_statements: bool = True  # off behind a pooler that drops them (PgBouncer < 1.21)
    # The driver for INSTANCE_CONNECTION_NAME and for a DATABASE_URL that names none
    # (`postgresql://`); `postgresql+psycopg://` or `postgresql+pg8000://` in the URL wins.
    db_driver: DbDriver = "pg8000"
    # pg8000 through api.store.pgfast (on the versions it was tested on); false runs pg8000 as
    # released: to compare (python -m bench --drivers) or to rule the patches out.
    db_pgfast: bool = True

    # Cloud Tasks
    project: str = "local-project"
    location: str = "us-central1"
    emulator_host: str | None = None  # CLOUD_TASKS_EMULATOR_HOST, "host:port"
    handler_base_url: str = "http://127.0.0.1:8080"
    tasks_service_account: str | None = None  # the OIDC identity Cloud Tasks signs as
    oidc_audience: str | None = None  # defaults to handler_base_url
    queues_file: Path = Path("queues.yaml")

    # Triggers: schedules fired by Cloud Scheduler and Pub/Sub push subscriptions (schedules.yaml)
    schedules_file: Path = Path("schedules.yaml")
    scheduler_location: str | None = None  # Cloud Scheduler's region; defaults to `location`
    scheduler_emulator_host: str | None = None  # defaults to the Cloud Tasks emulator's (it serves both)
    scheduler_service_account: str | None = None  # the OIDC identity Cloud Scheduler signs as; defaults to tasks'
    pubsub_service_account: str | None = None  # the OIDC identity of Pub/Sub push; defaults to tasks'
    # The Cloud Scheduler jobs `schedules sync` owns (and deletes when the file drops them); not
    # plain "cloudjobs-", which deploy/deploy.sh's cloudjobs-sweep job starts with.
    scheduler_job_prefix: str = "cloudjobs-schedule-"

    # Handler authentication (fail closed: None means "not configured")
    handler_auth: HandlerAuth | None = None
    oidc_certs_url: str = GOOGLE_CERTS_URL
    on_app_engine: bool = False
    handler_hmac_secrets: tuple[str, ...] = ()  # two at once during a rotation

    # API authentication: keys (default), Google ID tokens, or none (behind IAM/IAP only)
    api_auth: ApiAuth = "keys"
    api_audience: str | None = None  # AUTH=google: the audience callers' tokens carry
    api_service_accounts: tuple[str, ...] = ()  # AUTH=google: who may call
    admin_service_accounts: tuple[str, ...] = ()  # AUTH=google: who sees every job

    # Delivery
    lease_margin_s: int = 30  # a lease outlives the job's timeout by this much
    sweep_created_after_s: int = 60  # a CREATED job this old lost its enqueue
    sweep_queued_after_s: int = 60  # a QUEUED job this stale has its task checked
    sweep_batch: int = 500  # jobs per kind per sweep
    # A single create on a queue with jobs_per_task > 1 waits this long for others of its
    # process to share its Cloud Task (0: a task each). api/orchestration/coalesce.py
    create_coalesce_ms: float = 2.0

    # GET /v1/jobs/{id}?wait=S
    wait_fallback_s: float = 5.0  # a waiter re-reads its job this often, in case a NOTIFY was lost
    wait_max_per_process: int = 4  # beyond this many waiters a ?wait= returns at once
    # Job attempts one process runs at once; beyond it /handlers/run answers 429 at once and
    # the queue delivers again later, so hung or long jobs cannot take every thread from the
    # API and the health checks. Half the gunicorn threads by default.
    run_concurrency: int = 4
    # Log a job function's exception whole, message and all (it may quote the payload).
    log_payloads: bool = False

    # HTTP
    max_request_bytes: int = 1024 * 1024
    max_payload_bytes: int = 256 * 1024
    page_token_key: str = DEFAULT_PAGE_TOKEN_KEY
    job_modules: tuple[str, ...] = field(default_factory=tuple)
    # The demo types sleep, echo and flaky: on in `cloudjobs dev` and the tests, off in a
    # deployment unless asked for (a one-hour `sleep` is a way to tie up a worker).
    demo_job_types: bool = False

    # Completion webhooks (docs/webhooks.md): the secrets that sign them (whsec_…, the first
    # signs, all sign during a rotation), a callback for every job, private addresses (dev).
    webhook_secrets: tuple[str, ...] = field(default_factory=tuple, repr=False)
    webhook_url: str | None = None
    webhook_allow_private: bool = False
    webhook_queue: str = "webhooks"
    webhook_timeout_s: float = 10.0
    # Bulk operations hand their chunks on through this queue (docs/operations.md).
    operations_queue: str = "default"

    # Observability
    otel_enabled: bool = False  # OpenTelemetry traces to Cloud Trace (needs the otel extra)

    # The command line: where `cloudjobs dev` keeps its database, log and dev.json, and where
    # the database commands look for that file when DATABASE_URL is unset.
    data_dir: Path = Path(".cloudjobs")

    @property
    def scheduler_region(self) -> str:
        """Where the Cloud Scheduler jobs live."""
        return self.scheduler_location or self.location

    @property
    def scheduler_emulator(self) -> str | None:
        """`host:port` of an emulated Cloud Scheduler, if any."""
        return self.scheduler_emulator_host or self.emulator_host

    @property
    def scheduler_identity(self) -> str | None:
        """The service account Cloud Scheduler signs its OIDC tokens as."""
        return self.scheduler_service_account or self.tasks_service_account

    @property
    def pubsub_identity(self) -> str | None:
        """The service account Pub/Sub push signs its OIDC tokens as."""
        return self.pubsub_service_account or self.tasks_service_account

    @property
    def audience(self) -> str:
        """The OIDC audience tasks carry and the handler expects."""
        return self.oidc_audience or self.handler_base_url

    def replace(self, **changes: object) -> Config:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def validate(self) -> None:
        """Refuse a configuration that cannot run safely."""
        if not self.database_url and not self.instance_connection_name:
            raise ConfigurationInvalid(
                "no database: set DATABASE_URL, or INSTANCE_CONNECTION_NAME for Cloud SQL"
            )
        if self.handler_auth is None:
            raise ConfigurationInvalid(
                "/handlers/* has no authentication: set HANDLER_AUTH=oidc with "
                "TASKS_SERVICE_ACCOUNT (the service account Cloud Tasks signs as), or run on "
                "App Engine, or set HANDLER_AUTH=none only behind another gate (Cloud Run IAM)"
            )
        if self.handler_auth == "oidc" and not self.tasks_service_account:
            raise ConfigurationInvalid(
                "HANDLER_AUTH=oidc needs TASKS_SERVICE_ACCOUNT, the email Cloud Tasks signs as"
            )
        if self.handler_auth == "hmac" and not self.handler_hmac_secrets:
            raise ConfigurationInvalid("HANDLER_AUTH=hmac needs HANDLER_HMAC_SECRETS (comma-separated)")
        if self.handler_auth == "hmac" and any(len(s) < 32 for s in self.handler_hmac_secrets):
            raise ConfigurationInvalid("each HANDLER_HMAC_SECRETS secret needs at least 32 characters")
        if self.api_auth == "google" and not self.api_service_accounts:
            raise ConfigurationInvalid(
                "AUTH=google needs ALLOWED_SERVICE_ACCOUNTS, the callers' service account emails"
            )
        if self.run_concurrency < 1:
            raise ConfigurationInvalid("RUN_CONCURRENCY must be at least 1")
        if self.handler_auth == "appengine" and not self.on_app_engine:
            raise ConfigurationInvalid(
                "HANDLER_AUTH=appengine trusts X-AppEngine-QueueName, which only App Engine "
                "strips from outside requests; it is refused elsewhere"
            )
        for secret in self.webhook_secrets:
            if not _whsec(secret):
                raise ConfigurationInvalid(
                    "each WEBHOOK_SECRETS secret must be whsec_ and at least 24 bytes in base64 "
                    "(python -c \"import os,base64;print('whsec_'+base64.b64encode(os.urandom(32)).decode())\")"
                )
        if self.webhook_url and not self.webhook_secrets:
            raise ConfigurationInvalid("WEBHOOK_URL needs WEBHOOK_SECRETS to sign its webhooks")
        if self.page_token_key == DEFAULT_PAGE_TOKEN_KEY and not self.emulator_host and not is_local(
            self.handler_base_url
        ):
            # A public constant would let anyone mint page tokens; only a local run (the
            # emulator, or a handler URL on this machine) may keep it.
            raise ConfigurationInvalid(
                "PAGE_TOKEN_KEY is the built-in default: set it to a random secret (openssl rand -hex 32), "
                "the same on every instance"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, over: Mapping[str, str] | None = None) -> Config:
        """Build the configuration from environment variables; `over` wins over them.

        `over` is what `cloudjobs dev` wrote in its state file: next to dev, a command uses
        dev's database, emulator and handler settings whatever the shell has.
        """
        e = {**(os.environ if env is None else env), **(over or {})}
        on_app_engine = e.get("GAE_ENV", "").startswith("standard")
        auth = e.get("HANDLER_AUTH") or ("appengine" if on_app_engine else None)
        if auth is not None and auth not in ("oidc", "hmac", "appengine", "none"):
            raise ConfigurationInvalid(f"HANDLER_AUTH={auth!r}: use oidc, hmac, appengine or none")
        api_auth = e.get("AUTH", "keys")
        if api_auth not in ("keys", "google", "none"):
            raise ConfigurationInvalid(f"AUTH={api_auth!r}: use keys, google or none")
        db_driver = e.get("DB_DRIVER") or "pg8000"
        if db_driver not in ("pg8000", "psycopg"):
            raise ConfigurationInvalid(f"DB_DRIVER={db_driver!r}: use pg8000 or psycopg")
        project = e.get("GOOGLE_CLOUD_PROJECT") or e.get("CLOUDJOBS_PROJECT") or "local-project"
        return cls(
            database_url=e.get("DATABASE_URL") or None,
            reporting_database_url=e.get("REPORTING_DATABASE_URL") or None,
            instance_connection_name=e.get("INSTANCE_CONNECTION_NAME") or None,
            db_user=e.get("DB_USER") or None,
            db_password=e.get("DB_PASS") or None,
            db_name=e.get("DB_NAME", "postgres"),
            db_iam_auth=_flag(e.get("DB_IAM_AUTH")),
            # One connection per gunicorn thread: fewer and threads queue for the pool's
            # overflow, whose connections are closed on return and made anew (issue #7).
            db_pool_size=int(e.get("DB_POOL_SIZE", e.get("GUNICORN_THREADS", "8"))),
            db_max_overflow=int(e.get("DB_MAX_OVERFLOW", "5")),
            db_prepared_statements=_flag(e.get("DB_PREPARED_STATEMENTS", "true")),
            db_driver=db_driver,  # type: ignore[arg-type]
            db_pgfast=_flag(e.get("DB_PGFAST", "true")),
            project=project,
            location=e.get("CLOUD_TASKS_LOCATION", "us-central1"),
            emulator_host=e.get("CLOUD_TASKS_EMULATOR_HOST") or None,
            handler_base_url=e.get("HANDLER_BASE_URL", "http://127.0.0.1:8080").rstrip("/"),
            tasks_service_account=e.get("TASKS_SERVICE_ACCOUNT") or None,
            oidc_audience=e.get("OIDC_AUDIENCE") or None,
            queues_file=Path(e.get("QUEUES_FILE", "queues.yaml")),
            schedules_file=Path(e.get("SCHEDULES_FILE", "schedules.yaml")),
            scheduler_location=e.get("CLOUD_SCHEDULER_LOCATION") or None,
            scheduler_emulator_host=e.get("CLOUD_SCHEDULER_EMULATOR_HOST") or None,
            scheduler_service_account=e.get("SCHEDULER_SERVICE_ACCOUNT") or None,
            pubsub_service_account=e.get("PUBSUB_SERVICE_ACCOUNT") or None,
            scheduler_job_prefix=e.get("SCHEDULER_JOB_PREFIX", "cloudjobs-schedule-"),
            handler_auth=auth,  # type: ignore[arg-type]
            oidc_certs_url=e.get("OIDC_CERTS_URL", GOOGLE_CERTS_URL),
            on_app_engine=on_app_engine,
            handler_hmac_secrets=_list(e.get("HANDLER_HMAC_SECRETS")),
            api_auth=api_auth,  # type: ignore[arg-type]
            api_audience=e.get("API_AUDIENCE") or None,
            api_service_accounts=_list(e.get("ALLOWED_SERVICE_ACCOUNTS")),
            admin_service_accounts=_list(e.get("ADMIN_SERVICE_ACCOUNTS")),
            max_payload_bytes=int(e.get("MAX_PAYLOAD_BYTES", str(256 * 1024))),
            lease_margin_s=int(e.get("LEASE_MARGIN_S", "30")),
            sweep_created_after_s=int(e.get("SWEEP_CREATED_AFTER_S", "60")),
            sweep_queued_after_s=int(e.get("SWEEP_QUEUED_AFTER_S", "60")),
            sweep_batch=int(e.get("SWEEP_BATCH", "500")),
            create_coalesce_ms=float(e.get("CREATE_COALESCE_MS", "2")),
            wait_fallback_s=float(e.get("WAIT_FALLBACK_S", "5")),
            # A waiting request holds a thread under gthread, only a greenlet under gevent.
            wait_max_per_process=int(e.get(
                "WAIT_MAX_PER_PROCESS", "1000" if e.get("GUNICORN_WORKER_CLASS") == "gevent" else "4"
            )),
            log_payloads=_flag(e.get("LOG_PAYLOADS")),
            run_concurrency=int(e.get("RUN_CONCURRENCY", max(1, int(e.get("GUNICORN_THREADS", "8")) // 2))),
            max_request_bytes=int(e.get("MAX_REQUEST_BYTES", str(1024 * 1024))),
            page_token_key=e.get("PAGE_TOKEN_KEY", DEFAULT_PAGE_TOKEN_KEY),
            job_modules=tuple(m for m in e.get("JOB_MODULES", "").split(",") if m.strip()),
            demo_job_types=_flag(e.get("DEMO_JOB_TYPES")),
            otel_enabled=_flag(e.get("OTEL_ENABLED")),
            webhook_secrets=_list(e.get("WEBHOOK_SECRETS")),
            webhook_url=e.get("WEBHOOK_URL") or None,
            webhook_allow_private=_flag(e.get("WEBHOOK_ALLOW_PRIVATE")),
            webhook_queue=e.get("WEBHOOK_QUEUE") or "webhooks",
            webhook_timeout_s=float(e.get("WEBHOOK_TIMEOUT_S", "10")),
            operations_queue=e.get("OPERATIONS_QUEUE") or "default",
            data_dir=Path(e.get("CLOUDJOBS_DATA_DIR") or ".cloudjobs"),
        )


def _list(value: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in (value or "").split(",") if v.strip())


def _whsec(secret: str) -> bool:
    """Whether a webhook secret is whsec_ and base64 of at least 24 bytes (Standard Webhooks)."""
    if not secret.startswith("whsec_"):
        return False
    try:
        return len(base64.b64decode(secret[6:], validate=True)) >= 24
    except (binascii.Error, ValueError):
        return False


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def is_local(url: str) -> bool:
    """Whether a URL points at this machine (development), as opposed to a deployment."""
    host = (urlsplit(url).hostname or "").lower()
    if host in LOCAL_HOSTS or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

"""`cloudjobs doctor`: check a deployment's configuration, database and queues.

Each check says what it found; a problem comes with its fix. The exit status is 0 when
nothing failed (warnings do not fail), 1 otherwise. It reads the same environment the app
does (through Config.from_env), so run it where the app runs: as a Cloud Run job with the
service's variables and service account (docs/deploy.md), or locally against `cloudjobs dev`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TextIO
from urllib.parse import urlsplit

from api.config import Config, ConfigurationInvalid, is_local

Status = Literal["ok", "warn", "fail", "skip"]

DEFAULT_PROJECT = "local-project"


@dataclass(frozen=True)
class Check:
    """One finding: what was checked, how it went, and (if it is a problem) how to fix it."""

    name: str
    status: Status
    detail: str
    fix: str | None = None

    @property
    def failed(self) -> bool:
        """Whether this finding fails the doctor."""
        return self.status == "fail"


def ok(name: str, detail: str) -> Check:
    """A check that passed."""
    return Check(name, "ok", detail)


def fail(name: str, detail: str, fix: str) -> Check:
    """A problem that must be fixed."""
    return Check(name, "fail", detail, fix)


def warn(name: str, detail: str, fix: str) -> Check:
    """Something to look at that does not stop the deployment working."""
    return Check(name, "warn", detail, fix)


def skip(name: str, detail: str, fix: str) -> Check:
    """A check that cannot run here (no Google credentials); it fails nothing."""
    return Check(name, "skip", detail, fix)


# ---------------------------------------------------------------- the command


def register(subparsers: Any) -> None:
    """Add `cloudjobs doctor` to the command's subparsers."""
    p = subparsers.add_parser(
        "doctor",
        help="check the deployment's configuration, database and queues; print each fix",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data-dir", help="cloudjobs dev's folder, to check it (default .cloudjobs, or CLOUDJOBS_DATA_DIR)")
    p.add_argument(
        "--config-only",
        action="store_true",
        help="check the variables only; connect to neither the database nor Cloud Tasks",
    )


def run(args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    """Run every check against the environment's configuration; 0 if none failed, else 1."""
    from api.cli.devstate import command_config

    out = out or sys.stdout
    try:
        # Next to `cloudjobs dev` (DATABASE_URL unset, its dev.json here): dev's settings.
        config = command_config(getattr(args, "data_dir", None), require_database=False)
    except (ConfigurationInvalid, ValueError) as e:
        report([fail("variables", f"the environment cannot be read: {e}", _FIX_ENV)], out)
        return 1
    # Alembic narrates every connection at INFO; the findings are this command's output.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    checks = diagnose(config, connect=not getattr(args, "config_only", False))
    return report(checks, out, config=config)


_FIX_ENV = "correct the variable named above (docs/configuration.md lists each one)"


def report(checks: list[Check], out: TextIO, *, config: Config | None = None) -> int:
    """Print the findings, problems with their fixes; the exit status."""
    if config is not None:
        print(
            f"cloudjobs doctor: project {config.project}, location {config.location}, "
            f"handler {config.handler_base_url}",
            file=out,
        )
    for c in checks:
        print(f"  {c.status.upper():<4}  {c.name}: {c.detail}", file=out)
        if c.fix and c.status != "ok":
            print(f"        fix: {c.fix}", file=out)
    failed = sum(c.failed for c in checks)
    warned = sum(c.status == "warn" for c in checks)
    skipped = sum(c.status == "skip" for c in checks)
    tail = f", {skipped} skipped" if skipped else ""
    if failed:
        print(f"{failed} problem(s), {warned} warning(s){tail}", file=out)
        return 1
    if warned or skipped:
        print(f"all checks passed ({warned} warning(s){tail})", file=out)
    else:
        print("all checks passed", file=out)
    return 0


def diagnose(
    config: Config, *, connect: bool = True, engine: Any = None, tasks_client: Any = None
) -> list[Check]:
    """Every check: the variables, then (if `connect`) the database and the queues.

    `engine` and `tasks_client` replace the ones built from the configuration.
    """
    checks = check_config(config)
    queues = _load_queues(config, checks)
    if queues is not None:
        checks += check_capacity(config, queues, os.environ)
        checks += check_schedules(config)
    if not connect:
        return checks
    if config.database_url or config.instance_connection_name:
        checks += check_database(config, engine=engine)
    if queues is not None:
        checks += check_queues(config, queues, client=tasks_client)
    return checks


def check_capacity(config: Config, queues: Any, env: Mapping[str, str]) -> list[Check]:
    """Whether the queues may dispatch more attempts at once than the service runs.

    One process runs RUN_CONCURRENCY attempts and refuses the rest with 429 (Cloud Tasks
    retries them after its backoff): a queue that dispatches far more at once than instances
    × workers × RUN_CONCURRENCY spends its retries on refusals. MAX_INSTANCES (Cloud Run's
    --max-instances; 1 when unset) and WEB_CONCURRENCY (gunicorn's workers) say how many
    processes there are.
    """
    try:
        instances = int(env.get("MAX_INSTANCES") or 1)
        workers = int(env.get("WEB_CONCURRENCY") or os.cpu_count() or 1)
    except ValueError:
        return [fail("capacity", "MAX_INSTANCES and WEB_CONCURRENCY must be whole numbers",
                     "set each to the number of instances and of gunicorn workers per instance")]
    capacity = instances * workers * config.run_concurrency
    total = sum(spec.max_concurrent_dispatches for spec in queues.specs.values())
    sizes = f"{instances} instance(s) × {workers} worker(s) × RUN_CONCURRENCY {config.run_concurrency}"
    if total <= capacity:
        return [ok("capacity", f"the queues dispatch at most {total} at once; {sizes} run {capacity}")]
    over = ", ".join(f"{spec.name} {spec.max_concurrent_dispatches}" for spec in queues.specs.values())
    return [
        warn(
            "capacity",
            f"the queues may dispatch {total} attempts at once ({over}) but {sizes} run at most "
            f"{capacity}: the rest are refused with 429 and retried after Cloud Tasks' backoff",
            f"lower max_concurrent_dispatches in the queues file to {capacity} in all, or set "
            "MAX_INSTANCES / raise RUN_CONCURRENCY on a service that serves only /handlers/* "
            "(docs/deploy.md, the split deployment)",
        )
    ]


# ---------------------------------------------------------------- variables


def check_config(config: Config) -> list[Check]:
    """The variables: set, consistent, and safe for where the handler URL points."""
    checks: list[Check] = []
    production = not is_local(config.handler_base_url)
    checks += _database_vars(config)
    checks += _handler_auth(config, production)
    checks += _handler_url(config, production)
    checks += _audience(config)
    checks += _production_vars(config, production)
    # Anything Config.validate() refuses that the checks above did not name.
    if not any(c.failed for c in checks):
        try:
            config.validate()
        except ConfigurationInvalid as e:
            checks.append(fail("configuration", str(e), "set the variables the message names"))
        else:
            checks.append(ok("configuration", "the app accepts it (Config.validate)"))
    return checks


def _database_vars(config: Config) -> list[Check]:
    name = "database variables"
    if not config.database_url and not config.instance_connection_name:
        return [
            fail(
                name,
                "no database: neither DATABASE_URL nor INSTANCE_CONNECTION_NAME is set",
                "set INSTANCE_CONNECTION_NAME=PROJECT:REGION:INSTANCE with DB_NAME, DB_USER and "
                "DB_IAM_AUTH=true (Cloud SQL), or DATABASE_URL=postgresql://USER@HOST/DB; or run "
                "`cloudjobs dev` in this folder and the doctor checks it",
            )
        ]
    if config.database_url:
        return [ok(name, "DATABASE_URL is set")]
    problems = []
    if len(config.instance_connection_name.split(":")) != 3:  # type: ignore[union-attr]
        problems.append(
            fail(
                name,
                f"INSTANCE_CONNECTION_NAME={config.instance_connection_name!r} is not "
                "PROJECT:REGION:INSTANCE",
                "copy it from `gcloud sql instances describe INSTANCE "
                "--format='value(connectionName)'`",
            )
        )
    if not config.db_user:
        problems.append(
            fail(
                name,
                "INSTANCE_CONNECTION_NAME is set but DB_USER is not",
                "set DB_USER: with DB_IAM_AUTH=true, the service account's email without "
                "'.gserviceaccount.com' (NAME@PROJECT.iam)",
            )
        )
    if config.db_iam_auth:
        if config.db_password:
            problems.append(
                fail(
                    name,
                    "DB_IAM_AUTH=true and DB_PASS are both set; IAM authentication has no password",
                    "unset DB_PASS",
                )
            )
        if config.db_user and config.db_user.endswith(".gserviceaccount.com"):
            problems.append(
                fail(
                    name,
                    f"DB_USER={config.db_user!r}: a PostgreSQL IAM user is the service account's "
                    "email without '.gserviceaccount.com'",
                    f"set DB_USER={config.db_user.removesuffix('.gserviceaccount.com')}",
                )
            )
    elif config.db_user and not config.db_password:
        problems.append(
            fail(
                name,
                "DB_USER is set without DB_PASS or DB_IAM_AUTH",
                "set DB_IAM_AUTH=true (recommended: the service account logs in, no password) "
                "or DB_PASS",
            )
        )
    return problems or [ok(name, "Cloud SQL through the connector, consistent")]


def _handler_auth(config: Config, production: bool) -> list[Check]:
    name = "handler authentication"
    if config.handler_auth is None:
        return [
            fail(
                name,
                "HANDLER_AUTH is not set: the app refuses to start",
                "set HANDLER_AUTH=oidc and TASKS_SERVICE_ACCOUNT to the service account Cloud "
                "Tasks and Cloud Scheduler sign their OIDC tokens as",
            )
        ]
    if config.handler_auth == "oidc" and not config.tasks_service_account:
        return [
            fail(
                name,
                "HANDLER_AUTH=oidc without TASKS_SERVICE_ACCOUNT",
                "set TASKS_SERVICE_ACCOUNT to the invoker service account's email",
            )
        ]
    if config.handler_auth == "appengine" and not config.on_app_engine:
        return [
            fail(
                name,
                "HANDLER_AUTH=appengine outside App Engine, where X-AppEngine-QueueName proves "
                "nothing",
                "set HANDLER_AUTH=oidc with TASKS_SERVICE_ACCOUNT",
            )
        ]
    if config.handler_auth == "none" and production:
        return [
            warn(
                name,
                "HANDLER_AUTH=none: /handlers/* trusts any caller that gets past the platform",
                "keep the service private (Cloud Run without --allow-unauthenticated), or set "
                "HANDLER_AUTH=oidc with TASKS_SERVICE_ACCOUNT",
            )
        ]
    if config.handler_auth == "oidc":
        sa = config.tasks_service_account or ""
        if production and not sa.endswith(".gserviceaccount.com"):
            return [
                fail(
                    name,
                    f"TASKS_SERVICE_ACCOUNT={sa!r} is not a service account email",
                    "set it to NAME@PROJECT.iam.gserviceaccount.com, the account tasks sign as",
                )
            ]
        return [ok(name, f"OIDC tokens signed as {sa}")]
    return [ok(name, f"HANDLER_AUTH={config.handler_auth}")]


def _handler_url(config: Config, production: bool) -> list[Check]:
    name = "handler URL"
    url = config.handler_base_url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return [
            fail(
                name,
                f"HANDLER_BASE_URL={url!r} is not an http(s) URL",
                "set it to the service's URL, e.g. https://SERVICE-PROJECT_NUMBER.REGION.run.app",
            )
        ]
    if parts.path.rstrip("/").endswith("/handlers/run") or parts.query:
        return [
            fail(
                name,
                f"HANDLER_BASE_URL={url!r} has a path or query; tasks add /handlers/run themselves",
                f"set HANDLER_BASE_URL={parts.scheme}://{parts.netloc}",
            )
        ]
    if production and parts.scheme != "https":
        return [
            fail(
                name,
                f"HANDLER_BASE_URL={url!r} is not https, for a deployment: the OIDC tokens "
                "Cloud Tasks sends with each task would travel in clear text",
                "set HANDLER_BASE_URL to the service's https URL (gcloud run services describe "
                "SERVICE --format='value(status.url)')",
            )
        ]
    where = "on this machine (development)" if not production else "a deployment"
    return [ok(name, f"{url}, {where}")]


def _audience(config: Config) -> list[Check]:
    name = "OIDC audience"
    if config.handler_auth != "oidc":
        return []
    if config.oidc_audience and config.oidc_audience.rstrip("/") != config.handler_base_url:
        return [
            fail(
                name,
                f"OIDC_AUDIENCE={config.oidc_audience!r} differs from HANDLER_BASE_URL="
                f"{config.handler_base_url!r}; Cloud Run checks the token's audience against "
                "the service URL and the handler against OIDC_AUDIENCE",
                "unset OIDC_AUDIENCE (it defaults to HANDLER_BASE_URL) or set both to the "
                "service URL",
            )
        ]
    return [ok(name, f"{config.audience} (the handler URL)")]


def _production_vars(config: Config, production: bool) -> list[Check]:
    if not production:
        return []
    checks = []
    if config.emulator_host:
        checks.append(
            fail(
                "Cloud Tasks endpoint",
                f"CLOUD_TASKS_EMULATOR_HOST={config.emulator_host} is set for a deployment: "
                "tasks would go to a local emulator",
                "unset CLOUD_TASKS_EMULATOR_HOST",
            )
        )
    if config.project == DEFAULT_PROJECT:
        checks.append(
            fail(
                "project",
                "GOOGLE_CLOUD_PROJECT is not set (Cloud Run does not set it): queues would be "
                f"looked up in {DEFAULT_PROJECT!r}",
                "set GOOGLE_CLOUD_PROJECT to the project's id",
            )
        )
    return checks


def _load_queues(config: Config, checks: list[Check]) -> Any:
    from api.cloud.queues import Queues, QueuesInvalid

    try:
        queues = Queues.load(config.queues_file)
    except QueuesInvalid as e:
        checks.append(fail("queues file", str(e), "fix queues.yaml (docs/queues.md)"))
        return None
    names = ", ".join(queues.specs)
    checks.append(ok("queues file", f"{config.queues_file}: {names}"))
    return queues


def schedule_problems(config: Config, schedules: Any) -> list[str]:
    """The schedules' and triggers' jobs checked as the app checks them at start: type,
    payload, queue, limits (one line each, naming the schedule and the field)."""
    from types import SimpleNamespace

    from api.cloud.queues import Queues
    from api.orchestration import triggers
    from api.web.app import job_types

    sys.path.insert(0, os.getcwd())  # JOB_MODULES import from here, as the app's do
    registry = job_types(config)
    if config.demo_job_types:
        from handlers.builtin import demo

        registry = registry.merged(demo)
    view = SimpleNamespace(config=config, registry=registry, queues=Queues.load(config.queues_file))
    return triggers.check(view, schedules)  # type: ignore[arg-type]


def check_schedules(config: Config) -> list[Check]:
    """schedules.yaml reads, and every schedule and trigger could create its job."""
    from api.cloud.schedules import Schedules, SchedulesInvalid

    if not config.schedules_file.exists():
        return [ok("schedules file", f"{config.schedules_file}: none (no schedules or triggers)")]
    try:
        schedules = Schedules.load(config.schedules_file)
        problems = schedule_problems(config, schedules)
    except (SchedulesInvalid, ModuleNotFoundError) as e:
        return [fail("schedules file", str(e), "fix schedules.yaml (docs/schedules.md)")]
    if problems:
        return [fail("schedules file", "; ".join(problems), "fix schedules.yaml (docs/schedules.md)")]
    names = ", ".join([*schedules.schedules, *schedules.triggers]) or "none"
    return [ok("schedules file", f"{config.schedules_file}: {names}")]


# ---------------------------------------------------------------- database


def check_database(config: Config, *, engine: Any = None) -> list[Check]:
    """The database answers, and its schema is at the migrations' head."""
    import sqlalchemy as sa

    from api.store import migrate
    from api.store.engine import create_engine

    own = engine is None
    if own:
        engine = create_engine(config, pool_size=1)
    where = config.instance_connection_name or "DATABASE_URL"
    try:
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            current = migrate.current_revision(engine)
        except Exception as e:  # a diagnosis: whatever stops the connection is the finding
            return [
                fail(
                    "database",
                    f"cannot connect to {where}: {_describe(e)}",
                    "check the database variables; on Cloud SQL the service account needs "
                    "roles/cloudsql.client and roles/cloudsql.instanceUser, and must exist as "
                    "an IAM database user (docs/deploy.md)",
                )
            ]
    finally:
        if own:
            engine.dispose()
    head = migrate.head_revision()
    checks = [ok("database", f"{where} answers")]
    if current == head:
        checks.append(ok("schema", f"at head ({head})"))
    elif current is None:
        checks.append(
            fail(
                "schema",
                f"the database has no cloudjobs schema (head is {head})",
                "run `cloudjobs migrate` (on Cloud Run: gcloud run jobs execute cloudjobs-migrate "
                "--wait)",
            )
        )
    else:
        checks.append(
            fail(
                "schema",
                f"the database is at revision {current}, this code's head is {head}",
                "run `cloudjobs migrate`; if the database is newer than this code, deploy the "
                "code that migrated it",
            )
        )
    return checks


def _describe(e: BaseException) -> str:
    # The driver's own message says why (refused, no such database, bad password) without
    # the URL; one line of it is enough.
    inner = getattr(e, "orig", None) or e
    text = " ".join(str(inner).split())
    return f"{type(inner).__name__}: {text[:300]}"


# ---------------------------------------------------------------- queues

def check_queues(config: Config, queues: Any, *, client: Any = None) -> list[Check]:
    """Each queue of queues.yaml exists in Cloud Tasks, runs, and has the declared settings."""
    from google.api_core import exceptions as gexc
    from google.auth.exceptions import DefaultCredentialsError
    from google.cloud import tasks_v2

    from api.cloud.tasks import build_queue, make_client, queue_differences

    if client is None:
        try:
            client = make_client(config)
        except DefaultCredentialsError:
            return [
                skip(
                    "queues",
                    "not checked: no Google credentials here, and no emulator (CLOUD_TASKS_EMULATOR_HOST)",
                    "run `gcloud auth application-default login` to check the queues in Cloud "
                    "Tasks, or run the doctor next to `cloudjobs dev`",
                )
            ]
    sync = "run `cloudjobs queues sync` (it creates and updates the queues of queues.yaml)"
    checks = []
    for spec in queues.specs.values():
        name = f"queue {spec.name}"
        wanted = build_queue(config, spec)
        try:
            # No retries: an unreachable Cloud Tasks is a finding, not something to wait out.
            actual = client.get_queue(name=wanted.name, timeout=10, retry=None)
        except gexc.NotFound:
            checks.append(fail(name, f"{wanted.name} does not exist", sync))
            continue
        except gexc.PermissionDenied:
            checks.append(
                fail(
                    name,
                    f"not allowed to read {wanted.name}",
                    "grant the service account roles/cloudtasks.viewer (the sweeper needs it too)",
                )
            )
            continue
        except (gexc.GoogleAPIError, gexc.RetryError) as e:
            where = config.emulator_host or "cloudtasks.googleapis.com"
            checks.append(
                fail(
                    "Cloud Tasks",
                    f"cannot reach Cloud Tasks at {where}: {type(e).__name__}",
                    "check CLOUD_TASKS_LOCATION and GOOGLE_CLOUD_PROJECT, that the Cloud Tasks "
                    "API is enabled, and (locally) that the emulator runs",
                )
            )
            break  # every other queue would wait for the same timeout
        differences = queue_differences(actual, wanted)
        if differences:
            checks.append(fail(name, "; ".join(differences), sync))
        elif actual.state != tasks_v2.Queue.State.RUNNING:
            state = tasks_v2.Queue.State(actual.state).name
            checks.append(
                fail(
                    name,
                    f"is {state}: its tasks are not dispatched",
                    f"gcloud tasks queues resume {spec.name} --location={config.location}",
                )
            )
        else:
            checks.append(ok(name, "exists, running, settings as in queues.yaml"))
    return checks


def failed(checks: Iterable[Check]) -> list[Check]:
    """The checks that failed."""
    return [c for c in checks if c.failed]

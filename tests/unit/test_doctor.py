"""`cloudjobs doctor`'s checks of the variables, and how it compares queues (no network)."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest

from api.cli.doctor import Check, check_config, is_local, report
from api.cloud.queues import QueueSpec, RetryConfig
from api.cloud.tasks import build_queue, queue_differences
from api.config import Config

URL = "https://cloudjobs-123456789.europe-west1.run.app"
SA = "cloudjobs-tasks@proj-1.iam.gserviceaccount.com"

# What deploy/deploy.sh sets on Cloud Run.
DEPLOYED = Config(
    instance_connection_name="proj-1:europe-west1:cloudjobs",
    db_user="cloudjobs-runtime@proj-1.iam",
    db_name="cloudjobs",
    db_iam_auth=True,
    project="proj-1",
    location="europe-west1",
    handler_base_url=URL,
    handler_auth="oidc",
    tasks_service_account=SA,
    page_token_key="a-random-secret",
)


def problems(config: Config) -> dict[str, Check]:
    return {c.name: c for c in check_config(config) if c.status != "ok"}


def test_a_deployed_configuration_passes() -> None:
    assert problems(DEPLOYED) == {}
    assert problems(DEPLOYED.replace(oidc_audience=URL + "/")) == {}


def test_a_local_configuration_passes_over_http() -> None:
    local = Config(database_url="postgresql://u@127.0.0.1/db", handler_auth="none")
    assert problems(local) == {}


@pytest.mark.parametrize(
    ("changes", "name", "says"),
    [
        ({"handler_auth": None}, "handler authentication", "HANDLER_AUTH is not set"),
        (
            {"tasks_service_account": None},
            "handler authentication",
            "without TASKS_SERVICE_ACCOUNT",
        ),
        (
            {"tasks_service_account": "me@example.com"},
            "handler authentication",
            "not a service account",
        ),
        ({"handler_auth": "appengine"}, "handler authentication", "outside App Engine"),
        ({"handler_base_url": "http://jobs.example.com"}, "handler URL", "is not https"),
        ({"handler_base_url": URL + "/handlers/run"}, "handler URL", "tasks add /handlers/run"),
        ({"handler_base_url": "jobs.example.com"}, "handler URL", "not an http(s) URL"),
        (
            {"oidc_audience": "https://elsewhere.example.com"},
            "OIDC audience",
            "differs from HANDLER_BASE_URL",
        ),
        ({"emulator_host": "127.0.0.1:8123"}, "Cloud Tasks endpoint", "local emulator"),
        ({"project": "local-project"}, "project", "GOOGLE_CLOUD_PROJECT is not set"),
        ({"instance_connection_name": None}, "database variables", "no database"),
        (
            {"instance_connection_name": "cloudjobs"},
            "database variables",
            "PROJECT:REGION:INSTANCE",
        ),
        ({"db_user": None}, "database variables", "DB_USER is not"),
        ({"db_password": "pw"}, "database variables", "no password"),
        ({"db_user": SA}, "database variables", "without '.gserviceaccount.com'"),
        ({"db_iam_auth": False}, "database variables", "without DB_PASS"),
        ({"page_token_key": "cloudjobs-page-token"}, "configuration", "PAGE_TOKEN_KEY is the built-in default"),
    ],
)
def test_each_problem_is_named_with_a_fix(changes: dict[str, object], name: str, says: str) -> None:
    found = problems(DEPLOYED.replace(**changes))
    assert name in found, found
    assert found[name].status == "fail"
    assert says in found[name].detail
    assert found[name].fix


def test_warnings_do_not_fail() -> None:
    found = problems(DEPLOYED.replace(handler_auth="none"))
    assert {n: c.status for n, c in found.items()} == {"handler authentication": "warn"}
    out = io.StringIO()
    assert report(check_config(DEPLOYED.replace(handler_auth="none")), out) == 0
    assert "WARN" in out.getvalue() and "fix:" in out.getvalue()


def test_the_report_prints_each_problem_with_its_fix_and_fails() -> None:
    out = io.StringIO()
    status = report(check_config(DEPLOYED.replace(handler_base_url="http://jobs.example.com")), out)
    assert status == 1
    text = out.getvalue()
    assert "FAIL  handler URL: HANDLER_BASE_URL='http://jobs.example.com' is not https" in text
    assert "fix: set HANDLER_BASE_URL to the service's https URL" in text
    assert text.rstrip().endswith("1 problem(s), 0 warning(s)")


@pytest.mark.parametrize(
    ("url", "local"),
    [
        ("http://127.0.0.1:8080", True),
        ("http://localhost:8080", True),
        ("http://[::1]:8080", True),
        ("http://127.0.0.2", True),
        ("http://api.localhost", True),
        ("https://svc.run.app", False),
        ("http://10.0.0.5", False),
    ],
)
def test_production_is_a_handler_url_off_this_machine(url: str, local: bool) -> None:
    assert is_local(url) is local


def test_queue_differences_name_each_setting() -> None:
    config = Config(project="p", location="l")
    spec = QueueSpec(
        "q", retry=RetryConfig(max_attempts=5, min_backoff=1, max_backoff=60, max_doublings=4)
    )
    wanted = build_queue(config, spec)
    assert queue_differences(build_queue(config, spec), wanted) == []
    actual = build_queue(config, spec)
    actual.retry_config.max_attempts = 3
    actual.retry_config.min_backoff = timedelta(milliseconds=100)
    actual.rate_limits.max_concurrent_dispatches = 10
    assert queue_differences(actual, wanted) == [
        "rate_limits.max_concurrent_dispatches is 10 in Cloud Tasks, 1000 in queues.yaml",
        "retry_config.max_attempts is 3 in Cloud Tasks, 5 in queues.yaml",
        "retry_config.min_backoff is 0.1 in Cloud Tasks, 1 in queues.yaml",
    ]


def test_capacity_warns_when_the_queues_dispatch_more_than_the_service_runs() -> None:
    from api.cli.doctor import check_capacity
    from api.cloud.queues import Queues

    queues = Queues({"default": QueueSpec("default", max_concurrent_dispatches=1000),
                     "bulk": QueueSpec("bulk", max_concurrent_dispatches=20)})
    config = DEPLOYED.replace(run_concurrency=4)
    [check] = check_capacity(config, queues, {"MAX_INSTANCES": "10", "WEB_CONCURRENCY": "2"})
    assert check.status == "warn"
    assert "1020 attempts at once" in check.detail and "run at most 80" in check.detail
    assert "default 1000" in check.detail and "max_concurrent_dispatches" in (check.fix or "")

    [fits] = check_capacity(config, queues, {"MAX_INSTANCES": "200", "WEB_CONCURRENCY": "2"})
    assert fits.status == "ok" and "run 1600" in fits.detail

    [bad] = check_capacity(config, queues, {"MAX_INSTANCES": "many"})
    assert bad.status == "fail" and "MAX_INSTANCES" in bad.detail


def test_the_doctor_checks_schedules_as_the_app_does_at_start(tmp_path) -> None:
    from api.cli.doctor import check_schedules
    from tests.conftest import ROOT

    base = Config(queues_file=ROOT / "tests" / "queues.yaml", demo_job_types=True)
    [none] = check_schedules(base.replace(schedules_file=tmp_path / "absent.yaml"))
    assert none.status == "ok" and "none" in none.detail
    [good] = check_schedules(base.replace(schedules_file=ROOT / "tests" / "schedules.yaml"))
    assert good.status == "ok" and "nightly" in good.detail and "uploads" in good.detail
    bad = tmp_path / "schedules.yaml"
    bad.write_text("schedules:\n  s: {cron: '* * * * *', job: {type: echo, queue: nowhere}}\n")
    [found] = check_schedules(base.replace(schedules_file=bad))
    assert found.status == "fail" and "s.job.queue: unknown queue 'nowhere'" in found.detail
    bad.write_text("schedules:\n  s: {cron: '* * * * *', time_zone: Nowhere/City, job: {type: echo}}\n")
    [found] = check_schedules(base.replace(schedules_file=bad))
    assert found.status == "fail" and "s.time_zone" in found.detail and found.fix

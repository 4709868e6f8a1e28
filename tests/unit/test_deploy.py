"""Deployment files: entrypoints that import, a script that parses and asks for the right things,
and no variable the docs tell you to set that the app does not read.

gcloud and docker cannot run here; deploy/deploy.sh runs against a stand-in `gcloud` that
records its arguments and answers `describe` as an empty (or, the second time, a set-up)
project would.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from api.cli.doctor import check_config
from api.config import Config
from api.store import pgfast
from tests.conftest import ROOT

ENTRYPOINT = re.compile(r'gunicorn -c (\S+) "?([\w.]+):(\w+)\(\)"?')


def config_keys() -> set[str]:
    """The environment variables Config.from_env reads, from its source."""
    return set(re.findall(r'e\.get\(\s*"([A-Z][A-Z0-9_]*)"', inspect.getsource(Config.from_env)))


def assert_entrypoint(command: str) -> None:
    m = ENTRYPOINT.search(command)
    assert m, f"not a gunicorn entrypoint: {command!r}"
    conf, module, factory = m.groups()
    assert (ROOT / conf).is_file()
    assert callable(getattr(importlib.import_module(module), factory))


# ---------------------------------------------------------------- entrypoints


def test_config_keys_are_found() -> None:
    assert {"DATABASE_URL", "HANDLER_BASE_URL", "DB_IAM_AUTH", "OTEL_ENABLED"} <= config_keys()


def test_the_dockerfile_runs_gunicorn_on_the_app_factory_as_a_non_root_user() -> None:
    whole = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.12-slim AS base$", whole, re.M)
    # The app is the last stage (what `docker build .` makes), built on the base.
    text = whole[:whole.index("FROM base AS emulator")] + whole[whole.rindex("\nFROM "):]
    assert re.search(r"^FROM base AS app$", text, re.M)
    cmd = re.search(r"^CMD (\[.*\])$", text, re.M)
    assert cmd, "no exec-form CMD"
    assert_entrypoint(" ".join(f'"{a}"' if "(" in a else a for a in yaml.safe_load(cmd.group(1))))
    assert re.search(r"^COPY gunicorn\.conf\.py queues\.yaml schedules\.yaml \./$", text, re.M)
    user = re.findall(r"^USER (\S+)$", text, re.M)
    assert user and user[-1] not in ("root", "0")
    # the lock with its hashes, then the two local packages without dependencies of their own
    assert re.search(r"^COPY requirements\.txt /tmp/requirements\.txt$", text, re.M)
    assert re.search(r"^RUN pip install --require-hashes -r /tmp/requirements\.txt\b", text, re.M)
    assert re.search(r"^RUN pip install --no-deps /src/clients/python /src\b", text, re.M)
    assert text.index("--require-hashes") < text.index("--no-deps")


def test_the_dockerfile_has_an_emulator_target() -> None:
    """`docker build --target emulator`: the emulator alone, listening on every interface,
    its state in the non-root user's home."""
    text = (ROOT / "Dockerfile").read_text()
    stage = text[text.index("FROM base AS emulator"):text.index("FROM base AS app")]
    entry = re.search(r"^ENTRYPOINT (\[.*\])$", stage, re.M)
    assert entry and yaml.safe_load(entry.group(1)) == [
        "python", "-m", "emulator", "--host", "0.0.0.0", "--state-dir", "/home/cloudjobs/state"]
    assert re.search(r"^USER 10001$", stage, re.M) and re.search(r"^EXPOSE 8123 8124$", stage, re.M)
    from emulator.cli import parser

    args = parser().parse_args(yaml.safe_load(entry.group(1))[3:])
    assert args.host == "0.0.0.0" and args.state_dir == "/home/cloudjobs/state"
    # what the emulator imports beyond the app's is in the lock the base stage installs
    pinned = {line.split("==")[0] for line in (ROOT / "requirements.txt").read_text().splitlines() if "==" in line}
    assert {"aiohttp", "cryptography", "cronsim", "grpcio-status"} <= pinned


def test_the_build_context_keeps_what_the_image_needs() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    needed = {
        "pyproject.toml",
        "README.md",
        "api",
        "clients",
        "handlers",
        "migrations",
        "gunicorn.conf.py",
        "queues.yaml",
        "schedules.yaml",
    }
    assert not needed & ignored
    assert {".git", ".venv", "tests"} <= ignored


def test_app_yaml_is_app_engine_python312_with_the_same_entrypoint() -> None:
    app = yaml.safe_load((ROOT / "app.yaml").read_text())
    assert app["runtime"] == "python312"
    assert_entrypoint(app["entrypoint"])
    # App Engine installs requirements.txt: the lock (test_the_lock_pins_every_runtime_dependency…)


def test_the_procfile_serves_the_same_app() -> None:
    [line] = (ROOT / "Procfile").read_text().splitlines()
    assert line.startswith("web: ")
    assert_entrypoint(line)


def test_gunicorn_binds_to_port() -> None:
    source = (ROOT / "gunicorn.conf.py").read_text()
    for env, bind in (({"PORT": "9123"}, "0.0.0.0:9123"), ({}, "0.0.0.0:8080")):
        namespace: dict[str, object] = {}
        saved = os.environ.get("PORT")
        os.environ.pop("PORT", None)
        os.environ.update(env)
        try:
            exec(compile(source, "gunicorn.conf.py", "exec"), namespace)
        finally:
            os.environ.pop("PORT", None)
            if saved is not None:
                os.environ["PORT"] = saved
        assert namespace["bind"] == bind


# ---------------------------------------------------------------- variables


def test_app_yaml_sets_only_variables_the_app_reads_and_passes_the_doctor() -> None:
    env = yaml.safe_load((ROOT / "app.yaml").read_text())["env_variables"]
    assert set(env) <= config_keys(), set(env) - config_keys()
    # What App Engine adds itself, with the placeholders filled in.
    filled = {
        k: str(v).replace("PROJECT", "proj-1").replace("REGION_ID", "ew") for k, v in env.items()
    }
    config = Config.from_env(
        {**filled, "GAE_ENV": "standard", "GOOGLE_CLOUD_PROJECT": "proj-1", "PAGE_TOKEN_KEY": "k"}
    )
    assert [c for c in check_config(config) if c.status != "ok"] == []


def documented_variables() -> set[str]:
    """Every variable docs/deploy.md tells you to set: `NAME=…` in code, and the env table."""
    text = (ROOT / "docs" / "deploy.md").read_text()
    script = (ROOT / "deploy" / "deploy.sh").read_text()
    settings = set(re.findall(r'^([A-Z][A-Z0-9_]*)="\$\{\1', script, re.M))  # the script's own
    names = set(re.findall(r"`([A-Z][A-Z0-9_]*)=", text))
    section = text.split("## The service's environment", 1)[1].split("\n## ", 1)[0]
    names |= set(re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", section, re.M))
    assert len(names) > 8, "the environment table was not found"
    return names - settings


def test_every_variable_the_deploy_doc_sets_is_read_by_the_app() -> None:
    names = documented_variables()
    assert names - config_keys() == set()


# ---------------------------------------------------------------- deploy.sh


def test_deploy_sh_parses() -> None:
    bash = shutil.which("bash")
    assert bash
    subprocess.run([bash, "-n", str(ROOT / "deploy" / "deploy.sh")], check=True)


STUB = """#!/usr/bin/env bash
# Records each call, one argument per line, then a separator; answers like gcloud would.
{ for a in "$@"; do printf '%s\\n' "$a"; done; printf '\\x1e\\n'; } >> "$STUB_LOG"
case "$*" in
  "projects describe"*) echo 123456789012 ;;
  "auth print-identity-token"*) echo stub-token ;;
  *" describe "*|*" describe") [ "$STUB_EXISTS" = 1 ] || exit 1 ;;
esac
"""


def run_deploy(tmp_path: Path, *, exists: bool) -> list[list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in ("gcloud", "curl"):
        stub = bin_dir / tool
        stub.write_text(STUB)
        stub.chmod(0o755)
    log = tmp_path / f"calls-{exists}.log"
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "STUB_LOG": str(log),
        "STUB_EXISTS": "1" if exists else "0",
        "PROJECT_ID": "proj-1",
        "REGION": "europe-west1",
        "IMAGE_TAG": "t1",
    }
    done = subprocess.run(
        ["bash", str(ROOT / "deploy" / "deploy.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    calls = [c.strip("\n").split("\n") for c in log.read_text().split("\x1e\n") if c.strip()]
    return [[a for a in c if a != ""] for c in calls]


def flag(call: list[str], name: str) -> str | None:
    for arg in call:
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
    return None


def env_of(call: list[str]) -> dict[str, str]:
    raw = flag(call, "set-env-vars") or flag(call, "update-env-vars") or ""
    return dict(pair.split("=", 1) for pair in raw.split(","))


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> list[list[str]]:
    return run_deploy(tmp_path_factory.mktemp("deploy"), exists=False)


@pytest.fixture(scope="module")
def second_run(tmp_path_factory: pytest.TempPathFactory) -> list[list[str]]:
    return run_deploy(tmp_path_factory.mktemp("deploy"), exists=True)


RUNTIME = "serviceAccount:cloudjobs-runtime@proj-1.iam.gserviceaccount.com"
INVOKER = "cloudjobs-invoker@proj-1.iam.gserviceaccount.com"
QUEUES = "serviceAccount:cloudjobs-queues@proj-1.iam.gserviceaccount.com"
URL = "https://cloudjobs-123456789012.europe-west1.run.app"


def test_deploy_enables_the_apis(first_run: list[list[str]]) -> None:
    [enable] = [c for c in first_run if c[:2] == ["services", "enable"]]
    assert set(enable[2:]) == {
        f"{api}.googleapis.com"
        for api in (
            "run",
            "cloudtasks",
            "sqladmin",
            "cloudscheduler",
            "iam",
            "artifactregistry",
            "cloudbuild",
        )
    }


def test_deploy_grants_each_account_exactly_its_roles(first_run: list[list[str]]) -> None:
    project_roles: dict[str, set[str]] = {}
    for c in first_run:
        if c[:2] == ["projects", "add-iam-policy-binding"]:
            project_roles.setdefault(flag(c, "member") or "", set()).add(flag(c, "role") or "")
    assert project_roles[RUNTIME] == {
        "roles/cloudsql.client",
        "roles/cloudsql.instanceUser",
        "roles/cloudtasks.enqueuer",
        "roles/cloudtasks.viewer",
        "roles/cloudtasks.taskDeleter",
        "roles/cloudscheduler.viewer",  # GET /v1/schedules shows Cloud Scheduler's state
        "roles/cloudscheduler.jobRunner",  # :run
    }
    assert project_roles[QUEUES] == {"roles/cloudtasks.queueAdmin", "roles/cloudscheduler.admin"}
    assert f"serviceAccount:{INVOKER}" not in project_roles  # only run.invoker, on the service
    act_as = [c for c in first_run if c[:3] == ["iam", "service-accounts", "add-iam-policy-binding"]]
    # The runtime creates tasks, and the queues account Cloud Scheduler jobs, signed as the invoker.
    assert {(c[3], flag(c, "member"), flag(c, "role")) for c in act_as} == {
        (INVOKER, RUNTIME, "roles/iam.serviceAccountUser"),
        (INVOKER, QUEUES, "roles/iam.serviceAccountUser"),
    }
    [invoker] = [c for c in first_run if c[:3] == ["run", "services", "add-iam-policy-binding"]]
    assert (flag(invoker, "member"), flag(invoker, "role")) == (
        f"serviceAccount:{INVOKER}",
        "roles/run.invoker",
    )


def test_deploy_makes_the_runtime_account_an_iam_database_user(first_run: list[list[str]]) -> None:
    [instance] = [c for c in first_run if c[:3] == ["sql", "instances", "create"]]
    assert flag(instance, "database-flags") == "cloudsql.iam_authentication=on"
    assert flag(instance, "database-version") == "POSTGRES_15"
    [user] = [c for c in first_run if c[:3] == ["sql", "users", "create"]]
    assert user[3] == "cloudjobs-runtime@proj-1.iam"
    assert flag(user, "type") == "cloud_iam_service_account"


def test_deploy_migrates_syncs_queues_and_runs_the_doctor_as_jobs(
    first_run: list[list[str]],
) -> None:
    jobs = {c[3]: c for c in first_run if c[:3] == ["run", "jobs", "deploy"]}
    assert (
        flag(jobs["cloudjobs-migrate"], "args"),
        flag(jobs["cloudjobs-migrate"], "service-account"),
    ) == ("migrate", RUNTIME.split(":")[1])
    assert (
        flag(jobs["cloudjobs-queues-sync"], "args"),
        flag(jobs["cloudjobs-queues-sync"], "service-account"),
    ) == ("queues,sync", QUEUES.split(":")[1])
    assert (
        flag(jobs["cloudjobs-schedules-sync"], "args"),
        flag(jobs["cloudjobs-schedules-sync"], "service-account"),
    ) == ("schedules,sync", QUEUES.split(":")[1])
    sync_env = env_of(jobs["cloudjobs-schedules-sync"])
    assert (sync_env["HANDLER_BASE_URL"], sync_env["TASKS_SERVICE_ACCOUNT"]) == (URL, INVOKER)
    assert flag(jobs["cloudjobs-doctor"], "args") == "doctor"
    executed = [c[3] for c in first_run if c[:3] == ["run", "jobs", "execute"]]
    assert executed == ["cloudjobs-migrate", "cloudjobs-queues-sync", "cloudjobs-schedules-sync", "cloudjobs-doctor"]
    order = [
        c[3] if c[:2] == ["run", "jobs"] else c[1]
        for c in first_run
        if c[0] == "run" and c[1] in ("deploy", "jobs")
    ]
    assert order.index("cloudjobs-migrate") < order.index("deploy")  # schema first, then code


def test_the_service_is_private_and_configured_as_the_doctor_wants(
    first_run: list[list[str]],
) -> None:
    [deploy] = [c for c in first_run if c[:2] == ["run", "deploy"]]
    assert "--no-allow-unauthenticated" in deploy
    assert flag(deploy, "timeout") == "1800"
    env = env_of(deploy)
    assert set(env) <= config_keys(), set(env) - config_keys()
    assert env["HANDLER_BASE_URL"] == URL and env["HANDLER_AUTH"] == "oidc"
    assert env["TASKS_SERVICE_ACCOUNT"] == INVOKER and env["DB_IAM_AUTH"] == "true"
    assert len(env["PAGE_TOKEN_KEY"]) == 64
    problems = [c for c in check_config(Config.from_env(env)) if c.status != "ok"]
    assert problems == []
    for c in first_run:
        if c[:3] == ["run", "jobs", "deploy"]:
            assert set(env_of(c)) <= config_keys()


def test_scheduler_posts_to_the_sweeper_with_the_invokers_token(first_run: list[list[str]]) -> None:
    [job] = [c for c in first_run if c[:4] == ["scheduler", "jobs", "create", "http"]]
    assert flag(job, "uri") == f"{URL}/handlers/sweep"
    assert flag(job, "http-method") == "POST"
    assert flag(job, "schedule") == "* * * * *"
    assert flag(job, "oidc-service-account-email") == INVOKER
    assert flag(job, "oidc-token-audience") == URL


def test_a_second_run_updates_instead_of_creating(second_run: list[list[str]]) -> None:
    creates = [shlex.join(c) for c in second_run if "create" in c[:4]]
    assert creates == []
    assert any(c[:4] == ["scheduler", "jobs", "update", "http"] for c in second_run)
    [deploy] = [c for c in second_run if c[:2] == ["run", "deploy"]]
    assert "PAGE_TOKEN_KEY" not in env_of(deploy)  # the first deploy's key is kept


# ---------------------------------------------------------------- the lock


def locked() -> dict[str, tuple[str, list[str]]]:
    """requirements.txt as {name: (version, hashes)}; one pin per package, as uv writes them."""
    entries: dict[str, tuple[str, list[str]]] = {}
    text = (ROOT / "requirements.txt").read_text().replace("\\\n", " ")
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = re.match(r"^([A-Za-z0-9._-]+)==(\S+)", line)
        assert m, f"not a pinned requirement: {line[:80]!r}"
        hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})", line)
        entries[canonicalize_name(m.group(1))] = (m.group(2), hashes)
    return entries


def test_the_lock_pins_every_runtime_dependency_within_its_range_with_hashes() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    runtime = [*project["dependencies"], *extras["otel"], *extras["psycopg"], *extras["pubsub"]]
    lock = locked()
    for raw in runtime:
        req = Requirement(raw)
        name = canonicalize_name(req.name)
        if name in ("cloudjobs", "cloudjobs-client"):  # the project's own: installed --no-deps
            continue
        assert name in lock, f"{name} is not in the lock"
        version, hashes = lock[name]
        assert req.specifier.contains(version, prereleases=True), f"{name}=={version} outside {req.specifier}"
        assert hashes, f"{name} has no hash"
    assert all(hashes for _, hashes in lock.values())
    assert lock["pg8000"][0] in pgfast.TESTED_VERSIONS  # what is deployed is patched
    # nothing local, which a hash-checked install would refuse
    assert "cloudjobs" not in lock and "cloudjobs-client" not in lock

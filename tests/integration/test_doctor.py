"""`cloudjobs doctor` on real PostgreSQL and the emulator: green when set up, each problem found."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from google.cloud import tasks_v2
from sqlalchemy.engine import make_url

from api.cli.doctor import Check, diagnose
from api.cloud.queues import Queues
from api.cloud.tasks import make_client, queue_path, sync_queues
from api.config import Config
from api.store import migrate
from api.store.engine import create_engine
from emulator import Emulator
from tests.conftest import ROOT


def write_queues(tmp_path: Path, *names: str) -> Path:
    body = "".join(
        f"  {n}:\n"
        "    rate_limits: {max_dispatches_per_second: 20, max_concurrent_dispatches: 5}\n"
        "    retry_config: {max_attempts: 4, min_backoff: 200ms, max_backoff: 2s,"
        " max_doublings: 2}\n"
        "    dispatch_deadline: 30s\n"
        for n in names
    )
    path = tmp_path / "queues.yaml"
    path.write_text("queues:\n" + body)
    return path


@pytest.fixture
def names() -> tuple[str, str]:
    """Queue names of this test alone: the emulator lives for the whole session."""
    tag = uuid.uuid4().hex[:8]
    return f"doctor-a-{tag}", f"doctor-b-{tag}"


@pytest.fixture
def good(config: Config, tmp_path: Path, names: tuple[str, str]) -> Config:
    """A working setup: the test database at head, the queues of its queues.yaml in the emulator."""
    cfg = config.replace(queues_file=write_queues(tmp_path, *names))
    sync_queues(make_client(cfg), cfg, list(Queues.load(cfg.queues_file).specs.values()))
    return cfg


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def failures(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks if c.failed}


def test_a_good_setup_is_all_green(good: Config, names: tuple[str, str]) -> None:
    checks = diagnose(good)
    assert failures(checks) == {}
    found = by_name(checks)
    assert found["database"].status == "ok"
    assert found["schema"].status == "ok"
    assert str(migrate.head_revision()) in found["schema"].detail
    assert found[f"queue {names[0]}"].status == "ok" and found[f"queue {names[1]}"].status == "ok"


def test_a_missing_queue_is_found(good: Config, tmp_path: Path, names: tuple[str, str]) -> None:
    more = good.replace(queues_file=write_queues(tmp_path, *names, "doctor-never-created"))
    found = failures(diagnose(more))
    assert list(found) == ["queue doctor-never-created"]
    assert "does not exist" in found["queue doctor-never-created"].detail
    assert "cloudjobs queues sync" in (found["queue doctor-never-created"].fix or "")


def test_a_differing_retry_config_and_rate_limit_are_found(
    good: Config, names: tuple[str, str]
) -> None:
    client = make_client(good)
    queue = tasks_v2.Queue(
        name=queue_path(good, names[1]),
        retry_config=tasks_v2.RetryConfig(max_attempts=9),
        rate_limits=tasks_v2.RateLimits(max_dispatches_per_second=3),
    )
    client.update_queue(
        queue=queue, update_mask={"paths": ["retry_config.max_attempts", "rate_limits"]}
    )
    found = failures(diagnose(good))
    assert list(found) == [f"queue {names[1]}"]
    detail = found[f"queue {names[1]}"].detail
    assert "retry_config.max_attempts is 9 in Cloud Tasks, 4 in queues.yaml" in detail
    assert "rate_limits.max_dispatches_per_second is 3 in Cloud Tasks, 20 in queues.yaml" in detail
    # and `cloudjobs queues sync`, the fix it names, puts it right
    sync_queues(client, good, list(Queues.load(good.queues_file).specs.values()))
    assert failures(diagnose(good)) == {}


def test_a_paused_queue_is_found(good: Config, names: tuple[str, str]) -> None:
    make_client(good).pause_queue(name=queue_path(good, names[0]))
    found = failures(diagnose(good))
    assert list(found) == [f"queue {names[0]}"]
    assert "PAUSED" in found[f"queue {names[0]}"].detail
    assert "gcloud tasks queues resume" in (found[f"queue {names[0]}"].fix or "")


def test_an_unreachable_cloud_tasks_is_one_finding(good: Config) -> None:
    found = failures(diagnose(good.replace(emulator_host="127.0.0.1:1")))
    assert list(found) == ["Cloud Tasks"]


@pytest.fixture
def empty_database(server_url: str) -> Iterator[str]:
    """A database nobody migrated."""
    name = f"cloudjobs_doctor_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


def test_an_unmigrated_database_is_found_and_migrate_fixes_it(
    good: Config, empty_database: str
) -> None:
    cfg = good.replace(database_url=empty_database)
    found = failures(diagnose(cfg))
    assert list(found) == ["schema"]
    assert "no cloudjobs schema" in found["schema"].detail
    assert "cloudjobs migrate" in (found["schema"].fix or "")

    engine = create_engine(cfg, pool_size=1)
    try:
        assert migrate.current_revision(engine) is None
        migrate.upgrade(engine)
        assert migrate.current_revision(engine) == migrate.head_revision()
        assert failures(diagnose(cfg, engine=engine)) == {}
        migrate.downgrade(engine)
        assert migrate.current_revision(engine) is None
    finally:
        engine.dispose()


def test_a_database_behind_head_is_found(good: Config, empty_database: str) -> None:
    cfg = good.replace(database_url=empty_database)
    engine = create_engine(cfg, pool_size=1)
    try:
        migrate.upgrade(engine)
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE alembic_version SET version_num = 'an-older-one'"))
        found = failures(diagnose(cfg, engine=engine))
    finally:
        engine.dispose()
    assert list(found) == ["schema"]
    assert "at revision an-older-one" in found["schema"].detail


def test_an_unreachable_database_is_found(good: Config) -> None:
    found = failures(diagnose(good.replace(database_url="postgresql://nobody@127.0.0.1:1/none")))
    assert list(found) == ["database"]
    assert "cannot connect" in found["database"].detail


def test_missing_handler_auth_is_found(good: Config) -> None:
    found = failures(diagnose(good.replace(handler_auth=None)))
    assert list(found) == ["handler authentication"]
    assert "HANDLER_AUTH" in found["handler authentication"].fix  # type: ignore[operator]


def test_an_http_handler_url_in_production_is_found(good: Config) -> None:
    found = failures(diagnose(good.replace(handler_base_url="http://jobs.example.com")))
    assert "handler URL" in found
    assert "is not https" in found["handler URL"].detail


def test_the_command_exits_0_when_all_pass_and_1_with_a_problem(
    good: Config, emulator: Emulator, names: tuple[str, str]
) -> None:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "DATABASE_URL": good.database_url or "",
        "CLOUD_TASKS_EMULATOR_HOST": emulator.address,
        "HANDLER_BASE_URL": good.handler_base_url,
        "HANDLER_AUTH": "oidc",
        "TASKS_SERVICE_ACCOUNT": good.tasks_service_account or "",
        "QUEUES_FILE": str(good.queues_file),
    }
    cmd = [sys.executable, "-m", "api.cli.main", "doctor"]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all checks passed" in done.stdout
    assert f"OK    queue {names[0]}" in done.stdout

    env["HANDLER_BASE_URL"] = "http://jobs.example.com"
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "FAIL  handler URL" in done.stdout and "fix: " in done.stdout

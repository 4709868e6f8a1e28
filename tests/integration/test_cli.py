"""`cloudjobs keys create|list|revoke` as a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from sqlalchemy.engine import Engine

from api.store import migrate
from tests.conftest import ROOT


def cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": database_url}
    return subprocess.run([sys.executable, "-m", "api.cli.main", "keys", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_keys_create_list_revoke(migrated_url: str, db: Engine) -> None:
    made = cli(migrated_url, "create", "billing", "--admin")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("cj_") and "not be shown again" in made.stderr
    key_id = key.split("_")[1]
    listed = cli(migrated_url, "list").stdout
    assert "billing" in listed and key_id in listed and "yes" in listed
    assert key.split("_", 2)[2] not in listed  # never the secret
    assert cli(migrated_url, "create", "billing").returncode == 1  # name taken while live
    assert cli(migrated_url, "revoke", key_id).returncode == 0
    assert cli(migrated_url, "revoke", key_id).returncode == 1
    assert cli(migrated_url, "create", "billing").returncode == 0  # a revoked name may be reused


def test_migrate_brings_an_empty_database_to_head(server_url: str) -> None:
    import uuid

    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    name = f"cloudjobs_cli_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    try:
        env = {**os.environ, "DATABASE_URL": url}
        proc = subprocess.run([sys.executable, "-m", "api.cli.main", "migrate"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar_one() == migrate.head_revision()
            assert conn.exec_driver_sql("SELECT count(*) FROM reporting.job_history").scalar_one() == 0
        engine.dispose()
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_queues_sync_creates_then_updates_the_queues(emulator: Any, tmp_path: Any) -> None:
    from api.cloud.tasks import make_client
    from api.config import Config

    queues = tmp_path / "queues.yaml"
    queues.write_text("queues:\n  alpha:\n    retry_config: {max_attempts: 4}\n  beta: {}\n")
    env = {**os.environ, "CLOUD_TASKS_EMULATOR_HOST": emulator.address, "GOOGLE_CLOUD_PROJECT": "sync-project",
           "QUEUES_FILE": str(queues)}
    run = [sys.executable, "-m", "api.cli.main", "queues", "sync"]
    first = subprocess.run(run, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert first.stdout.split("\n")[:2] == ["created alpha", "created beta"]
    queues.write_text("queues:\n  alpha:\n    retry_config: {max_attempts: 7}\n  beta: {}\n")
    second = subprocess.run(run, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert "updated alpha" in second.stdout
    client = make_client(Config(emulator_host=emulator.address))
    q = client.get_queue(name="projects/sync-project/locations/us-central1/queues/alpha")
    assert q.retry_config.max_attempts == 7

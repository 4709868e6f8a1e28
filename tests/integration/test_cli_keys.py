"""`cloudjobs keys create|list|revoke` as a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys

from sqlalchemy.engine import Engine

from tests.conftest import ROOT


def cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": database_url}
    return subprocess.run([sys.executable, "-m", "api.cli", "keys", *args], cwd=ROOT, env=env,
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

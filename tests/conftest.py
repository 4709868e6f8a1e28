"""Shared fixtures: a real PostgreSQL for the whole session, migrated to head."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from api.config import Config
from api.store import driver
from api.store.engine import create_engine, normalise_url

ROOT = Path(__file__).resolve().parent.parent
# The driver the suite runs on: pg8000 (patched by pgfast), or TEST_DRIVER=psycopg for a run on
# psycopg 3. Some tests run on a named driver whatever this says (tests/integration/test_drivers.py).
TEST_DRIVER = os.environ.get("TEST_DRIVER", "pg8000")


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL server: TEST_DATABASE_URL's, or an embedded one for this session."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        yield driver.with_driver(normalise_url(url), TEST_DRIVER)
        return
    from api.cli.devdb import start_embedded_postgres

    url, server = start_embedded_postgres(tmp_path_factory.mktemp("pg"))
    yield driver.with_driver(url, TEST_DRIVER)
    server.cleanup()


def _admin(url: str) -> Engine:
    return sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)


@contextmanager
def empty_database(server_url: str) -> Iterator[str]:
    """A new, empty database on that server (no schema), dropped afterwards."""
    name = f"cloudjobs_test_{uuid.uuid4().hex[:12]}"
    admin = _admin(server_url)
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def database_url(server_url: str) -> Iterator[str]:
    """A fresh database on that server, dropped at the end, so runs never share state."""
    with empty_database(server_url) as url:
        yield url


@pytest.fixture(scope="session")
def migrated_url(database_url: str) -> str:
    """The test database upgraded to head."""
    from api.store import migrate

    engine = create_engine(Config(), url=database_url, pool_size=1)
    migrate.upgrade(engine)
    engine.dispose()
    return database_url


@pytest.fixture(scope="session")
def engine(migrated_url: str) -> Iterator[Engine]:
    """An engine on the migrated test database."""
    eng = create_engine(Config(), url=migrated_url)
    yield eng
    eng.dispose()


@pytest.fixture
def db(engine: Engine) -> Iterator[Engine]:
    """The engine, with the job tables emptied after the test."""
    yield engine
    empty_job_tables(engine)


# jobs first: a server still finishing a test's jobs (the e2e stacks) writes jobs, then
# job_attempts, and taking the locks in the same order keeps the two from deadlocking.
_TRUNCATE = sa.text("TRUNCATE jobs, job_attempts, job_steps, job_dependencies, webhook_deliveries, webhook_events, key_throttles, operations, audit_log, workflows, job_rollup_dirty, job_waiters, job_rollups, api_keys, "
                    "schedule_fires, trigger_rejections")


def empty_job_tables(engine: Engine, tries: int = 5) -> None:
    """Empty what the tests fill; a deadlock with a server still at work is tried again."""
    for attempt in range(1, tries + 1):
        try:
            with engine.begin() as conn:
                conn.execute(_TRUNCATE)
                conn.execute(sa.text("UPDATE job_rollup_state SET rolled_until = NULL, refreshed_time = NULL"))
            return
        except sa.exc.DBAPIError as e:
            if attempt == tries or driver.sqlstate(e) != "40P01":
                raise

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Engine, make_url

from api.config import Config
from api.store import migrate
from api.store.engine import create_engine
from api.store.tables import metadata


@pytest.fixture
def empty_engine(server_url: str) -> Iterator[Engine]:
    name = f"cloudjobs_migr_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    eng = create_engine(Config(), url=make_url(server_url).set(database=name).render_as_string(False), pool_size=1)
    yield eng
    eng.dispose()
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))


def _tables(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(sa.inspect(conn).get_table_names())


def test_upgrade_matches_the_models_and_downgrade_removes_everything(empty_engine: Engine) -> None:
    migrate.upgrade(empty_engine)
    assert {"jobs", "job_attempts", "alembic_version"} <= _tables(empty_engine)
    with empty_engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, metadata)
    assert diff == [], f"models and migrations differ: {diff}"

    migrate.downgrade(empty_engine)
    assert _tables(empty_engine) <= {"alembic_version"}
    migrate.upgrade(empty_engine)  # and back up again, cleanly
    assert {"jobs", "job_attempts"} <= _tables(empty_engine)

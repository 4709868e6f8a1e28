"""api/db.py against real PostgreSQL: the autocommit connection."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from api.config import Config
from api.store.engine import autocommit, create_engine


def test_autocommit_statements_commit_alone_and_the_pool_gets_a_transactional_connection(
    migrated_url: str,
) -> None:
    engine = create_engine(Config(), url=migrated_url, pool_size=1)  # one connection, reused
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("CREATE TEMP TABLE t (x int PRIMARY KEY)"))
            conn.commit()
        with autocommit(engine) as conn:
            conn.execute(sa.text("INSERT INTO t VALUES (1)"))
            assert conn.connection.dbapi_connection.autocommit is True  # type: ignore[union-attr]
            # no transaction is open on the server between statements
            status = conn.execute(sa.text("SELECT now() = statement_timestamp()")).scalar_one()
            assert status is True
        with engine.connect() as conn:  # the same pooled connection, transactional again
            assert conn.connection.dbapi_connection.autocommit is False  # type: ignore[union-attr]
            conn.execute(sa.text("INSERT INTO t VALUES (2)"))
            conn.rollback()
            assert conn.execute(sa.text("SELECT array_agg(x) FROM t")).scalar_one() == [1]
    finally:
        engine.dispose()


def test_an_error_on_an_autocommit_connection_leaves_earlier_statements_committed(db: Engine) -> None:
    with db.connect() as conn:
        conn.execute(sa.text("CREATE TABLE IF NOT EXISTS autocommit_probe (x int PRIMARY KEY)"))
        conn.execute(sa.text("TRUNCATE autocommit_probe"))
        conn.commit()
    try:
        try:
            with autocommit(db) as conn:
                conn.execute(sa.text("INSERT INTO autocommit_probe VALUES (1)"))
                conn.execute(sa.text("INSERT INTO autocommit_probe VALUES (1)"))
        except sa.exc.IntegrityError:
            pass
        with db.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM autocommit_probe")).scalar_one() == 1
    finally:
        with db.begin() as conn:
            conn.execute(sa.text("DROP TABLE autocommit_probe"))

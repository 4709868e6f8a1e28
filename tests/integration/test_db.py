"""api/db.py against real PostgreSQL: the autocommit connection."""

from __future__ import annotations

import pytest
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


# -- errors classified once (#21): what a database error means for the service


def test_a_read_only_session_is_a_503_outage_and_its_pool_is_replaced(migrated_url: str) -> None:
    """A pooled session turned read-only (a demoted primary) is not handed out again."""
    from api.store import driver
    from api.store.engine import is_outage

    engine = create_engine(Config(), url=migrated_url, pool_size=1)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SET SESSION default_transaction_read_only = on")
            conn.commit()
        with engine.connect() as conn:  # the same pooled session, still read-only
            try:
                conn.exec_driver_sql("CREATE TEMP TABLE t (x int)")
                raise AssertionError("a read-only session wrote")
            except sa.exc.DBAPIError as e:
                assert driver.classify(e) == "discard" and is_outage(e)
                assert e.connection_invalidated
        with engine.connect() as conn:  # a fresh session: writable again
            assert conn.exec_driver_sql("SHOW default_transaction_read_only").scalar() == "off"
    finally:
        engine.dispose()


def test_a_socket_error_while_connecting_is_an_outage_not_a_crash(migrated_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """pg8000 lets a broken pipe through unwrapped when the server goes down mid-handshake."""
    import pg8000

    from api.store.engine import is_outage

    def broken(*_a: object, **_k: object) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    engine = create_engine(Config(), url=migrated_url, pool_size=1)
    monkeypatch.setattr(pg8000, "connect", broken)
    try:
        try:
            engine.connect()
            raise AssertionError("connected through a broken pipe")
        except sa.exc.DBAPIError as e:
            assert isinstance(e, sa.exc.InterfaceError) and is_outage(e)
            assert "Broken pipe" in str(e)
    finally:
        engine.dispose()


def test_sqlstates_are_classified_once() -> None:
    from api.store import driver

    def of(code: str) -> str | None:
        return driver.classify(sa.exc.DBAPIError("x", None, _Orig(code)))

    assert [of(c) for c in ("57P01", "25006", "53300", "08006", "53100", "40001", "40P01", "23505", "22P02")] == [
        "discard", "discard", "discard", "discard", "unavailable", "race", "race", None, None]


class _Orig(Exception):
    """A driver error as pg8000 raises it: the server's fields in args[0]."""

    def __init__(self, code: str) -> None:
        super().__init__({"C": code, "M": "m"})


def test_closing_a_connection_whose_server_is_gone_logs_nothing_other_close_failures_do() -> None:
    import logging

    from api.store.engine import _DEAD_CLOSE

    def record(error: BaseException) -> logging.LogRecord:
        try:
            raise error
        except BaseException:
            import sys

            return logging.LogRecord("sqlalchemy.pool.impl.QueuePool", logging.ERROR, __file__, 1,
                                     "Exception terminating connection %r", ("c",), sys.exc_info())

    assert not _DEAD_CLOSE.filter(record(BrokenPipeError(32, "Broken pipe")))
    assert _DEAD_CLOSE.filter(record(RuntimeError("a bug while closing")))
    assert _DEAD_CLOSE.filter(logging.LogRecord("x", logging.ERROR, __file__, 1, "other", (), None))

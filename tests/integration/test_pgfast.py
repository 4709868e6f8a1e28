"""pg8000 with api/pgfast.py: one round trip per statement, same results, same errors."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from api.config import Config
from api.store import driver, pgfast
from api.store.engine import create_engine
from bench.pgwire import CountingProxy, counting


# pgfast patches pg8000: these tests run on pg8000 whatever driver the suite runs on
# (TEST_DRIVER=psycopg), against the same database.
@pytest.fixture(scope="module")
def migrated_url(migrated_url: str) -> str:
    return driver.with_driver(migrated_url, "pg8000")


@pytest.fixture(scope="module")
def engine(migrated_url: str) -> Iterator[Engine]:
    eng = create_engine(Config(), url=migrated_url)
    yield eng
    eng.dispose()


@pytest.fixture
def proxied(migrated_url: str) -> Iterator[tuple[Engine, CountingProxy]]:
    with CountingProxy.in_front_of(migrated_url) as proxy:
        engine = create_engine(Config(), url=proxy.url_through(migrated_url), pool_size=1)
        with engine.connect() as conn:  # connect outside the counted blocks
            conn.execute(sa.text("SELECT 1"))
        yield engine, proxy
        engine.dispose()


def test_a_statement_is_one_round_trip_and_so_is_commit(proxied: tuple[Engine, CountingProxy]) -> None:
    engine, proxy = proxied
    with counting(proxy) as c, engine.begin() as conn:
        value = conn.execute(sa.text("SELECT CAST(:x AS int) + 1"), {"x": 41}).scalar_one()
        conn.execute(sa.text("SELECT CAST(:x AS text)"), {"x": "two"})
    assert value == 42
    # two statements (pg8000's BEGIN sent in the same write as the first) and COMMIT; no
    # ping: the connection was back in the pool a moment ago
    assert c.trips == {"select": 2, "commit": 1}, c.trips
    assert c.kinds["begin"] == 1 and c.round_trips == 3


def test_an_idle_connection_is_pinged_and_a_dead_one_replaced(
    proxied: tuple[Engine, CountingProxy], monkeypatch: pytest.MonkeyPatch, db: Engine
) -> None:
    from api.store import engine as api_db

    engine, proxy = proxied
    with engine.connect() as conn:
        pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
    monkeypatch.setattr(api_db, "PING_AFTER_IDLE_S", 0.0)  # every connection counts as idle
    with counting(proxy) as c, engine.connect() as conn:
        conn.execute(sa.text("SELECT 1 + 1"))
    assert c.trips["ping"] == 1
    with db.connect() as other:  # the server drops the pooled connection (a failover, say)
        # with a timeout, it returns once the backend is gone, not when the signal is sent
        assert other.execute(sa.text("SELECT pg_terminate_backend(:p, 5000)"), {"p": pid}).scalar_one()
    with counting(proxy) as c, engine.connect() as conn:
        assert conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one() != pid
    assert c.connections == 1  # the ping failed, the pool connected anew


def test_a_connection_the_server_closed_is_replaced_without_a_ping(
    proxied: tuple[Engine, CountingProxy], db: Engine
) -> None:
    # Back in the pool a moment ago, so not pinged: what PostgreSQL sent when it ended the
    # connection (a restart, a failover) is seen on the socket, and the request gets a new one.
    engine, proxy = proxied
    with engine.connect() as conn:
        pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
    with db.connect() as other:
        assert other.execute(sa.text("SELECT pg_terminate_backend(:p, 5000)"), {"p": pid}).scalar_one()
    deadline = time.monotonic() + 5  # until the proxy has passed the end of the stream on
    while time.monotonic() < deadline and not proxy.server_closes:
        time.sleep(0.01)
    assert proxy.server_closes == 1
    with counting(proxy) as c, engine.connect() as conn:
        assert conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one() != pid
    assert c.connections == 1 and "ping" not in c.trips, c.trips


def test_a_failed_transaction_rolls_back_and_begins_anew(proxied: tuple[Engine, CountingProxy]) -> None:
    engine, _ = proxied
    with engine.connect() as conn:
        conn.execute(sa.text("CREATE TEMP TABLE t (x int PRIMARY KEY)"))
        conn.execute(sa.text("INSERT INTO t VALUES (1)"))
        conn.commit()
        with pytest.raises(sa.exc.IntegrityError):
            conn.execute(sa.text("INSERT INTO t VALUES (:x)"), {"x": 1})
        conn.rollback()
        conn.execute(sa.text("INSERT INTO t VALUES (:x)"), {"x": 2})
        conn.rollback()  # the held-back BEGIN really began a transaction: 2 is gone
        assert conn.execute(sa.text("SELECT array_agg(x ORDER BY x) FROM t")).scalar_one() == [1]
        conn.rollback()
        # autocommit: no BEGIN at all
        conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.execute(sa.text("INSERT INTO t VALUES (3)"))
        assert conn.execute(sa.text("SELECT count(*) FROM t")).scalar_one() == 2


def test_results_types_and_rowcounts_are_unchanged(db: Engine) -> None:
    jid, now = uuid.uuid4(), datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    with db.begin() as conn:
        conn.execute(sa.text("""
            INSERT INTO jobs (id, type, queue, state, payload, max_attempts, timeout_s, task_name, created_time,
                              scheduled_time, updated_time, labels)
            VALUES (:id, 'echo', 'default', 'QUEUED', CAST(:p AS jsonb), 3, 60, 't', :t, :t, :t, '{}')"""),
            {"id": jid, "p": '{"a": [1, "x", null]}', "t": now})
        row = conn.execute(sa.text("SELECT id, payload, created_time, result, '100%' AS pct FROM jobs WHERE id = :id"),
                           {"id": jid}).one()
        updated = conn.execute(sa.text("UPDATE jobs SET state = 'RUNNING' WHERE id = :id"), {"id": jid}).rowcount
        none = conn.execute(sa.text("UPDATE jobs SET state = 'RUNNING' WHERE id = :id"), {"id": uuid.uuid4()}).rowcount
    assert row.id == jid and row.payload == {"a": [1, "x", None]} and row.created_time == now
    assert row.result is None and row.pct == "100%"
    assert (updated, none) == (1, 0)


def test_an_error_raises_and_the_connection_goes_on(db: Engine) -> None:
    with db.connect() as conn:
        with pytest.raises(sa.exc.ProgrammingError, match="no_such_table"):
            conn.execute(sa.text("SELECT * FROM no_such_table WHERE x = :x"), {"x": 1})
        conn.rollback()
        with pytest.raises(sa.exc.DBAPIError, match="invalid input syntax"):
            conn.execute(sa.text("SELECT CAST(:x AS int)"), {"x": "not a number"})
        conn.rollback()
        assert conn.execute(sa.text("SELECT CAST(:x AS int) * 2"), {"x": 21}).scalar_one() == 42


def test_placeholders_are_converted_once_per_text() -> None:
    pgfast._converted.cache_clear()
    sql = "SELECT %s, '%%s', $1 -- %s\n, %s"
    first = pgfast.convert_paramstyle("format", sql, (1, 2))
    again = pgfast.convert_paramstyle("format", sql, (3, 4))
    assert first == (pgfast._original_convert("format", sql, (1, 2))[0], (1, 2))
    assert again[1] == (3, 4) and pgfast._converted.cache_info().hits == 1
    # named styles keep pg8000's own conversion
    assert pgfast.convert_paramstyle("named", "SELECT :a, :b, :a", {"a": 1, "b": 2}) == ("SELECT $1, $2, $1", (1, 2))


def test_timestamps_read_as_before(db: Engine) -> None:
    with db.connect() as conn:
        row = conn.execute(sa.text("""
            SELECT timestamptz '2026-01-02 03:04:05.678+00' AS a, timestamptz '2026-01-02 03:04:05+00' AS b,
                   timestamptz 'infinity' AS inf, timestamp '2026-01-02 03:04:05.5' AS naive,
                   CAST(NULL AS timestamptz) AS nothing""")).one()
    assert row.a == datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    assert row.b == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC) and row.b.utcoffset() is not None
    assert row.inf == "infinity"  # what pg8000 itself returns
    assert row.naive == datetime(2026, 1, 2, 3, 4, 5, 500000) and row.nothing is None


def test_an_autocommit_statement_after_an_idle_ping_stays_committed(
    proxied: tuple[Engine, CountingProxy], monkeypatch: pytest.MonkeyPatch, db: Engine
) -> None:
    from api.store import engine as api_db

    engine, _ = proxied
    monkeypatch.setattr(api_db, "PING_AFTER_IDLE_S", 0.0)  # the checkout pings
    with api_db.autocommit(engine) as conn:
        conn.execute(sa.text("CREATE TABLE IF NOT EXISTS pinged (x int)"))
        conn.execute(sa.text("INSERT INTO pinged VALUES (1)"))
    with db.connect() as other:  # another connection sees both: nothing was rolled back
        assert other.execute(sa.text("SELECT count(*) FROM pinged")).scalar_one() == 1
        other.execute(sa.text("DROP TABLE pinged"))
        other.commit()


def test_strings_in_arrays_reach_postgresql_as_they_were(db: Engine) -> None:
    values = ["", "NULL", "a b", "{x}", "a,b", "back\\slash", 'quo"te', "\u00a0", "é", "plain", None]
    with db.connect() as conn:
        back = conn.execute(sa.text("SELECT CAST(:v AS text[])"), {"v": values}).scalar_one()
    assert back == values


@pytest.fixture
def one_connection(migrated_url: str) -> Iterator[Engine]:
    """An engine of one pooled connection, so every statement runs on the same session."""
    engine = create_engine(Config(), url=migrated_url, pool_size=1)
    yield engine
    engine.dispose()


def _prepared(conn: sa.Connection) -> list[str]:
    return conn.execute(sa.text("SELECT statement FROM pg_prepared_statements WHERE name LIKE 'cj_%'")).scalars().all()


def test_a_statement_run_again_is_prepared_once_and_reads_the_same(
    one_connection: Engine, proxied: tuple[Engine, CountingProxy]
) -> None:
    sql = sa.text("SELECT CAST(:x AS int) + 1 AS y, CAST(:t AS timestamptz) AS at")
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    with one_connection.connect() as conn:
        rows = [conn.execute(sql, {"x": x, "t": at}).one() for x in range(4)]
        prepared = [s for s in _prepared(conn) if "+ 1 AS y" in s]
    assert [(r.y, r.at) for r in rows] == [(x + 1, at) for x in range(4)]
    assert len(prepared) == 1  # prepared on its second run, reused after
    engine, proxy = proxied
    with engine.connect() as conn:
        conn.execute(sql, {"x": 0, "t": at})
        conn.execute(sql, {"x": 0, "t": at})
        with counting(proxy) as c:
            assert conn.execute(sql, {"x": 41, "t": at}).one().y == 42
    assert c.round_trips == 1 and c.statements == 1 and c.kinds["select"] == 1


def test_a_prepared_statement_whose_columns_changed_fails_once_then_is_prepared_anew(one_connection: Engine) -> None:
    with one_connection.connect() as conn:
        conn.execute(sa.text("CREATE TEMP TABLE shape (x int)"))
        conn.execute(sa.text("INSERT INTO shape VALUES (1)"))
        sql = sa.text("SELECT * FROM shape WHERE x = :x")
        assert conn.execute(sql, {"x": 1}).all() == conn.execute(sql, {"x": 1}).all() == [(1,)]
        conn.execute(sa.text("ALTER TABLE shape ADD COLUMN y int DEFAULT 7"))
        conn.commit()
        # PostgreSQL refuses a prepared statement whose result changed shape: once.
        with pytest.raises(sa.exc.DBAPIError, match="cached plan must not change result type"):
            conn.execute(sql, {"x": 1})
        conn.rollback()
        assert conn.execute(sql, {"x": 1}).all() == [(1, 7)]
        assert conn.execute(sql, {"x": 1}).all() == [(1, 7)]


def test_an_error_while_preparing_leaves_nothing_behind(one_connection: Engine) -> None:
    sql = sa.text("SELECT 10 / CAST(:x AS int) AS q")
    with one_connection.connect() as conn:
        assert conn.execute(sql, {"x": 5}).scalar_one() == 2
        with pytest.raises(sa.exc.DBAPIError, match="division by zero"):
            conn.execute(sql, {"x": 0})  # its second run: prepared, then the execution fails
        conn.rollback()
        assert conn.execute(sql, {"x": 2}).scalar_one() == 5
        assert conn.execute(sql, {"x": 1}).scalar_one() == 10
        assert len([s for s in _prepared(conn) if "10 /" in s]) == 1


def test_prepared_statements_are_bounded_and_the_evicted_closed(migrated_url: str) -> None:
    engine = create_engine(Config(), url=migrated_url, pool_size=1)
    sa.event.listen(engine, "connect", lambda c, _r: pgfast.enable_prepared_statements(c, limit=3))
    try:
        with engine.connect() as conn:
            for n in range(8):
                for _ in range(2):
                    assert conn.execute(sa.text(f"SELECT CAST(:x AS int) + {n}"), {"x": 1}).scalar_one() == 1 + n
            conn.execute(sa.text("SELECT CAST(:x AS int)"), {"x": 1})  # sends the last Close
            names = _prepared(conn)
        assert len(names) == 3 and all(any(f"+ {n}" in s for s in names) for n in (5, 6, 7)), names
    finally:
        engine.dispose()


def test_without_prepared_statements_nothing_is_prepared(migrated_url: str) -> None:
    engine = create_engine(Config(db_prepared_statements=False), url=migrated_url, pool_size=1)
    try:
        with engine.connect() as conn:
            for _ in range(3):
                conn.execute(sa.text("SELECT CAST(:x AS int)"), {"x": 1})
            assert _prepared(conn) == []
    finally:
        engine.dispose()


def test_statements_planned_each_time_are_not_prepared(one_connection: Engine) -> None:
    sql = sa.text("SELECT CAST(:x AS int) * 3")
    with one_connection.connect() as conn:
        with pgfast.planned_each_time(conn.connection.dbapi_connection):
            assert [conn.execute(sql, {"x": x}).scalar_one() for x in range(3)] == [0, 3, 6]
        assert not [s for s in _prepared(conn) if "* 3" in s]
        conn.execute(sql, {"x": 1})
        conn.execute(sql, {"x": 1})  # outside: prepared on its second run as before
        assert len([s for s in _prepared(conn) if "* 3" in s]) == 1


def test_reports_are_planned_with_their_window_each_time(one_connection: Engine) -> None:
    from api.reporting.reports import ReportQuery, run_report

    end = datetime.now(UTC)
    with one_connection.connect() as conn:
        before = set(_prepared(conn))
    for _ in range(3):
        run_report(one_connection, "summary", ReportQuery(start=end - timedelta(hours=1), end=end))
        run_report(one_connection, "failures", ReportQuery(start=end - timedelta(days=30), end=end))
    with one_connection.connect() as conn:
        # (COMMIT and ROLLBACK, which pg8000 also sends as statements, are prepared as usual)
        assert {s for s in set(_prepared(conn)) - before if s.lower() not in ("commit", "rollback")} == set()


def test_prepared_statements_are_still_planned_for_their_values(one_connection: Engine, migrated_url: str) -> None:
    # Generic plans, chosen from statistics that saw no RUNNING jobs, walked an index of
    # states through dead entries: with prepared statements every run gets a custom plan.
    with one_connection.connect() as conn:
        assert conn.execute(sa.text("SHOW plan_cache_mode")).scalar_one() == "force_custom_plan"
    plain = create_engine(Config(db_prepared_statements=False), url=migrated_url, pool_size=1)
    try:
        with plain.connect() as conn:
            assert conn.execute(sa.text("SHOW plan_cache_mode")).scalar_one() == "auto"
    finally:
        plain.dispose()


def _mode(conn: sa.Connection, marked: bool, x: int = 1) -> str:
    """The plan_cache_mode a statement with a parameter runs under (marked: PLANNED_ONCE)."""
    text = "SELECT current_setting('plan_cache_mode') WHERE CAST(:x AS int) > 0"
    return conn.execute(sa.text((pgfast.PLANNED_ONCE if marked else "") + text), {"x": x}).scalar_one()


def test_statements_planned_once_run_with_a_generic_plan_and_the_rest_as_before(
    one_connection: Engine, proxied: tuple[Engine, CountingProxy]
) -> None:
    with one_connection.connect() as conn:
        # generic from the first run (unnamed, then prepared); the statements not marked are
        # back to custom plans
        assert [_mode(conn, True) for _ in range(3)] == ["force_generic_plan"] * 3
        assert [_mode(conn, False) for _ in range(3)] == ["force_custom_plan"] * 3
        assert _mode(conn, True) == "force_generic_plan"
        with pgfast.planned_each_time(conn.connection.dbapi_connection):
            assert _mode(conn, True) == "force_custom_plan"  # not prepared: planned each time
        conn.commit()
    engine, proxy = proxied
    with engine.connect() as conn:
        _mode(conn, True)
        _mode(conn, True)
        with counting(proxy) as c:
            assert _mode(conn, False) == "force_custom_plan"
            assert _mode(conn, True) == "force_generic_plan"
    # the SET rides in the statement's own write: still one round trip each
    assert c.round_trips == 2 and c.kinds == {"set": 4, "select": 2}, (c.round_trips, c.kinds)
    assert c.trips == {"select": 2} and c.statements == 2


def test_a_rollback_or_an_error_leaves_the_plan_mode_known_again(one_connection: Engine) -> None:
    # A SET inside a transaction that rolls back is undone: the mode must be set again, or a
    # statement would run under the other one.
    with one_connection.connect() as conn:
        assert _mode(conn, False) == "force_custom_plan"
        conn.commit()
        assert _mode(conn, True) == "force_generic_plan"
        conn.rollback()  # the session is back to custom plans
        assert _mode(conn, True) == "force_generic_plan"
        conn.commit()  # now generic
        with pytest.raises(sa.exc.DBAPIError, match="division by zero"):
            conn.execute(sa.text("SELECT 1 / CAST(:x AS int)"), {"x": 0})  # SET custom, then failed
        conn.rollback()  # generic again
        assert conn.execute(sa.text("SHOW plan_cache_mode")).scalar_one() == "force_generic_plan"
        assert _mode(conn, False) == "force_custom_plan"
        with conn.begin_nested():
            assert _mode(conn, True) == "force_generic_plan"
            conn.rollback()  # to the savepoint: custom again
        assert _mode(conn, True) == "force_generic_plan"


def _plan_indexes(conn: sa.Connection, stmt: Any, dialect: Any) -> tuple[set[str], str]:
    parts = str(stmt.compile(dialect=dialect)).split("%s")
    text = parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], 1))
    conn.exec_driver_sql(f"PREPARE cj_test_plan AS {text}".replace("%%", "%"))
    nulls = ", ".join("NULL" for _ in parts[1:])
    plan = "\n".join(r[0] for r in conn.exec_driver_sql(f"EXPLAIN EXECUTE cj_test_plan({nulls})"))
    conn.exec_driver_sql("DEALLOCATE cj_test_plan")
    return set(re.findall(r"(?:using|Bitmap Index Scan on|Seq Scan on) (jobs\w*)", plan)), plan


def test_the_claim_and_the_finish_find_jobs_by_primary_key_in_their_generic_plans(db: Engine) -> None:
    # Made under pgfast's settings for them, their plans read jobs by primary key alone,
    # whatever the statistics say: on a small table (a new database; a server without
    # autovacuum never updates them), and after they saw thousands of finished jobs and none
    # RUNNING, from which a generic plan walked jobs_active_idx for RUNNING rows before the
    # conditions on state became filters.
    from api.store import jobs as store

    with db.connect() as conn:
        for setting in pgfast._SETTINGS[pgfast._GENERIC]:
            conn.execute(sa.text(f"SET LOCAL {setting}"))
        for stmt in (store._CLAIM, store._FINISH):
            indexes, plan = _plan_indexes(conn, stmt, db.dialect)
            assert indexes == {"jobs_pkey"}, plan
        conn.execute(sa.text(
            "INSERT INTO jobs (id, type, queue, state, payload, max_attempts, timeout_s, labels, task_name, scheduled_time) "
            "SELECT gen_random_uuid(), 'echo', 'default', CASE WHEN g % 10 = 0 THEN 'QUEUED' ELSE 'COMPLETED' END, "
            "'{}', 3, 60, '{}', 't' || g, now() FROM generate_series(1, 5000) g"))
        conn.execute(sa.text("ANALYZE jobs"))
        for stmt in (store._CLAIM, store._FINISH):
            indexes, plan = _plan_indexes(conn, stmt, db.dialect)
            assert indexes == {"jobs_pkey"}, plan
        conn.rollback()

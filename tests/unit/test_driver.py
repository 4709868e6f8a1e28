"""api/store/driver.py's pure parts: which driver a URL or a setting picks, and how it is spelt."""

from __future__ import annotations

import pytest

from api.config import Config, ConfigurationInvalid
from api.store import driver


@pytest.mark.parametrize(
    ("url", "default", "expected"),
    [
        ("postgresql://u:p@h:5/db", "pg8000", "postgresql+pg8000://u:p@h:5/db"),
        ("postgres://u@h/db", "psycopg", "postgresql+psycopg://u@h/db"),
        ("postgresql+psycopg2://u@h/db", "pg8000", "postgresql+pg8000://u@h/db"),
        # a driver written in the URL is kept, whatever the default
        ("postgresql+psycopg://u@h/db", "pg8000", "postgresql+psycopg://u@h/db"),
        ("postgresql+pg8000://u@h/db", "psycopg", "postgresql+pg8000://u@h/db"),
    ],
)
def test_a_url_keeps_its_driver_or_gets_the_default(url: str, default: str, expected: str) -> None:
    assert driver.url_for(url, default) == expected
    assert driver.name_of_url(expected) == expected.split("+")[1].split(":")[0]


def test_a_unix_socket_is_spelt_as_each_driver_spells_it() -> None:
    pg8000 = "postgresql+pg8000://postgres@/db?unix_sock=/run/pg/.s.PGSQL.5433"
    psycopg = driver.with_driver(pg8000, "psycopg")
    assert psycopg == "postgresql+psycopg://postgres@/db?host=%2Frun%2Fpg&port=5433"
    assert driver.with_driver(psycopg, "pg8000") == "postgresql+pg8000://postgres@/db?unix_sock=%2Frun%2Fpg%2F.s.PGSQL.5433"
    assert driver.with_driver("postgresql://u@h:5/db", "psycopg") == "postgresql+psycopg://u@h:5/db"


def test_an_unknown_driver_is_refused() -> None:
    with pytest.raises(ValueError, match="psycopg2"):
        driver.named("psycopg2")
    with pytest.raises(ValueError, match="asyncpg"):
        driver.url_for("postgresql://h/db", "asyncpg")


def test_each_driver_opens_sessions_with_custom_plans_and_its_own_preparing() -> None:
    assert driver.named("pg8000").connect_args(custom_plans=True, prepared=True) == {
        "startup_params": {"plan_cache_mode": "force_custom_plan"}
    }
    assert driver.named("psycopg").connect_args(custom_plans=True, prepared=True) == {
        "prepare_threshold": 1,  # prepared on its second run, as pgfast does
        "options": "-c plan_cache_mode=force_custom_plan",
    }
    assert driver.named("psycopg").connect_args(custom_plans=False, prepared=False) == {"prepare_threshold": None}


def test_sqlstate_reads_each_drivers_exception() -> None:
    import pg8000.exceptions
    import psycopg.errors

    assert driver.sqlstate(pg8000.exceptions.DatabaseError({"C": "40P01", "M": "deadlock"})) == "40P01"
    assert driver.sqlstate(psycopg.errors.DeadlockDetected("deadlock")) == "40P01"
    assert driver.sqlstate(pg8000.exceptions.InterfaceError("network error")) is None


@pytest.mark.parametrize(("value", "expected"), [(None, "pg8000"), ("pg8000", "pg8000"), ("psycopg", "psycopg")])
def test_db_driver_is_read_from_the_environment(value: str | None, expected: str) -> None:
    env = {"DB_DRIVER": value} if value else {}
    assert Config.from_env(env).db_driver == expected


def test_an_unknown_db_driver_is_refused() -> None:
    with pytest.raises(ConfigurationInvalid, match="DB_DRIVER='asyncpg'"):
        Config.from_env({"DB_DRIVER": "asyncpg"})

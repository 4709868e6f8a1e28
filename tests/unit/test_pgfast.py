"""api/pgfast.py's pure parts, against pg8000's own functions."""

from __future__ import annotations

import importlib.metadata
import logging
import random
import sys
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from api.store import pgfast
from tests.conftest import ROOT

ORIGINAL = pgfast._original_array_string_escape


@pytest.mark.parametrize(
    "value",
    ["", "NULL", "null", "NULL ", "plain", "a b", "a\tb", "{x}", "a,b", "back\\slash", 'quo"te',
     '\\"', "\u00a0", "\u3000", "\x1c", "\x85", "\u200b", "é", "6f1c2c7e-3b1a-4c8e-9a55-0d2f5b1e9c11"],
)
def test_array_strings_are_escaped_as_pg8000_does(value: str) -> None:
    assert pgfast.array_string_escape(value) == ORIGINAL(value)


def test_every_code_point_and_random_mixes_escape_as_pg8000_does() -> None:
    singles = [chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF]
    assert [pgfast.array_string_escape(c) for c in singles] == [ORIGINAL(c) for c in singles]
    rng = random.Random(7)
    alphabet = list('ab NUL{},\\"\t\n\u00a0\u2003\x1c\x85é')
    for _ in range(20_000):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))
        assert pgfast.array_string_escape(s) == ORIGINAL(s), repr(s)


class _ResetSocket:
    """A socket file whose peer has reset the connection."""

    def read(self, size: int) -> bytes:
        raise ConnectionResetError(104, "Connection reset by peer")


class _ChunkedSocket:
    """A socket file that hands out what it holds a few bytes at a time."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, size: int) -> bytes:
        chunk, self.data = self.data[: min(size, 3)], self.data[min(size, 3) :]
        return chunk


def test_a_reset_on_the_first_read_is_a_network_error_sqlalchemy_knows() -> None:
    import pg8000.exceptions
    from sqlalchemy.dialects.postgresql.pg8000 import PGDialect_pg8000

    pgfast.install()
    with pytest.raises(pg8000.exceptions.InterfaceError, match="network error") as raised:
        pg8000.core._read(_ResetSocket(), 5)
    dialect = PGDialect_pg8000()
    dialect.dbapi = pg8000.dbapi  # type: ignore[attr-defined]
    assert dialect.is_disconnect(raised.value, None, None)  # so the pool drops the connection
    assert pg8000.core._read(_ChunkedSocket(b"0123456789"), 8) == b"01234567"


@pytest.mark.parametrize(
    "values",
    [[], [None], ["a", None, "b c", "", "NULL", '"q"', "x\\y"], [1, -2, 0, None],
     ["6f1c2c7e-3b1a-4c8e-9a55-0d2f5b1e9c11"], [True, False], [1.5, None], [["a", "b"], ["c", None]], [{"k": "v"}], [b"\x00\x01"], ["a", 1, None]],
)
def test_arrays_are_written_as_pg8000_writes_them(values: list[object]) -> None:
    assert pgfast.array_out(values) == pgfast._original_array_out(values)


def test_random_arrays_of_strings_ints_and_nulls_are_written_as_pg8000_writes_them() -> None:
    rng = random.Random(11)
    pool: list[object] = [None, 0, 7, -3, 2**40, "", "NULL", "a b", "{x}", 'q"', "\\", "é", "\u00a0", "plain"]
    for _ in range(5_000):
        values = [rng.choice(pool) for _ in range(rng.randint(0, 6))]
        assert pgfast.array_out(values) == pgfast._original_array_out(values), values


def pinned(name: str) -> SpecifierSet:
    """The version specifier pyproject.toml gives a runtime dependency."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    [spec] = [Requirement(r).specifier for r in project["dependencies"] if Requirement(r).name == name]
    return spec


def test_pyproject_pins_pg8000_to_exactly_the_versions_pgfast_was_tested_on() -> None:
    candidates = [f"1.{minor}.{patch}" for minor in (30, 31, 32) for patch in range(10)] + ["2.0.0"]
    assert {v for v in candidates if Version(v) in pinned("pg8000")} == pgfast.TESTED_VERSIONS
    # and the environment the tests run in has one of them, so they test the patched path
    assert importlib.metadata.version("pg8000") in pgfast.TESTED_VERSIONS


def test_an_untested_pg8000_is_left_unpatched_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import pg8000.core

    monkeypatch.setattr(pgfast, "_installed", False)  # as in a process that has not patched yet
    monkeypatch.setattr(pgfast, "_refused", None)
    before = (pg8000.core.CoreConnection.execute_unnamed, pg8000.core._read, pg8000.dbapi.convert_paramstyle)
    with caplog.at_level(logging.WARNING, logger=pgfast.__name__):
        assert pgfast.install(version="1.32.0") is False
        assert pgfast.install(version="1.32.0") is False  # each engine asks; one warning
    assert not pgfast.installed()
    assert (pg8000.core.CoreConnection.execute_unnamed, pg8000.core._read, pg8000.dbapi.convert_paramstyle) == before
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert "pg8000 1.32.0 is not a version" in message and "1.31.3, 1.31.4, 1.31.5, 1.31.6" in message
    assert "unpatched" in message and "slower" in message

"""The counting proxy's reading of the PostgreSQL wire protocol (bench/pgwire.py)."""

from __future__ import annotations

import struct
import threading

import pytest

from bench.pgwire import Counts, _Parser, kind_of


def message(tag: bytes, body: bytes) -> bytes:
    return tag + struct.pack("!i", len(body) + 4) + body


def startup() -> bytes:
    body = struct.pack("!i", 196608) + b"user\0postgres\0\0"
    return struct.pack("!i", len(body) + 4) + body


@pytest.mark.parametrize(
    ("sql", "kind"),
    [(";", "ping"), ("", "ping"), ("select 1", "ping"), ("begin transaction", "begin"),
     ("COMMIT", "commit"), ("rollback", "rollback"), ("INSERT INTO jobs ...", "insert"),
     ("\n    WITH f AS (...)", "with"), ("UPDATE jobs SET", "update")],
)
def test_statements_are_sorted_into_kinds(sql: str, kind: str) -> None:
    assert kind_of(sql) == kind


def test_round_trips_are_queries_and_syncs_and_follow_their_statement() -> None:
    counts = Counts()
    parser = _Parser(counts, threading.Lock())
    ssl_request = struct.pack("!ii", 8, 80877103)
    insert = message(b"P", b"\0INSERT INTO jobs VALUES ($1)\0\0\0")
    bursts = [  # what the client writes before it waits for the server
        ssl_request + startup() + message(b"Q", b"begin transaction\0"),
        # pg8000's own unnamed statement: Parse+Sync, Describe+Sync, Bind+Execute+Sync.
        insert + message(b"H", b"") + message(b"S", b""),
        message(b"D", b"S\0") + message(b"S", b""),
        message(b"B", b"\0\0\0\0\0\0\0\0") + message(b"E", b"\0\0\0\0\0") + message(b"S", b""),
        message(b"Q", b"commit\0"),
    ]
    for burst in bursts:
        for i in range(0, len(burst), 7):  # messages split anywhere across reads
            parser.feed(burst[i : i + 7])
    assert counts.round_trips == 5
    assert counts.trips == {"begin": 1, "insert": 3, "commit": 1}
    assert counts.statements == 1


def test_messages_pipelined_in_one_write_are_one_round_trip() -> None:
    counts = Counts()
    parser = _Parser(counts, threading.Lock())
    parser.feed(startup())
    # api/pgfast.py: BEGIN held back and sent with the statement, Parse to Sync in one write
    parser.feed(message(b"Q", b"begin transaction\0") + message(b"P", b"\0UPDATE jobs SET x = $1\0\0\0")
                + message(b"B", b"\0\0\0\0\0\0\0\0") + message(b"D", b"P\0")
                + message(b"E", b"\0\0\0\0\0") + message(b"S", b""))
    parser.feed(message(b"Q", b"commit\0"))
    assert counts.round_trips == 2
    assert counts.trips == {"update": 1, "commit": 1}
    assert counts.kinds == {"begin": 1, "update": 1, "commit": 1}


def test_a_prepared_statement_counts_at_each_execution_under_its_text() -> None:
    counts = Counts()
    parser = _Parser(counts, threading.Lock())
    parser.feed(startup())
    bind = message(b"B", b"\0cj_1\0\0\0\0\0\0\0") + message(b"E", b"\0\0\0\0\0") + message(b"S", b"")
    # api/pgfast.py prepares on the second run: Parse of a named statement, then Binds alone.
    parser.feed(message(b"P", b"cj_1\0UPDATE jobs SET x = $1\0\0\0") + bind)
    parser.feed(bind)
    parser.feed(bind)
    assert counts.round_trips == 3 and counts.statements == 3
    assert counts.kinds == {"update": 3} and counts.trips == {"update": 3}

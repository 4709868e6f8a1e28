"""Eight fixes to pg8000's statement path; `install()` applies them once (api.store.engine calls it).

They replace private parts of pg8000, so they are applied only to the pg8000 releases they
were tested on (`TESTED_VERSIONS`, the range pyproject.toml pins): with any other, `install()`
leaves pg8000 as it is, logs one warning, and the app runs on plain pg8000, slower.
docs/drivers.md says how the range was found and how to extend it.

pg8000 1.31 spends, for every transaction, a round trip on its own for `BEGIN`: here the
BEGIN is held back and sent in front of the transaction's first statement, in the same
write (and the replies of both read in order). And for every statement:

1. a character-by-character scan of the SQL text to convert its placeholders
   (`convert_paramstyle`, ~0.6 ms for the INSERT of a job). The result depends only on the
   text, and SQLAlchemy sends the same few texts again and again: it is cached here.
2. three round trips: Parse + Sync, then Describe + Sync, then Bind + Execute + Sync, each
   waited for. PostgreSQL's extended protocol takes them pipelined, Parse, Bind, Describe
   (the portal), Execute and one Sync, answered in one go: one round trip. COMMIT and
   ROLLBACK go the same way in pg8000, so they too drop from three round trips to one.

And for every timestamp it reads, pg8000 calls `datetime.strptime` (~20 µs; three per job
row): `datetime.fromisoformat` reads PostgreSQL's output format in a tenth of that, and
anything it cannot read (infinity, BC dates, years past 9999) goes to pg8000's own parser.
And each string it sends in an array is escaped character by character in Python: here
with two replaces and one regular expression; and each element of an array goes through a
singledispatch call: strings, ints and None are written directly here (`array_out`).

And pg8000's socket read wraps a network failure in `InterfaceError("network error")`, which
is how SQLAlchemy tells a dead connection, except on the first read of each message: a
connection reset by the server (a failover, an idle timeout) escaped as a bare
ConnectionResetError, so the pool kept the dead connection and the request failed. Here every
read is wrapped.

And pg8000 sends every statement with parameters as the unnamed statement: PostgreSQL parses
and plans it anew each time (a third of a claim's time, half of a finish's). Here a
connection prepares a statement the second time it runs it, under a name, and later runs
are a Bind and an Execute of that name (`_Statements`: bounded, least recently used out,
dropped when the server says they went stale; DB_PREPARED_STATEMENTS=false keeps them off).
PostgreSQL still plans each execution with its parameters: api/store/engine.py opens connections with
`plan_cache_mode = force_custom_plan` (a generic plan, which `auto` may pick after five runs,
chose an index by state from statistics that saw no RUNNING jobs and walked its dead entries:
a run's database CPU tripled within minutes of load). So plans stay what they were; the
parsing and rewriting go. Except for statements whose text starts with `PLANNED_ONCE`, written
so that no plan can walk an index by state (the claim and the finish of a run): those are
planned once per connection, a generic plan made without sequential scans, which halves the
database's CPU of a run (planning its CTEs was half its time). The session's plan_cache_mode
(and enable_seqscan) is switched by `SET`s sent in the same write as the statement, only when
the statement's mode differs from the session's (tracked per connection; unknown after an
error or a rollback, which may undo a SET).

Otherwise behaviour is unchanged: the same messages (minus two Syncs and the Flushes), the same
parameter conversion, the same handling of the replies; an error in any step still skips
to the Sync and raises. COPY (a `stream`) keeps pg8000's own path. docs/benchmarks.md has
the effect; tests/integration/test_pgfast.py checks round trips and results.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import re
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import pg8000.converters
import pg8000.core
import pg8000.dbapi
import pg8000.exceptions
import pg8000.legacy
from pg8000.converters import make_params

logger = logging.getLogger(__name__)

# The pg8000 releases tests/unit/test_pgfast.py and tests/integration/test_pgfast.py passed on
# (docs/drivers.md). Before 1.31.3 pg8000 has no `startup_params`; a later release may rename
# what is patched here, or fix a bug inside a function replaced here and have it undone.
TESTED_VERSIONS = frozenset({"1.31.3", "1.31.4", "1.31.5", "1.31.6"})

_installed = False
_refused: str | None = None  # the untested version already warned about
_original_convert = pg8000.dbapi.convert_paramstyle
_original_execute_unnamed = pg8000.core.CoreConnection.execute_unnamed


@functools.lru_cache(maxsize=2048)
def _converted(style: str, query: str) -> str:
    text, _ = _original_convert(style, query, ())
    return text


def convert_paramstyle(style: str, query: str, args: Any) -> tuple[str, Any]:
    """pg8000's convert_paramstyle, with the scan of the text cached for positional styles.

    SQLAlchemy uses "format" (%s); the arguments of positional styles pass through as they
    are, so only the text needs converting. Named styles keep pg8000's own function.
    """
    if style in ("format", "qmark", "numeric"):
        return _converted(style, query), args
    return _original_convert(style, query, args)


_BEGIN = "begin transaction"  # what pg8000's cursors send when a transaction starts
_original_execute_simple = pg8000.core.CoreConnection.execute_simple
_PASS_THROUGH = ("execute_named", "prepare_statement", "close_prepared_statement")
_original_methods = {name: getattr(pg8000.core.CoreConnection, name) for name in _PASS_THROUGH}


def _queue_begin(self: Any) -> None:
    """Write the held-back BEGIN (not flushed): the caller's next flush sends it along."""
    self._send_message(pg8000.core.QUERY, _BEGIN.encode(self._client_encoding) + pg8000.core.NULL_BYTE)


def _read_begin(self: Any) -> None:
    """Read BEGIN's reply (up to its ReadyForQuery) before the statement's own."""
    self.handle_messages(pg8000.core.Context(_BEGIN))


def _take_pending_begin(self: Any) -> bool:
    pending = getattr(self, "_pgfast_begin", False)
    self._pgfast_begin = False
    return pending


def _execute_simple(self: Any, statement: str) -> Any:
    _forget_plans_on_rollback(self, statement)
    if statement == _BEGIN and not getattr(self, "_pgfast_begin", False):
        # Held back; the connection counts as in a transaction from now on, as it would.
        self._pgfast_begin = True
        self._transaction_status = pg8000.core.IN_TRANSACTION
        return pg8000.core.Context(statement)
    if not _take_pending_begin(self):
        return _original_execute_simple(self, statement)
    context = pg8000.core.Context(statement)
    _queue_begin(self)
    self.send_QUERY(statement)
    pg8000.core._flush(self._sock)
    _read_begin(self)
    self.handle_messages(context)
    return context


def _flush_pending_begin(self: Any) -> None:
    if _take_pending_begin(self):
        _queue_begin(self)
        pg8000.core._flush(self._sock)
        _read_begin(self)


def _passing_through(name: str) -> Any:
    original = _original_methods[name]

    @functools.wraps(original)
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        _flush_pending_begin(self)  # paths not rewritten here send the BEGIN on its own first
        return original(self, *args, **kwargs)

    return method


def _execute_unnamed(self: Any, statement: str, vals: Any = (), oids: Any = (), stream: Any = None) -> Any:
    if stream is not None:
        _flush_pending_begin(self)
        return _original_execute_unnamed(self, statement, vals=vals, oids=oids, stream=stream)
    # Converted before anything is sent, so a value that cannot be sent leaves the wire clean.
    params = make_params(self.py_types, vals)
    key = (statement, tuple(oids))
    cache: _Statements | None = getattr(self, "_pgfast_statements", None)
    prepared = cache.get(key) if cache is not None else None
    enc = self._client_encoding
    begin = _take_pending_begin(self)
    if begin:
        _queue_begin(self)
    if cache is not None:
        cache.send_closes(self)  # after the BEGIN: its reply is read on its own first
    _switch_plans(self, statement, cache, params)
    if prepared is not None:
        name, columns, input_funcs = prepared
        context = pg8000.core.Context(statement, columns=columns, input_funcs=input_funcs)
        self._send_message(pg8000.core.BIND, _bind(name, params, enc))
    else:
        context = pg8000.core.Context(statement, stream=None)
        name = cache.name_for(key) if cache is not None else b""
        parse = bytearray(name + pg8000.core.NULL_BYTE)
        parse.extend(statement.encode(enc) + pg8000.core.NULL_BYTE)
        parse.extend(pg8000.core.H_pack(len(oids)))
        for oid in oids:
            parse.extend(pg8000.core.i_pack(0 if oid == -1 else oid))
        self._send_message(pg8000.core.PARSE, parse)
        self._send_message(pg8000.core.BIND, _bind(name, params, enc))
        self._send_message(pg8000.core.DESCRIBE, pg8000.core.PORTAL + pg8000.core.NULL_BYTE)
    pg8000.core._write(self._sock, pg8000.core.EXECUTE_MSG)
    pg8000.core._write(self._sock, pg8000.core.SYNC_MSG)
    pg8000.core._flush(self._sock)
    if begin:
        _read_begin(self)
    try:
        self.handle_messages(context)
    except pg8000.exceptions.DatabaseError as e:
        _forget_plans(self)
        if cache is not None:
            cache.failed(key, name, prepared is not None, e)
        raise
    if cache is not None and prepared is None and name:
        cache.add(key, name, context.columns, context.input_funcs)
    return context


# A statement whose text starts with this is run with a generic plan when prepared (above).
PLANNED_ONCE = "/* planned once */"
_CUSTOM, _GENERIC = "force_custom_plan", "force_generic_plan"
# A generic plan is made once and kept until the statistics of a table it reads change: one made
# while a table was small (a new database, or a server without autovacuum, whose statistics
# never change) would scan the whole table for good. Without sequential scans, the plan made
# is the one by primary key, whatever the statistics said when it was made.
_SETTINGS = {
    _GENERIC: ("plan_cache_mode = force_generic_plan", "enable_seqscan = off"),
    _CUSTOM: ("plan_cache_mode = force_custom_plan", "enable_seqscan = on"),
}


def _switch_plans(self: Any, statement: str, cache: _Statements | None, params: Any) -> None:
    """Write (not flush) a SET of plan_cache_mode if this statement needs the other mode.

    Only a statement with parameters is planned by the mode (COMMIT, ROLLBACK and the like
    are not), and a rollback leaves the mode unknown."""
    if _forget_plans_on_rollback(self, statement) or not params:
        return
    want = _GENERIC if cache is not None and statement.startswith(PLANNED_ONCE) else _CUSTOM
    # A session that never switched has its startup setting: custom plans, or `auto` without
    # prepared statements (never generic), which is left as it is.
    if getattr(self, "_pgfast_plans", _CUSTOM) == want:
        return
    enc = self._client_encoding
    for setting in _SETTINGS[want]:
        text = f"SET {setting}".encode(enc)
        self._send_message(pg8000.core.PARSE, pg8000.core.NULL_BYTE + text + pg8000.core.NULL_BYTE + pg8000.core.H_pack(0))
        self._send_message(pg8000.core.BIND, _bind(b"", (), enc))
        pg8000.core._write(self._sock, pg8000.core.EXECUTE_MSG)
    self._pgfast_plans = want


def _forget_plans_on_rollback(self: Any, statement: str) -> bool:
    """Whether the statement is a rollback (to a savepoint too), after which the mode is unknown."""
    if statement[:8].lower() != "rollback":
        return False
    _forget_plans(self)
    return True


def _forget_plans(self: Any) -> None:
    """After a rollback (to a savepoint too) or an error, a SET of this transaction may be undone:
    the mode of a session that switched is unknown until the next SET."""
    if hasattr(self, "_pgfast_plans"):
        self._pgfast_plans = None


def _bind(name: bytes, params: Any, enc: str) -> bytearray:
    """A Bind of the unnamed portal to statement `name` (b"" for the unnamed one), text values."""
    bind = bytearray(pg8000.core.NULL_BYTE + name + pg8000.core.NULL_BYTE + pg8000.core.H_pack(0))
    bind.extend(pg8000.core.H_pack(len(params)))
    for value in params:
        if value is None:
            bind.extend(pg8000.core.i_pack(-1))
        else:
            val = value.encode(enc)
            bind.extend(pg8000.core.i_pack(len(val)))
            bind.extend(val)
    bind.extend(pg8000.core.H_pack(0))
    return bind


# SQLSTATEs after which a connection's prepared statements are dropped: a statement whose
# result columns changed under it (a migration altered a table its `*` reads), and one the
# server no longer has (a pooler in front of PostgreSQL reset the session).
_STALE_STATEMENT = {"0A000", "26000"}


class _Statements:
    """One connection's named prepared statements: a text seen twice is prepared, then reused.

    Preparing saves the server the parsing and planning of each execution (the claim of a job
    spent 0.5-0.6 ms planning, as long as it then took to run) and pg8000 the reading of the
    row description. Bounded, least recently used first out; an evicted statement is closed
    with the next message sent. `PREPARE_AFTER = 0` (DB_PREPARED_STATEMENTS=false) turns it off.
    """

    def __init__(self, *, prepare_after: int, limit: int) -> None:
        self.prepare_after = prepare_after
        self.limit = limit
        self.prepared: OrderedDict[tuple[str, tuple[int, ...]], tuple[bytes, Any, Any]] = OrderedDict()
        self.seen: dict[tuple[str, tuple[int, ...]], int] = {}
        self.to_close: list[bytes] = []
        self.counter = 0

    def get(self, key: tuple[str, tuple[int, ...]]) -> tuple[bytes, Any, Any] | None:
        found = self.prepared.get(key)
        if found is not None:
            self.prepared.move_to_end(key)
        return found

    def name_for(self, key: tuple[str, tuple[int, ...]]) -> bytes:
        """A new statement name if this text is now due to be prepared; b"" (unnamed) if not."""
        seen = self.seen.get(key, 0) + 1
        if len(self.seen) >= 10 * self.limit:
            self.seen.clear()  # one-off texts (literal values, DDL) must not pile up
        self.seen[key] = seen
        if seen < self.prepare_after:
            return b""
        self.counter += 1
        return f"cj_{self.counter}".encode("ascii")

    def add(self, key: tuple[str, tuple[int, ...]], name: bytes, columns: Any, input_funcs: Any) -> None:
        self.prepared[key] = (name, columns, input_funcs)
        self.seen.pop(key, None)
        while len(self.prepared) > self.limit:
            _, (old, _, _) = self.prepared.popitem(last=False)
            self.to_close.append(old)

    def failed(self, key: tuple[str, tuple[int, ...]], name: bytes, was_prepared: bool, e: Exception) -> None:
        if name and not was_prepared:
            self.to_close.append(name)  # the Parse may have succeeded before the error
        code = e.args[0].get("C") if e.args and isinstance(e.args[0], dict) else None
        if code in _STALE_STATEMENT:
            self.to_close.extend(n for n, _, _ in self.prepared.values())
            self.prepared.clear()

    def send_closes(self, conn: Any) -> None:
        """Write Close for evicted statements ahead of the next message (not flushed)."""
        for name in self.to_close:
            # Closing a statement that does not exist is not an error (the protocol says so).
            conn._send_message(pg8000.core.CLOSE, pg8000.core.STATEMENT + name + pg8000.core.NULL_BYTE)
        self.to_close.clear()


@contextmanager
def planned_each_time(dbapi_connection: Any) -> Iterator[None]:
    """Statements run inside are neither prepared nor taken from the prepared ones.

    For queries whose best plan depends on their parameters' values (a report's window):
    after five runs PostgreSQL may switch a prepared statement to a generic plan, which
    knows no window. Run unnamed, each is planned with its values."""
    cache: _Statements | None = getattr(dbapi_connection, "_pgfast_statements", None)
    dbapi_connection._pgfast_statements = None
    try:
        yield
    finally:
        dbapi_connection._pgfast_statements = cache


def enable_prepared_statements(dbapi_connection: Any, *, prepare_after: int = 2, limit: int = 100) -> None:
    """Prepare the statements this connection runs again and again (api.store.engine calls it on connect)."""
    if prepare_after > 0:
        dbapi_connection._pgfast_statements = _Statements(prepare_after=prepare_after, limit=limit)


_original_read = pg8000.core._read


def _read(sock: Any, size: int) -> bytes:
    """pg8000's `_read` with its first read inside the try: a reset is a "network error" too."""
    try:
        return _original_read(sock, size)
    except OSError as e:
        raise pg8000.exceptions.InterfaceError("network error") from e


_original_array_string_escape = pg8000.converters.array_string_escape
_ARRAY_QUOTE = re.compile(r"[\s{},\\]")  # str.isspace()'s whitespace, braces, comma, backslash


def array_string_escape(v: str) -> str:
    """pg8000's escape of a string in an array literal, without its loop over characters.

    Its loop costs ~3 µs for a UUID; a run sends half a dozen strings in arrays, the sweeper
    hundreds. Same output for every string (tests/unit/test_pgfast.py compares).
    """
    val = v.replace("\\", "\\\\").replace('"', '\\"')
    if not val or val == "NULL" or _ARRAY_QUOTE.search(val):
        return f'"{val}"'
    return val


_original_array_out = pg8000.converters.PY_TYPES[list]


def array_out(values: list[Any]) -> str:
    """A list parameter as a PostgreSQL array literal, as pg8000 writes it, without its dispatch.

    pg8000 sends each element through a singledispatch function (~2 µs each): the finish of a
    run sends ten arrays, a batch of 500 jobs twelve arrays of 500. Strings, ints and None,
    which are all this project sends in arrays, are written here directly; a list holding
    anything else (nested lists, dates, UUIDs) goes to pg8000's own function. Same output
    (tests/unit/test_pgfast.py compares)."""
    parts = []
    for v in values:
        t = type(v)
        if t is str:
            parts.append(array_string_escape(v))
        elif v is None:
            parts.append("NULL")
        elif t is int:
            parts.append(str(v))
        else:
            return _original_array_out(values)  # type: ignore[no-any-return]
    return "{" + ",".join(parts) + "}"


_original_timestamptz_in = pg8000.converters.timestamptz_in
_original_timestamp_in = pg8000.converters.timestamp_in


@functools.lru_cache(maxsize=1024)
def timestamptz_in(data: str) -> Any:
    """timestamptz text as an aware datetime (pg8000's parser for what this cannot read).

    Kept for the next reading of the same text (datetimes are immutable): the rows of a batch,
    or of one transaction, share their times, now() being the transaction's."""
    try:
        return datetime.fromisoformat(data)
    except ValueError:
        return _original_timestamptz_in(data)


def timestamp_in(data: str) -> Any:
    """timestamp text as a naive datetime (pg8000's parser for what this cannot read)."""
    try:
        return datetime.fromisoformat(data)
    except ValueError:
        return _original_timestamp_in(data)


def installed() -> bool:
    """Whether pg8000 is patched in this process."""
    return _installed


def install(version: str | None = None) -> bool:
    """Patch pg8000 if its version is one of TESTED_VERSIONS (idempotent); whether it is patched.

    `version` stands in for the installed one (tests). An untested version is left unpatched,
    with one warning per process."""
    global _installed, _refused
    if _installed:
        return True
    found = version or importlib.metadata.version("pg8000")
    if found not in TESTED_VERSIONS:
        if _refused != found:
            _refused = found
            logger.warning(
                "pg8000 %s is not a version api.store.pgfast was tested on (%s): pg8000 runs "
                "unpatched, with more round trips per statement and no prepared statements, "
                "so slower; install a tested version (pyproject.toml pins them)",
                found,
                ", ".join(sorted(TESTED_VERSIONS)),
            )
        return False
    pg8000.dbapi.convert_paramstyle = convert_paramstyle
    pg8000.legacy.convert_paramstyle = convert_paramstyle
    pg8000.core.CoreConnection.execute_unnamed = _execute_unnamed
    pg8000.core.CoreConnection.execute_simple = _execute_simple
    pg8000.converters.array_string_escape = array_string_escape  # looked up at each call
    pg8000.core._read = _read  # looked up at each call
    pg8000.converters.PY_TYPES[list] = array_out  # connections copy this table when made
    # Connections copy this table when they are made.
    pg8000.converters.PG_TYPES[pg8000.converters.TIMESTAMPTZ] = timestamptz_in
    pg8000.converters.PG_TYPES[pg8000.converters.TIMESTAMP] = timestamp_in
    for name in _PASS_THROUGH:
        setattr(pg8000.core.CoreConnection, name, _passing_through(name))
    _installed = True
    return True

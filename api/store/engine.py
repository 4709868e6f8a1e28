"""The engine: plain DATABASE_URL, or Cloud SQL through the Python Connector."""

from __future__ import annotations

import functools
import json
import logging
import select
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, make_url

from api.config import Config
from api.store import pgfast

logger = logging.getLogger(__name__)


def normalise_url(url: str) -> str:
    """Force the pg8000 driver onto a postgres:// or postgresql:// URL."""
    u = make_url(url)
    if u.drivername in ("postgres", "postgresql", "postgresql+psycopg2", "postgresql+psycopg"):
        u = u.set(drivername="postgresql+pg8000")
    return u.render_as_string(hide_password=False)


def create_engine(config: Config, *, url: str | None = None, pool_size: int | None = None) -> Engine:
    """An engine for the configured database (nothing connects until first use)."""
    pgfast.install()  # pg8000: one round trip per statement, placeholders converted once
    common: dict[str, Any] = dict(
        # A statement's parameters (payloads, results, keys' hashes) never reach an exception's
        # text, so never a log line: SQLAlchemy appends them to every DBAPIError otherwise.
        hide_parameters=True,
        # JSONB round trips without SQLAlchemy's extra encode/decode layers.
        json_serializer=_dumps,
        # Connections die on Cloud SQL maintenance and on idle timeouts of proxies: on checkout
        # (see _check_on_checkout) one the server closed is seen on its socket and one that sat
        # idle is pinged, so that turns into a reconnect instead of a failed request.
        pool_pre_ping=False,
        # Enough for a gunicorn worker's threads; more only holds Cloud SQL connections idle.
        pool_size=pool_size if pool_size is not None else config.db_pool_size,
        # A burst may borrow a few more; Cloud SQL's connection limit is shared by instances.
        max_overflow=config.db_max_overflow,
        # Fail fast when the pool is exhausted: a request waiting 30 s helps nobody.
        pool_timeout=10,
        # Cloud SQL closes idle connections after a while; recycle before it does.
        pool_recycle=1800,
    )
    # With prepared statements, each execution is still planned for its own values: a generic
    # plan (PostgreSQL's `auto` mode may switch to one after five runs) picked from statistics
    # that saw no RUNNING jobs walked jobs_active_idx through every finished job's dead entry,
    # and a run cost 3x more PostgreSQL CPU after a few minutes of load (issue #7).
    startup = {"plan_cache_mode": "force_custom_plan"} if config.db_prepared_statements else {}
    target = url or config.database_url
    if target:
        engine = sa.create_engine(normalise_url(target), connect_args={"startup_params": startup}, **common)
    elif config.instance_connection_name:
        engine = sa.create_engine(
            "postgresql+pg8000://", creator=_CloudSqlCreator(config, startup), **common
        )
    else:
        raise ValueError("no database configured")
    sa.event.listen(engine, "connect", _on_connect)
    if config.db_prepared_statements:
        sa.event.listen(engine, "connect", lambda dbapi_connection, _record: pgfast.enable_prepared_statements(
            dbapi_connection))
    sa.event.listen(engine, "checkin", _on_checkin)
    sa.event.listen(engine, "checkout", functools.partial(_check_on_checkout, engine.dialect))
    return engine


@contextmanager
def autocommit(engine: Engine) -> Iterator[Connection]:
    """A pooled connection on which each statement commits on its own: no BEGIN, no COMMIT.

    A transaction of one statement costs two round trips (the statement with its BEGIN,
    then COMMIT or ROLLBACK); here it costs one (issue #7). For requests whose statements
    need not commit together: one statement, or reads (each statement of a READ COMMITTED
    transaction reads its own snapshot anyway). Never call commit() or rollback() on it.

    pg8000's `autocommit` attribute is set for the block and cleared before the connection
    goes back to the pool. A connection is lent with no transaction open (the pool rolls back
    on return, and `_check_on_checkout` ends its ping's), so nothing here can be rolled back later.
    SQLAlchemy's `isolation_level="AUTOCOMMIT"` would do the same but, with pg8000, restores
    the isolation level on return with two more round trips.
    """
    with engine.connect() as conn:
        dbapi_connection = conn.connection.dbapi_connection
        dbapi_connection.autocommit = True  # type: ignore[union-attr]
        try:
            yield conn
        finally:
            dbapi_connection.autocommit = False  # type: ignore[union-attr]


# A connection idle longer than this is pinged before use. Under load connections go back to
# work within milliseconds, and a ping per checkout was a round trip per request (issue #7).
PING_AFTER_IDLE_S = 5.0


def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
    record.info["cloudjobs_idle_since"] = time.monotonic()


def _closed_by_server(dbapi_connection: Any) -> bool:
    """Whether the server has spoken on a connection that sits idle in the pool.

    Between requests PostgreSQL sends nothing unasked; what it does send is its goodbye (a
    restart, a failover, pg_terminate_backend) and then the end of the stream. A zero-timeout
    select sees that without a round trip, so a connection the server closed a moment ago is
    replaced before it fails a request. (At worst it drops a live connection that got
    something else unasked, and the pool connects anew.)"""
    sock = getattr(dbapi_connection, "_usock", None)
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):  # closed on our side already
        return True
    return bool(readable)


def _check_on_checkout(dialect: Any, dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    """Replace a connection the server closed; ping one that sat idle (PING_AFTER_IDLE_S)."""
    if _closed_by_server(dbapi_connection):
        # The pool drops this connection and checks out (or makes) another.
        raise sa.exc.DisconnectionError("the server closed the connection")
    idle_since = record.info.get("cloudjobs_idle_since")
    if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_S:
        return  # new, or back from work a moment ago
    try:
        dialect.do_ping(dbapi_connection)
        # pg8000's ping opens a transaction: end it, so the connection is lent as it was.
        dbapi_connection.rollback()
    except Exception as e:
        if dialect.is_disconnect(e, dbapi_connection, None):
            # The pool drops this connection and checks out (or makes) another.
            raise sa.exc.DisconnectionError() from e
        raise


# One encoder: json.dumps builds a new JSONEncoder for every call with options (~1 µs).
_dumps = json.JSONEncoder(separators=(",", ":"), default=str).encode


def _on_connect(dbapi_connection: Any, _record: Any) -> None:
    # pg8000 leaves Nagle's algorithm on, which stalls pipelined statements for ~40 ms.
    sock = getattr(dbapi_connection, "_usock", None)
    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _CloudSqlCreator:
    """Connections through the Cloud SQL Python Connector, made lazily after fork."""

    def __init__(self, config: Config, startup_params: dict[str, str]) -> None:
        self._config = config
        self._startup_params = startup_params
        self._connector: Any = None
        self._lock = threading.Lock()

    def __call__(self) -> Any:
        if self._connector is None:
            with self._lock:
                if self._connector is None:
                    # Imported and built on first connect: the Connector looks up Google
                    # credentials at construction and runs a background thread, neither of
                    # which may happen at import time or before gunicorn forks.
                    from google.cloud.sql.connector import Connector

                    self._connector = Connector(refresh_strategy="lazy")
        c = self._config
        return self._connector.connect(
            c.instance_connection_name,
            "pg8000",
            user=c.db_user,
            password=c.db_password,
            db=c.db_name,
            enable_iam_auth=c.db_iam_auth,
            startup_params=self._startup_params,  # passed on to pg8000.connect
        )

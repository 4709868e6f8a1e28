"""The engine: plain DATABASE_URL, or Cloud SQL through the Python Connector."""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from google.api_core.retry import Retry
from sqlalchemy.engine import Connection, Engine

from api.config import Config
from api.store import driver

logger = logging.getLogger(__name__)


def normalise_url(url: str, default_driver: str = "pg8000") -> str:
    """The URL with its driver: `+pg8000` or `+psycopg` as written, else `default_driver`."""
    return driver.url_for(url, default_driver)


def create_engine(config: Config, *, url: str | None = None, pool_size: int | None = None) -> Engine:
    """An engine for the configured database (nothing connects until first use)."""
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
    target = url or config.database_url
    if target:
        target = normalise_url(target, config.db_driver)
        chosen = driver.named(driver.name_of_url(target))
    elif config.instance_connection_name:
        chosen = driver.named(config.db_driver)
    else:
        raise ValueError("no database configured")
    if config.db_pgfast:
        chosen.install()  # pg8000: pgfast, once per process, on the versions it was tested on
    # With prepared statements, each execution is still planned for its own values: a generic
    # plan (PostgreSQL's `auto` mode may switch to one after five runs) picked from statistics
    # that saw no RUNNING jobs walked jobs_active_idx through every finished job's dead entry,
    # and a run cost 3x more PostgreSQL CPU after a few minutes of load (issue #7).
    prepared = config.db_prepared_statements
    connect_args = chosen.connect_args(custom_plans=prepared, prepared=prepared)
    if target:
        engine = sa.create_engine(target, connect_args=connect_args, **common)
    else:
        engine = sa.create_engine(
            f"postgresql+{chosen.name}://", creator=_CloudSqlCreator(config, chosen.name, connect_args), **common
        )
    sa.event.listen(
        engine, "connect", lambda dbapi, _record: chosen.on_connect(dbapi, prepared=prepared)
    )
    sa.event.listen(engine, "handle_error", _on_error)
    if target:
        sa.event.listen(engine, "do_connect", _connect)
    # The pool logs under its class's name; a logger holds the same filter once, however many engines.
    logging.getLogger(f"{type(engine.pool).__module__}.{type(engine.pool).__name__}").addFilter(_DEAD_CLOSE)
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

    The driver's autocommit is set for the block and cleared before the connection goes back
    to the pool. A connection is lent with no transaction open (the pool rolls back on return,
    and `_check_on_checkout` ends its ping's), so nothing here can be rolled back later.
    SQLAlchemy's `isolation_level="AUTOCOMMIT"` would do the same but, with pg8000, restores
    the isolation level on return with two more round trips.
    """
    with engine.connect() as conn:
        dbapi_connection = conn.connection.dbapi_connection
        driver.set_autocommit(dbapi_connection, True)
        try:
            yield conn
        finally:
            driver.set_autocommit(dbapi_connection, False)


# A connection idle longer than this is pinged before use. Under load connections go back to
# work within milliseconds, and a ping per checkout was a round trip per request (issue #7).
PING_AFTER_IDLE_S = 5.0


def is_outage(e: BaseException) -> bool:
    """The database could not serve: not a bug or bad input, but a 503 to retry (or a finish
    to try again)."""
    if isinstance(e, sa.exc.OperationalError | sa.exc.InterfaceError | sa.exc.TimeoutError):
        return True
    # A driver may report a lost connection as InterfaceError or a plain DatabaseError;
    # SQLAlchemy flags it. The rest by SQLSTATE (api/store/driver.py): a read-only or standby
    # server, no connection slots, no disk, a lost serialization race.
    return isinstance(e, sa.exc.DBAPIError) and (
        bool(e.connection_invalidated) or driver.classify(e) is not None
    )


# A finish that met an outage is tried again for up to 30 s, from 0.1 s apart to 2 s apart
# (google-api-core's retry, already installed for the Cloud Tasks client): a database blip
# costs the attempt a moment, not its whole lease. A finish is safe to repeat — it moves a
# job only while the attempt still holds its lease.
OUTAGE_RETRY = Retry(predicate=is_outage, initial=0.1, maximum=2.0, multiplier=2.0, timeout=30.0)
# A claim through a blip: tried again for up to 2 s, then a 503 for the queue to retry. Short,
# so a database that is down answers Cloud Tasks quickly (its retry config owns longer waits);
# long enough that connections terminated around it do not spend the queue's attempts.
CLAIM_RETRY = Retry(predicate=is_outage, initial=0.05, maximum=0.5, multiplier=2.0, timeout=2.0)


def _on_error(ctx: sa.engine.ExceptionContext) -> None:
    """A connection that saw the server go away, turn standby or read-only is not returned to
    the pool: SQLAlchemy drops it and every other connection of the pool (they point at the
    same server), so the next request connects afresh — to the new primary after a failover."""
    if driver.classify(ctx.original_exception) == "discard":
        ctx.is_disconnect = True


class _DeadCloseFilter(logging.Filter):
    """SQLAlchemy's pool logs a traceback when closing a connection fails; closing one whose
    server is gone (restarted, failed over) always fails, by design of the protocol's goodbye.
    Those records go; any other close failure is still logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(("Exception terminating connection", "Exception closing connection")):
            return True
        error = record.exc_info[1] if record.exc_info else None
        while error is not None:
            if isinstance(error, OSError) or (type(error).__name__ == "InterfaceError" and "network" in str(error)):
                return False
            error = error.__cause__ or error.__context__
        return True


_DEAD_CLOSE = _DeadCloseFilter()


def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
    record.info["cloudjobs_idle_since"] = time.monotonic()


def _check_on_checkout(dialect: Any, dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    """Replace a connection the server closed; ping one that sat idle (PING_AFTER_IDLE_S).

    A connection made for this checkout is lent as it is: the pool replaces a connection only
    once per checkout, and gives up with a bare InvalidRequestError (a 500) if the replacement
    fails the check too — as one can while backends are being terminated. Should it be dead,
    its first statement fails as an outage (a 503) and the pool drops it."""
    idle_since = record.info.get("cloudjobs_idle_since")
    if idle_since is None:
        return  # new
    if driver.closed_by_server(dbapi_connection):
        # The pool drops this connection and checks out (or makes) another.
        raise sa.exc.DisconnectionError("the server closed the connection")
    if time.monotonic() - idle_since < PING_AFTER_IDLE_S:
        return  # back from work a moment ago
    try:
        dialect.do_ping(dbapi_connection)
        # The ping opens a transaction (outside autocommit): end it, so the connection is lent as it was.
        dbapi_connection.rollback()
    except Exception as e:
        if dialect.is_disconnect(e, dbapi_connection, None):
            # The pool drops this connection and checks out (or makes) another.
            raise sa.exc.DisconnectionError() from e
        raise


# One encoder: json.dumps builds a new JSONEncoder for every call with options (~1 µs).
_dumps = json.JSONEncoder(separators=(",", ":"), default=str).encode


@contextmanager
def _socket_errors_as_dbapi(dbapi: Any) -> Iterator[None]:
    """A socket error while connecting (pg8000 lets a broken pipe through unwrapped when the
    server is going down) as the driver's InterfaceError, so SQLAlchemy wraps it and the app
    answers 503: the server is unreachable, not the code broken."""
    try:
        yield
    except OSError as e:
        raise dbapi.InterfaceError(f"could not connect: {e.strerror or type(e).__name__}") from e


def _connect(dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
    with _socket_errors_as_dbapi(dialect.loaded_dbapi):
        return dialect.loaded_dbapi.connect(*cargs, **cparams)


class _CloudSqlCreator:
    """Connections through the Cloud SQL Python Connector, made lazily after fork."""

    def __init__(self, config: Config, driver_name: str, connect_args: dict[str, Any]) -> None:
        self._config = config
        self._driver = driver_name
        self._connect_args = connect_args
        self._dbapi = sa.dialects.registry.load(f"postgresql.{driver_name}").import_dbapi()
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
        with _socket_errors_as_dbapi(self._dbapi):
            return self._connector.connect(
                c.instance_connection_name,
                self._driver,  # the connector's psycopg driver since 1.22
                user=c.db_user,
                password=c.db_password,
                db=c.db_name,
                enable_iam_auth=c.db_iam_auth,
                **self._connect_args,  # passed on to the driver's connect()
            )

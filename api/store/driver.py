"""The driver seam: everything that depends on which PostgreSQL driver a connection is.

cloudjobs runs on pg8000 (the default, patched by `api.store.pgfast` when its version is one
that module was tested on) or on psycopg 3 (`postgresql+psycopg://` in DATABASE_URL, or
DB_DRIVER=psycopg). The rest of the code never looks inside a driver's connection or
exception: it asks here. Each driver is one class with the same methods; `of(dbapi)` picks
the one for a DBAPI connection, `named(name)` the one for a URL's or a setting's driver name.

What differs between them, and why each method exists:

- how a session starts: pg8000 takes `startup_params`, psycopg (libpq) an `options` string;
  psycopg prepares statements itself (`prepare_threshold`), pg8000 through pgfast;
- autocommit: both have an `autocommit` attribute, set outside a transaction;
- the socket: pg8000 keeps it in a private attribute (`_usock`) and never sets TCP_NODELAY;
  libpq sets TCP_NODELAY itself and psycopg gives the descriptor through `fileno()`;
- notifications: pg8000 reads them only while it reads a query's reply, into a bounded
  deque; psycopg reads them on demand (`notifies(timeout=0)`);
- SQLSTATE: pg8000 puts the server's error fields in `args[0]` (a dict, code under "C"),
  psycopg has `sqlstate`.
"""

from __future__ import annotations

import logging
import select
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import pg8000
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from api.store import pgfast

logger = logging.getLogger(__name__)

DRIVERS = ("pg8000", "psycopg")


def _psycopg_error() -> tuple[type[BaseException], ...]:
    try:
        import psycopg
    except ImportError:  # an optional extra: a deployment on pg8000 need not have it
        return ()
    return (psycopg.Error,)


# What a lost or refused connection raises, whichever driver: the LISTEN thread reconnects on these.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    SQLAlchemyError,
    pg8000.Error,
    *_psycopg_error(),
)


def url_for(url: str, default: str = "pg8000") -> str:
    """The SQLAlchemy URL with its driver: an explicit `+pg8000` or `+psycopg` is kept, a bare
    `postgres://`/`postgresql://` (or psycopg2's) gets `default`."""
    if default not in DRIVERS:
        raise ValueError(f"unknown driver {default!r}: use one of {', '.join(DRIVERS)}")
    u = make_url(url)
    if u.drivername in ("postgres", "postgresql", "postgresql+psycopg2"):
        u = u.set(drivername=f"postgresql+{default}")
    return u.render_as_string(hide_password=False)


def with_driver(url: str, name: str) -> str:
    """The same database under driver `name`, a Unix socket spelt as that driver spells it:
    pg8000's `unix_sock=<dir>/.s.PGSQL.<port>`, libpq's `host=<dir>` (and `port`)."""
    named(name)  # refuses an unknown name
    u = make_url(url_for(url))
    query = dict(u.query)
    if name == "psycopg" and "unix_sock" in query:
        path = str(query.pop("unix_sock"))
        folder, _, file = path.rpartition("/")
        query["host"] = folder
        port = file.rpartition(".")[2]
        if port.isdigit() and port != "5432":
            query["port"] = port
    elif name == "pg8000" and "host" in query:
        port = str(query.pop("port", "5432"))
        query["unix_sock"] = f"{query.pop('host')}/.s.PGSQL.{port}"
    return u.set(drivername=f"postgresql+{name}", query=query).render_as_string(hide_password=False)


def name_of_url(url: str) -> str:
    """The driver a SQLAlchemy URL (after `url_for`) names."""
    return make_url(url).get_driver_name()


class Driver:
    """What cloudjobs needs from a driver; one subclass per driver."""

    name: ClassVar[str]

    def connect_args(self, *, custom_plans: bool, prepared: bool) -> dict[str, Any]:
        """Keyword arguments for the driver's connect(): session settings, statement preparing.

        `custom_plans` opens the session with plan_cache_mode = force_custom_plan (see
        api.store.engine); `prepared` lets the connection prepare statements it repeats."""
        raise NotImplementedError

    def install(self) -> None:
        """Set up the driver for this process, before its first connection."""

    def on_connect(self, dbapi: Any, *, prepared: bool) -> None:
        """Set up a new connection (socket options, statement cache)."""

    def set_autocommit(self, dbapi: Any, on: bool) -> None:
        """Statements commit on their own (`on`), or open a transaction as DBAPI wants."""
        dbapi.autocommit = on

    def fileno(self, dbapi: Any) -> Any:
        """What `select` waits on for this connection: its socket, or its descriptor."""
        raise NotImplementedError

    def buffered(self, dbapi: Any) -> bool:
        """Whether bytes were read off the socket that `select` on it cannot see."""
        return False

    def closed_by_server(self, dbapi: Any) -> bool:
        """Whether the server has spoken on a connection that sits idle in the pool.

        Between requests PostgreSQL sends nothing unasked; what it does send is its goodbye (a
        restart, a failover, pg_terminate_backend) and then the end of the stream. A
        zero-timeout select sees that without a round trip. (At worst it drops a live
        connection that got something else unasked, and the pool connects anew.)"""
        try:
            target = self.fileno(dbapi)
        except (OSError, ValueError, AttributeError):  # closed on our side already
            return True
        if target is None:
            return False
        try:
            readable, _, _ = select.select([target], [], [], 0)
        except (OSError, ValueError):  # closed on our side already
            return True
        return bool(readable)

    def listen(self, dbapi: Any, channel: str, *, read_timeout_s: float) -> int:
        """LISTEN on `channel` outside any transaction; the backend's pid.

        `read_timeout_s` bounds a blocked read, so a connection that died without a word
        ends in an error (and a reconnect) instead of a hang."""
        # The pool's pre-ping may have left a transaction open, and LISTEN inside a
        # transaction takes effect only when it commits: end it, then run without one.
        dbapi.rollback()
        self.set_autocommit(dbapi, True)
        cur = dbapi.cursor()
        cur.execute(f"LISTEN {channel}")
        cur.execute("SELECT pg_backend_pid()")
        pid = int(cur.fetchone()[0])
        self._set_read_timeout(dbapi, read_timeout_s)
        return pid

    def _set_read_timeout(self, dbapi: Any, seconds: float) -> None:
        raise NotImplementedError

    def notifications(self, dbapi: Any, *, ping: bool) -> tuple[list[tuple[str, str]], bool]:
        """The (channel, payload) notifications received so far, and whether some may have
        been dropped. `ping` sends a query too, so a dead connection raises."""
        raise NotImplementedError

    @contextmanager
    def planned_each_time(self, dbapi: Any) -> Iterator[None]:
        """Statements run inside are neither prepared nor taken from the prepared ones."""
        yield


class Pg8000(Driver):
    """pg8000: pure Python; patched by api.store.pgfast when its version was tested."""

    name = "pg8000"

    def connect_args(self, *, custom_plans: bool, prepared: bool) -> dict[str, Any]:
        """pg8000's startup parameters (its statements are prepared by pgfast, on connect)."""
        return {"startup_params": {"plan_cache_mode": "force_custom_plan"} if custom_plans else {}}

    def install(self) -> None:
        """pgfast: one round trip per statement and prepared statements, on the pg8000 versions
        it was tested on; any other stays as it is (one warning says so)."""
        pgfast.install()

    def on_connect(self, dbapi: Any, *, prepared: bool) -> None:
        """TCP_NODELAY, and pgfast's statement cache when pgfast is installed."""
        # pg8000 leaves Nagle's algorithm on, which stalls pipelined statements for ~40 ms.
        sock = getattr(dbapi, "_usock", None)
        if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if prepared and pgfast.installed():
            pgfast.enable_prepared_statements(dbapi)

    def fileno(self, dbapi: Any) -> Any:
        """pg8000's socket (private: pg8000 has no public way to it)."""
        return getattr(dbapi, "_usock", None)

    def buffered(self, dbapi: Any) -> bool:
        """An SSL socket (the Cloud SQL connector's) may hold decrypted bytes select cannot see."""
        pending = getattr(getattr(dbapi, "_usock", None), "pending", None)
        return bool(pending()) if pending is not None else False

    def _set_read_timeout(self, dbapi: Any, seconds: float) -> None:
        dbapi._usock.settimeout(seconds)

    def notifications(self, dbapi: Any, *, ping: bool) -> tuple[list[tuple[str, str]], bool]:
        """Collected by a `SELECT 1`: pg8000 reads notifications only while it reads a reply."""
        dbapi.cursor().execute("SELECT 1")
        queue = dbapi.notifications
        got = [(channel, payload) for _, channel, payload in queue]
        queue.clear()
        # pg8000 keeps only the latest `maxlen` notifications; a full queue may have lost some.
        return got, queue.maxlen is not None and len(got) >= queue.maxlen

    @contextmanager
    def planned_each_time(self, dbapi: Any) -> Iterator[None]:
        """pgfast's statement cache set aside for the block."""
        with pgfast.planned_each_time(dbapi):
            yield


class Psycopg(Driver):
    """psycopg 3 (libpq): one round trip per autocommit statement, prepares statements itself."""

    name = "psycopg"

    def connect_args(self, *, custom_plans: bool, prepared: bool) -> dict[str, Any]:
        """libpq's `options`, and psycopg's own preparing: from a statement's second run, as pgfast."""
        args: dict[str, Any] = {"prepare_threshold": 1 if prepared else None}
        if custom_plans:
            args["options"] = "-c plan_cache_mode=force_custom_plan"
        return args

    def fileno(self, dbapi: Any) -> Any:
        """libpq's socket descriptor (None once psycopg knows the connection is gone)."""
        if dbapi.closed or dbapi.broken:
            raise ValueError("connection closed")
        return dbapi.fileno()

    def _set_read_timeout(self, dbapi: Any, seconds: float) -> None:
        # libpq has no read timeout: TCP's own timers stand in. Data unacknowledged for
        # `seconds` (a keepalive query to a server that vanished) fails the connection, and an
        # idle one is probed after `seconds` of silence. A Unix socket needs neither.
        sock = socket.socket(fileno=dbapi.fileno())
        try:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                if hasattr(socket, "TCP_USER_TIMEOUT"):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(seconds * 1000))
                if hasattr(socket, "TCP_KEEPIDLE"):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, int(seconds)))
        finally:
            sock.detach()  # the descriptor stays libpq's

    def notifications(self, dbapi: Any, *, ping: bool) -> tuple[list[tuple[str, str]], bool]:
        """What psycopg holds plus what the socket has now; psycopg keeps them all."""
        if ping:
            dbapi.execute("SELECT 1")
        return [(n.channel, n.payload) for n in dbapi.notifies(timeout=0)], False

    @contextmanager
    def planned_each_time(self, dbapi: Any) -> Iterator[None]:
        """psycopg's preparing turned off for the block (it keeps what it prepared)."""
        threshold = dbapi.prepare_threshold
        dbapi.prepare_threshold = None
        try:
            yield
        finally:
            dbapi.prepare_threshold = threshold


_BY_NAME: dict[str, Driver] = {d.name: d for d in (Pg8000(), Psycopg())}


def named(name: str) -> Driver:
    """The driver called `name` ("pg8000" or "psycopg", as in a URL's `postgresql+NAME`)."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown driver {name!r}: use one of {', '.join(DRIVERS)}") from None


def of(dbapi: Any) -> Driver:
    """The driver of a DBAPI connection."""
    module = type(dbapi).__module__
    return _BY_NAME["psycopg" if module.startswith("psycopg") else "pg8000"]


def sqlstate(e: BaseException) -> str | None:
    """The SQLSTATE of a database error (SQLAlchemy's wrapper or the driver's own), if it has one."""
    if isinstance(e, DBAPIError):
        if e.orig is None:
            return None
        e = e.orig
    code = getattr(e, "sqlstate", None)  # psycopg
    if code is None and e.args and isinstance(e.args[0], dict):
        code = e.args[0].get("C")  # pg8000: the server's error fields, by their protocol letter
    return code if isinstance(code, str) else None


# What a database error means for the service, by SQLSTATE (the same for every driver):
# - the connection is no use any more: the server is going away or is a standby, or the
#   session is read-only (a demoted primary after a failover) — replace it and its pool;
# - the server cannot serve now: out of connection slots, of disk, of memory;
# - the transaction lost a race: a serialization failure or a deadlock, worth retrying.
# Each is an outage to the caller (503 with Retry-After), never a 500.
_DISCARD = {"57P01", "57P02", "57P03", "25006", "53300", "08000", "08001", "08003", "08004", "08006", "08007"}
_UNAVAILABLE = {"53000", "53100", "53200", "53400", "58030", "57014"}
_RACE = {"40001", "40P01"}


def classify(e: BaseException) -> str | None:
    """`discard`, `unavailable`, `race`, or None (a bug or bad input, not an outage)."""
    code = sqlstate(e)
    if code is None:
        return None
    if code in _DISCARD or code.startswith("08"):
        return "discard"
    if code in _UNAVAILABLE:
        return "unavailable"
    if code in _RACE:
        return "race"
    return None


def set_autocommit(dbapi: Any, on: bool) -> None:
    """Turn autocommit on or off on a DBAPI connection that has no transaction open."""
    of(dbapi).set_autocommit(dbapi, on)


def closed_by_server(dbapi: Any) -> bool:
    """Whether the server closed (or said goodbye on) this idle connection."""
    return of(dbapi).closed_by_server(dbapi)


@contextmanager
def planned_each_time(dbapi: Any) -> Iterator[None]:
    """Statements run inside are planned for their values: not prepared, not from the prepared."""
    with of(dbapi).planned_each_time(dbapi):
        yield

"""A counting TCP proxy in front of PostgreSQL: round trips and statements, as on the wire.

Counting at the wire sees what a SQLAlchemy event would miss: the pool's pre-ping, pg8000's
implicit BEGIN, COMMIT and ROLLBACK, and how many times the driver waits for the server
per statement. A round trip is one burst of client data that ends in a message the client
must wait for the server to answer: a simple `Query` ('Q'), or a `Sync` ('S') closing an
extended-protocol exchange. Messages pipelined in one write (a BEGIN sent in front of a
statement, say) make one round trip, counted for the last of them. Statements are counted
as they run, from `Query` texts and from each `Bind` ('B'), sorted into kinds by the text
the `Parse` ('P') of that statement name carried (prepared statements are parsed once and
bound many times).

Used for one-off instrumented runs only: the proxy adds latency, so nothing timed goes
through it. Listens on loopback.
"""

from __future__ import annotations

import asyncio
import re
import struct
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy.engine import make_url

_SPECIAL_CODES = {80877103, 80877104}  # SSLRequest, GSSENCRequest: a startup follows


def kind_of(sql: str) -> str:
    """ping, begin, commit, rollback, or the statement's verb (insert, update, select, with, set)."""
    text = re.sub(r"^\s*(/\*.*?\*/\s*)*", "", sql, flags=re.S).strip().lower()  # past leading comments
    if text in ("select 1", "select 1;"):
        return "ping"
    if text.startswith(("begin", "start transaction")):
        return "begin"
    if text.startswith(("commit", "end")):
        return "commit"
    if text.startswith("rollback"):
        return "rollback"
    if text in ("", ";"):
        return "ping"  # SQLAlchemy's pg8000 dialect pings with an empty statement
    verb = re.match(r"[a-z]+", text)
    return verb.group(0) if verb else "other"


@dataclass
class Counts:
    """Messages seen from clients since the proxy started."""

    round_trips: int = 0
    kinds: Counter[str] = field(default_factory=Counter)  # statements by kind
    trips: Counter[str] = field(default_factory=Counter)  # round trips by kind
    connections: int = 0

    def snapshot(self) -> Counts:
        """A copy, to subtract later."""
        return Counts(self.round_trips, Counter(self.kinds), Counter(self.trips), self.connections)

    def since(self, earlier: Counts) -> Counts:
        """What happened after `earlier` was taken."""
        kinds, trips = Counter(self.kinds), Counter(self.trips)
        kinds.subtract(earlier.kinds)
        trips.subtract(earlier.trips)
        return Counts(
            self.round_trips - earlier.round_trips,
            +kinds,
            +trips,
            self.connections - earlier.connections,
        )

    @property
    def statements(self) -> int:
        """Statements that do work: everything but pings and transaction control."""
        return sum(
            # (a SET of plan_cache_mode rides with the statement it is for: api/store/pgfast.py)
            n for k, n in self.kinds.items() if k not in ("ping", "begin", "commit", "rollback", "set")
        )


class _Parser:
    """Follows one client's message stream and counts as messages complete."""

    def __init__(self, counts: Counts, lock: threading.Lock) -> None:
        self.buf = bytearray()
        self.started = False
        self.counts = counts
        self.lock = lock
        self.kind = "other"  # of the statement the next Sync belongs to
        self.statements: dict[bytes, str] = {}  # statement name (b"" unnamed) → kind
        self.waits_for: str | None = None  # the kind of the last Query or Sync of this burst

    def feed(self, data: bytes) -> None:
        self.buf += data
        self._read_messages()
        if self.waits_for is not None and not self.buf:
            # The burst ended: the client now waits for the server, once.
            with self.lock:
                self.counts.round_trips += 1
                self.counts.trips[self.waits_for] += 1
            self.waits_for = None

    def _read_messages(self) -> None:
        while True:
            if not self.started:
                if len(self.buf) < 8:
                    return
                (length,) = struct.unpack("!i", self.buf[:4])
                if len(self.buf) < length:
                    return
                (code,) = struct.unpack("!i", self.buf[4:8])
                del self.buf[:length]
                if code not in _SPECIAL_CODES:
                    self.started = True
                continue
            if len(self.buf) < 5:
                return
            tag = chr(self.buf[0])
            (length,) = struct.unpack("!i", self.buf[1:5])
            if len(self.buf) < 1 + length:
                return
            body = bytes(self.buf[5 : 1 + length])
            del self.buf[: 1 + length]
            self._message(tag, body)

    def _message(self, tag: str, body: bytes) -> None:
        with self.lock:
            if tag == "Q":
                kind = kind_of(body.rstrip(b"\0").decode(errors="replace"))
                self.counts.kinds[kind] += 1
                self.waits_for = kind
            elif tag == "S":
                self.waits_for = self.kind
            elif tag == "P":
                name, _, rest = body.partition(b"\0")
                sql, _, _ = rest.partition(b"\0")
                self.kind = self.statements[name] = kind_of(sql.decode(errors="replace"))
            elif tag == "B":
                # An execution: of the statement just parsed (unnamed) or of a prepared one.
                _portal, _, rest = body.partition(b"\0")
                name, _, _ = rest.partition(b"\0")
                self.kind = self.statements.get(name, "other")
                self.counts.kinds[self.kind] += 1


class CountingProxy:
    """`with CountingProxy(host, port) as proxy:` point a client at `proxy.port`."""

    def __init__(self, upstream_host: str, upstream_port: int, *, unix_sock: str | None = None) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.unix_sock = unix_sock  # the server's socket file, when it listens on one only
        self.counts = Counts()
        self.server_closes = 0  # connections the server ended, passed on to their client
        self.port = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="pgwire", daemon=True)
        self._server: asyncio.AbstractServer | None = None

    @classmethod
    def in_front_of(cls, url: str) -> CountingProxy:
        """A proxy for the server of a pg8000 URL: its host and port, or its `unix_sock`."""
        u = make_url(url)
        sock = u.query.get("unix_sock")
        return cls(u.host or "127.0.0.1", u.port or 5432, unix_sock=sock if isinstance(sock, str) else None)

    def url_through(self, url: str) -> str:
        """The same URL (database, user, password) pointed at this proxy."""
        u = make_url(url).difference_update_query(["unix_sock"]).set(host="127.0.0.1", port=self.port)
        return u.render_as_string(hide_password=False)

    def snapshot(self) -> Counts:
        """The counts so far."""
        with self._lock:
            return self.counts.snapshot()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._relay(reader, writer)
        except asyncio.CancelledError:
            # The proxy is stopping (see __exit__); a task left cancelled would have asyncio's
            # stream callback log an error for it.
            writer.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self.unix_sock:
                up_reader, up_writer = await asyncio.open_unix_connection(self.unix_sock)
            else:
                up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        with self._lock:
            self.counts.connections += 1
        parser = _Parser(self.counts, self._lock)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, count: bool) -> None:
            try:
                while data := await src.read(65536):
                    if count:
                        parser.feed(data)
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()
                if not count:
                    with self._lock:
                        self.server_closes += 1

        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def __enter__(self) -> CountingProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()
            # Connections a client left open end here, on a running loop: a pending task left
            # for the garbage collector would run its `finally` later, in whatever thread
            # collects it, against a loop that has stopped.
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@contextmanager
def counting(proxy: CountingProxy) -> Iterator[Counts]:
    """The counts of what happens inside the block (filled in when it ends)."""
    before = proxy.snapshot()
    result = Counts()
    yield result
    after = proxy.snapshot().since(before)
    result.round_trips, result.kinds, result.trips = after.round_trips, after.kinds, after.trips
    result.connections = after.connections

"""Fixtures: an in-process emulator, the real client over gRPC, and recording HTTP targets."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp import web
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.cloud import tasks_v2

from emulator import Emulator
from emulator.oidc import SigningKey
from tests.servers import BurstHTTPServer

LOCATION = "projects/test-project/locations/us-central1"


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0,
               interval: float = 0.01) -> Any:
    """Poll ``predicate`` until it is truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


@dataclass
class Received:
    """One request a target received."""

    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    at: float  # time.monotonic() on arrival


# (request, index of the request on its path) -> status, (status, seconds to hang first), or
# None to close the connection without answering.
Responder = Callable[[Received, int], "int | tuple[int, float] | None"]


@dataclass
class Target:
    """A local HTTP server that records requests and answers as ``respond`` says."""

    server: ThreadingHTTPServer
    requests: list[Received] = field(default_factory=list)
    respond: Responder = lambda request, n: 200
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    active: int = 0  # requests being handled now
    max_active: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def base(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.server.server_port}"

    def url(self, path: str = "/run") -> str:
        """A URL on this server."""
        return self.base + path

    def on(self, path: str) -> list[Received]:
        """Requests received on ``path`` so far."""
        with self.lock:
            return [r for r in self.requests if r.path == path]

    def wait_for(self, n: int, path: str = "/run", timeout: float = 5.0) -> list[Received]:
        """Wait until ``path`` has received ``n`` requests; return them."""
        wait_until(lambda: len(self.on(path)) >= n, timeout)
        return self.on(path)


def _handler_class(target: Target) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in separate writes; without this, Nagle and delayed ACKs
        # add 40 ms to every keep-alive request.
        disable_nagle_algorithm = True

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            received = Received(self.command, self.path,
                                {k.lower(): v for k, v in self.headers.items()}, body,
                                time.monotonic())
            with target.lock:
                n = target.counts.get(self.path, 0)
                target.counts[self.path] = n + 1
                target.requests.append(received)
                target.active += 1
                target.max_active = max(target.max_active, target.active)
            try:
                answer = target.respond(received, n)
                if answer is None:
                    self.close_connection = True
                    return
                status, delay = answer if isinstance(answer, tuple) else (answer, 0.0)
                if delay:
                    # Hang like a slow handler; released early at teardown.
                    target.release.wait(delay)
            finally:
                with target.lock:
                    target.active -= 1
            try:
                body = b"" if self.command == "HEAD" else b"ok"
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except OSError:
                pass  # the emulator gave up on us (deadline or shutdown)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def make_target() -> Iterator[Callable[[], Target]]:
    """Factory of recording HTTP servers, each in its own thread."""
    targets: list[Target] = []

    def make() -> Target:
        server = BurstHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
        target = Target(server)
        server.RequestHandlerClass = _handler_class(target)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                         daemon=True).start()
        targets.append(target)
        return target

    yield make
    for t in targets:
        t.release.set()
        t.server.shutdown()
        t.server.server_close()


@pytest.fixture
def target(make_target: Callable[[], Target]) -> Target:
    """A recording HTTP server that answers 200 unless told otherwise."""
    return make_target()


@pytest.fixture(scope="session")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One signing key for the session: generating RSA keys per test is slow."""
    path = tmp_path_factory.mktemp("key") / "key.pem"
    path.write_text(SigningKey.generate().private_pem)
    return path


@pytest.fixture
def make_emulator(key_file: Path, target: Target) -> Iterator[Callable[..., Emulator]]:
    """Factory of running emulators (keyword arguments go to ``Emulator``); all stopped after."""
    started: list[Emulator] = []

    def make(**kwargs: Any) -> Emulator:
        kwargs.setdefault("app_engine_host", target.base)
        emu = Emulator(port=0, http_port=0, key_file=key_file, **kwargs).start()
        started.append(emu)
        return emu

    yield make
    for emu in started:
        emu.stop()


@pytest.fixture
def emulator(make_emulator: Callable[..., Emulator]) -> Emulator:
    """A running emulator whose App Engine host is the ``target`` server."""
    return make_emulator()


def client_for(emu: Emulator, transport: str = "grpc", version: Any = tasks_v2) -> Any:
    """The real google-cloud-tasks client (``version``: tasks_v2 or tasks_v2beta3) to ``emu``,
    over an insecure gRPC channel or over REST to its HTTP port, anonymous, as a user would
    point either at it."""
    if transport == "rest":
        return version.CloudTasksClient(transport="rest", credentials=AnonymousCredentials(),
                                        client_options={"api_endpoint": emu.http_url})
    channel = grpc.insecure_channel(emu.address)
    grpc_transport = version.services.cloud_tasks.transports.CloudTasksGrpcTransport
    return version.CloudTasksClient(transport=grpc_transport(channel=channel))


@pytest.fixture(params=["grpc", "rest"])
def transport(request: pytest.FixtureRequest) -> str:
    """Each behaviour check runs through both of the client's transports."""
    return str(request.param)


@pytest.fixture
def client(emulator: Emulator, transport: str) -> Iterator[tasks_v2.CloudTasksClient]:
    """The real client, connected to ``emulator`` over gRPC, then (a second run) REST."""
    c = client_for(emulator, transport)
    yield c
    c.transport.close()


_names = itertools.count()


@pytest.fixture
def make_queue(client: tasks_v2.CloudTasksClient) -> Callable[..., tasks_v2.Queue]:
    """Create a queue with a unique name; keyword arguments are Queue fields."""

    def make(**fields: Any) -> tasks_v2.Queue:
        name = f"{LOCATION}/queues/q-{next(_names)}"
        return client.create_queue(parent=LOCATION, queue={"name": name, **fields})

    return make


@pytest.fixture
def queue(make_queue: Callable[..., tasks_v2.Queue]) -> tasks_v2.Queue:
    """A queue with Google's defaults."""
    return make_queue()


@dataclass
class CountingTarget:
    """An aiohttp server on its own loop and thread that answers 200 and counts, for speed."""

    url: str
    count: Callable[[], int]


@pytest.fixture
def counting_target() -> Iterator[CountingTarget]:
    """A fast no-op target: the threaded ``Target`` is too slow to measure throughput."""
    loop = asyncio.new_event_loop()
    hits = [0]

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        hits[0] += 1
        return web.Response(text="ok")

    async def serve() -> web.AppRunner:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return runner

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    runner = asyncio.run_coroutine_threadsafe(serve(), loop).result(5)
    port = runner.addresses[0][1]
    yield CountingTarget(f"http://127.0.0.1:{port}/run", lambda: hits[0])
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


@contextlib.contextmanager
def refused(status: str, match: str | None = None) -> Iterator[pytest.ExceptionInfo[Any]]:
    """Expect the call to be refused with google.rpc code ``status`` (a name such as
    ``INVALID_ARGUMENT``), over either transport: gRPC carries the code, REST the HTTP status
    and Google's JSON error body, whose ``status`` names it. A name no URL template can carry
    never leaves the REST client: it refuses it itself (ValueError), as against Google."""
    with pytest.raises((gexc.GoogleAPICallError, ValueError)) as info:
        yield info
    err = info.value
    if isinstance(err, ValueError):
        assert "accepted HTTP binding" in str(err) and status == "INVALID_ARGUMENT", err
        return
    if err.response is not None and hasattr(err.response, "json"):
        assert err.response.json()["error"]["status"] == status, err.response.text
    else:
        assert err.grpc_status_code is not None and err.grpc_status_code.name == status, err
    if match is not None:
        assert re.search(match, err.message), err.message

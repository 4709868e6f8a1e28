"""Fixtures: an in-process emulator, the real client over gRPC, and recording HTTP targets."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.cloud import tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

from emulator import Emulator
from emulator.oidc import SigningKey

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


Responder = Callable[[Received, int], "int | tuple[int, float]"]


@dataclass
class Target:
    """A local HTTP server that records requests and answers as ``respond`` says."""

    server: ThreadingHTTPServer
    requests: list[Received] = field(default_factory=list)
    # (request, index of the request on its path) -> status, or (status, seconds to wait)
    respond: Responder = lambda request, n: 200
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

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

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            received = Received(self.command, self.path,
                                {k.lower(): v for k, v in self.headers.items()}, body,
                                time.monotonic())
            with target.lock:
                n = sum(1 for r in target.requests if r.path == self.path)
                target.requests.append(received)
            answer = target.respond(received, n)
            status, delay = answer if isinstance(answer, tuple) else (answer, 0.0)
            if delay:
                # Hang like a slow handler; released early at teardown.
                target.release.wait(delay)
            try:
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")
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
        server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
        server.daemon_threads = True
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
def emulator(key_file: Path, target: Target) -> Iterator[Emulator]:
    """A running emulator whose App Engine host is the ``target`` server."""
    emu = Emulator(port=0, http_port=0, app_engine_host=target.base, key_file=key_file)
    with emu:
        yield emu


@pytest.fixture
def client(emulator: Emulator) -> Iterator[tasks_v2.CloudTasksClient]:
    """The real google-cloud-tasks client, over an insecure channel to the emulator."""
    channel = grpc.insecure_channel(emulator.address)
    yield tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))
    channel.close()


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

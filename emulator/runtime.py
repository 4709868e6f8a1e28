"""The ``Emulator``: a gRPC server and an asyncio loop (dispatcher + certs endpoint) in threads."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from aiohttp import web
from google.cloud.tasks_v2 import types as T

from emulator import rest
from emulator.appengine import AppEngineRoutes
from emulator.clock import RealClock
from emulator.dispatch import Dispatcher
from emulator.durable import SqliteJournal
from emulator.oidc import CERTS_V1_PATH, CERTS_V3_PATH, SigningKey, TokenIssuer, certs_app
from emulator.oidc import ISSUER as DEFAULT_ISSUER
from emulator.rpc import generic_handler
from emulator.scheduler import CloudSchedulerService, SchedulerDispatcher, SchedulerState
from emulator.server import LOCATIONS_SERVICE, OPERATIONS_SERVICE, CloudTasksService
from emulator.server import SERVICE as TASKS_SERVICE
from emulator.state import State
from emulator.validation import DEFAULT_MAX_DISPATCHES_PER_SECOND, QUEUE_TOMBSTONE_S
from emulator.versions import SERVICE as BETA_SERVICE
from emulator.versions import BetaService

logger = logging.getLogger("emulator")

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
# A batch of 100 tasks of up to 1 MB each must fit in one request.
MAX_MESSAGE_BYTES = 128 * 1024 * 1024


def queues_from_file(path: str | Path, project: str, location: str) -> list[Any]:
    """The Cloud Tasks queues a cloudjobs queues.yaml declares (docs/queues.md), in
    ``projects/PROJECT/locations/LOCATION``; ValueError if the file is not one."""
    from api.cloud.queues import Queues, QueuesInvalid
    from api.cloud.tasks import build_queue
    from api.config import Config

    try:
        specs = Queues.load(Path(path)).specs.values()
    except QueuesInvalid as e:
        raise ValueError(str(e)) from None
    config = Config(project=project, location=location)
    return [T.Queue.pb(build_queue(config, spec)) for spec in specs]


class Emulator:
    """A local Cloud Tasks v2 and Cloud Scheduler v1 server: ``start()``, point a client at
    ``address``, ``stop()``."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        http_port: int = 0,
        dedup_window_s: float = 3600.0,
        app_engine_host: str = "http://127.0.0.1:8080",
        *,
        app_engine_services: dict[str, str] | None = None,
        state_dir: str | Path | None = None,
        verify_tls: bool = True,
        oidc_issuer: str = DEFAULT_ISSUER,
        key_file: str | Path | None = None,
        queue_tombstone_s: float = QUEUE_TOMBSTONE_S,
        max_dispatch_rate: float | None = DEFAULT_MAX_DISPATCHES_PER_SECOND,
        grpc_workers: int = 16,
        clock: RealClock | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.http_port = http_port
        self.app_engine_host = app_engine_host
        self.key = SigningKey.from_file(key_file) if key_file else SigningKey.generate()
        self.issuer = TokenIssuer(self.key, oidc_issuer)
        # Time for schedules, backoff, deadlines, windows and rate limits: a test may pass a
        # ManualClock (emulator/clock.py) and advance it instead of sleeping.
        self.clock = clock or RealClock()
        self.state = State(dedup_window_s=dedup_window_s, queue_tombstone_s=queue_tombstone_s,
                           max_dispatch_rate=max_dispatch_rate,
                           app_engine=AppEngineRoutes(app_engine_host, app_engine_services),
                           clock=self.clock.time, monotonic=self.clock.monotonic)
        self.dispatcher = Dispatcher(self.state, id_token=self.issuer.id_token, clock=self.clock,
                                     verify_tls=verify_tls)
        self.state.hooks = self.dispatcher
        # Queues, tasks and tombstones kept across restarts (emulator/durable.py), if asked.
        self.journal: SqliteJournal | None = None
        self.restored_tasks = 0
        if state_dir is not None:
            self.journal = SqliteJournal(state_dir)
            self.state.journal = self.journal
            self.restored_tasks = self.journal.load(self.state)
        # Cloud Scheduler v1, on the same port and clock (emulator/scheduler.py).
        self.scheduler = SchedulerState(clock=self.clock)
        self.scheduler_dispatcher = SchedulerDispatcher(self.scheduler, id_token=self.issuer.id_token,
                                                        app_engine_host=app_engine_host, clock=self.clock)
        # One table of methods per service, served over gRPC and REST alike.
        self.tasks_service = CloudTasksService(self.state)
        self.tasks_methods = self.tasks_service.methods()
        self.beta_methods = BetaService(self.state, self.tasks_methods[TASKS_SERVICE]).methods()
        self.scheduler_service = CloudSchedulerService(self.scheduler)
        self._grpc_workers = grpc_workers
        self._server: grpc.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._started = False

    @property
    def address(self) -> str:
        """``host:port`` of the gRPC server, for ``grpc.insecure_channel``."""
        return f"{self.host}:{self.port}"

    @property
    def http_url(self) -> str:
        """Base URL of the emulator's HTTP endpoint (the certs)."""
        return f"http://{self.host}:{self.http_port}"

    @property
    def certs_url(self) -> str:
        """The PEM certificates, as ``https://www.googleapis.com/oauth2/v1/certs`` serves them."""
        return self.http_url + CERTS_V1_PATH

    @property
    def jwks_url(self) -> str:
        """The same keys as a JWKS document, like ``.../oauth2/v3/certs``."""
        return self.http_url + CERTS_V3_PATH

    def start(self) -> Emulator:
        """Start the loop thread (dispatcher, certs endpoint) and the gRPC server; non-blocking."""
        if self._started:
            return self
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="emulator-loop", daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._astart(), self._loop).result(START_TIMEOUT_S)
            self._start_grpc()
            if self.journal is not None:
                self.journal.start()
        except BaseException:
            self._started = True
            self.stop()
            raise
        self._started = True
        logger.info("Cloud Tasks emulator on %s (Cloud Scheduler too), certs at %s", self.address, self.certs_url)
        return self

    def _start_grpc(self) -> None:
        server = grpc.server(
            concurrent.futures.ThreadPoolExecutor(
                max_workers=self._grpc_workers, thread_name_prefix="emulator-grpc"
            ),
            options=[
                # Without this a second emulator could bind the same port and share traffic.
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        server.add_generic_rpc_handlers([
            *(generic_handler(name, methods) for name, methods in self.tasks_methods.items()),
            generic_handler(BETA_SERVICE, self.beta_methods),
            self.scheduler_service.generic_handler()])
        try:
            port = server.add_insecure_port(f"{self.host}:{self.port}")
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {self.host}:{self.port}: {exc}") from exc
        if port == 0:
            raise OSError(f"cannot listen on {self.host}:{self.port}")
        self.port = port
        server.start()
        self._server = server

    def _run_loop(self) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    async def _astart(self) -> None:
        await self.dispatcher.start()
        await self.scheduler_dispatcher.start()
        # Certificates are fetched rarely; a short shutdown wait keeps stop() prompt.
        self._runner = web.AppRunner(self._http_app(), access_log=None, shutdown_timeout=0.25)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.http_port)
        await site.start()
        sockets = self._runner.addresses
        self.http_port = sockets[0][1]

    def _http_app(self) -> web.Application:
        """The HTTP port: the certs, then Cloud Tasks v2 and v2beta3 and Cloud Scheduler v1
        as REST/JSON (emulator/rest.py)."""
        methods = self.tasks_methods
        mixins = {**methods[OPERATIONS_SERVICE], **methods[LOCATIONS_SERVICE]}
        front = rest.RestFront(
            rest.routes("v2", rest.TASKS_ROUTES, {**methods[TASKS_SERVICE], **mixins})
            + rest.routes("v2beta3", rest.TASKS_ROUTES, {**self.beta_methods, **mixins})
            + rest.routes("v1", rest.SCHEDULER_ROUTES,
                          {**self.scheduler_service.methods(), **methods[LOCATIONS_SERVICE]}),
            extra={("POST", rest.BUFFER_PATH): rest.buffer_task(self.state)})
        app = certs_app(self.key, client_max_size=MAX_MESSAGE_BYTES, issuer=self.issuer.issuer)
        app.router.add_route("*", "/{path:.*}", front.handle)
        return app

    async def _astop(self) -> None:
        await self.dispatcher.close()
        await self.scheduler_dispatcher.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def stop(self) -> None:
        """Stop accepting RPCs, cancel in-flight dispatches, close everything; returns promptly."""
        if not self._started:
            return
        self._started = False
        if self._server is not None:
            # grace=None cancels RPCs in progress at once.
            self._server.stop(grace=None).wait(STOP_TIMEOUT_S)
            self._server = None
        loop, thread = self._loop, self._thread
        if loop is not None and loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(self._astop(), loop).result(STOP_TIMEOUT_S)
            except (concurrent.futures.TimeoutError, RuntimeError):
                logger.warning("emulator loop did not stop cleanly within %.0fs", STOP_TIMEOUT_S)
            loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(STOP_TIMEOUT_S)
        self._loop = None
        self._thread = None
        if self.journal is not None:
            self.journal.close()  # what changed last is written
            self.journal = None

    def ensure_queues(self, queues: list[Any]) -> list[str]:
        """Create each queue, or update it to these settings if it exists (a restart with
        --state-dir); one line per queue saying which."""
        lines = []
        for queue in queues:
            parent = queue.name.rsplit("/queues/", 1)[0]
            if queue.name in self.state.queues:
                self.state.update_queue(queue, ["rate_limits", "retry_config"])
                lines.append(f"queue {queue.name}: updated")
            else:
                self.state.create_queue(parent, queue)
                lines.append(f"queue {queue.name}: created")
        return lines

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

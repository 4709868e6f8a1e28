"""The HTTP dispatcher: an asyncio loop that sends due tasks with aiohttp.

Each queue has one pump coroutine. It sleeps until something can change what it may send
(a wake from a gRPC thread, an attempt finishing, the schedule head coming due, or the next
rate-limit token), then starts every attempt it may start. Attempts run as their own
coroutines through one shared ``aiohttp.ClientSession``, so a hanging handler only holds the
concurrency slots of its own queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import grpc
from google.cloud.tasks_v2 import types as T

from emulator.appengine import AppEngineRoutes
from emulator.clock import RealClock
from emulator.state import APP_ENGINE_USER_AGENT, HTTP_USER_AGENT, Attempt, QueueRecord, State

logger = logging.getLogger("emulator")

# Attempts a pump starts before yielding to the loop, so one busy queue cannot starve others.
PUMP_BATCH = 256
SWEEP_INTERVAL_S = 30.0
# Headers Cloud Tasks computes or reserves; a task's own values for them are dropped.
_COMPUTED = {"host", "content-length", "user-agent"}
_RESERVED_PREFIXES = ("x-google-", "x-appengine-", "x-cloudtasks-")
_IF_NOT_EXISTS = int(T.UriOverride.UriOverrideEnforceMode.IF_NOT_EXISTS)
_SCHEME_HTTP = int(T.UriOverride.Scheme.HTTP)


@dataclass(frozen=True)
class Request:
    """An HTTP request ready to send."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None
    follow_redirects: bool


def apply_uri_override(url: str, uo: Any) -> str:
    """Apply a queue's UriOverride: ALWAYS replaces each given part, IF_NOT_EXISTS fills gaps."""
    parts = urlsplit(url)
    always = uo.uri_override_enforce_mode != _IF_NOT_EXISTS
    scheme, host, port = parts.scheme, parts.hostname or "", parts.port
    path, query = parts.path, parts.query
    if uo.HasField("scheme") and (always or not scheme):
        # An unspecified scheme means HTTPS.
        scheme = "http" if uo.scheme == _SCHEME_HTTP else "https"
    if uo.HasField("host") and (always or not host):
        host = uo.host
    if uo.HasField("port") and (always or port is None):
        port = uo.port or None  # 0 clears the port
    if uo.HasField("path_override") and (always or path in ("", "/")):
        path = uo.path_override.path
    if uo.HasField("query_override") and (always or not query):
        query = uo.query_override.query_params
    netloc = f"{host}:{port}" if port else host
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    return urlunsplit((scheme, netloc, path, query, parts.fragment))


def build_request(
    attempt: Attempt, *, app_engine: AppEngineRoutes, id_token: Callable[[str, str], str]
) -> Request:
    """The HTTP request for an attempt: the task's own method, headers and body, plus the
    headers Cloud Tasks adds (task metadata, User-Agent, Authorization)."""
    target = attempt.target
    headers: dict[str, str] = {}
    for key, value in target.headers:
        low = key.lower()
        if low in _COMPUTED or low.startswith(_RESERVED_PREFIXES):
            continue
        headers[key] = value
    method, url = target.method, target.url
    oidc, oauth = target.oidc, target.oauth
    if target.app_engine:
        prefix = "X-AppEngine-"
        url = app_engine.base(*attempt.routing) + url
        own_agent = next((v for k, v in target.headers if k.lower() == "user-agent"), "")
        # Google appends its own agent to one the task sets.
        headers["User-Agent"] = f"{own_agent} {APP_ENGINE_USER_AGENT}".strip()
        if target.body and not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = "application/octet-stream"
    else:
        prefix = "X-CloudTasks-"
        ht = attempt.http_target
        if ht is not None:
            if ht.HasField("uri_override"):
                url = apply_uri_override(url, ht.uri_override)
            if ht.http_method:
                method = T.HttpMethod(ht.http_method).name
            for override in ht.header_overrides:
                for k in [k for k in headers if k.lower() == override.header.key.lower()]:
                    del headers[k]
                headers[override.header.key] = override.header.value
            # A queue-level token replaces the task's.
            if ht.HasField("oidc_token"):
                oidc = (ht.oidc_token.service_account_email, ht.oidc_token.audience)
                oauth = None
            elif ht.HasField("oauth_token"):
                oauth = (ht.oauth_token.service_account_email, ht.oauth_token.scope)
                oidc = None
        headers["User-Agent"] = HTTP_USER_AGENT
    headers[prefix + "QueueName"] = attempt.queue_id
    headers[prefix + "TaskName"] = attempt.task_id
    headers[prefix + "TaskRetryCount"] = str(attempt.retry_count)
    headers[prefix + "TaskExecutionCount"] = str(attempt.execution_count)
    headers[prefix + "TaskETA"] = f"{attempt.eta:.6f}"
    if attempt.previous_response is not None:
        headers[prefix + "TaskPreviousResponse"] = str(attempt.previous_response)
        headers[prefix + "TaskRetryReason"] = attempt.retry_reason or ""
    if oidc is not None:
        email, audience = oidc
        headers["Authorization"] = "Bearer " + id_token(email, audience or url)
    elif oauth is not None:
        headers["Authorization"] = f"Bearer emulator-oauth-token-{oauth[1]}"
    # GET (and a queue override to GET) sends no body.
    body = target.body if method in ("POST", "PUT", "PATCH") and target.body else None
    return Request(method, url, headers, body, follow_redirects=not target.app_engine)


class Dispatcher:
    """Runs on the emulator's event loop; the ``Hooks`` methods are safe from any thread."""

    def __init__(self, state: State, *, id_token: Callable[[str, str], str],
                 clock: RealClock | None = None, verify_tls: bool = True) -> None:
        self.state = state
        # False: HTTPS handlers with self-signed certificates are accepted (local use only).
        self.verify_tls = verify_tls
        self.clock = clock or RealClock()
        self.id_token = id_token
        self.loop: asyncio.AbstractEventLoop | None = None
        self.session: aiohttp.ClientSession | None = None
        self._pumps: dict[QueueRecord, asyncio.Task[None]] = {}
        self._attempts: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._closing = False

    # Hooks: called from gRPC threads (or the loop) with the state lock held.

    def queue_added(self, q: QueueRecord) -> None:
        """Start a pump for a new queue."""
        self._call(self._start_pump, q)

    def wake(self, q: QueueRecord) -> None:
        """Ask a queue's pump to look again; wakes are coalesced."""
        if not q.wake_pending:
            q.wake_pending = True
            self._call(self._set_event, q)

    def run_now(self, attempt: Attempt) -> None:
        """Send an attempt at once (RunTask)."""
        self._call(self._launch, attempt)

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        if self._closing or self.loop is None:
            return
        # The loop may close under us during shutdown.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(fn, *args)

    # On the loop.

    async def start(self) -> None:
        """Open the HTTP session and start pumps for queues that already exist."""
        self.loop = asyncio.get_running_loop()
        self.session = aiohttp.ClientSession(
            # Per-queue limits are ours to enforce; the pool only reuses connections.
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300,
                                           ssl=self.verify_tls),
            # Cloud Tasks keeps no cookies between tasks.
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
        )
        with self.state.lock:
            existing = list(self.state.queues.values())
        for q in existing:
            self._start_pump(q)
        self._sweeper = asyncio.create_task(self._sweep_forever())

    async def close(self) -> None:
        """Cancel pumps and in-flight attempts and close the session."""
        self._closing = True
        tasks = [*self._pumps.values(), *self._attempts]
        if self._sweeper is not None:
            tasks.append(self._sweeper)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._pumps.clear()
        self._attempts.clear()
        if self.session is not None:
            await self.session.close()

    def _set_event(self, q: QueueRecord) -> None:
        if q.event is not None:
            q.event.set()

    def _start_pump(self, q: QueueRecord) -> None:
        if self._closing or q in self._pumps:
            return
        q.event = asyncio.Event()
        task = asyncio.create_task(self._pump(q), name=f"pump {q.name}")
        self._pumps[q] = task
        task.add_done_callback(functools.partial(self._pump_done, q))

    def _pump_done(self, q: QueueRecord, task: asyncio.Task[None]) -> None:
        self._pumps.pop(q, None)

    async def _pump(self, q: QueueRecord) -> None:
        event: asyncio.Event = q.event
        while True:
            event.clear()
            attempts, wait, alive = self.state.take_due(q, PUMP_BATCH)
            if not alive:
                return
            for attempt in attempts:
                self._launch(attempt)
            if wait == 0:
                await asyncio.sleep(0)
                continue
            if wait is None:
                await event.wait()
                continue
            await self.clock.wait(event, wait)

    def _launch(self, attempt: Attempt) -> None:
        if self._closing:
            return
        task = asyncio.create_task(self._attempt(attempt))
        self._attempts.add(task)
        task.add_done_callback(self._attempts.discard)

    async def _attempt(self, attempt: Attempt) -> None:
        assert self.session is not None
        started = time.monotonic()
        status: int | None = None
        error: grpc.StatusCode | None = None
        message = ""
        try:
            req = build_request(attempt, app_engine=self.state.app_engine, id_token=self.id_token)
            # The dispatch deadline on the emulator's clock (a test's manual one advances it).
            status = await self.clock.within(attempt.deadline_s, self._send(req))
        except TimeoutError:
            error, message = grpc.StatusCode.DEADLINE_EXCEEDED, "Dispatch deadline exceeded"
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            # Refused, reset, bad URL: no answer, retried like a timeout.
            error = grpc.StatusCode.UNAVAILABLE
            message = f"{type(exc).__name__}: {exc}"
        except Exception as exc:
            # A bug of ours must still end the attempt, or its concurrency slot would leak;
            # it is recorded as a failed attempt and retried, never as a success.
            logger.exception("dispatch of %s/%s failed", attempt.queue_id, attempt.task_id)
            error, message = grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}"
        latency_ms = (time.monotonic() - started) * 1000
        outcome = self.state.finish_attempt(attempt, status, error, message)
        logger.info(
            "dispatch queue=%s task=%s attempt=%d status=%s latency_ms=%.1f outcome=%s%s",
            attempt.queue_id, attempt.task_id, attempt.retry_count + 1,
            status if status is not None else error.name if error else "-",
            latency_ms, outcome, " (run_task)" if attempt.forced else "",
        )
        # A slot is free and a retry may be due sooner than the pump planned to look.
        if attempt.queue.event is not None:
            attempt.queue.event.set()

    async def _send(self, req: Request) -> int:
        assert self.session is not None
        # Cloud Tasks sets no Content-Type an HTTP task did not set (aiohttp would add one).
        async with self.session.request(
            req.method, req.url, headers=req.headers, data=req.body,
            allow_redirects=req.follow_redirects, timeout=aiohttp.ClientTimeout(total=None),
            skip_auto_headers=() if any(k.lower() == "content-type" for k in req.headers) else ("Content-Type",),
        ) as resp:
            await resp.read()
            return resp.status

    async def _sweep_forever(self) -> None:
        while True:
            await self.clock.sleep(SWEEP_INTERVAL_S)
            self.state.sweep()

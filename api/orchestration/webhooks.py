"""Completion webhooks: a job's terminal state POSTed to its callback URL, signed per the
Standard Webhooks specification, delivered through Cloud Tasks (docs/webhooks.md).

- **One event per terminal transition.** The trigger `jobs_webhook_event` writes the event in
  the transaction that ends the job (api/store/webhooks.py); its id is the `webhook-id` of
  every delivery, so a receiver de-duplicates retries by it.
- **Delivered through its own queue** (`WEBHOOK_QUEUE`, `webhooks` in queues.yaml): a task
  per event, named after it (created twice, it is one task), to POST /handlers/webhook, which
  makes one delivery attempt and answers 500 to have the queue retry a failed one. The
  queue's retry config decides how often and for how long; every attempt is recorded.
- **Signed** with `standardwebhooks` (`webhook-signature: v1,<base64 HMAC-SHA256 of
  id.timestamp.body>`), once per secret of `WEBHOOK_SECRETS`: the first is the new one, and
  during a rotation the receiver finds the one it knows among the space-separated signatures.
- **SSRF.** https only (http too with `WEBHOOK_ALLOW_PRIVATE=true`, which dev sets); no
  loopback, private, link-local or otherwise non-global address unless allowed; never the
  metadata server's, allowed or not. Checked on the URL at creation and on every address the
  name resolves to at delivery, and the connection goes to the address that was checked
  (a name that resolves elsewhere a second time cannot redirect it). Redirects are not
  followed; the answer is read up to 64 kB within the timeout.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import urllib3
from google.api_core import exceptions as gexc
from sqlalchemy.engine import Row
from standardwebhooks.webhooks import Webhook

from api.cloud.tasks import build_task, task_path
from api.observability import metrics
from api.state import AppState
from api.store import webhooks as store
from api.store.engine import autocommit

logger = logging.getLogger(__name__)

METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata", "metadata.goog"})
METADATA_ADDRESSES = frozenset({ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")})
MAX_RESPONSE_BYTES = 64 * 1024
USER_AGENT = "cloudjobs-webhooks/1"


class Refused(Exception):
    """A callback URL, or an address it resolves to, that cloudjobs will not call (SSRF)."""


def _address_refused(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, *, allow_private: bool) -> str | None:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in METADATA_ADDRESSES:
        return "the metadata server's address is never called"
    if not ip.is_global and not allow_private:
        return f"{ip} is not a public address (WEBHOOK_ALLOW_PRIVATE=true allows it, for development)"
    if ip.is_multicast or ip.is_unspecified:
        return f"{ip} cannot be called"
    return None


def check_url(url: str, *, allow_private: bool) -> str | None:
    """Why a callback URL is refused, or None: the checks that need no DNS."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        return f"not a URL: {e}"
    allowed = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in allowed:
        return "must be an https URL" + ("" if allow_private else " (http with WEBHOOK_ALLOW_PRIVATE=true)")
    if parts.username or parts.password:
        return "may not hold credentials"
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        return "has no host"
    if host in METADATA_HOSTS:
        return "the metadata server is never called"
    if port == 0:
        return "port 0 cannot be called"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if not allow_private and (host == "localhost" or host.endswith((".localhost", ".internal", ".local"))):
            return f"{host} is not a public name (WEBHOOK_ALLOW_PRIVATE=true allows it, for development)"
        return None
    return _address_refused(ip, allow_private=allow_private)


def resolve(host: str, port: int, *, allow_private: bool) -> str:
    """The address to connect to: every address the name resolves to must pass, or none is used."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise ConnectionError(f"{host} does not resolve: {e}") from None
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    for ip in addresses:
        if why := _address_refused(ip, allow_private=allow_private):
            raise Refused(f"{host} resolves to {ip}: {why}")
    return str(addresses[0])


def sign(secrets: tuple[str, ...], msg_id: str, timestamp: datetime, body: bytes) -> str:
    """The webhook-signature header: one `v1,…` per secret, space-separated."""
    return " ".join(Webhook(secret).sign(msg_id, timestamp, body) for secret in secrets)


@dataclass(frozen=True)
class Answer:
    """How a delivery went."""

    status: int | None
    error: str | None
    refused: bool = False

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def post(url: str, body: bytes, headers: dict[str, str], *, allow_private: bool, timeout_s: float) -> Answer:
    """POST `body` to `url` once: to the address that passed the checks, no redirects, the
    answer read up to MAX_RESPONSE_BYTES, within `timeout_s`."""
    if why := check_url(url, allow_private=allow_private):
        return Answer(None, f"refused: {why}", refused=True)
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        address = resolve(host, port, allow_private=allow_private)
    except Refused as e:
        return Answer(None, f"refused: {e}", refused=True)
    except ConnectionError as e:
        return Answer(None, str(e))
    timeout = urllib3.Timeout(total=timeout_s)
    pool: urllib3.HTTPConnectionPool
    if parts.scheme == "https":
        pool = urllib3.HTTPSConnectionPool(address, port, server_hostname=host, assert_hostname=host,
                                           cert_reqs="CERT_REQUIRED", timeout=timeout, retries=False, maxsize=1)
    else:
        pool = urllib3.HTTPConnectionPool(address, port, timeout=timeout, retries=False, maxsize=1)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    default_port = port == (443 if parts.scheme == "https" else 80)
    headers = {**headers, "Host": host if default_port else f"{host}:{port}"}
    try:
        response = pool.urlopen("POST", target, body=body, headers=headers, redirect=False,
                                preload_content=False, retries=False, timeout=timeout)
        try:
            response.read(MAX_RESPONSE_BYTES)
        finally:
            response.close()
    except urllib3.exceptions.HTTPError as e:
        # The class says what went wrong; its text would quote the URL, which may hold a token.
        return Answer(None, type(e).__name__)
    finally:
        pool.close()
    status = response.status
    return Answer(status, None if 200 <= status < 300 else f"HTTP {status}")


def event_type(state: str) -> str:
    """The event's `type`: job.completed, job.failed or job.cancelled."""
    return f"job.{state.lower()}"


def event_body(event: Row[Any], job: dict[str, Any]) -> bytes:
    """The body of every delivery of an event: Standard Webhooks' {type, timestamp, data}, the
    job resource as data."""
    return json.dumps({"type": event_type(event.state), "timestamp": event.created_time.isoformat(),
                       "data": job}, separators=(",", ":")).encode()


def send(state: AppState, job_ids: list[Any] | None = None, *, older_than_s: float = 0) -> int:
    """Create the delivery tasks of events not yet sent (of these jobs, or older than a while);
    how many were sent. An event whose task cannot be created now stays unsent for the sweeper."""
    if not state.config.webhook_secrets:
        return 0
    with autocommit(state.engine) as conn:
        events = store.unsent(conn, job_ids=job_ids, older_than_s=older_than_s)
    if not events:
        return 0
    queue = state.config.webhook_queue
    spec = state.queues.specs.get(queue)
    if spec is None:
        logger.warning("no webhook queue in queues.yaml: webhooks wait", extra={"queue": queue})
        return 0
    sent = []
    for event in events:
        task = build_task(job_id=event.id, task_name=task_path(state.config, queue, f"webhook-{event.id}"),
                          config=state.config, spec=spec, timeout_s=int(state.config.webhook_timeout_s) + 5,
                          path="/handlers/webhook", body=json.dumps({"event_id": event.id}).encode())
        try:
            state.tasks.create_task(task, queue=queue)  # ALREADY_EXISTS counts as sent
        except gexc.GoogleAPIError as e:
            logger.warning("could not send a webhook event; the sweeper will",
                           extra={"event_id": event.id, "error": type(e).__name__})
            break
        sent.append(event.id)
    if sent:
        with autocommit(state.engine) as conn:
            store.mark_enqueued(conn, sent)
    return len(sent)


@dataclass(frozen=True)
class Delivered:
    """What /handlers/webhook answers: done (2xx), or retry (the queue delivers again)."""

    event_id: str
    outcome: str  # delivered | failed | retry | unknown | done
    status: int | None = None
    error: str | None = None


def deliver(state: AppState, event_id: str, *, retry_count: int | None,
            render: Callable[[Row[Any]], dict[str, Any]]) -> Delivered:
    """One delivery attempt of an event; `render` makes the job resource from its snapshot."""
    with autocommit(state.engine) as conn:
        event = store.get_event(conn, event_id)
    if event is None:
        return Delivered(event_id, "unknown")
    if event.delivered_time is not None or event.failed_time is not None:
        return Delivered(event_id, "done")
    body = event_body(event, render(event))
    now = datetime.now(UTC)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "webhook-id": event.id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": sign(state.config.webhook_secrets, event.id, now, body),
    }
    began = time.monotonic()
    answer = post(event.url, body, headers, allow_private=state.config.webhook_allow_private,
                  timeout_s=state.config.webhook_timeout_s)
    duration_ms = int((time.monotonic() - began) * 1000)
    spec = state.queues.specs.get(state.config.webhook_queue)
    age = (now - event.created_time).total_seconds()
    last = spec is None or retry_count is None or spec.attempts_exhausted(retry_count, age)
    final = answer.ok or answer.refused or last
    with autocommit(state.engine) as conn:
        store.record_delivery(conn, event.id, started=now, duration_ms=duration_ms, status=answer.status,
                              error=answer.error, ok=answer.ok, final=final)
    metrics.webhook("delivered" if answer.ok else "refused" if answer.refused else "failed" if final else "retry")
    if answer.ok:
        return Delivered(event.id, "delivered", answer.status)
    logger.info("webhook delivery failed", extra={"event_id": event.id, "status": answer.status,
                                                  "error": answer.error, "final": final})
    return Delivered(event.id, "failed" if final else "retry", answer.status, answer.error)

"""State that survives a restart (--state-dir), the stored task shape real Cloud Tasks answers,
App Engine routing, the OpenID discovery document, self-signed TLS, and --queues FILE."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import LOCATION, Target, client_for, refused, wait_until
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.auth.credentials import AnonymousCredentials
from google.cloud import tasks_v2

from emulator import Emulator, ManualClock, main
from tests.servers import BurstHTTPServer

ROOT = Path(__file__).resolve().parents[2]


def test_a_restart_with_100_pending_tasks_loses_none_and_sends_each_once(
        tmp_path: Path, key_file: Path, target: Target) -> None:
    clock = ManualClock()
    start = clock.time()
    state_dir = tmp_path / "state"
    with Emulator(key_file=key_file, clock=clock, state_dir=state_dir) as first:
        client = client_for(first)
        queue = client.create_queue(parent=LOCATION, queue={
            "name": f"{LOCATION}/queues/durable", "retry_config": {"max_attempts": 5}})
        for i in range(100):
            when = dt.datetime.fromtimestamp(start + (5 if i < 40 else 60 + i), dt.UTC)
            client.create_task(parent=queue.name, task={
                "name": f"{queue.name}/tasks/t{i}", "schedule_time": when,
                "http_request": {"url": target.url(f"/t{i}")}})
        clock.advance(10)  # the first 40 are due and sent before the restart
        wait_until(lambda: sum(len(target.on(f"/t{i}")) for i in range(40)) == 40)
        wait_until(lambda: len(list(client.list_tasks(parent=queue.name))) == 60)
        client.pause_queue(name=f"{LOCATION}/queues/durable")
        client.resume_queue(name=f"{LOCATION}/queues/durable")
        client.transport.close()
    assert (state_dir / "cloud-tasks.sqlite3").exists()

    with Emulator(key_file=key_file, clock=clock, state_dir=state_dir) as second:
        assert second.restored_tasks == 60
        client = client_for(second, "rest")
        restored = list(client.list_tasks(parent=f"{LOCATION}/queues/durable"))
        assert sorted(t.name.rsplit("/", 1)[1] for t in restored) == sorted(f"t{i}" for i in range(40, 100))
        later = client.get_task(name=f"{LOCATION}/queues/durable/tasks/t99")
        assert later.schedule_time.timestamp() == pytest.approx(start + 159, abs=1e-3)
        assert client.get_queue(name=f"{LOCATION}/queues/durable").retry_config.max_attempts == 5
        with refused("ALREADY_EXISTS"):  # a sent task's name is still taken (its tombstone)
            client.create_task(parent=f"{LOCATION}/queues/durable", task={
                "name": f"{LOCATION}/queues/durable/tasks/t0", "http_request": {"url": target.url()}})
        clock.advance(200)
        wait_until(lambda: all(target.on(f"/t{i}") for i in range(100)), timeout=10)
        time.sleep(0.2)
        assert [len(target.on(f"/t{i}")) for i in range(100)] == [1] * 100  # each once
        wait_until(lambda: list(client.list_tasks(parent=f"{LOCATION}/queues/durable")) == [])


def test_retry_counters_and_deleted_queues_survive(tmp_path: Path, key_file: Path, make_target: Any) -> None:
    failing = make_target()
    failing.respond = lambda request, n: 503
    clock = ManualClock()
    with Emulator(key_file=key_file, clock=clock, state_dir=tmp_path) as first:
        client = client_for(first)
        queue = client.create_queue(parent=LOCATION, queue={"name": f"{LOCATION}/queues/r"})
        gone = client.create_queue(parent=LOCATION, queue={"name": f"{LOCATION}/queues/gone"})
        client.delete_queue(name=gone.name)
        client.create_task(parent=queue.name, task={"name": f"{queue.name}/tasks/x",
                                                    "http_request": {"url": failing.url()}})
        failing.wait_for(1)
        wait_until(lambda: client.get_task(name=f"{queue.name}/tasks/x").response_count == 1)
    with Emulator(key_file=key_file, clock=clock, state_dir=tmp_path) as second:
        client = client_for(second)
        task = client.get_task(name=f"{LOCATION}/queues/r/tasks/x")
        assert task.dispatch_count == 1 and task.response_count == 1
        assert task.last_attempt.response_status.code == 14  # UNAVAILABLE, the 503
        clock.advance(1)
        received = failing.wait_for(2)
        assert received[1].headers["x-cloudtasks-taskretrycount"] == "1"
        assert received[1].headers["x-cloudtasks-taskpreviousresponse"] == "503"
        with refused("FAILED_PRECONDITION"):  # still within the deleted queue's tombstone
            client.create_queue(parent=LOCATION, queue={"name": f"{LOCATION}/queues/gone"})


def test_a_killed_emulator_keeps_what_it_acknowledged(tmp_path: Path, target: Target) -> None:
    """SIGKILL, no goodbye: everything created more than a flush interval before is back."""
    proc = subprocess.Popen([sys.executable, "-m", "emulator", "--port", "0", "--http-port", "0",
                             "--state-dir", str(tmp_path), "--log-level", "WARNING"],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        http_url = ""
        while not http_url:
            line = proc.stdout.readline()
            assert line, "the emulator ended before saying where it listens"
            if line.startswith("REST"):
                http_url = line.split(" on ")[1].strip()
        rest = tasks_v2.CloudTasksClient(transport="rest", client_options={"api_endpoint": http_url},
                                         credentials=AnonymousCredentials())
        queue = rest.create_queue(parent=LOCATION, queue={"name": f"{LOCATION}/queues/k", "state": "RUNNING"})
        rest.pause_queue(name=queue.name)
        for i in range(20):
            rest.create_task(parent=queue.name, task={"name": f"{queue.name}/tasks/k{i}",
                                                      "http_request": {"url": target.url()}})
        time.sleep(0.2)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    with Emulator(state_dir=tmp_path) as again:
        assert again.restored_tasks == 20
        assert client_for(again).get_queue(name=f"{LOCATION}/queues/k").state == tasks_v2.Queue.State.PAUSED


def test_stored_task_has_cloud_tasks_defaults(client: Any, queue: Any, target: Target) -> None:
    http = client.create_task(parent=queue.name, task={"http_request": {"url": target.url()}})
    assert http.http_request.http_method == tasks_v2.HttpMethod.POST
    assert http.http_request.headers == {"User-Agent": "Google-Cloud-Tasks"}
    ae = client.create_task(parent=queue.name, task={"app_engine_http_request": {
        "relative_uri": "/ae", "body": b"12345", "headers": {"User-Agent": "mine"}}})
    assert ae.app_engine_http_request.http_method == tasks_v2.HttpMethod.POST
    assert ae.app_engine_http_request.headers == {
        "User-Agent": "mine AppEngine-Google; (+http://code.google.com/appengine)",
        "Content-Length": "5", "Content-Type": "application/octet-stream"}
    got = target.wait_for(1, "/ae")[0]
    assert got.headers["user-agent"] == "mine AppEngine-Google; (+http://code.google.com/appengine)"


def test_app_engine_routing_goes_to_the_services_host(make_emulator: Callable[..., Emulator], make_target: Any,
                                                      target: Target) -> None:
    worker, v2 = make_target(), make_target()
    emu = make_emulator(app_engine_services={"worker": worker.base, "v2.worker": v2.base})
    client = client_for(emu)
    queue = client.create_queue(parent=LOCATION, queue={"name": f"{LOCATION}/queues/ae"})
    routed = client.create_task(parent=queue.name, task={"app_engine_http_request": {
        "relative_uri": "/w", "app_engine_routing": {"service": "worker"}}})
    assert routed.app_engine_http_request.app_engine_routing.host == worker.base.removeprefix("http://")
    client.create_task(parent=queue.name, task={"app_engine_http_request": {
        "relative_uri": "/v", "app_engine_routing": {"service": "worker", "version": "v2"}}})
    client.create_task(parent=queue.name, task={"app_engine_http_request": {"relative_uri": "/d"}})
    assert worker.wait_for(1, "/w") and v2.wait_for(1, "/v") and target.wait_for(1, "/d")
    # The queue's override replaces the task's routing.
    overridden = client.create_queue(parent=LOCATION, queue={
        "name": f"{LOCATION}/queues/ae-override", "app_engine_routing_override": {"service": "worker"}})
    client.create_task(parent=overridden.name, task={"app_engine_http_request": {
        "relative_uri": "/o", "app_engine_routing": {"service": "other"}}})
    assert worker.wait_for(1, "/o") and target.on("/o") == []


def test_openid_discovery_document_names_the_keys_and_issuer(make_emulator: Callable[..., Emulator]) -> None:
    emu = make_emulator(oidc_issuer="https://issuer.example")
    doc = requests.get(emu.http_url + "/.well-known/openid-configuration", timeout=5).json()
    assert doc["issuer"] == "https://issuer.example"
    assert doc["jwks_uri"] == emu.jwks_url
    assert requests.get(doc["jwks_uri"], timeout=5).json()["keys"][0]["alg"] == "RS256"
    token = emu.issuer.id_token("sa@x", "aud")
    payload = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert payload["iss"] == "https://issuer.example"  # the tokens name the same issuer


def _self_signed_https(tmp_path: Path) -> tuple[BurstHTTPServer, list[bytes]]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=1)).sign(key, hashes.SHA256()))
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    got: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            got.append(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = BurstHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, got


def test_self_signed_tls_handlers_need_the_option(tmp_path: Path, make_emulator: Callable[..., Emulator]) -> None:
    server, got = _self_signed_https(tmp_path)
    url = f"https://127.0.0.1:{server.server_port}/run"

    def send(verify_tls: bool) -> tuple[Any, str]:
        client = client_for(make_emulator(verify_tls=verify_tls))
        queue = client.create_queue(parent=LOCATION, queue={"name": f"{LOCATION}/queues/tls"})
        body = f"verify={verify_tls}".encode()
        return client, client.create_task(parent=queue.name, task={"http_request": {"url": url, "body": body}}).name

    try:
        checked, name = send(True)  # verified: the self-signed certificate is refused
        wait_until(lambda: checked.get_task(name=name).last_attempt.response_status.code == 14)
        lax, _ = send(False)  # --insecure-tls: delivered
        wait_until(lambda: b"verify=False" in got)
        assert b"verify=True" not in got
    finally:
        server.shutdown()


def test_queues_file_creates_the_queues_at_start(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    queues = tmp_path / "queues.yaml"
    queues.write_text("queues:\n  default:\n    retry_config: {max_attempts: 7, min_backoff: 250ms}\n  slow: {}\n")
    emu = Emulator(port=0, http_port=0)
    from emulator.runtime import queues_from_file

    emu.start()
    try:
        assert emu.ensure_queues(queues_from_file(queues, "p", "l")) == [
            "queue projects/p/locations/l/queues/default: created",
            "queue projects/p/locations/l/queues/slow: created"]
        got = client_for(emu).get_queue(name="projects/p/locations/l/queues/default")
        assert got.retry_config.max_attempts == 7 and got.retry_config.min_backoff.total_seconds() == 0.25
        assert emu.ensure_queues(queues_from_file(queues, "p", "l"))[0].endswith("updated")
    finally:
        emu.stop()
    queues.write_text("queues: [1, 2]\n")
    assert main(["--queues", str(queues), "--port", "0", "--http-port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cloudjobs emulator: error: --queues")


@pytest.mark.parametrize("argv", [["--app-engine-service", "worker"], ["--port", "abc"],
                                  ["--app-engine-service", "w=ftp://x"]])
def test_a_command_line_mistake_is_one_line_and_status_2(argv: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "emulator", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "error:" in proc.stderr, proc.stderr

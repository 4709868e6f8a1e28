"""Fixtures for the API against real PostgreSQL and the emulator, through Flask's test client."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from google.cloud import tasks_v2
from sqlalchemy.engine import Engine

from api import create_app
from api.cloud.queues import Queues
from api.cloud.tasks import make_client, queue_path, sync_queues
from api.config import Config
from bench.pgwire import CountingProxy
from emulator import Emulator
from tests.conftest import ROOT

TEST_QUEUES = ROOT / "tests" / "queues.yaml"
SERVICE_ACCOUNT = "tasks@local-project.iam.gserviceaccount.com"


@pytest.fixture(scope="session")
def emulator() -> Iterator[Emulator]:
    """The Cloud Tasks emulator, in this process."""
    with Emulator(host="127.0.0.1", port=0, http_port=0) as emu:
        yield emu


@pytest.fixture
def config(migrated_url: str, emulator: Emulator) -> Config:
    """A configuration on the test database and the emulator; tasks go nowhere (paused queues)."""
    return Config(
        database_url=migrated_url,
        emulator_host=emulator.address,
        handler_base_url="http://127.0.0.1:9",  # nothing listens: the queues are paused anyway
        handler_auth="oidc",
        api_auth="none",  # the API's own authentication is tested in test_security.py
        tasks_service_account=SERVICE_ACCOUNT,
        oidc_certs_url=emulator.certs_url,
        queues_file=TEST_QUEUES,
        demo_job_types=True,  # sleep, echo, flaky
    )


@pytest.fixture
def tasks_client(config: Config) -> tasks_v2.CloudTasksClient:
    """The real Cloud Tasks client, on the emulator, with the test queues created and paused."""
    client = make_client(config)
    sync_queues(client, config, list(Queues.load(TEST_QUEUES).specs.values()))
    for name in Queues.load(TEST_QUEUES).specs:
        client.pause_queue(name=queue_path(config, name))
        client.purge_queue(name=queue_path(config, name))
    return client


@pytest.fixture
def make_app(config: Config, db: Engine, tasks_client: tasks_v2.CloudTasksClient) -> Iterator[Callable[..., Flask]]:
    """Build an app with some configuration changed; disposes its engine afterwards."""
    apps: list[Flask] = []

    def build(**changes: Any) -> Flask:
        app = create_app(config.replace(**changes))
        app.testing = True
        apps.append(app)
        return app

    yield build
    for app in apps:
        # A ?wait= (the fuzzer sends them too) starts a listener thread: stop it with the app.
        if (waiters := app.extensions.get("cloudjobs.waiters")) is not None:
            waiters.close()
        app.extensions["cloudjobs"].engine.dispose()


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    """The app as configured."""
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """Flask's test client for the app."""
    return app.test_client()


@pytest.fixture(autouse=True, scope="session")
def _test_job_types() -> None:
    """Register the tests' own job types."""
    import tests.jobs  # noqa: F401


@pytest.fixture
def proxied_app(make_app: Callable[..., Flask], migrated_url: str) -> Iterator[tuple[Flask, CountingProxy]]:
    """The app on a counting proxy in front of PostgreSQL (bench/pgwire.py), to count round trips."""
    with CountingProxy.in_front_of(migrated_url) as proxy:
        app = make_app(database_url=proxy.url_through(migrated_url), handler_auth="none")
        yield app, proxy
        app.extensions["cloudjobs"].engine.dispose()  # while the proxy still runs

"""What a running app holds: config, engine, queues, registry, the Cloud Tasks client."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flask import current_app
from sqlalchemy.engine import Engine

from api.auth import ApiAuthenticator
from api.config import Config
from api.db import create_engine
from api.queues import Queues
from api.tasks import TasksClient

if TYPE_CHECKING:
    from handlers.registry import Registry


@dataclass
class AppState:
    """The app's long-lived parts, built once by create_app."""

    config: Config
    engine: Engine
    queues: Queues
    registry: Registry
    tasks: TasksClient
    authenticator: ApiAuthenticator
    reporting_engine: Engine

    @classmethod
    def build(
        cls, config: Config, *, registry: Registry | None = None, queues: Queues | None = None
    ) -> AppState:
        """Build the parts; nothing connects to the database or Cloud Tasks yet."""
        if registry is None:
            import handlers.builtin  # noqa: F401  (registers the built-in job types)
            from handlers.registry import registry as default_registry

            registry = default_registry
        for module in config.job_modules:
            importlib.import_module(module.strip())
        engine = create_engine(config)
        return cls(
            config=config,
            engine=engine,
            queues=queues or Queues.load(config.queues_file),
            registry=registry,
            tasks=TasksClient(config),
            authenticator=ApiAuthenticator(config, engine),
            # Reports may read a replica; everything else reads and writes the primary.
            reporting_engine=(
                create_engine(config, url=config.reporting_database_url, pool_size=2)
                if config.reporting_database_url else engine
            ),
        )


def current_state() -> AppState:
    """The AppState of the app handling this request."""
    return current_app.extensions["cloudjobs"]  # type: ignore[no-any-return]

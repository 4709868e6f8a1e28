"""What a running app holds: config, engine, queues, registry, the Cloud Tasks client."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy.engine import Engine

from api.cloud.queues import Queues
from api.cloud.schedules import SchedulerClient, Schedules
from api.cloud.tasks import TasksClient
from api.config import Config
from api.orchestration.coalesce import Coalescer
from api.store.engine import create_engine
from api.web.auth import ApiAuthenticator

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
    # Slots for job attempts in this process (RUN_CONCURRENCY); /handlers/run takes one or answers 429.
    run_slots: threading.BoundedSemaphore
    # Set when a CreateTask failed here (Cloud Tasks unreachable): the next one that succeeds
    # sends the jobs left CREATED at once, not at the next sweep (api/orchestration/lifecycle.py).
    enqueue_backlog: threading.Event = field(default_factory=threading.Event)
    draining: threading.Lock = field(default_factory=threading.Lock)
    # schedules.yaml: the schedules Cloud Scheduler fires and the Pub/Sub triggers (none without it)
    schedules: Schedules = field(default_factory=Schedules)
    scheduler: SchedulerClient | None = None  # Cloud Scheduler (or the emulator's), for :run/:pause/:resume
    # Single creates of one process sharing Cloud Tasks (api/orchestration/coalesce.py)
    coalescer: Coalescer | None = None

    @classmethod
    def build(
        cls, config: Config, *, registry: Registry, queues: Queues | None = None,
        schedules: Schedules | None = None,
    ) -> AppState:
        """Build the parts; nothing connects to the database or Cloud Tasks yet."""
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
            run_slots=threading.BoundedSemaphore(config.run_concurrency),
            schedules=schedules or Schedules.load(config.schedules_file),
            scheduler=SchedulerClient(config),
            coalescer=Coalescer(config.create_coalesce_ms / 1000) if config.create_coalesce_ms > 0 else None,
        )

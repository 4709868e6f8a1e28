"""The app factory: `create_app(config)` builds the Flask app from its parts."""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING

from flask import Flask

from api.cloud.queues import Queues
from api.cloud.schedules import Schedules
from api.config import Config, ConfigurationInvalid
from api.state import AppState

if TYPE_CHECKING:
    from handlers.registry import Registry

logger = logging.getLogger("api")


def create_app(
    config: Config | None = None, *, registry: Registry | None = None, queues: Queues | None = None,
    schedules: Schedules | None = None,
) -> Flask:
    """Build the Flask app; `registry`, `queues` and `schedules` replace the configured ones (tests).

    Here the server imports `handlers` (with `job_types` below): the job types it registers
    and the running of them behind /handlers/run. Nothing connects to the database or Cloud Tasks here.
    """
    import handlers.run
    from api.orchestration import triggers
    from api.ui.views import bp as ui_bp
    from api.web import callbacks, jobs, operations, problems, reports, service, telemetry, types, workflows
    from api.web import queues as queue_views
    from api.web import schedules as schedule_views
    from handlers.builtin import demo

    config = config or Config.from_env()
    config.validate()
    if config.handler_auth == "none":
        logger.warning("HANDLER_AUTH=none: /handlers/* accepts any caller; keep it behind IAM")
    if config.api_auth == "none":
        logger.warning("AUTH=none: the API accepts any caller and scopes nothing; keep it behind IAM or IAP")
    app = Flask("cloudjobs", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = config.max_request_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    own = job_types(config, registry)
    state = AppState.build(config, registry=own.merged(demo) if config.demo_job_types else own, queues=queues,
                           schedules=schedules)
    if problems_found := triggers.check(state):  # a schedule that could never create its job
        raise ConfigurationInvalid("; ".join(problems_found))
    app.extensions["cloudjobs"] = state
    types.warn_cut_timeouts(own, state.queues)  # the demo's one-hour sleep is meant to be cut
    telemetry.install(app, state)
    problems.register(app)
    app.register_blueprint(service.bp)
    app.register_blueprint(jobs.bp)
    app.register_blueprint(operations.bp)
    app.register_blueprint(queue_views.bp)
    app.register_blueprint(workflows.bp)
    app.register_blueprint(reports.bp)
    app.register_blueprint(types.bp)
    app.register_blueprint(schedule_views.bp)
    app.register_blueprint(callbacks.blueprint(run_jobs=handlers.run.run_jobs))
    app.register_blueprint(ui_bp)  # the dashboard (/ui)
    return app


def job_types(config: Config, registry: Registry | None = None) -> Registry:
    """The project's job types: JOB_MODULES' (imported here) in the default registry, or `registry`.

    The app adds the demo types when DEMO_JOB_TYPES is set; so does `cloudjobs types`.
    """
    from handlers.registry import registry as default_registry

    for module in config.job_modules:
        importlib.import_module(module.strip())  # registers its types in the default registry
    return registry if registry is not None else default_registry

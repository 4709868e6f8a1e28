"""The app factory: `create_app(config)` builds the Flask app from its parts."""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING

from flask import Flask

from api.cloud.queues import Queues
from api.config import Config
from api.state import AppState

if TYPE_CHECKING:
    from handlers.registry import Registry

logger = logging.getLogger("api")


def create_app(
    config: Config | None = None, *, registry: Registry | None = None, queues: Queues | None = None
) -> Flask:
    """Build the Flask app; `registry` and `queues` replace the configured ones (tests).

    Here the server imports `handlers`: the job types it registers and the running of them
    behind /handlers/run. Nothing connects to the database or Cloud Tasks here.
    """
    import handlers.run
    from api.ui.views import bp as ui_bp
    from api.web import callbacks, jobs, problems, reports, service, telemetry
    from handlers.builtin import demo
    from handlers.registry import registry as default_registry

    config = config or Config.from_env()
    config.validate()
    if config.handler_auth == "none":
        logger.warning("HANDLER_AUTH=none: /handlers/* accepts any caller; keep it behind IAM")
    if config.api_auth == "none":
        logger.warning("AUTH=none: the API accepts any caller and scopes nothing; keep it behind IAM or IAP")
    for module in config.job_modules:
        importlib.import_module(module.strip())  # registers its types in the default registry
    types = registry if registry is not None else default_registry
    if config.demo_job_types:
        types = types.merged(demo)
    app = Flask("cloudjobs", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = config.max_request_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    state = AppState.build(config, registry=types, queues=queues)
    app.extensions["cloudjobs"] = state
    telemetry.install(app, state)
    problems.register(app)
    app.register_blueprint(service.bp)
    app.register_blueprint(jobs.bp)
    app.register_blueprint(reports.bp)
    app.register_blueprint(callbacks.blueprint(run_jobs=handlers.run.run_jobs))
    app.register_blueprint(ui_bp)  # the dashboard (/ui)
    return app

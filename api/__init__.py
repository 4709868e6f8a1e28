"""cloudjobs' API: the app factory."""

from __future__ import annotations

import logging

from flask import Flask

from api.config import Config

logger = logging.getLogger(__name__)

__all__ = ["Config", "create_app"]


def create_app(config: Config | None = None, **parts: object) -> Flask:
    """Build the Flask app; `parts` may replace the registry or queues (tests)."""
    from api import errors, observability, reports, routes
    from api.state import AppState
    from handlers.run import bp as handlers_bp
    from handlers.sweep import bp as sweep_bp

    config = config or Config.from_env()
    config.validate()
    if config.handler_auth == "none":
        logger.warning("HANDLER_AUTH=none: /handlers/* accepts any caller; keep it behind IAM")
    if config.api_auth == "none":
        logger.warning("AUTH=none: the API accepts any caller and scopes nothing; keep it behind IAM or IAP")
    app = Flask("cloudjobs", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = config.max_request_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["cloudjobs"] = AppState.build(config, **parts)  # type: ignore[arg-type]
    observability.install(app, app.extensions["cloudjobs"])
    errors.register(app)
    app.register_blueprint(routes.bp)
    app.register_blueprint(reports.bp)
    app.register_blueprint(handlers_bp)
    app.register_blueprint(sweep_bp)
    from api.ui import bp as ui_bp  # the dashboard (/ui)

    app.register_blueprint(ui_bp)
    return app

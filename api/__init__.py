"""cloudjobs' server: `create_app` (api.web.app) builds the Flask app, `Config` reads the environment.

Both are loaded on first use, so importing a part of the server (the store, the cloud clients,
the errors) does not import Flask: `handlers`, which job authors import, stays free of it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from api.config import Config
    from api.web.app import create_app

__all__ = ["Config", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from api.web.app import create_app

        return create_app
    if name == "Config":
        from api.config import Config

        return Config
    raise AttributeError(f"module 'api' has no attribute {name!r}")

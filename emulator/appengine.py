"""Where App Engine tasks go: ``app_engine_routing`` (service, version, instance) to a URL.

Google routes an App Engine task to ``[instance.][version.][service.]<app>.appspot.com``; here
each service (or ``version.service``, or ``instance.version.service``) may be given its own URL
(``--app-engine-service worker=http://127.0.0.1:8081``), the most specific given one wins, and
everything else goes to ``--app-engine-host``. The queue's ``app_engine_routing_override``
replaces a task's routing, as in Cloud Tasks.
"""

from __future__ import annotations

from urllib.parse import urlsplit


class AppEngineRoutes:
    """Service (and version, instance) names to base URLs, with a default."""

    def __init__(self, default: str, services: dict[str, str] | None = None) -> None:
        self.default = default.rstrip("/")
        self.services = {k: u.rstrip("/") for k, u in (services or {}).items()}

    def base(self, service: str = "", version: str = "", instance: str = "") -> str:
        """The base URL a task with this routing is sent to."""
        for key in (f"{instance}.{version}.{service}", f"{version}.{service}", service):
            if key.strip(".") == key and key in self.services:
                return self.services[key]
        return self.default

    def netloc(self, service: str = "", version: str = "", instance: str = "") -> str:
        """``host:port`` of that URL: a task's ``app_engine_routing.host``."""
        return urlsplit(self.base(service, version, instance)).netloc

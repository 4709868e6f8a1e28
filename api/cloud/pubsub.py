"""Pub/Sub push subscriptions for the triggers of schedules.yaml (`cloudjobs triggers sync`).

google-cloud-pubsub is the `pubsub` extra: only this command needs it (the app's
/handlers/pubsub reads push envelopes, which need no client). It honours
PUBSUB_EMULATOR_HOST, as Google's Pub/Sub emulator expects.
"""

from __future__ import annotations

from typing import Any

from google.api_core import exceptions as gexc

from api.cloud.schedules import Schedules, TriggerSpec
from api.config import Config

PUBSUB_PATH = "/handlers/pubsub"
# Pub/Sub redelivers a message it got no 2xx for, backing off between these.
MIN_BACKOFF_S, MAX_BACKOFF_S = 10, 600
ACK_DEADLINE_S = 60


def _client() -> Any:
    try:
        from google.cloud import pubsub_v1  # type: ignore[attr-defined]
    except ImportError:  # pragma: no cover - the extra is installed in development and CI
        raise RuntimeError("`triggers sync` needs google-cloud-pubsub: pip install 'cloudjobs[pubsub]'") from None
    return pubsub_v1.SubscriberClient()


def topic_path(config: Config, topic: str) -> str:
    """projects/P/topics/T for a topic id (or a full path, as given)."""
    return topic if topic.startswith("projects/") else f"projects/{config.project}/topics/{topic}"


def subscription_path(config: Config, trigger: TriggerSpec) -> str:
    """projects/P/subscriptions/S of a trigger."""
    return f"projects/{config.project}/subscriptions/{trigger.subscription}"


def push_config(config: Config) -> Any:
    """Push to /handlers/pubsub with an OIDC token of PUBSUB_SERVICE_ACCOUNT for our audience."""
    from google.pubsub_v1 import types as P

    out = P.PushConfig(push_endpoint=config.handler_base_url + PUBSUB_PATH)
    if config.pubsub_identity:
        out.oidc_token = P.PushConfig.OidcToken(service_account_email=config.pubsub_identity,
                                                audience=config.audience)
    return out


def sync_triggers(config: Config, schedules: Schedules, client: Any | None = None) -> list[str]:
    """Create the push subscription of each trigger that names a topic, or point an existing
    one at this service; one line per trigger. Subscriptions are never deleted here."""
    from google.pubsub_v1 import types as P

    client = client or _client()
    wanted = push_config(config)
    lines = []
    for trigger in schedules.triggers.values():
        name = subscription_path(config, trigger)
        if trigger.topic is None:
            lines.append(f"not managed {trigger.name}: no topic (create {name} yourself, docs/triggers.md)")
            continue
        try:
            current = client.get_subscription(subscription=name)
        except gexc.NotFound:
            client.create_subscription(request=P.Subscription(
                name=name, topic=topic_path(config, trigger.topic), push_config=wanted,
                ack_deadline_seconds=ACK_DEADLINE_S,
                retry_policy=P.RetryPolicy(minimum_backoff={"seconds": MIN_BACKOFF_S},
                                           maximum_backoff={"seconds": MAX_BACKOFF_S}),
            ))
            lines.append(f"created {trigger.name}: {name} on {topic_path(config, trigger.topic)}")
            continue
        if P.PushConfig.pb(current.push_config) != P.PushConfig.pb(wanted):
            client.modify_push_config(request={"subscription": name, "push_config": wanted})
            lines.append(f"updated {trigger.name}: pushes to {wanted.push_endpoint}")
        else:
            lines.append(f"unchanged {trigger.name}")
    return lines

from __future__ import annotations

import pytest

from api.config import Config, ConfigurationInvalid


def test_from_env_reads_the_environment() -> None:
    c = Config.from_env({
        "DATABASE_URL": "postgresql://u@h/db", "HANDLER_AUTH": "oidc",
        "TASKS_SERVICE_ACCOUNT": "t@p.iam.gserviceaccount.com", "GOOGLE_CLOUD_PROJECT": "p",
        "HANDLER_BASE_URL": "https://svc/", "CLOUD_TASKS_EMULATOR_HOST": "127.0.0.1:8123",
    })
    assert c.database_url == "postgresql://u@h/db"
    assert c.project == "p"
    assert c.handler_base_url == "https://svc"
    assert c.audience == "https://svc"
    assert c.emulator_host == "127.0.0.1:8123"
    c.validate()


def test_without_handler_auth_the_app_refuses_to_start() -> None:
    c = Config.from_env({"DATABASE_URL": "postgresql://u@h/db"})
    with pytest.raises(ConfigurationInvalid, match="HANDLER_AUTH"):
        c.validate()


def test_oidc_needs_the_service_account() -> None:
    c = Config.from_env({"DATABASE_URL": "postgresql://u@h/db", "HANDLER_AUTH": "oidc"})
    with pytest.raises(ConfigurationInvalid, match="TASKS_SERVICE_ACCOUNT"):
        c.validate()


def test_app_engine_header_is_trusted_only_on_app_engine() -> None:
    off = Config.from_env({"DATABASE_URL": "postgresql://u@h/db", "HANDLER_AUTH": "appengine"})
    with pytest.raises(ConfigurationInvalid, match="App Engine"):
        off.validate()
    on = Config.from_env({"DATABASE_URL": "postgresql://u@h/db", "GAE_ENV": "standard"})
    assert on.handler_auth == "appengine"
    on.validate()


def test_a_deployment_must_set_its_own_page_token_key() -> None:
    """Issue #21: the default PAGE_TOKEN_KEY is a public constant; only local runs may keep it."""
    deployed = {"DATABASE_URL": "postgresql://u@h/db", "HANDLER_AUTH": "none", "HANDLER_BASE_URL": "https://svc.run.app"}
    with pytest.raises(ConfigurationInvalid, match="PAGE_TOKEN_KEY"):
        Config.from_env(deployed).validate()
    Config.from_env({**deployed, "PAGE_TOKEN_KEY": "0123456789abcdef" * 4}).validate()
    Config.from_env({**deployed, "CLOUD_TASKS_EMULATOR_HOST": "127.0.0.1:8123"}).validate()
    Config.from_env({**deployed, "HANDLER_BASE_URL": "http://127.0.0.1:8080"}).validate()


def test_unknown_auth_mode_is_refused() -> None:
    with pytest.raises(ConfigurationInvalid):
        Config.from_env({"HANDLER_AUTH": "maybe"})


def test_no_database_is_refused() -> None:
    with pytest.raises(ConfigurationInvalid, match="DATABASE_URL"):
        Config(handler_auth="none").validate()


def test_pgserver_uri_becomes_a_pg8000_socket_url() -> None:
    from api.cli.devdb import pg8000_url

    assert pg8000_url("postgresql://postgres:@/postgres?host=/tmp/x") == (
        "postgresql+pg8000://postgres@/postgres?unix_sock=/tmp/x/.s.PGSQL.5432"
    )


def test_the_pool_has_a_connection_per_gunicorn_thread() -> None:
    base = {"DATABASE_URL": "postgresql://x@h/db", "HANDLER_AUTH": "none"}
    assert Config.from_env(base).db_pool_size == 8
    assert Config.from_env({**base, "GUNICORN_THREADS": "16"}).db_pool_size == 16
    assert Config.from_env({**base, "GUNICORN_THREADS": "16", "DB_POOL_SIZE": "3"}).db_pool_size == 3


def test_webhook_secrets_must_be_standard_webhooks_secrets_and_never_shown() -> None:
    base = {"DATABASE_URL": "postgresql://u@h/db", "HANDLER_AUTH": "none", "CLOUD_TASKS_EMULATOR_HOST": "h:1"}
    good = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # 24 bytes
    c = Config.from_env({**base, "WEBHOOK_SECRETS": f"{good}, {good}", "WEBHOOK_ALLOW_PRIVATE": "yes"})
    assert c.webhook_secrets == (good, good) and c.webhook_allow_private and c.webhook_queue == "webhooks"
    c.validate()
    assert good not in repr(c)
    for bad in ("secret", "whsec_short", "whsec_not*base64!"):
        with pytest.raises(ConfigurationInvalid, match="WEBHOOK_SECRETS"):
            Config.from_env({**base, "WEBHOOK_SECRETS": bad}).validate()
    with pytest.raises(ConfigurationInvalid, match="WEBHOOK_URL needs WEBHOOK_SECRETS"):
        Config.from_env({**base, "WEBHOOK_URL": "https://example.com/h"}).validate()

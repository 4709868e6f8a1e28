"""Alembic environment: the engine comes from api.config, never from alembic.ini."""

from __future__ import annotations

from alembic import context

from api.config import Config
from api.store.engine import create_engine
from api.store.tables import metadata

target_metadata = metadata


def run_migrations_online() -> None:
    """Run migrations on a given connection, or on one from the app's configuration."""
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.config.get_main_option("sqlalchemy.url") or None
    engine = create_engine(Config.from_env(), url=url, pool_size=1)
    try:
        with engine.connect() as conn:
            _run(conn)
    finally:
        engine.dispose()


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(connection=connection, target_metadata=target_metadata, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    context.configure(url=context.config.get_main_option("sqlalchemy.url"), literal_binds=True,
                      target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()

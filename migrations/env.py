"""Alembic environment: runs migrations on the connection pixsearch hands over, or on a URL."""

from __future__ import annotations

from alembic import context
from sqlalchemy import engine_from_config, pool

from indexer.db import Base, modelled

config = context.config
target_metadata = Base.metadata


include_object = modelled


def run() -> None:
    """Run the migrations online (pixsearch never needs offline SQL scripts)."""
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=True,
            include_object=include_object,
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    url = context.get_x_argument(as_dictionary=True).get("url")
    if url:
        config.set_main_option("sqlalchemy.url", url)
    engine = engine_from_config(
        config.get_section(config.config_ini_section, {}),
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )
    with engine.connect() as conn:
        context.configure(
            connection=conn,
            target_metadata=target_metadata,
            render_as_batch=True,
            include_object=include_object,
        )
        with context.begin_transaction():
            context.run_migrations()


run()

"""Alembic environment: runs on the connection farm.store.db.upgrade() hands it."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from farm.store.schema import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:  # the alembic CLI: `alembic -x url=sqlite:///farm-data/farm.db upgrade head`
        url = context.get_x_argument(as_dictionary=True).get("url", "sqlite:///farm-data/farm.db")
        with create_engine(url).connect() as conn:
            # SQLite cannot ALTER most things in place; batch mode rebuilds the table instead.
            context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True)
            with context.begin_transaction():
                context.run_migrations()
        return
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("farm migrations run online only: farm.store.db.upgrade()")
run_migrations_online()

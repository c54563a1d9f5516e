"""names, paths and sources as TEXT on PostgreSQL

PostgreSQL enforces VARCHAR(n) where SQLite does not: a model name, spec path, source or weights
string longer than its column would fail the sweep's write there. SQLite is left as it is: its
VARCHAR lengths were never enforced, and changing a column's declared type rebuilds the table,
which fails on `models` once other tables reference its rows (farm.store.schema.free_text).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 10:00:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

# (table, column, the VARCHAR length it had)
COLUMNS = (
    ('sweeps', 'name', 128),
    ('sweeps', 'spec_path', 512),
    ('models', 'name', 128),
    ('models', 'source', 512),
    ('models', 'weights', 64),
    ('retimes', 'model', 128),
)


def upgrade() -> None:
    if op.get_bind().dialect.name == 'sqlite':
        return
    for table, column, length in COLUMNS:
        op.alter_column(table, column, type_=sa.Text(), existing_type=sa.String(length))


def downgrade() -> None:
    if op.get_bind().dialect.name == 'sqlite':
        return
    for table, column, length in COLUMNS:
        op.alter_column(table, column, type_=sa.String(length), existing_type=sa.Text())

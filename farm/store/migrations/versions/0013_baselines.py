"""baselines (named sweeps for `farm diff --baseline`) and replaced_rows (what a redo wrote over)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 12:00:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('baselines',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('name', sa.Text().with_variant(sa.String(length=128), 'sqlite'), nullable=False),
    sa.Column('sweep_id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['sweep_id'], ['sweeps.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('replaced_rows',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('stage', sa.String(length=16), nullable=False),
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('replaced_by', sa.Integer(), nullable=False),
    sa.Column('replaced_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('columns', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['replaced_by'], ['sweeps.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('replaced_rows', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_replaced_rows_key'), ['key'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('replaced_rows', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_replaced_rows_key'))
    op.drop_table('replaced_rows')
    op.drop_table('baselines')

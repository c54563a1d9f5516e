"""interleaved re-timing of each group's leading builds

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 21:45:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('retimes',
    sa.Column('model', sa.String(length=128), nullable=False),
    sa.Column('target_id', sa.String(length=256), nullable=False),
    sa.Column('batch_size', sa.Integer(), nullable=False),
    sa.Column('objective', sa.String(length=16), nullable=False),
    sa.Column('contenders', sa.JSON(), nullable=True),
    sa.Column('rounds', sa.JSON(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('settings', sa.JSON(), nullable=True),
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('log', sa.Text(), nullable=True),
    sa.Column('seconds', sa.Float(), nullable=True),
    sa.Column('node', sa.String(length=128), nullable=True),
    sa.Column('device', sa.JSON(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['target_id'], ['targets.id'], ),
    sa.PrimaryKeyConstraint('key')
    )
    with op.batch_alter_table('retimes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_retimes_model'), ['model'], unique=False)
        batch_op.create_index(batch_op.f('ix_retimes_status'), ['status'], unique=False)
        batch_op.create_index(batch_op.f('ix_retimes_target_id'), ['target_id'], unique=False)


def downgrade() -> None:
    op.drop_table('retimes')

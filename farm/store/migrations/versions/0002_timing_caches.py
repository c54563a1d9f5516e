"""timing caches

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 06:48:11.265043
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('timing_caches',
    sa.Column('target_id', sa.String(length=256), nullable=False),
    sa.Column('backend_version', sa.String(length=64), nullable=False),
    sa.Column('sha256s', sa.JSON(), nullable=False),
    sa.Column('builds', sa.Integer(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['target_id'], ['targets.id'], ),
    sa.PrimaryKeyConstraint('target_id', 'backend_version')
    )


def downgrade() -> None:
    op.drop_table('timing_caches')

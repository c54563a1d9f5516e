"""where each job of a sweep runs, and since when

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 23:30:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('sweep_jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('node', sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column('started_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('sweep_jobs', schema=None) as batch_op:
        batch_op.drop_column('started_at')
        batch_op.drop_column('node')

"""sweeps.reruns, sweeps.last_rerun_at: a re-run that the store answered whole counts on the sweep it repeats

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 09:40:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('sweeps', schema=None) as batch_op:
        batch_op.add_column(sa.Column('reruns', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('last_rerun_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('sweeps', schema=None) as batch_op:
        batch_op.drop_column('last_rerun_at')
        batch_op.drop_column('reruns')

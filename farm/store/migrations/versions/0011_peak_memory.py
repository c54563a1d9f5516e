"""peak memory, host and device: of every build (device; host was there) and of every benchmark (both)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 09:40:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('builds', schema=None) as batch_op:
        batch_op.add_column(sa.Column('peak_device_memory_bytes', sa.BigInteger(), nullable=True))
    with op.batch_alter_table('benchmarks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('peak_host_memory_bytes', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('peak_device_memory_bytes', sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('benchmarks', schema=None) as batch_op:
        batch_op.drop_column('peak_device_memory_bytes')
        batch_op.drop_column('peak_host_memory_bytes')
    with op.batch_alter_table('builds', schema=None) as batch_op:
        batch_op.drop_column('peak_device_memory_bytes')

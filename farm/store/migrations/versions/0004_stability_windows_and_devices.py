"""stability windows, p50 intervals, GPU clocks and the device each job ran on

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 20:40:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

STAGE_TABLES = ("models", "references", "calibrations", "variants", "builds", "benchmarks", "fidelity")


def upgrade() -> None:
    for table in STAGE_TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column('device', sa.JSON(), nullable=True))
    with op.batch_alter_table('benchmarks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('converged', sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column('window_medians', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('latency_p50_low', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('latency_p50_high', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('data_transfers', sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column('clocks', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('benchmarks', schema=None) as batch_op:
        for column in ('clocks', 'data_transfers', 'latency_p50_high', 'latency_p50_low', 'window_medians', 'converged'):
            batch_op.drop_column(column)
    for table in STAGE_TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column('device')

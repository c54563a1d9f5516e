"""job_leases: a driver claims a job before it runs it, so two drivers on one store never run it twice

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 11:50:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'job_leases',
        sa.Column('stage', sa.String(length=16), nullable=False),
        sa.Column('key', sa.String(length=64), nullable=False),
        sa.Column('owner', sa.String(length=256), nullable=False),
        sa.Column('sweep_id', sa.Integer(), nullable=True),
        sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('stage', 'key'),
    )


def downgrade() -> None:
    op.drop_table('job_leases')

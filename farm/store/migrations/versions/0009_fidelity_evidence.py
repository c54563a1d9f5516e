"""fidelity evidence: k/n with a Wilson interval, KL, flips with the reference's margins, the reference's
noise floor and degeneracy; job rows may be "rejected" (a finding, not a failure: status is free text)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 05:30:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('fidelity', schema=None) as batch_op:
        batch_op.add_column(sa.Column('agreed', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('agreement_low', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('agreement_high', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('kl_mean', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('evidence', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('reference_note', sa.Text(), nullable=True))
    with op.batch_alter_table('references', schema=None) as batch_op:
        batch_op.add_column(sa.Column('noise_floor', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('note', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('references', schema=None) as batch_op:
        batch_op.drop_column('note')
        batch_op.drop_column('noise_floor')
    with op.batch_alter_table('fidelity', schema=None) as batch_op:
        batch_op.drop_column('reference_note')
        batch_op.drop_column('evidence')
        batch_op.drop_column('kl_mean')
        batch_op.drop_column('agreement_high')
        batch_op.drop_column('agreement_low')
        batch_op.drop_column('agreed')

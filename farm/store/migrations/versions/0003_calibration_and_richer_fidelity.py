"""calibration and richer fidelity

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 07:10:07.276824
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('calibrations',
    sa.Column('model_key', sa.String(length=64), nullable=False),
    sa.Column('method', sa.String(length=32), nullable=False),
    sa.Column('percentile', sa.Float(), nullable=True),
    sa.Column('data_digest', sa.String(length=64), nullable=False),
    sa.Column('samples', sa.Integer(), nullable=True),
    sa.Column('tensors', sa.Integer(), nullable=True),
    sa.Column('ranges_sha256', sa.String(length=64), nullable=True),
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('log', sa.Text(), nullable=True),
    sa.Column('seconds', sa.Float(), nullable=True),
    sa.Column('node', sa.String(length=128), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['model_key'], ['models.key'], ),
    sa.ForeignKeyConstraint(['ranges_sha256'], ['artifacts.sha256'], ),
    sa.PrimaryKeyConstraint('key')
    )
    with op.batch_alter_table('calibrations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_calibrations_model_key'), ['model_key'], unique=False)
        batch_op.create_index(batch_op.f('ix_calibrations_status'), ['status'], unique=False)

    with op.batch_alter_table('fidelity', schema=None) as batch_op:
        batch_op.add_column(sa.Column('accuracy', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('reference_accuracy', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('labelled', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('nonfinite', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('reference_boxes', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('candidate_boxes', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('box_recall', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('box_precision', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('score_diff_mean', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('score_diff_max', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('iou_mean', sa.Float(), nullable=True))

    with op.batch_alter_table('variants', schema=None) as batch_op:
        batch_op.add_column(sa.Column('calibration_key', sa.String(length=64), nullable=True))
        batch_op.create_foreign_key('fk_variants_calibration_key_calibrations', 'calibrations', ['calibration_key'], ['key'])



def downgrade() -> None:
    with op.batch_alter_table('variants', schema=None) as batch_op:
        batch_op.drop_constraint('fk_variants_calibration_key_calibrations', type_='foreignkey')
        batch_op.drop_column('calibration_key')

    with op.batch_alter_table('fidelity', schema=None) as batch_op:
        batch_op.drop_column('iou_mean')
        batch_op.drop_column('score_diff_max')
        batch_op.drop_column('score_diff_mean')
        batch_op.drop_column('box_precision')
        batch_op.drop_column('box_recall')
        batch_op.drop_column('candidate_boxes')
        batch_op.drop_column('reference_boxes')
        batch_op.drop_column('nonfinite')
        batch_op.drop_column('labelled')
        batch_op.drop_column('reference_accuracy')
        batch_op.drop_column('accuracy')

    with op.batch_alter_table('calibrations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_calibrations_status'))
        batch_op.drop_index(batch_op.f('ix_calibrations_model_key'))

    op.drop_table('calibrations')

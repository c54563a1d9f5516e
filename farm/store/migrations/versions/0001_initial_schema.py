"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-29 06:09:37.012051
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    
    op.create_table('artifacts',
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('size_bytes', sa.BigInteger(), nullable=False),
    sa.Column('path', sa.String(length=256), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('sha256')
    )
    op.create_table('sweeps',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('spec_path', sa.String(length=512), nullable=False),
    sa.Column('spec', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('sweeps', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_sweeps_name'), ['name'], unique=False)

    op.create_table('targets',
    sa.Column('id', sa.String(length=256), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('name', sa.String(length=256), nullable=False),
    sa.Column('compute_capability', sa.String(length=8), nullable=True),
    sa.Column('description', sa.JSON(), nullable=True),
    sa.Column('last_seen', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('models',
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('source', sa.String(length=512), nullable=False),
    sa.Column('weights', sa.String(length=64), nullable=True),
    sa.Column('input_shape', sa.JSON(), nullable=False),
    sa.Column('opset', sa.Integer(), nullable=True),
    sa.Column('inputs', sa.JSON(), nullable=True),
    sa.Column('outputs', sa.JSON(), nullable=True),
    sa.Column('node_count', sa.Integer(), nullable=True),
    sa.Column('onnx_sha256', sa.String(length=64), nullable=True),
    sa.Column('checkpoint_sha256', sa.String(length=64), nullable=True),
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('log', sa.Text(), nullable=True),
    sa.Column('seconds', sa.Float(), nullable=True),
    sa.Column('node', sa.String(length=128), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['checkpoint_sha256'], ['artifacts.sha256'], ),
    sa.ForeignKeyConstraint(['onnx_sha256'], ['artifacts.sha256'], ),
    sa.PrimaryKeyConstraint('key')
    )
    with op.batch_alter_table('models', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_models_name'), ['name'], unique=False)
        batch_op.create_index(batch_op.f('ix_models_status'), ['status'], unique=False)

    op.create_table('sweep_jobs',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('sweep_id', sa.Integer(), nullable=False),
    sa.Column('stage', sa.String(length=16), nullable=False),
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('label', sa.String(length=256), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['sweep_id'], ['sweeps.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('sweep_id', 'stage', 'key')
    )
    with op.batch_alter_table('sweep_jobs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_sweep_jobs_key'), ['key'], unique=False)
        batch_op.create_index(batch_op.f('ix_sweep_jobs_sweep_id'), ['sweep_id'], unique=False)

    op.create_table('references',
    sa.Column('model_key', sa.String(length=64), nullable=False),
    sa.Column('data_digest', sa.String(length=64), nullable=False),
    sa.Column('samples', sa.Integer(), nullable=True),
    sa.Column('outputs_sha256', sa.String(length=64), nullable=True),
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('log', sa.Text(), nullable=True),
    sa.Column('seconds', sa.Float(), nullable=True),
    sa.Column('node', sa.String(length=128), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['model_key'], ['models.key'], ),
    sa.ForeignKeyConstraint(['outputs_sha256'], ['artifacts.sha256'], ),
    sa.PrimaryKeyConstraint('key')
    )
    with op.batch_alter_table('references', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_references_model_key'), ['model_key'], unique=False)
        batch_op.create_index(batch_op.f('ix_references_status'), ['status'], unique=False)

    op.create_table('variants',
    sa.Column('model_key', sa.String(length=64), nullable=False),
    sa.Column('precision', sa.String(length=16), nullable=False),
    sa.Column('method', sa.String(length=32), nullable=True),
    sa.Column('details', sa.JSON(), nullable=True),
    sa.Column('onnx_sha256', sa.String(length=64), nullable=True),
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('log', sa.Text(), nullable=True),
    sa.Column('seconds', sa.Float(), nullable=True),
    sa.Column('node', sa.String(length=128), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['model_key'], ['models.key'], ),
    sa.ForeignKeyConstraint(['onnx_sha256'], ['artifacts.sha256'], ),
    sa.PrimaryKeyConstraint('key')
    )
    with op.batch_alter_table('variants', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_variants_model_key'), ['model_key'], unique=False)
        batch_op.create_index(batch_op.f('ix_variants_status'), ['status'], unique=False)

    op.create_table('builds',
    sa.Column('variant_key', sa.String(length=64), nullable=False),
    sa.Column('target_id', sa.String(length=256), nullable=False),
    sa.Column('backend', sa.String(length=32), nullable=False),
    sa.Column('backend_version', sa.String(length=64), nullable=True),
    sa.Column('options', sa.JSON(), nullable=False),
    sa.Column('label', sa.String(length=256), nullable=False),
    sa.Column('manifest', sa.JSON(), nullable=True),
    sa.Column('engine_sha256', sa.String(length=64), nullable=True),
    sa.Column('engine_bytes', sa.BigInteger(), nullable=True),
    sa.Column('peak_host_memory_bytes', sa.BigInteger(), nullable=True),
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('log', sa.Text(), nullable=True),
    sa.Column('seconds', sa.Float(), nullable=True),
    sa.Column('node', sa.String(length=128), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['engine_sha256'], ['artifacts.sha256'], ),
    sa.ForeignKeyConstraint(['target_id'], ['targets.id'], ),
    sa.ForeignKeyConstraint(['variant_key'], ['variants.key'], ),
    sa.PrimaryKeyConstraint('key')
    )
    with op.batch_alter_table('builds', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_builds_backend'), ['backend'], unique=False)
        batch_op.create_index(batch_op.f('ix_builds_status'), ['status'], unique=False)
        batch_op.create_index(batch_op.f('ix_builds_target_id'), ['target_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_builds_variant_key'), ['variant_key'], unique=False)

    op.create_table('benchmarks',
    sa.Column('build_key', sa.String(length=64), nullable=False),
    sa.Column('batch_size', sa.Integer(), nullable=False),
    sa.Column('settings', sa.JSON(), nullable=False),
    sa.Column('iterations', sa.Integer(), nullable=True),
    sa.Column('wall_s', sa.Float(), nullable=True),
    sa.Column('throughput', sa.Float(), nullable=True),
    sa.Column('latency_mean', sa.Float(), nullable=True),
    sa.Column('latency_p50', sa.Float(), nullable=True),
    sa.Column('latency_p90', sa.Float(), nullable=True),
    sa.Column('latency_p95', sa.Float(), nullable=True),
    sa.Column('latency_p99', sa.Float(), nullable=True),
    sa.Column('latency_min', sa.Float(), nullable=True),
    sa.Column('latency_max', sa.Float(), nullable=True),
    sa.Column('latency_cv', sa.Float(), nullable=True),
    sa.Column('gpu_compute_p50', sa.Float(), nullable=True),
    sa.Column('gpu_compute_mean', sa.Float(), nullable=True),
    sa.Column('gpu_compute_cv', sa.Float(), nullable=True),
    sa.Column('noisy', sa.Boolean(), nullable=True),
    sa.Column('raw_ms', sa.JSON(), nullable=True),
    sa.Column('raw_gpu_ms', sa.JSON(), nullable=True),
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('log', sa.Text(), nullable=True),
    sa.Column('seconds', sa.Float(), nullable=True),
    sa.Column('node', sa.String(length=128), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['build_key'], ['builds.key'], ),
    sa.PrimaryKeyConstraint('key')
    )
    with op.batch_alter_table('benchmarks', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_benchmarks_build_key'), ['build_key'], unique=False)
        batch_op.create_index(batch_op.f('ix_benchmarks_status'), ['status'], unique=False)

    op.create_table('fidelity',
    sa.Column('build_key', sa.String(length=64), nullable=False),
    sa.Column('reference_key', sa.String(length=64), nullable=False),
    sa.Column('samples', sa.Integer(), nullable=True),
    sa.Column('top1_agreement', sa.Float(), nullable=True),
    sa.Column('top5_agreement', sa.Float(), nullable=True),
    sa.Column('cosine_mean', sa.Float(), nullable=True),
    sa.Column('cosine_min', sa.Float(), nullable=True),
    sa.Column('max_abs_error', sa.Float(), nullable=True),
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('log', sa.Text(), nullable=True),
    sa.Column('seconds', sa.Float(), nullable=True),
    sa.Column('node', sa.String(length=128), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['build_key'], ['builds.key'], ),
    sa.ForeignKeyConstraint(['reference_key'], ['references.key'], ),
    sa.PrimaryKeyConstraint('key')
    )
    with op.batch_alter_table('fidelity', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_fidelity_build_key'), ['build_key'], unique=False)
        batch_op.create_index(batch_op.f('ix_fidelity_status'), ['status'], unique=False)

    


def downgrade() -> None:
    
    with op.batch_alter_table('fidelity', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_fidelity_status'))
        batch_op.drop_index(batch_op.f('ix_fidelity_build_key'))

    op.drop_table('fidelity')
    with op.batch_alter_table('benchmarks', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_benchmarks_status'))
        batch_op.drop_index(batch_op.f('ix_benchmarks_build_key'))

    op.drop_table('benchmarks')
    with op.batch_alter_table('builds', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_builds_variant_key'))
        batch_op.drop_index(batch_op.f('ix_builds_target_id'))
        batch_op.drop_index(batch_op.f('ix_builds_status'))
        batch_op.drop_index(batch_op.f('ix_builds_backend'))

    op.drop_table('builds')
    with op.batch_alter_table('variants', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_variants_status'))
        batch_op.drop_index(batch_op.f('ix_variants_model_key'))

    op.drop_table('variants')
    with op.batch_alter_table('references', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_references_status'))
        batch_op.drop_index(batch_op.f('ix_references_model_key'))

    op.drop_table('references')
    with op.batch_alter_table('sweep_jobs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_sweep_jobs_sweep_id'))
        batch_op.drop_index(batch_op.f('ix_sweep_jobs_key'))

    op.drop_table('sweep_jobs')
    with op.batch_alter_table('models', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_models_status'))
        batch_op.drop_index(batch_op.f('ix_models_name'))

    op.drop_table('models')
    op.drop_table('targets')
    with op.batch_alter_table('sweeps', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_sweeps_name'))

    op.drop_table('sweeps')
    op.drop_table('artifacts')
    

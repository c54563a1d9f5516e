"""The rows answers are made of: plain functions over a SQLAlchemy session for the winners
(farm.results.select), the mailable report, the CLI's name checks and delivery.

farm.results.queries serves people (`farm status`, the dashboard's pages); this module serves the
read side's own computations. Between them they hold all the SQL outside the store.
"""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from farm.store import schema

Query = TypeVar("Query", bound=Select)  # a query of any row shape


def _filtered(query: Query, model: str | None, target: str | None, sweep_id: int | None, key: Any, stage: str) -> Query:
    """`query` for one model, targets whose id contains `target`, and the rows whose `key` the sweep's jobs of `stage` had."""
    if model:
        query = query.where(schema.Model.name == model)
    if target:
        query = query.where(schema.Build.target_id.icontains(target, autoescape=True))
    if sweep_id is not None:
        query = query.where(key.in_(select(schema.SweepJob.key).where(schema.SweepJob.sweep_id == sweep_id, schema.SweepJob.stage == stage)))
    return query


def benchmarked(s: Session, *, model: str | None = None, target: str | None = None,
                sweep_id: int | None = None) -> list[tuple[Any, ...]]:
    """Every successful benchmark of a successful build as (benchmark, build, variant, model, fidelity or None,
    reference or None); `target` matches any part of a target id, `sweep_id` the benchmarks that sweep ran."""
    query = (
        select(schema.Benchmark, schema.Build, schema.Variant, schema.Model, schema.Fidelity, schema.Reference)
        .join(schema.Build, schema.Benchmark.build_key == schema.Build.key)
        .join(schema.Variant, schema.Build.variant_key == schema.Variant.key)
        .join(schema.Model, schema.Variant.model_key == schema.Model.key)
        .outerjoin(schema.Fidelity, (schema.Fidelity.build_key == schema.Build.key) & (schema.Fidelity.status == "ok"))
        .outerjoin(schema.Reference, schema.Reference.key == schema.Fidelity.reference_key)
        .where(schema.Benchmark.status == "ok", schema.Build.status == "ok")
    )
    return [tuple(row) for row in s.execute(_filtered(query, model, target, sweep_id, schema.Benchmark.key, "benchmark"))]


def built_not_timed(s: Session, *, model: str | None = None, target: str | None = None,
                    sweep_id: int | None = None) -> list[tuple[Any, ...]]:
    """Every successful build on a build-only target (rtx:*) without a successful benchmark, as (build, variant,
    model), filtered like benchmarked()."""
    # Uncorrelated on purpose: as a correlated NOT EXISTS, SQLite walked the index on benchmarks.status once per
    # build (6.6 s of the Winners page at 10,000 builds); this list is read once (benchmarks/dashboard_render.py).
    timed = select(schema.Benchmark.build_key).where(schema.Benchmark.status == "ok")
    query = (
        select(schema.Build, schema.Variant, schema.Model)
        .join(schema.Variant, schema.Build.variant_key == schema.Variant.key)
        .join(schema.Model, schema.Variant.model_key == schema.Model.key)
        .join(schema.Target, schema.Build.target_id == schema.Target.id)
        .where(schema.Build.status == "ok", schema.Target.kind == "rtx", schema.Build.key.not_in(timed))
        .order_by(schema.Model.name, schema.Build.target_id, schema.Build.label)
    )
    return [tuple(row) for row in s.execute(_filtered(query, model, target, sweep_id, schema.Build.key, "build"))]


def retimings(s: Session) -> list[schema.Retime]:
    """Every successful re-timing, oldest first (a later one of the same group replaces an earlier)."""
    return list(s.scalars(select(schema.Retime).where(schema.Retime.status == "ok").order_by(schema.Retime.created_at)))


def rejected_variant_rows(s: Session, *, model: str | None = None, sweep_id: int | None = None) -> list[tuple[Any, ...]]:
    """Variants judged not viable (status "rejected") as (variant, model), by model, precision and method."""
    query = (select(schema.Variant, schema.Model).join(schema.Model, schema.Variant.model_key == schema.Model.key)
             .where(schema.Variant.status == "rejected").order_by(schema.Model.name, schema.Variant.precision, schema.Variant.method))
    return [tuple(row) for row in s.execute(_filtered(query, model, None, sweep_id, schema.Variant.key, "variant"))]


def stored_targets(s: Session, ids: set[str]) -> list[schema.Target]:
    """The stored targets of these ids (their CPUs, GPUs and backend versions)."""
    return list(s.scalars(select(schema.Target).where(schema.Target.id.in_(ids))))


def model_names(s: Session) -> list[str]:
    """Every model name in the store, sorted."""
    return sorted(set(s.scalars(select(schema.Model.name))))


def target_ids(s: Session, containing: str | None = None) -> list[str]:
    """Every target id in the store (those containing `containing`), sorted."""
    query = select(schema.Target.id)
    if containing is not None:
        query = query.where(schema.Target.id.contains(containing))
    return sorted(s.scalars(query))


def sweep_builds(s: Session, sweep_id: int) -> list[tuple[Any, ...]]:
    """Every build job of a sweep, whatever became of it, as (job, build or None, variant or None, model or None,
    benchmark or None, fidelity or None): one row per benchmark the sweep ran of the build (any status), one row
    without a benchmark for a build it never timed (failed, pending, build-only). By model, target, label, batch."""
    def jobs(stage: str) -> Any:
        return select(schema.SweepJob.key).where(schema.SweepJob.sweep_id == sweep_id, schema.SweepJob.stage == stage)

    query = (
        select(schema.SweepJob, schema.Build, schema.Variant, schema.Model, schema.Benchmark, schema.Fidelity)
        .outerjoin(schema.Build, schema.Build.key == schema.SweepJob.key)
        .outerjoin(schema.Variant, schema.Build.variant_key == schema.Variant.key)
        .outerjoin(schema.Model, schema.Variant.model_key == schema.Model.key)
        .outerjoin(schema.Benchmark, (schema.Benchmark.build_key == schema.Build.key) & schema.Benchmark.key.in_(jobs("benchmark")))
        .outerjoin(schema.Fidelity, (schema.Fidelity.build_key == schema.Build.key) & schema.Fidelity.key.in_(jobs("fidelity")))
        .where(schema.SweepJob.sweep_id == sweep_id, schema.SweepJob.stage == "build")
        .order_by(schema.Model.name, schema.Build.target_id, schema.SweepJob.label, schema.Benchmark.batch_size)
    )
    return [tuple(row) for row in s.execute(query)]



# Delivery's: the target rows that name a build's compute capability


def target_by_id(s: Session, target_id: str) -> schema.Target | None:
    return s.get(schema.Target, target_id)


def targets_by_id(s: Session) -> dict[str, schema.Target]:
    return {t.id: t for t in s.scalars(select(schema.Target))}



# Prices': the specs a price section may come from


def sweep_specs(s: Session, sweep_id: int | None = None) -> list[dict[str, Any]]:
    """The stored spec of one sweep, or of every sweep newest first."""
    query = select(schema.Sweep.spec).order_by(schema.Sweep.id.desc())
    if sweep_id is not None:
        query = query.where(schema.Sweep.id == sweep_id)
    return list(s.scalars(query))

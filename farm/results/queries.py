"""The store's read side for people: plain functions over a SQLAlchemy session, shared by
`farm status` and the dashboard (which turns their results into frames). No pandas, no Streamlit.

Filtering and paging happen in SQL (WHERE, LIMIT/OFFSET) so a store of 10,000 builds costs
one page of rows per rerun, never the whole table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Select, case, func, or_, select
from sqlalchemy.orm import Session

from farm.results.evidence import Flip, flips_of
from farm.results.labels import one_build
from farm.results.metrics import BENCHMARK_METRICS, FIDELITY_METRICS, METRICS, RESULT_METRICS
from farm.results.progress import sweep_status
from farm.store import schema


@dataclass(frozen=True)
class Filters:
    """Results filters; an empty tuple means "any"."""

    models: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()
    backends: tuple[str, ...] = ()
    precisions: tuple[str, ...] = ()
    batch_sizes: tuple[int, ...] = ()
    statuses: tuple[str, ...] = ()


@dataclass(frozen=True)
class FilterOptions:
    models: list[str]
    targets: list[str]
    backends: list[str]
    precisions: list[str]
    batch_sizes: list[int]
    statuses: list[str]


@dataclass(frozen=True)
class BuildDetail:
    key: str
    label: str
    status: str
    error: str | None
    log: str | None
    model: str
    precision: str
    backend: str
    backend_version: str | None
    target: str
    target_kind: str
    options: dict[str, Any]
    manifest: dict[str, Any] | None
    engine_sha256: str | None
    engine_bytes: int | None
    seconds: float | None
    node: str | None
    created_at: datetime
    peak_host_memory_bytes: int | None = None  # the build's, grown above the worker's own
    peak_device_memory_bytes: int | None = None  # the build's on its GPU (None: a CPU build, or not recorded)
    benchmarks: list[dict[str, Any]] = field(default_factory=list)
    fidelity: dict[str, Any] | None = None
    flips: list[Flip] = field(default_factory=list)  # the judge images its fidelity run flipped, surest of fp32's first

    @property
    def layers(self) -> list[dict[str, str]]:
        """Rows of manifest extra "layers": TensorRT's engine inspector JSON ({"Layers": [...]}) or a plain list."""
        found = ((self.manifest or {}).get("extra") or {}).get("layers")
        if isinstance(found, dict):
            found = found.get("Layers")
        if not isinstance(found, list):
            return []
        rows = [layer if isinstance(layer, dict) else {"Name": layer} for layer in found]
        first = ("Name", "LayerType", "TacticName", "Inputs", "Outputs")
        return [{k: _cell(row[k]) for k in sorted(row, key=lambda k: first.index(k) if k in first else len(first))} for row in rows]


def _cell(value: Any) -> str:
    """Inspector fields mix numbers, lists and dicts; text keeps every column one type, tensors read short."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(t, dict) and "Format/Datatype" in t for t in value):
        return "; ".join(f"{t['Format/Datatype']} {json.dumps(t.get('Dimensions'))}" for t in value)
    return json.dumps(value)


@dataclass(frozen=True)
class SweepSummary:
    id: int
    name: str
    status: str  # as shown (sweep_status): a running sweep whose driver is gone reads "interrupted (...)"
    spec: str
    started: datetime
    finished: datetime | None
    jobs: int
    done: int
    failed: int
    reruns: int = 0  # later sweeps of the same jobs that the store answered whole (nothing ran)


def _job_counts() -> Any:
    """Per sweep: its jobs, those done or cached, failed, and those that ran or were to run (not answered from the store)."""
    return (
        select(
            schema.SweepJob.sweep_id,
            func.count().label("jobs"),
            func.sum(case((schema.SweepJob.state.in_(("done", "cached")), 1), else_=0)).label("finished"),
            func.sum(case((schema.SweepJob.state == "failed", 1), else_=0)).label("failed"),
            func.sum(case((schema.SweepJob.state.in_(schema.ANSWERED_STATES), 0), else_=1)).label("worked"),
        )
        .group_by(schema.SweepJob.sweep_id)
        .subquery()
    )


def _worked_first(jobs: Any) -> tuple[Any, Any]:
    """Sweeps that did work (or have not ended: a running or interrupted one is about work), newest first, then
    the ended ones the store answered whole (recorded by farm before re-runs were counted on the sweep they
    repeat, or a spec whose jobs no one sweep had): what `farm status` and the dashboard open on is the first."""
    worked = or_(func.coalesce(jobs.c.worked, 1) > 0, schema.Sweep.status.not_in(("finished", "failed")))
    return case((worked, 0), else_=1), schema.Sweep.id.desc()


def sweeps(s: Session) -> list[SweepSummary]:
    """Every sweep with its job counts: those that did work newest first, then those that did none."""
    jobs = _job_counts()
    rows = s.execute(
        select(schema.Sweep.id, schema.Sweep.name, schema.Sweep.status, schema.Sweep.spec_path, schema.Sweep.started_at,
               schema.Sweep.finished_at, jobs.c.jobs, jobs.c.finished, jobs.c.failed, schema.Sweep.heartbeat_at, schema.Sweep.reruns)
        .outerjoin(jobs, jobs.c.sweep_id == schema.Sweep.id)
        .order_by(*_worked_first(jobs))
    ).all()
    return [SweepSummary(r[0], r[1], sweep_status(r[2], r[9], r[4], finished=r[5]), r[3], r[4], r[5], int(r[6] or 0), int(r[7] or 0), int(r[8] or 0),
                         int(r[10] or 0))
            for r in rows]


def sweep(s: Session, sweep_id: int | None = None) -> schema.Sweep | None:
    """One sweep, or when no id is given the newest that did work (else the newest)."""
    if sweep_id is not None:
        return s.get(schema.Sweep, sweep_id)
    jobs = _job_counts()
    return s.scalars(select(schema.Sweep).outerjoin(jobs, jobs.c.sweep_id == schema.Sweep.id).order_by(*_worked_first(jobs)).limit(1)).first()


def model_provenance(s: Session, model_key: str) -> dict[str, Any]:
    """How to feed a model and what its weights are, as bundles, manifests and `farm best --json` state
    them: `preprocess` ({resize, crop, mean, std}, as the newest sweep that exported it resolved it;
    None where no sweep recorded it), `weights` (a name, or None) and `random_weights`."""
    model = s.get(schema.Model, model_key)
    if model is None:
        return {"preprocess": None, "weights": None, "random_weights": False}
    specs = s.scalars(select(schema.Sweep.spec).join(schema.SweepJob, schema.SweepJob.sweep_id == schema.Sweep.id)
                      .where(schema.SweepJob.stage == "export", schema.SweepJob.key == model_key)
                      .order_by(schema.Sweep.id.desc()))
    preprocess = None
    for spec in specs:
        entry = next((m for m in (spec or {}).get("models") or [] if isinstance(m, dict) and m.get("name") == model.name), None)
        if entry is not None:
            preprocess = entry.get("preprocess_used") or entry.get("preprocess")
            break
    return {"preprocess": preprocess, "weights": model.weights, "random_weights": random_weights(model.source, model.weights)}


@dataclass(frozen=True)
class LastExport:
    """A model's export in the newest earlier sweep of a spec: its key and its entry in that sweep's
    stored spec (its fields, and the `key_inputs` farm.run.model_inputs hashed)."""

    key: str
    entry: dict[str, Any]


def last_exports(s: Session, sweep_name: str) -> dict[str, LastExport]:
    """By model name: the export job of the newest sweep named `sweep_name` that had that model."""
    newest = (select(schema.SweepJob.label, func.max(schema.SweepJob.sweep_id).label("sweep_id"))
              .join(schema.Sweep, schema.Sweep.id == schema.SweepJob.sweep_id)
              .where(schema.Sweep.name == sweep_name, schema.SweepJob.stage == "export")
              .group_by(schema.SweepJob.label).subquery())
    rows = s.execute(select(schema.SweepJob.label, schema.SweepJob.key, schema.Sweep.spec)
                     .join(newest, (newest.c.label == schema.SweepJob.label) & (newest.c.sweep_id == schema.SweepJob.sweep_id))
                     .join(schema.Sweep, schema.Sweep.id == schema.SweepJob.sweep_id)
                     .where(schema.SweepJob.stage == "export"))
    found: dict[str, LastExport] = {}
    for name, key, spec in rows:
        models = (spec or {}).get("models") if isinstance(spec, dict) else None
        entry = next((m for m in models or [] if isinstance(m, dict) and m.get("name") == name), {})
        found[name] = LastExport(key, entry)
    return found


def build_provenance(s: Session, build_key: str) -> dict[str, Any]:
    """model_provenance of the model a build was made from."""
    model_key = s.scalar(select(schema.Variant.model_key).join(schema.Build, schema.Build.variant_key == schema.Variant.key)
                         .where(schema.Build.key == build_key))
    return model_provenance(s, model_key or "")


def random_weights(source: str, weights: str | None) -> bool:
    """A torchvision network asked for with `weights: null`: seeded random init, a speed result only.
    (An ONNX file brings its weights, and a factory may load its own.)"""
    return weights is None and source.startswith("torchvision:")


# The tables an answer (farm.results.select: candidates, rejected variants, build-only engines) is read from.
ANSWER_TABLES = (schema.Model, schema.Variant, schema.Build, schema.Benchmark, schema.Fidelity, schema.Reference, schema.Retime)


def results_stamp(s: Session) -> tuple[Any, ...]:
    """Changes whenever an answer read from the store could: every write of a job row (a record, a redo, `farm
    verify --repair`) sets its created_at, so each table's row count and newest created_at, with the sweeps'
    jobs and the targets' last probe, tell a reader it must read again. One query of aggregates."""
    columns: list[Any] = []
    for table in ANSWER_TABLES:
        columns += [select(func.count()).select_from(table).scalar_subquery(), select(func.max(table.created_at)).scalar_subquery()]
    columns += [select(func.count()).select_from(schema.SweepJob).scalar_subquery(),
                select(func.max(schema.Sweep.id)).scalar_subquery(),
                select(func.max(schema.Target.last_seen)).scalar_subquery()]
    return tuple(s.execute(select(*columns)).one())


def filter_options(s: Session) -> FilterOptions:
    def distinct(column: Any) -> list[Any]:
        return sorted(v for v in s.scalars(select(column).distinct()) if v is not None)

    return FilterOptions(
        models=distinct(schema.Model.name),
        targets=distinct(schema.Build.target_id),
        backends=distinct(schema.Build.backend),
        precisions=distinct(schema.Variant.precision),
        batch_sizes=distinct(schema.Benchmark.batch_size),
        statuses=distinct(schema.Build.status),
    )


def _results_query(filters: Filters) -> Select[Any]:
    bench = schema.Benchmark
    fid = schema.Fidelity
    query = (
        select(
            schema.Build.key.label("build_key"),
            schema.Model.name.label("model"),
            schema.Build.target_id.label("target"),
            schema.Build.backend.label("backend"),
            schema.Variant.precision.label("precision"),
            schema.Build.options.label("options"),
            schema.Build.status.label("status"),
            bench.batch_size.label("batch"),
            *(getattr(bench if METRICS[m].table == "benchmark" else fid, METRICS[m].column).label(m) for m in RESULT_METRICS),
            schema.Build.engine_bytes.label("engine_bytes"),
            func.coalesce(schema.Build.error, bench.error, fid.error).label("error"),
            schema.Build.label.label("label"),
        )
        .join(schema.Variant, schema.Build.variant_key == schema.Variant.key)
        .join(schema.Model, schema.Variant.model_key == schema.Model.key)
        # Joined on build_key alone: a status condition here lets SQLite pick the (useless) status
        # index and scan every benchmark per build; a failed benchmark simply shows no timings.
        .outerjoin(bench, bench.build_key == schema.Build.key)
        .outerjoin(fid, fid.build_key == schema.Build.key)
    )
    conditions = [
        (schema.Model.name, filters.models),
        (schema.Build.target_id, filters.targets),
        (schema.Build.backend, filters.backends),
        (schema.Variant.precision, filters.precisions),
        (bench.batch_size, filters.batch_sizes),
        (schema.Build.status, filters.statuses),
    ]
    for column, allowed in conditions:
        if allowed:
            query = query.where(column.in_(allowed))
    return query


RESULT_COLUMNS: list[str] = list(_results_query(Filters()).selected_columns.keys())


def results(s: Session, filters: Filters, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
    """One page of builds x benchmarks (a failed build is one row without timings) and the total count."""
    query = _results_query(filters)
    total = s.scalar(select(func.count()).select_from(query.subquery())) or 0
    page = query.order_by(schema.Model.name, schema.Build.target_id, schema.Build.label, schema.Benchmark.batch_size)
    return [dict(zip(RESULT_COLUMNS, row, strict=True)) for row in s.execute(page.limit(limit).offset(offset))], total


def build_detail(s: Session, key: str) -> BuildDetail | None:
    build = s.get(schema.Build, key)
    if build is None:
        return None
    benches = s.scalars(
        select(schema.Benchmark).where(schema.Benchmark.build_key == key).order_by(schema.Benchmark.batch_size)
    ).all()
    fid = s.scalars(select(schema.Fidelity).where(schema.Fidelity.build_key == key)).first()
    return BuildDetail(
        key=build.key, label=build.label, status=build.status, error=build.error, log=build.log,
        model=build.variant.model.name, precision=build.variant.precision, backend=build.backend,
        backend_version=build.backend_version, target=build.target_id, target_kind=build.target.kind,
        options=dict(build.options), manifest=build.manifest, engine_sha256=build.engine_sha256,
        engine_bytes=build.engine_bytes, seconds=build.seconds, node=build.node, created_at=build.created_at,
        peak_host_memory_bytes=build.peak_host_memory_bytes, peak_device_memory_bytes=build.peak_device_memory_bytes,
        benchmarks=[
            {"batch_size": b.batch_size, "status": b.status, "peak_host_memory_bytes": b.peak_host_memory_bytes,
             "peak_device_memory_bytes": b.peak_device_memory_bytes, **{m: getattr(b, METRICS[m].column) for m in BENCHMARK_METRICS},
             "noisy": b.noisy, "raw_ms": b.raw_ms or [], "error": b.error}
            for b in benches
        ],
        fidelity=None if fid is None else {
            "status": fid.status, "samples": fid.samples, "agreed": fid.agreed,
            **{m: getattr(fid, METRICS[m].column) for m in FIDELITY_METRICS},
            "flipped": len((fid.evidence or {}).get("flipped") or ()), "reference_note": fid.reference_note, "error": fid.error,
        },
        flips=[] if fid is None else flips_of(fid.evidence, _noise_floor(s, fid.reference_key)),
    )


def _noise_floor(s: Session, reference_key: str) -> dict[str, Any] | None:
    reference = s.get(schema.Reference, reference_key)
    return None if reference is None else reference.noise_floor


def build_choices(s: Session, limit: int = 2000) -> dict[str, str]:
    """Build key -> label of the newest builds, for pickers."""
    rows = s.execute(select(schema.Build.key, schema.Build.label, schema.Build.status)
                     .order_by(schema.Build.created_at.desc()).limit(limit)).all()
    return {key: text if status == "ok" else f"{text} ({status})" for key, text, status in rows}


def timed_pair(s: Session) -> tuple[str, str] | None:
    """Two builds worth comparing when nothing is chosen yet: the newest build with a timing, and the
    fastest other timed build of the same model and target at a batch size both were timed at (else
    any other timed build). None when fewer than two builds have timings."""
    p50 = getattr(schema.Benchmark, METRICS["p50"].column)
    rows = s.execute(
        select(schema.Build.key, schema.Variant.model_key, schema.Build.target_id, schema.Benchmark.batch_size, p50)
        .join(schema.Variant, schema.Build.variant_key == schema.Variant.key)
        .join(schema.Benchmark, schema.Benchmark.build_key == schema.Build.key)
        .where(schema.Build.status == "ok", schema.Benchmark.status == "ok", p50.is_not(None))
        .order_by(schema.Build.created_at.desc(), schema.Benchmark.batch_size)
    ).all()
    if len({r[0] for r in rows}) < 2:
        return None
    first = rows[0]
    batches = {r[3] for r in rows if r[0] == first[0]}
    peers = sorted((r for r in rows if r[0] != first[0] and (r[1], r[2]) == (first[1], first[2]) and r[3] in batches),
                   key=lambda r: (r[3], r[4]))
    other = peers[0][0] if peers else next(r[0] for r in rows if r[0] != first[0])
    return first[0], other


def builds_by_prefix(s: Session, prefix: str, limit: int = 50) -> list[tuple[str, str]]:
    """(key, label) of the builds whose key is `prefix` or starts with it (a short key, farm.results.labels)."""
    exact = s.execute(select(schema.Build.key, schema.Build.label).where(schema.Build.key == prefix)).all()
    if exact:
        return [(key, label) for key, label in exact]
    # LIKE's wildcards in what a person typed match themselves
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    rows = s.execute(select(schema.Build.key, schema.Build.label).where(schema.Build.key.like(f"{escaped}%", escape="\\"))
                     .order_by(schema.Build.key).limit(limit)).all()
    return [(key, label) for key, label in rows]


def build_key_for(s: Session, prefix: str) -> str:
    """The one build a key or a short key names; UnknownBuild (one line) for none or several."""
    return one_build(prefix, builds_by_prefix(s, prefix))


def build_label(s: Session, key: str) -> str | None:
    return s.scalar(select(schema.Build.label).where(schema.Build.key == key))


def counts(s: Session) -> dict[str, int]:
    """Row counts of the main tables: what the empty states and the header look at."""
    return {name: s.scalar(select(func.count()).select_from(table)) or 0
            for name, table in (("sweeps", schema.Sweep), ("builds", schema.Build), ("benchmarks", schema.Benchmark))}

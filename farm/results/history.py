"""A sweep's results as that sweep saw them, and the named baselines: the rows `farm diff` compares.

A redo (--redo-from, --force) writes a build, benchmark or fidelity row again under the same key and keeps
the finished row it replaced (schema.ReplacedRow, with the sweep that replaced it). So what sweep N saw of a
key is the first row replaced by a sweep after N, or the row in place when no later sweep replaced it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from farm.results.diff import EngineRun
from farm.results.timeline import SweepRuns
from farm.store import schema
from farm.store.record import row_columns

READ = ("build", "benchmark", "fidelity")
SEEN = ("done", "cached")  # a sweep's job whose row that sweep wrote or read back


def rows_seen(s: Session, sweep_id: int, stage: str) -> dict[str, dict[str, Any]]:
    """Key -> the columns of every finished row of `stage` the sweep ran or read back, as it saw them."""
    keys = list(s.scalars(select(schema.SweepJob.key).where(schema.SweepJob.sweep_id == sweep_id, schema.SweepJob.stage == stage,
                                                            schema.SweepJob.state.in_(SEEN))))
    table: Any = schema.STAGE_TABLES[stage]
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(keys), 500):
        chunk = keys[start:start + 500]
        found |= {row.key: row_columns(row) for row in s.scalars(select(table).where(table.key.in_(chunk), table.status == "ok"))}
        replaced = s.scalars(select(schema.ReplacedRow)
                             .where(schema.ReplacedRow.stage == stage, schema.ReplacedRow.key.in_(chunk),
                                    schema.ReplacedRow.replaced_by > sweep_id)
                             .order_by(schema.ReplacedRow.replaced_by.desc(), schema.ReplacedRow.id.desc()))
        found |= {row.key: row.columns for row in replaced}  # the earliest replacement after the sweep is applied last
    return found


def _versions(build: dict[str, Any]) -> dict[str, str]:
    """The library versions an engine was built (and so timed) with: its backend's, and the manifest's *_version fields."""
    extra = (build.get("manifest") or {}).get("extra") or {}
    found = {name.removesuffix("_version"): str(value) for name, value in extra.items() if name.endswith("_version") and value}
    if build.get("backend_version"):
        found[build["backend"]] = str(build["backend_version"])
    return found


def sweep_engines(s: Session, sweep_id: int) -> list[EngineRun]:
    """Every engine the sweep timed (a finished build at each batch size), with its raw timings and fidelity as the sweep saw them."""
    seen = {stage: rows_seen(s, sweep_id, stage) for stage in READ}
    builds = seen["build"]
    fidelity = {row["build_key"]: row for row in seen["fidelity"].values()}
    variants = {v.key: v for v in s.scalars(select(schema.Variant).where(schema.Variant.key.in_({b["variant_key"] for b in builds.values()})))}
    models = {m.key: m for m in s.scalars(select(schema.Model).where(schema.Model.key.in_({v.model_key for v in variants.values()})))}
    targets = {t.id: t for t in s.scalars(select(schema.Target).where(schema.Target.id.in_({b["target_id"] for b in builds.values()})))}
    found = []
    for bench in seen["benchmark"].values():
        build = builds.get(bench["build_key"])
        if build is None or build["variant_key"] not in variants:
            continue  # a build this sweep did not see finished: nothing to pair
        variant = variants[build["variant_key"]]
        model, target = models[variant.model_key], targets[build["target_id"]]
        judged = fidelity.get(build["key"], {})
        found.append(EngineRun(
            model=model.name, precision=variant.precision, method=variant.method, backend=build["backend"], options=build["options"],
            target_kind=target.kind, target_name=target.name, batch_size=bench["batch_size"], label=build["label"],
            build_key=build["key"], raw_ms=tuple(bench["raw_ms"] or ()), p50=bench["latency_p50"],
            agreed=judged.get("agreed"), samples=judged.get("samples"), top1=judged.get("top1_agreement"),
            cosine=judged.get("cosine_mean"), versions=_versions(build),
            model_digest=variant.onnx_sha256 or model.onnx_sha256 or model.checkpoint_sha256, settings=bench["settings"] or {},
        ))
    return sorted(found, key=lambda r: r.match_key)


def baseline(s: Session, name: str) -> schema.Baseline | None:
    return s.scalars(select(schema.Baseline).where(schema.Baseline.name == name)).first()


def baselines(s: Session) -> list[tuple[schema.Baseline, schema.Sweep]]:
    """Every baseline with its sweep, by name."""
    query = select(schema.Baseline, schema.Sweep).join(schema.Sweep, schema.Sweep.id == schema.Baseline.sweep_id).order_by(schema.Baseline.name)
    return [(b, sweep) for b, sweep in s.execute(query)]


def sweeps_runs(s: Session) -> list[SweepRuns]:
    """Every sweep, oldest first, with the engines it timed."""
    sweeps = s.execute(select(schema.Sweep.id, schema.Sweep.name, schema.Sweep.started_at).order_by(schema.Sweep.id)).all()
    return [SweepRuns(int(i), name, started, tuple(sweep_engines(s, int(i)))) for i, name, started in sweeps]

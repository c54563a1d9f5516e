"""Winners are a query, not a stage: the best build per (model, target, batch size) under a fidelity floor."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from farm.metrics import METRICS, values
from farm.store import schema

Objective = Literal["p50", "p99", "throughput"]
OBJECTIVES: tuple[Objective, ...] = ("p50", "p99", "throughput")
BASELINE_BACKEND = "torch"


@dataclass(frozen=True)
class Candidate:
    """One benchmarked build at one batch size, with every metric farm.metrics defines."""

    build_key: str
    label: str
    model: str
    precision: str
    backend: str
    options: dict[str, Any]
    target: str
    batch_size: int
    engine_sha256: str | None
    metrics: dict[str, float | None]  # metric name (farm.metrics) -> value; None where not measured
    speedup_vs_torch: float | None = None
    speedup_vs_fp32: float | None = None
    method: str | None = None  # int8 / fp8 calibration method
    layout: str | None = None  # int8 Q/DQ layout (workers.precision.INT8_LAYOUTS)
    layout_label: str = ""  # what engine labels show of it ("u8s8 7-bit"; "" for TensorRT's)
    quantized_fraction: float | None = None  # int8 / fp8: share of quantizable activations still quantized
    kernel_note: str | None = None  # the build's own fidelity far below its variant's fake-quant arithmetic

    def value(self, metric: str) -> float | None:
        return self.metrics.get(metric)

    @property
    def p50_ms(self) -> float:
        return self.value("p50") or 0.0

    @property
    def p99_ms(self) -> float:
        return self.value("p99") or 0.0

    @property
    def throughput(self) -> float:
        return self.value("throughput") or 0.0

    @property
    def cv(self) -> float:
        return self.value("cv") or 0.0

    @property
    def top1_agreement(self) -> float | None:
        """Top-1 agreement with fp32; for detectors, which have no classes to agree on, box recall."""
        top1 = self.value("top1_agreement")
        return top1 if top1 is not None else self.value("box_recall")

    @property
    def cosine_mean(self) -> float | None:
        return self.value("cosine")

    @property
    def engine(self) -> str:
        """What a person reads: backend, precision with what makes it that precision, and the options."""
        share = f"({self.quantized_fraction:.0%} {self.precision})" if self.quantized_fraction is not None and self.quantized_fraction < 1 else ""
        options = " ".join(f"{k}={v}" for k, v in self.options.items())
        return " ".join(filter(None, (self.backend, self.precision, self.method, self.layout_label, share, options)))

    def score(self, objective: Objective) -> float:
        """Lower is better for every objective."""
        value = self.value(objective)
        return METRICS[objective].score(value) if value is not None else math.inf

    def eligible(self, min_top1_agreement: float) -> bool:
        return self.top1_agreement is not None and self.top1_agreement >= min_top1_agreement


def candidates(
    session: Session,
    *,
    model: str | None = None,
    target: str | None = None,
    sweep_id: int | None = None,
) -> list[Candidate]:
    """Every successful benchmark with its build, variant and fidelity, filtered in SQL."""
    query = (
        select(schema.Benchmark, schema.Build, schema.Variant, schema.Model, schema.Fidelity)
        .join(schema.Build, schema.Benchmark.build_key == schema.Build.key)
        .join(schema.Variant, schema.Build.variant_key == schema.Variant.key)
        .join(schema.Model, schema.Variant.model_key == schema.Model.key)
        .outerjoin(schema.Fidelity, (schema.Fidelity.build_key == schema.Build.key) & (schema.Fidelity.status == "ok"))
        .where(schema.Benchmark.status == "ok", schema.Build.status == "ok")
    )
    if model:
        query = query.where(schema.Model.name == model)
    if target:
        query = query.where(schema.Build.target_id.contains(target))
    if sweep_id is not None:
        in_sweep = select(schema.SweepJob.key).where(schema.SweepJob.sweep_id == sweep_id, schema.SweepJob.stage == "benchmark")
        query = query.where(schema.Benchmark.key.in_(in_sweep))
    found = []
    for bench, build, variant, mod, fid in session.execute(query):
        found.append(
            Candidate(
                build_key=build.key,
                label=build.label,
                model=mod.name,
                precision=variant.precision,
                backend=build.backend,
                options=build.options,
                target=build.target_id,
                batch_size=bench.batch_size,
                engine_sha256=build.engine_sha256,
                metrics=values(bench, "benchmark") | values(fid, "fidelity"),
                method=variant.method,
                layout=(variant.details or {}).get("layout") if variant.precision == "int8" else None,
                layout_label=(variant.details or {}).get("layout_label", "") if variant.precision == "int8" else "",
                quantized_fraction=(variant.details or {}).get("quantized_fraction") if variant.method else None,
                kernel_note=kernel_note(variant.details, fid.cosine_mean if fid else None),
            )
        )
    return found


def kernel_note(details: dict[str, Any] | None, cosine_mean: float | None) -> str | None:
    """Why a quantized build falls short of its variant's fake-quant fidelity, when it does (by more
    than the tolerance the variant recorded with it)."""
    fake = (details or {}).get("fake_quant")
    if not fake or cosine_mean is None or cosine_mean >= fake["cosine_mean"] - fake.get("kernel_gap", 0.01):
        return None
    return (f"kernel at fault: mean cosine {cosine_mean:.4f} on this target where fake-quant of the same graph gives "
            f"{fake['cosine_mean']:.4f}")


def _speedup(winner: Candidate, other: Candidate | None, objective: Objective) -> float | None:
    """How many times better the winner is on the objective: a ratio above 1 whichever way the metric points."""
    ours, theirs = winner.value(objective), other.value(objective) if other is not None else None
    if not ours or not theirs:
        return None
    return ours / theirs if METRICS[objective].better == "higher" else theirs / ours


def winners(found: Iterable[Candidate], objective: Objective = "p50", min_top1_agreement: float = 0.99) -> list[Candidate]:
    """The best eligible candidate per (model, target, batch size), with its speedups.

    Speedup vs torch compares with the fastest PyTorch baseline of the same group; speedup
    vs fp32 with the fastest fp32 build of the same group (the baseline among them).
    """
    groups: dict[tuple[str, str, int], list[Candidate]] = {}
    for c in found:
        groups.setdefault((c.model, c.target, c.batch_size), []).append(c)
    chosen = []
    for key in sorted(groups):
        group = groups[key]
        eligible = [c for c in group if c.eligible(min_top1_agreement)]
        if not eligible:
            continue
        best = min(eligible, key=lambda c: c.score(objective))
        baseline = min((c for c in group if c.backend == BASELINE_BACKEND), key=lambda c: c.score(objective), default=None)
        fp32 = min((c for c in group if c.precision == "fp32"), key=lambda c: c.score(objective), default=None)
        chosen.append(replace(best, speedup_vs_torch=_speedup(best, baseline, objective), speedup_vs_fp32=_speedup(best, fp32, objective)))
    return chosen


def pareto_front(found: Iterable[Candidate], objective: Objective = "p50") -> list[Candidate]:
    """The candidates no other beats on both the objective and top-1 agreement, best objective first.

    Compare like with like: pass one (model, target, batch size) group. A candidate without a
    fidelity measurement cannot be placed on the fidelity axis and is left out.
    """
    measured = sorted(
        (c for c in found if c.top1_agreement is not None),
        key=lambda c: (c.score(objective), -(c.top1_agreement or 0.0)),
    )
    front: list[Candidate] = []
    for c in measured:
        # Sorted by objective, so c is dominated unless it is more faithful than everything faster.
        if not front or (c.top1_agreement or 0.0) > (front[-1].top1_agreement or 0.0):
            front.append(c)
    return front

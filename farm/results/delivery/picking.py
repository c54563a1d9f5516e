"""Which build a delivery takes (`farm pull`): the winner where the target was timed, and on a
build-only target the build of the asked precision, else the one the rule (PULL_RULES) picks."""

from __future__ import annotations

import math
from dataclasses import dataclass

from sqlalchemy.orm import Session

from farm.results import rows
from farm.results.delivery.errors import ExportError
from farm.results.labels import UnknownBuild, short_key
from farm.results.queries import build_key_for, build_label
from farm.results.select import Candidate, Constraints, Objective, Untimed, candidates, rejected_variants, untimed, winners


def default_batch(batch_sizes: list[int], objective: Objective) -> int:
    """Latency is read at the smallest batch, throughput at the largest."""
    return max(batch_sizes) if objective == "throughput" else min(batch_sizes)


@dataclass(frozen=True)
class Picked:
    """The build `farm pull` hands out, and why that one."""

    build_key: str
    label: str
    summary: str  # its measurements, one line
    rule: str  # how it was chosen, one line


PULL_RULES = ("timed-precision", "smallest")


def pick_build(
    session: Session,
    model: str,
    target: str,
    objective: Objective = "p50",
    constraints: Constraints | float = 0.99,
    batch_size: int | None = None,
    precision: str | None = None,
    rule: str = "timed-precision",
) -> Picked:
    """The build of one model on one target: the winner where the target was timed; on a build-only
    target (rtx:*) the build of `precision`, else by `rule`. `target` is an id or a unique part of one."""
    constraints = Constraints.of(constraints)
    timed = candidates(session, model=model)
    build_only = untimed(session, model=model)
    ids = sorted({c.target for c in timed} | {u.target for u in build_only})
    if not ids:
        raise ExportError(f"no build of model {model if len(model) <= 60 else model[:57] + '...'!r}", 2)
    matched = [t for t in ids if t == target] or [t for t in ids if target.lower() in t.lower()]
    if not matched:
        raise ExportError(f"no target matching {target!r} for {model}; known: {', '.join(ids)}", 2)
    if len(matched) > 1:
        raise ExportError(f"--target {target!r} matches {len(matched)} targets ({'; '.join(matched)}): be more specific", 2)
    here = matched[0]
    if not any(c.target == here for c in timed):
        return _pick_untimed(model, here, [u for u in build_only if u.target == here], timed, objective, constraints, precision, rule)
    found = [c for c in timed if c.target == here and (precision is None or c.precision == precision)]
    sizes = sorted({c.batch_size for c in found})
    if not sizes:
        refused = [x for x in rejected_variants(session, model=model) if precision and x.engine.split()[0] == precision]
        if refused:  # judged before any build: say by how much
            raise ExportError(f"no {precision} build of {model} on {here}: {refused[0].line(constraints.confident_margin)}", 3)
        raise ExportError(f"no {precision} build of {model} on {here}", 2)
    batch = default_batch(sizes, objective) if batch_size is None else batch_size
    if batch not in sizes:
        raise ExportError(f"{model} on {here} was benchmarked at batch sizes {sizes}, not {batch}", 2)
    best = winners([c for c in found if c.batch_size == batch], objective, constraints)
    if not best:
        raise ExportError(f"no {precision + ' ' if precision else ''}build of {model} on {here} reaches {constraints.describe()}: "
                          f"{_shortfall([c for c in found if c.batch_size == batch], constraints)}; relax the constraints", 3)
    w = best[0]
    summary = (f"{w.label}: batch {w.batch_size}, p50 {w.p50:.3f} ms, p99 {w.p99:.3f} ms, {w.throughput:.1f} samples/s, "
               f"{_agreement(w)}" + (f"; {w.verdict.note}" if w.verdict and w.verdict.note else ""))
    return Picked(w.build_key, w.label, summary, f"the winner by {objective} under {constraints.describe()}")


def pick_key(session: Session, prefix: str) -> Picked:
    """The build a key or a short key names (`farm pull KEY`): no rule applies, the person chose it."""
    try:
        key = build_key_for(session, prefix)
    except UnknownBuild as exc:
        known = rows.model_names(session)
        if prefix in known:  # a model name without its target
            raise ExportError(f"--target is required to pull the winner of model {prefix} (or give a build key)", 2) from None
        raise ExportError(str(exc), 2) from None
    timed = [c for c in candidates(session) if c.build_key == key]
    measured = "; ".join(f"batch {c.batch_size}: p50 {c.p50:.3f} ms, p99 {c.p99:.3f} ms, {c.throughput:.1f} samples/s" for c in timed)
    label = build_label(session, key) or key
    return Picked(key, label, f"{label}: {measured or 'not timed'}", f"build {short_key(key)} by its key (no selection rule applied)")


def _shortfall(found: list[Candidate], constraints: Constraints) -> str:
    """By how much the closest build missed: its evidence, its reasons, and the floor it would meet."""
    closest = max(found, key=lambda c: c.evidence.interval[1] if c.evidence is not None else c.agreement_share or 0.0)
    reached = closest.evidence.describe(constraints.confident_margin) if closest.evidence is not None else _agreement(closest)
    would = closest.evidence.interval[1] if closest.evidence is not None else closest.agreement_share
    floor = f" (its top-1 floor would be --min-top1-agreement {math.floor((would or 0.0) * 100) / 100:.2f})" if would is not None else ""
    return f"closest {closest.engine}: {reached}, {'; '.join(constraints.failures(closest))}{floor}"


def _pick_untimed(model: str, target: str, builds: list[Untimed], timed: list[Candidate], objective: Objective,
                  constraints: Constraints, precision: str | None, rule: str) -> Picked:
    if rule not in PULL_RULES:
        raise ExportError(f"--rule {rule!r}: expected one of {', '.join(PULL_RULES)}", 2)

    def smallest(pool: list[Untimed]) -> Untimed:
        return min(pool, key=lambda u: (u.engine_bytes or 0, u.label))

    if precision is not None:
        pool = [u for u in builds if u.precision == precision]
        if not pool:
            raise ExportError(f"no {precision} build of {model} on {target}; built: {', '.join(sorted({u.precision for u in builds}))}", 2)
        chosen, why = smallest(pool), f"the {precision} build you asked for (the smallest of {len(pool)})"
    elif rule == "smallest":
        chosen, why = smallest(builds), "rule smallest: the smallest engine built for this target"
    else:
        won = [w.precision for w in winners(timed, objective, constraints)]
        common = max(set(won), key=won.count) if won else None
        pool = [u for u in builds if u.precision == common]
        if pool:
            chosen, why = smallest(pool), (f"rule timed-precision: {common}, the precision that won on the timed targets "
                                           f"({won.count(common)} of {len(won)} winners); the smallest such build")
        else:
            chosen, why = smallest(builds), (f"rule timed-precision found no {common or 'timed'} build here: the smallest engine "
                                             "built for this target instead")
    size = f"{chosen.engine_bytes / 1e6:.1f} MB" if chosen.engine_bytes else "size unknown"
    summary = f"{chosen.label}: built, not timed ({size}; {chosen.why})"
    return Picked(chosen.build_key, chosen.label, summary, why)


def _agreement(c: Candidate) -> str:
    """'top-1 agreement 0.99', or 'box recall 0.9' for a detector: what the fidelity floor read."""
    share = c.agreement_share
    return f"{'top-1 agreement' if c.agreement_metric == 'top1_agreement' else 'box recall'} {share}"

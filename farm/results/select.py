"""Winners are a query, not a stage: the best build per (model, target, batch size) under a fidelity floor."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy.orm import Session

from farm.results import queries, rows, verdict
from farm.results.constraints import Constraints
from farm.results.labels import engine_text, short_key
from farm.results.evidence import CONFIDENT_MARGIN, Evidence, columns_of, evidence_of
from farm.results.metrics import AGREEMENT_METRICS, METRICS, Objective, values
from farm.results.prices import Prices, cores_used, cost_per_million
from farm.results.verdict import Verdict

BASELINE_BACKEND = "torch"
RANDOM_WEIGHTS = "random weights: a speed result, not an accuracy result"


@dataclass(frozen=True)
class Retimed:
    """A group's interleaved re-timing, as stored (farm.store.schema.Retime)."""

    objective: str
    contenders: tuple[str, ...]  # build keys
    rounds: dict[str, dict[str, list[float]]]
    reason: str | None


@dataclass(frozen=True)
class Candidate:
    """One benchmarked build at one batch size, with every metric farm.results.metrics defines."""

    build_key: str
    label: str
    model: str
    precision: str
    backend: str
    options: dict[str, Any]
    target: str
    batch_size: int
    engine_sha256: str | None
    metrics: dict[str, float | None]  # metric name (farm.results.metrics) -> value; None where not measured
    speedup_vs_torch: float | None = None
    speedup_vs_fp32: float | None = None
    method: str | None = None  # int8 / fp8 calibration method
    layout: str | None = None  # int8 Q/DQ layout (workers.precision.INT8_LAYOUTS)
    layout_label: str = ""  # what engine labels show of it ("u8s8 7-bit"; "" for TensorRT's)
    quantized_fraction: float | None = None  # int8 / fp8: share of quantizable activations still quantized
    kernel_note: str | None = None  # the build's own fidelity far below its variant's fake-quant arithmetic
    random_weights: bool = False  # a random-weight network: a speed result, not an accuracy result
    evidence: Evidence | None = None  # its fidelity as counts, flips and the noise floor (None: recorded before evidence)
    retimed: Retimed | None = None  # its group's interleaved re-timing, where one ran
    usd_per_hour: float | None = None  # what its benchmark's share of the target costs (farm.results.prices)
    verdict: Verdict | None = None  # set on winners: is it really faster than the runner-up?
    # Set on winners: the builds named beside it, the runner-up of a clear win, or every other build of a tie
    # (simplest first). Never empty where another build was eligible.
    rivals: tuple[Candidate, ...] = ()

    def value(self, metric: str) -> float | None:
        return self.metrics.get(metric)

    # Each metric under its farm.results.metrics name (a timing that was not measured reads 0).
    @property
    def p50(self) -> float:
        return self.value("p50") or 0.0

    @property
    def p99(self) -> float:
        return self.value("p99") or 0.0

    @property
    def throughput(self) -> float:
        return self.value("throughput") or 0.0

    @property
    def cv(self) -> float:
        return self.value("cv") or 0.0

    @property
    def top1_agreement(self) -> float | None:
        """A classifier's top-1 agreement with fp32 (None for a detector: see box_recall)."""
        return self.value("top1_agreement")

    @property
    def box_recall(self) -> float | None:
        """A detector's share of fp32's boxes it matched (None for a classifier)."""
        return self.value("box_recall")

    @property
    def cosine(self) -> float | None:
        return self.value("cosine")

    @property
    def agreement_metric(self) -> str:
        """The agreement the fidelity floor reads (AGREEMENT_METRICS): top1_agreement, or box_recall for a
        detector, which has no classes to agree on."""
        return next((m for m in AGREEMENT_METRICS if self.value(m) is not None), AGREEMENT_METRICS[0])

    @property
    def agreement_share(self) -> float | None:
        """The value of agreement_metric: what min_top1_agreement is a floor on."""
        return self.value(self.agreement_metric)

    @property
    def engine(self) -> str:
        """What a person reads: backend, precision with what makes it that precision, and every option."""
        return self.engine_label(self.options)

    def engine_label(self, options: Mapping[str, Any]) -> str:
        """The engine with only these options (a table's, farm.results.labels.EngineLabels)."""
        return engine_text(self.backend, self.precision, self.method, self.layout_label, self.quantized_fraction, options)

    @property
    def short_key(self) -> str:
        return short_key(self.build_key)

    @property
    def runner_up(self) -> str | None:
        """The engine of the runner-up (of a tie: the first other tied build), on winners with a rival."""
        return self.rivals[0].engine if self.rivals else None

    @property
    def runner_up_key(self) -> str | None:
        return self.rivals[0].build_key if self.rivals else None

    @property
    def tied_with(self) -> tuple[Candidate, ...]:
        """The other builds of a tie, simplest first (empty for a clear win or the only build)."""
        return self.rivals if self.verdict is not None and self.verdict.outcome == "tie" else ()

    def score(self, objective: Objective) -> float:
        """Lower is better for every objective."""
        value = self.value(objective)
        return METRICS[objective].score(value) if value is not None else math.inf

    def eligible(self, constraints: Constraints | float) -> bool:
        return not Constraints.of(constraints).failures(self)

    @property
    def agreement(self) -> str:
        """`16/16 [0.81, 1.00]`: agreement as counts with its 95% Wilson interval (a bare share for rows from before
        evidence was recorded), `speed only` where the reference judges nothing."""
        if self.reference_note:
            return "speed only"
        if self.evidence is None:
            return METRICS[self.agreement_metric].format(self.agreement_share)
        low, high = self.evidence.interval
        return f"{self.evidence.agreed}/{self.evidence.samples} [{low:.2f}, {high:.2f}]"

    @property
    def reference_note(self) -> str | None:
        """Why its fidelity means nothing (a degenerate fp32 reference), else None."""
        return self.evidence.reference_note if self.evidence is not None else None


def candidates(
    session: Session,
    *,
    model: str | None = None,
    target: str | None = None,
    sweep_id: int | None = None,
    prices: Prices | None = None,
) -> list[Candidate]:
    """Every successful benchmark with its build, variant and fidelity, filtered in SQL (farm.results.rows.benchmarked),
    priced by `prices` (farm's default table where None)."""
    retimes = _retimes(session)
    found = []
    for bench, build, variant, mod, fid, ref in rows.benchmarked(session, model=model, target=target, sweep_id=sweep_id):
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
                random_weights=queries.random_weights(mod.source, mod.weights),
                evidence=evidence_of(columns_of(fid), ref.noise_floor if ref else None, ref.note if ref else None),
                retimed=retimes.get((mod.name, build.target_id, bench.batch_size)),
            )
        )
    return with_costs(found, prices or Prices.default(), _physical_cores(session))


def with_costs(found: Iterable[Candidate], prices: Prices, physical_cores: Mapping[str, int | None]) -> list[Candidate]:
    """Each candidate with its price per hour and its cost per million inferences (and of its p50 interval's ends)."""
    priced = []
    for c in found:
        hourly = prices.hourly(c.target, cores_used(c.options, physical_cores.get(c.target)))

        def at(p50_ms: float | None, c: Candidate = c, hourly: float | None = hourly) -> float | None:
            return cost_per_million(hourly, c.batch_size * 1000.0 / p50_ms) if p50_ms else None

        costs = {"cost": cost_per_million(hourly, c.value("throughput")), "cost_low": at(c.value("p50_low")), "cost_high": at(c.value("p50_high"))}
        priced.append(replace(c, usd_per_hour=hourly, metrics=c.metrics | costs))
    return priced


def _physical_cores(session: Session) -> dict[str, int | None]:
    """Each CPU target's physical cores, as its node described itself (what a benchmark at 0 threads ran on)."""
    return {t.id: ((t.description or {}).get("cpu") or {}).get("physical_cores") for t in rows.targets_by_id(session).values()}


def prices_for(session: Session, sweep_id: int | None = None, override: Prices | None = None) -> Prices:
    """The prices an answer uses: `override` (--prices FILE) over the sweep's `prices:` (the newest sweep that has
    them, where no sweep is named) over farm's defaults."""
    found = Prices.default()
    spec_prices = next((spec["prices"] for spec in rows.sweep_specs(session, sweep_id) if (spec or {}).get("prices")), None)
    if spec_prices:
        found = Prices.parse(spec_prices, "the sweep's prices").over(found)
    return override.over(found) if override is not None else found


@dataclass(frozen=True)
class Untimed:
    """A build for a target nothing here can time (TensorRT-RTX built ahead of time): built, not timed."""

    build_key: str
    label: str
    model: str
    precision: str
    backend: str
    options: dict[str, Any]
    target: str
    engine_bytes: int | None
    build_seconds: float | None
    engine_sha256: str | None
    method: str | None = None
    quantized_fraction: float | None = None
    random_weights: bool = False
    why: str = "built ahead of time for a GPU this cluster does not have: nothing here can run or time it"

    @property
    def engine(self) -> str:
        return self.engine_label(self.options)

    def engine_label(self, options: Mapping[str, Any]) -> str:
        return engine_text(self.backend, self.precision, self.method, "", self.quantized_fraction, options)

    @property
    def short_key(self) -> str:
        return short_key(self.build_key)


def untimed(session: Session, *, model: str | None = None, target: str | None = None, sweep_id: int | None = None) -> list[Untimed]:
    """Every successful build on a build-only target (rtx:*) that has no timings, filtered like candidates()."""
    return [Untimed(build.key, build.label, mod.name, variant.precision, build.backend, build.options, build.target_id,
                    build.engine_bytes, build.seconds, build.engine_sha256, variant.method,
                    (variant.details or {}).get("quantized_fraction") if variant.method else None,
                    queries.random_weights(mod.source, mod.weights))
            for build, variant, mod in rows.built_not_timed(session, model=model, target=target, sweep_id=sweep_id)]


def _retimes(session: Session) -> dict[tuple[str, str, int], Retimed]:
    """The newest successful re-timing of each (model, target, batch size) group."""
    found: dict[tuple[str, str, int], Retimed] = {}
    for row in rows.retimings(session):
        found[(row.model, row.target_id, row.batch_size)] = Retimed(row.objective, tuple(row.contenders or ()), row.rounds or {}, row.reason)
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


def winners(found: Iterable[Candidate], objective: Objective = "p50", constraints: Constraints | float = 0.99) -> list[Candidate]:
    """The answer per (model, target, batch size): the best candidate that meets the constraints, with a
    verdict (farm.results.verdict) on whether it really beats the runner-up, and its speedups.

    Speedup vs torch compares with the PyTorch baseline of the same group (eager fp32, as people
    run a model; `is_baseline`); speedup vs fp32 with the fastest fp32 build of the group.
    """
    constraints = Constraints.of(constraints)
    groups: dict[tuple[str, str, int], list[Candidate]] = {}
    for c in found:
        groups.setdefault((c.model, c.target, c.batch_size), []).append(c)
    chosen = []
    for key in sorted(groups):
        group = groups[key]
        eligible = sorted((c for c in group if c.eligible(constraints)), key=lambda c: c.score(objective))
        if not eligible:
            continue
        decided = _verdict(eligible, objective)
        best = next(c for c in eligible if c.build_key == decided.winner)
        baseline = min((c for c in group if is_baseline(c)), key=lambda c: c.score(objective), default=None)
        fp32 = min((c for c in group if c.precision == "fp32"), key=lambda c: c.score(objective), default=None)
        chosen.append(replace(best, verdict=decided, rivals=_rivals(decided, eligible), speedup_vs_torch=_speedup(best, baseline, objective),
                              speedup_vs_fp32=_speedup(best, fp32, objective)))
    return chosen


def _rivals(decided: Verdict, eligible: list[Candidate]) -> tuple[Candidate, ...]:
    """The builds to name beside the answer: a clear win's runner-up; a tie's other tied builds, simplest
    first (where the verdict listed none, its runner-up, or the leader a tie answered by its runner-up tied with)."""
    if decided.outcome == "only":
        return ()
    keys = [k for k in decided.tied if k != decided.winner] if decided.outcome == "tie" else []
    if not keys:
        keys = [next(k for k in (decided.runner_up, eligible[0].build_key, eligible[1].build_key) if k and k != decided.winner)]
    by_key = {c.build_key: c for c in eligible}
    return tuple(by_key[k] for k in keys if k in by_key)


def is_baseline(c: Candidate) -> bool:
    """The plain PyTorch the seed article compared against: eager, fp32, no other option switched on."""
    options = {k: v for k, v in c.options.items() if k not in ("kind", "mode")}
    return (c.backend == BASELINE_BACKEND and c.precision == "fp32" and c.options.get("kind", c.options.get("mode", "eager")) == "eager"
            and not any(options.values()))


def _verdict(eligible: list[Candidate], objective: str) -> Verdict:
    """From the group's re-timing where it covered these leaders for this objective, else from intervals."""
    if len(eligible) == 1:
        return verdict.only(eligible[0])
    retimed = eligible[0].retimed
    # cost ranks by mean time x price, so a re-timing for throughput (mean time) serves it, priced
    covers = retimed is not None and (retimed.objective == objective or (objective == "cost" and retimed.objective == "throughput"))
    if retimed is not None and covers and retimed.contenders:
        by_key = {c.build_key: c for c in eligible}
        contenders = [by_key[k] for k in retimed.contenders if k in by_key and k in retimed.rounds]
        # valid when it re-timed this leader and this runner-up (other floors can change either)
        if len(contenders) >= 2 and {eligible[0].build_key, eligible[1].build_key} <= {c.build_key for c in contenders}:
            rounds = retimed.rounds if objective != "cost" else _priced_rounds(retimed.rounds, contenders)
            if rounds is not None:
                return verdict.from_retime(contenders, rounds, objective)
    return verdict.from_intervals(eligible, objective)


def _priced_rounds(rounds: dict[str, dict[str, list[float]]], contenders: list[Candidate]) -> dict[str, dict[str, list[float]]] | None:
    """Each contender's per-round mean times its price per hour: cost per inference up to one factor (same batch);
    None where a contender has no price."""
    if any(c.usd_per_hour is None for c in contenders):
        return None
    return {c.build_key: {"mean": [t * c.usd_per_hour for t in rounds[c.build_key]["mean"]]} for c in contenders}  # type: ignore[operator]


def pareto_front(
    found: Iterable[Candidate],
    objective: Objective = "p50",
    fidelity: Callable[[Candidate], float | None] | None = None,
    higher_is_better: bool = True,
) -> list[Candidate]:
    """The candidates no other beats on both the objective and fidelity (agreement_share: top-1 agreement, a
    detector's box recall; unless `fidelity` reads another metric), best objective first.

    Compare like with like: pass one (model, target, batch size) group. A candidate without a
    fidelity measurement cannot be placed on the fidelity axis and is left out.
    """
    measure = fidelity or (lambda c: c.agreement_share)
    sign = 1.0 if higher_is_better else -1.0
    measured = sorted(
        (c for c in found if measure(c) is not None),
        key=lambda c: (c.score(objective), -sign * (measure(c) or 0.0)),
    )
    front: list[Candidate] = []
    for c in measured:
        # Sorted by objective, so c is dominated unless it is more faithful than everything faster.
        if not front or sign * (measure(c) or 0.0) > sign * (measure(front[-1]) or 0.0):
            front.append(c)
    return front


@dataclass(frozen=True)
class Exclusion:
    """A candidate that missed eligibility, or a variant judged not viable before any build: an answer too."""

    model: str
    engine: str  # what a person reads: "onnxruntime int8 minmax u8s8 7-bit threads=2", or "int8 minmax" for a variant
    reasons: tuple[str, ...]
    evidence: Evidence | None
    stage: str = "fidelity"  # "fidelity": a timed build that missed the rule; "variant": rejected before any build
    build_key: str | None = None
    versus_winner: str | None = None  # McNemar of the group's winner against it on the same images

    def line(self, margin: float = CONFIDENT_MARGIN) -> str:
        """`excluded: int8 minmax  top-1 21/24 [0.69, 0.96], 2 confident flips (why)`."""
        numbers = f"  {self.evidence.describe(margin)}" if self.evidence is not None else ""
        word = "rejected" if self.stage == "variant" else "excluded"
        return f"{word}: {self.engine}{numbers}: {'; '.join(self.reasons)}" + (f" ({self.versus_winner})" if self.versus_winner else "")

    def to_json(self, margin: float = CONFIDENT_MARGIN) -> dict[str, Any]:
        return {"engine": self.engine, "stage": self.stage, "build_key": self.build_key, "reasons": list(self.reasons),
                "evidence": self.evidence.to_json(margin) if self.evidence is not None else None,
                "versus_winner": self.versus_winner, "line": self.line(margin)}


@dataclass(frozen=True)
class Answer:
    """One (model, target, batch size): its winner (None when nothing is eligible) and everything excluded."""

    model: str
    target: str
    batch_size: int
    winner: Candidate | None
    excluded: tuple[Exclusion, ...]
    versus_runner_up: str | None = None  # McNemar of the winner against the runner-up on the same images, where they differ

    @property
    def rivals(self) -> tuple[Candidate, ...]:
        """The builds named beside the winner: its runner-up, or every other build it tied with (Candidate.rivals)."""
        return self.winner.rivals if self.winner is not None else ()

    @property
    def speed_only(self) -> str | None:
        """A degenerate reference: the answer is a speed result, and why."""
        notes = [c.reference_note for c in ((self.winner,) if self.winner else ()) if c.reference_note]
        return notes[0] if notes else None


def answers(found: Iterable[Candidate], objective: Objective = "p50", constraints: Constraints | float = 0.99,
            rejected: Iterable[Exclusion] = ()) -> list[Answer]:
    """winners() with what each group excluded and why, and the variants of its model rejected before any build."""
    constraints = Constraints.of(constraints)
    found = list(found)
    chosen = {(c.model, c.target, c.batch_size): c for c in winners(found, objective, constraints)}
    refused: dict[str, list[Exclusion]] = {}
    for r in rejected:
        refused.setdefault(r.model, []).append(r)
    groups: dict[tuple[str, str, int], list[Candidate]] = {}
    for c in found:
        groups.setdefault((c.model, c.target, c.batch_size), []).append(c)
    result = []
    for key in sorted(groups):
        winner = chosen.get(key)
        excluded = [_exclusion(c, missed, winner) for c in sorted(groups[key], key=lambda c: c.score(objective))
                    if (missed := constraints.failures(c))]
        runner = next((c for c in groups[key] if winner is not None and c.build_key == winner.runner_up_key), None)
        result.append(Answer(*key, winner, tuple(excluded + refused.get(key[0], [])), _paired(winner, runner, "runner-up")))
    return result


def _exclusion(c: Candidate, missed: list[str], winner: Candidate | None) -> Exclusion:
    return Exclusion(c.model, c.engine, tuple(missed), c.evidence, "fidelity", c.build_key, _paired(winner, c, "this"))


def _paired(winner: Candidate | None, other: Candidate | None, name: str) -> str | None:
    """McNemar of the winner's agreement against another build's on the same images, where they differ on any."""
    test = winner.evidence.versus(other.evidence) if winner is not None and other is not None and winner.evidence and other.evidence else None
    return test.describe("winner", name) if test is not None and test.only_first + test.only_second else None


def rejected_variants(session: Session, *, model: str | None = None, sweep_id: int | None = None) -> list[Exclusion]:
    """Variants judged not viable (status "rejected": the fallback refused them) with the numbers they were judged by."""
    found = []
    for variant, mod in rows.rejected_variant_rows(session, model=model, sweep_id=sweep_id):
        details = variant.details or {}
        plain = (details.get("fallback") or {}).get("plain")
        engine = " ".join(filter(None, (variant.precision, variant.method, details.get("layout_label"))))
        found.append(Exclusion(mod.name, engine, (variant.error or "not viable",), _plain_evidence(plain), "variant"))
    return found


def _plain_evidence(plain: dict[str, Any] | None) -> Evidence | None:
    """The evidence of a quantized variant before any fallback (workers.fidelity.Fidelity as a dict)."""
    if not plain or not plain.get("samples"):
        return None
    samples = int(plain["samples"])
    agreed = int(plain["agreed"]) if plain.get("agreed") is not None else round(plain["top1_agreement"] * samples)
    return Evidence("top-1", samples, agreed, tuple(plain.get("flipped") or ()), tuple(plain.get("reference_margins") or ()),
                    int(plain.get("nonfinite") or 0), plain.get("reference_note"), None, plain.get("cosine_mean"), plain.get("kl_mean"))

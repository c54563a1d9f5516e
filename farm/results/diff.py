"""`farm diff`: two runs of the same engines compared, engine by engine (docs/verdicts.md, section 7).

Engines of the two sides are paired by what makes them the same engine (EngineRun.match_key); each pair
gets a speed verdict from the stored raw timings (a bootstrap on the medians, like a benchmark's own p50
interval), the change in fidelity, and what changed around it (library versions, the exported model,
the benchmark settings). No SQL here: farm.results.history reads the runs.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from farm.results.labels import short_key
from farm.results.verdict import MIN_MARGIN
from workers.stats import wilson

Change = Literal["faster", "slower", "no change", "not timed"]
ALPHA = 0.05
RESAMPLES = 2000
CHUNK = 250  # resamples drawn at once
# A fast engine's benchmark holds tens of thousands of timings (3,000 in 0.3 s of a small CNN on ONNX Runtime). The
# bootstrap takes this many of them, evenly spaced over the run: an interval wider than all would give, never
# narrower, at a bounded cost (a pair of 10,000 timings each took 3 s in full on a 2-core machine).
MAX_TIMINGS = 2000


@dataclass(frozen=True)
class EngineRun:
    """One engine (a build at one batch size) as one sweep measured it."""

    model: str
    precision: str
    method: str | None  # int8/fp8 calibration method
    backend: str
    options: dict[str, Any]
    target_kind: str  # cpu | gpu | rtx
    target_name: str  # the CPU or GPU model (a target kind, not a node)
    batch_size: int
    label: str
    build_key: str
    raw_ms: tuple[float, ...]
    p50: float | None
    agreed: int | None = None  # top-1 agreement with fp32 as agreed of samples
    samples: int | None = None
    top1: float | None = None
    cosine: float | None = None
    versions: dict[str, str] = field(default_factory=dict)  # library -> version the engine was built and timed with
    model_digest: str | None = None  # the exported graph (or checkpoint) it was built from
    settings: dict[str, Any] = field(default_factory=dict)  # the benchmark's settings

    @property
    def match_key(self) -> tuple[str, ...]:
        """What makes two runs the same engine: model, precision and calibration method, backend and its
        options, target kind, batch size. Versions, the model's weights and the node are what a diff reports."""
        return (self.model, self.precision, self.method or "", self.backend, json.dumps(self.options, sort_keys=True, default=str),
                self.target_kind, self.target_name, str(self.batch_size))

    @property
    def engine(self) -> str:
        """Model, precision and method, backend and every option: the whole match key but the target and batch."""
        return f"{self.model} {self.engine_label(dict(sorted(self.options.items())))}"

    def engine_label(self, options: Mapping[str, Any]) -> str:
        """`fp32 onnxruntime intra_op_threads=1` with the options given (farm.results.labels.EngineLabels)."""
        shown = " ".join(f"{k}={v}" for k, v in options.items())
        return " ".join(filter(None, (self.precision, self.method, self.backend, shown)))

    @property
    def target(self) -> str:
        return f"{self.target_kind}:{self.target_name}"

    @property
    def share(self) -> float | None:
        """Top-1 agreement with fp32 as a share."""
        if self.agreed is not None and self.samples:
            return self.agreed / self.samples
        return self.top1


@dataclass(frozen=True)
class SpeedChange:
    ratio: float  # p50 of B over p50 of A: above 1 is slower
    interval: tuple[float, float]  # its 95% bootstrap interval
    p_value: float  # two-sided: that the medians are equal
    change: Change


def _spaced(values: np.ndarray, most: int = MAX_TIMINGS) -> np.ndarray:
    """At most `most` of the timings, evenly spaced over the run (drift within it stays represented)."""
    return values if len(values) <= most else values[np.linspace(0, len(values) - 1, most).astype(int)]


def _medians(values: np.ndarray, rng: np.random.Generator, count: int) -> np.ndarray:
    """`count` bootstrap medians of `values`, drawn in chunks so memory stays small."""
    found = [np.median(rng.choice(values, size=(min(CHUNK, count - start), len(values)), replace=True), axis=1)
             for start in range(0, count, CHUNK)]
    return np.concatenate(found)


def compare_timings(a: Sequence[float], b: Sequence[float], *, alpha: float = ALPHA, min_change: float = MIN_MARGIN,
                    resamples: int = RESAMPLES, seed: int = 0) -> SpeedChange:
    """Did B's median time change from A's? The ratio of medians B/A (of all timings); a bootstrap on the medians
    (each side resampled on its own, at most MAX_TIMINGS of its timings) for its 95% percentile interval and a
    two-sided p-value (twice the share of resampled log-ratios on the far side of zero). Slower or faster only
    when p < alpha and the ratio is at least 1 + min_change away from 1: a real change smaller than that is no
    change, as in the speed verdicts."""
    first, second = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(first) < 2 or len(second) < 2:
        raise ValueError(f"a comparison needs two or more timings on each side (got {len(first)} and {len(second)})")
    rng = np.random.default_rng(seed)
    logs = np.log(_medians(_spaced(second), rng, resamples)) - np.log(_medians(_spaced(first), rng, resamples))
    ratio = float(np.median(second) / np.median(first))
    interval = (float(np.exp(np.percentile(logs, 2.5))), float(np.exp(np.percentile(logs, 97.5))))
    far_side = min(int((logs <= 0).sum()), int((logs >= 0).sum()))
    p_value = min(1.0, (2 * far_side + 1) / (resamples + 1))
    change: Change = "no change"
    if p_value < alpha and ratio >= 1 + min_change:
        change = "slower"
    elif p_value < alpha and ratio <= 1 / (1 + min_change):
        change = "faster"
    return SpeedChange(ratio, interval, p_value, change)


@dataclass(frozen=True)
class FidelityChange:
    before: float | None  # top-1 agreement with fp32
    after: float | None
    cosine_before: float | None
    cosine_after: float | None
    dropped: bool  # B's 95% Wilson interval lies wholly below A's

    def describe(self) -> str:
        """`0.996->0.984 dropped`: the top-1 agreement before and after (the cosine is in --json and csv)."""
        if self.before is None and self.after is None:
            return "-"
        return f"{_share(self.before)}->{_share(self.after)}" + (" dropped" if self.dropped else "")


def _share(value: float | None) -> str:
    return "?" if value is None else f"{value:.3f}"


def compare_fidelity(a: EngineRun, b: EngineRun) -> FidelityChange:
    """The agreement with fp32 before and after; a drop counts only where the two Wilson intervals are apart."""
    dropped = False
    if a.agreed is not None and a.samples and b.agreed is not None and b.samples:
        dropped = wilson(b.agreed, b.samples)[1] < wilson(a.agreed, a.samples)[0]
    return FidelityChange(a.share, b.share, a.cosine, b.cosine, dropped)


@dataclass(frozen=True)
class Pair:
    a: EngineRun
    b: EngineRun
    speed: SpeedChange | None  # None: a side has fewer than two raw timings
    fidelity: FidelityChange
    versions: dict[str, tuple[str | None, str | None]]  # library -> (A's, B's), those that differ
    changes: tuple[str, ...]  # what else differs: the exported model, the benchmark settings

    @property
    def change(self) -> Change:
        return self.speed.change if self.speed else "not timed"

    def regressed(self, percent: float, alpha: float = ALPHA) -> bool:
        """Significantly slower by more than `percent`, or fidelity dropped (Wilson intervals apart)."""
        slower = self.speed is not None and self.speed.p_value < alpha and self.speed.ratio > 1 + percent / 100
        return slower or self.fidelity.dropped


@dataclass(frozen=True)
class Diff:
    a_name: str  # what side A is: "sweep 3", "baseline nightly (sweep 3)", "sweep 2 of sqlite:///..."
    b_name: str
    pairs: list[Pair]
    only_a: list[EngineRun]  # engines with no match on the other side
    only_b: list[EngineRun]
    min_change: float

    def regressions(self, percent: float) -> list[Pair]:
        return [p for p in self.pairs if p.regressed(percent)]

    @property
    def drift(self) -> float | None:
        """The median ratio B/A over every timed pair (three or more, so that one engine's change is not the
        median): a shift that every engine shares is more likely the machine (its load, its clocks) than the engines."""
        ratios = [p.speed.ratio for p in self.pairs if p.speed is not None]
        return float(np.median(ratios)) if len(ratios) >= 3 else None


def version_changes(a: EngineRun, b: EngineRun) -> dict[str, tuple[str | None, str | None]]:
    return {name: (a.versions.get(name), b.versions.get(name)) for name in sorted(set(a.versions) | set(b.versions))
            if a.versions.get(name) != b.versions.get(name)}


def other_changes(a: EngineRun, b: EngineRun) -> tuple[str, ...]:
    found = []
    if a.model_digest != b.model_digest:
        found.append("model graph")
    settings = sorted(k for k in set(a.settings) | set(b.settings) if a.settings.get(k) != b.settings.get(k))
    if settings:
        found.append("benchmark " + ", ".join(f"{k} {a.settings.get(k)}->{b.settings.get(k)}" for k in settings))
    return tuple(found)


def pair(a: EngineRun, b: EngineRun, min_change: float = MIN_MARGIN) -> Pair:
    timed = len(a.raw_ms) >= 2 and len(b.raw_ms) >= 2
    speed = compare_timings(a.raw_ms, b.raw_ms, min_change=min_change) if timed else None
    return Pair(a, b, speed, compare_fidelity(a, b), version_changes(a, b), other_changes(a, b))


def diff(a_runs: Iterable[EngineRun], b_runs: Iterable[EngineRun], a_name: str, b_name: str,
         min_change: float = MIN_MARGIN) -> Diff:
    """Pair the engines of A and B by match_key (several of one key pair in build-key order; the rest are unmatched)."""
    by_key: dict[tuple[str, ...], tuple[list[EngineRun], list[EngineRun]]] = {}
    for side, runs in ((0, a_runs), (1, b_runs)):
        for run in runs:
            by_key.setdefault(run.match_key, ([], []))[side].append(run)
    pairs: list[Pair] = []
    only_a: list[EngineRun] = []
    only_b: list[EngineRun] = []
    for key in sorted(by_key):
        first, second = (sorted(runs, key=lambda r: r.build_key) for runs in by_key[key])
        pairs.extend(pair(x, y, min_change) for x, y in zip(first, second, strict=False))
        only_a.extend(first[len(second):])
        only_b.extend(second[len(first):])
    return Diff(a_name, b_name, pairs, only_a, only_b, min_change)


def _engine_json(run: EngineRun) -> dict[str, Any]:
    found = asdict(run)
    del found["raw_ms"]
    return found | {"engine": run.engine, "target": run.target, "timings": len(run.raw_ms), "short_key": short_key(run.build_key)}


def to_json(d: Diff, fail_percent: float | None = None) -> dict[str, Any]:
    def one(p: Pair) -> dict[str, Any]:
        speed = p.speed
        return {
            "engine": p.a.engine, "target": p.a.target, "batch_size": p.a.batch_size, "change": p.change,
            "p50_a": p.a.p50, "p50_b": p.b.p50,
            "ratio": speed.ratio if speed else None, "interval": list(speed.interval) if speed else None,
            "p_value": speed.p_value if speed else None,
            "fidelity": asdict(p.fidelity), "versions": {k: list(v) for k, v in p.versions.items()}, "changes": list(p.changes),
            "build_key_a": p.a.build_key, "build_key_b": p.b.build_key,
            **({"regression": p.regressed(fail_percent)} if fail_percent is not None else {}),
        }

    return {"a": d.a_name, "b": d.b_name, "min_change": d.min_change, "drift": d.drift, "pairs": [one(p) for p in d.pairs],
            "only_a": [_engine_json(r) for r in d.only_a], "only_b": [_engine_json(r) for r in d.only_b]}


CSV_COLUMNS = ("side", "engine", "target", "batch_size", "change", "p50_a", "p50_b", "ratio", "low", "high", "p_value",
               "top1_a", "top1_b", "cosine_a", "cosine_b", "fidelity_dropped", "versions", "changes", "build_key_a", "build_key_b")


def to_csv(d: Diff) -> str:
    """One line per pair ("both"), then the unmatched engines ("only a", "only b")."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for p in d.pairs:
        s = p.speed
        writer.writerow(["both", p.a.engine, p.a.target, p.a.batch_size, p.change, p.a.p50, p.b.p50,
                         *(("", "", "", "") if s is None else (s.ratio, *s.interval, s.p_value)),
                         p.fidelity.before, p.fidelity.after, p.fidelity.cosine_before, p.fidelity.cosine_after, p.fidelity.dropped,
                         describe_versions(p.versions), "; ".join(p.changes), p.a.build_key, p.b.build_key])
    for side, runs in (("only a", d.only_a), ("only b", d.only_b)):
        for r in runs:
            a, b = (r, None) if side == "only a" else (None, r)
            writer.writerow([side, r.engine, r.target, r.batch_size, "", a and a.p50, b and b.p50, "", "", "", "",
                             a and a.share, b and b.share, a and a.cosine, b and b.cosine, "", "", "",
                             a and a.build_key, b and b.build_key])
    return out.getvalue()


def describe_versions(versions: dict[str, tuple[str | None, str | None]]) -> str:
    return ", ".join(f"{name} {a or '-'}->{b or '-'}" for name, (a, b) in versions.items())


def describe_ratio(speed: SpeedChange | None) -> str:
    """`1.120x [1.106,1.141]`: one word per number, so that a narrow table breaks between them."""
    return f"{speed.ratio:.3f}x [{speed.interval[0]:.3f},{speed.interval[1]:.3f}]" if speed else "-"


def describe_p(speed: SpeedChange | None) -> str:
    if speed is None:
        return "-"
    return "<0.001" if speed.p_value < 0.001 else f"{speed.p_value:.3f}"

"""Whether the fastest build really is faster: a verdict, not a minimum.

Two ways to decide, the better one where it exists:

- **Interleaved re-timing** (the `retime` stage): the group's leading builds ran round after round
  in one process on one node (A B C, B C A, ...). Each round gives every contender one window's
  median (p99, mean), measured moments apart, so drift and neighbours hit them alike. The test is
  paired by round: the log of contender/leader per round, and an exact sign-flip permutation test
  of their mean (under "no difference" every round's sign is a coin toss). With 8 rounds the
  smallest two-sided p-value is 2/256 = 0.008, so alpha = 0.05 can be reached by a lead that holds
  in nearly every round, and never by one that holds in five of eight. The margin is the median
  ratio over rounds with a bootstrap interval over rounds.
- **Benchmark intervals** (no re-timing, or one made for another objective or floor): the 95%
  bootstrap intervals on the p50 of the two builds' own benchmarks must not overlap.

Either way a lead must also be large enough to matter: `MIN_MARGIN` (2%). A difference the test
finds real but smaller than that (one engine timed twice can differ by 0.4% in 7 rounds of 8: the
position in a round, the cache state) is a tie, never a winner.

Otherwise the answer is a tie. Tied builds are listed simplest first (fp32 before lower
precisions, eager before compiled kinds, fewer options), and the simplest is the one answered.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

Outcome = Literal["winner", "tie", "only"]
PRECISION_ORDER = {"fp32": 0, "fp16": 1, "bf16": 2, "int8": 3, "fp8": 4}
KIND_ORDER = {"eager": 0, "cuda_graph": 1, "compile": 2, "aoti": 3}
# The per-round statistic each objective is judged on; throughput is batch / mean time.
ROUND_STATISTIC = {"p50": "median", "p99": "p99", "throughput": "mean", "cost": "mean"}  # cost: mean time x price
# The interval each objective's benchmarks are compared on: the p50's, or for cost what that p50 interval costs.
INTERVALS = {"cost": ("cost_low", "cost_high", "USD/M")}
P50_INTERVAL = ("p50_low", "p50_high", "ms")
MIN_MARGIN = 0.02  # the smallest lead that makes a winner: 1.02x


class Contender(Protocol):
    build_key: str
    precision: str
    options: dict[str, object]

    def value(self, metric: str) -> float | None: ...


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    method: str  # "interleaved" (re-timed, paired test), "intervals" (benchmark intervals), "" (only one build)
    winner: str  # build key of the answer (the simplest of a tie)
    runner_up: str | None = None
    margin: float | None = None  # how many times better the leader is than the runner-up (> 1 is better)
    interval: tuple[float, float] | None = None  # 95% interval on the margin
    p_value: float | None = None
    tied: tuple[str, ...] = ()  # build keys tied with the leader, simplest first (the answer first)
    note: str = ""  # one line: what was decided and why
    reordered: bool = False  # the re-timing's leader is not the benchmarks' leader


def simplicity(c: Contender) -> tuple[int, int, int]:
    """Sort key: the simpler engine first (precision, then engine kind, then how many options it sets)."""
    kind = str(c.options.get("kind", "eager"))
    return PRECISION_ORDER.get(c.precision, 9), KIND_ORDER.get(kind, 0), sum(1 for v in c.options.values() if v not in (None, False, 0))


def sign_flip_p_value(differences: list[float]) -> float:
    """Exact two-sided p-value of a paired sign-flip permutation test on the mean difference."""
    values = np.asarray(differences, dtype=np.float64)
    n = len(values)
    if n == 0 or not np.any(values):
        return 1.0
    observed = abs(values.mean())
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))  # 2^n rows; n <= 16 by the spec
    means = np.abs((signs * values).mean(axis=1))
    return float((means >= observed - 1e-12).mean())


def ratio_interval(leader: list[float], other: list[float], seed: int = 0) -> tuple[float, tuple[float, float]]:
    """The median per-round ratio other/leader and its 95% bootstrap interval over rounds."""
    ratios = np.asarray(other, dtype=np.float64) / np.asarray(leader, dtype=np.float64)
    rng = np.random.default_rng(seed)
    resampled = np.median(rng.choice(ratios, size=(2000, len(ratios)), replace=True), axis=1)
    return float(np.median(ratios)), (float(np.percentile(resampled, 2.5)), float(np.percentile(resampled, 97.5)))


def from_retime(
    contenders: list[Contender], rounds: dict[str, dict[str, list[float]]], objective: str, alpha: float = 0.05,
    min_margin: float = MIN_MARGIN,
) -> Verdict:
    """The verdict of an interleaved re-timing of `contenders` (all of them re-timed)."""
    statistic = ROUND_STATISTIC[objective]
    times = {c.build_key: rounds[c.build_key][statistic] for c in contenders}
    ranked = sorted(contenders, key=lambda c: float(np.median(times[c.build_key])))
    leader, others = ranked[0], ranked[1:]
    reordered = leader.build_key != contenders[0].build_key  # contenders come in the benchmarks' order
    lead = times[leader.build_key]

    def apart(other: Contender) -> bool:
        """Significantly slower than the leader, and by at least min_margin."""
        diffs = [math.log(o / l) for l, o in zip(lead, times[other.build_key], strict=True)]
        ratio = float(np.median(np.asarray(times[other.build_key]) / np.asarray(lead)))
        return sign_flip_p_value(diffs) < alpha and ratio >= 1 + min_margin

    runner = others[0]
    margin, interval = ratio_interval(lead, times[runner.build_key])
    p = sign_flip_p_value([math.log(o / l) for l, o in zip(lead, times[runner.build_key], strict=True)])
    rounds_won = sum(o > l for l, o in zip(lead, times[runner.build_key], strict=True))
    n = len(lead)
    measured = f"{rounds_won} of {n} interleaved rounds, {margin:.3f}x [{interval[0]:.3f}, {interval[1]:.3f}], p = {p:.3f}"
    if apart(runner):
        return Verdict("winner", "interleaved", leader.build_key, runner.build_key, margin, interval, p, (leader.build_key,),
                       f"faster than the runner-up in {measured}" + (" (re-timing reordered the benchmarks' ranking)" if reordered else ""),
                       reordered)
    why = f"p >= {alpha}" if p >= alpha else f"a lead under {1 + min_margin:.2f}x does not count"
    tied = sorted([leader, *(o for o in others if not apart(o))], key=simplicity)
    return Verdict("tie", "interleaved", tied[0].build_key, runner.build_key, margin, interval, p, tuple(c.build_key for c in tied),
                   f"tie: the leader was faster in {measured} ({why}); the simplest of the {len(tied)} tied is answered",
                   reordered or tied[0].build_key != contenders[0].build_key)


def from_intervals(ranked: list[Contender], objective: str, min_margin: float = MIN_MARGIN) -> Verdict:
    """The verdict from the benchmarks' own p50 intervals, best first in `ranked` (two or more)."""
    leader, runner = ranked[0], ranked[1]
    lead, other = leader.value(objective), runner.value(objective)
    margin = (lead / other if objective == "throughput" else other / lead) if lead and other else None
    low_of, high_of, unit = INTERVALS.get(objective, P50_INTERVAL)
    low, high = leader.value(high_of), runner.value(low_of)
    if low is None or high is None:
        return Verdict("tie", "intervals", leader.build_key, runner.build_key, margin,
                       note="no intervals recorded for these benchmarks: a tie until they are re-timed")
    if low < high and margin is not None and margin >= 1 + min_margin:
        name = "cost" if objective == "cost" else "p50"
        return Verdict("winner", "intervals", leader.build_key, runner.build_key, margin,
                       note=f"{name} intervals apart: {leader.value(low_of):.3f}-{low:.3f} {unit} against {high:.3f}-{runner.value(high_of):.3f} {unit}")

    def near(c: Contender) -> bool:
        """Its interval reaches the leader's, or it is within min_margin of the leader."""
        value = c.value(objective)
        ratio = (lead / value if objective == "throughput" else value / lead) if lead and value else math.inf
        return (c.value(low_of) or math.inf) <= low or ratio < 1 + min_margin

    tied = sorted([c for c in ranked if near(c)], key=simplicity)
    return Verdict("tie", "intervals", tied[0].build_key, runner.build_key, margin, tied=tuple(c.build_key for c in tied),
                   note=f"tie: {len(tied)} builds overlap the leader's p50 interval or are within {min_margin:.0%} of it; "
                        "the simplest is answered")


def only(c: Contender) -> Verdict:
    return Verdict("only", "", c.build_key, note="the only build that meets the constraints")


def short(v: Verdict | None) -> str:
    """One short table cell: what the verdict is, and by how much."""
    if v is None:
        return "-"
    if v.outcome == "only":
        return "only build"
    margin = f" {v.margin:.2f}x" if v.margin else ""
    if v.outcome == "tie":
        return f"tie of {len(v.tied)}" if v.tied else f"tie{margin}"
    return f"winner{margin}" + (f" p={v.p_value:.3f}" if v.p_value is not None else " (intervals)")

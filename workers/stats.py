"""The statistics of an accuracy verdict: how sure a k-of-n agreement is, and whether two candidates
judged on the same images really differ. Plain math (no scipy): the dashboard imports it too.

- `wilson`: the 95% Wilson score interval on a proportion. Unlike the normal approximation it
  stays inside [0, 1] and is honest at 0/n and n/n, which is where fidelity results live.
- `top1_rule`: the evidence rule of top-1 eligibility (docs/verdicts.md), written once: eligibility
  (farm.results.evidence) and the precision fallback (workers.fallback) both judge with it.
- `mcnemar`: the exact conditional McNemar test on the discordant pairs of two paired binary
  outcomes (image agrees with fp32 under candidate A, under candidate B), with its mid-p variant,
  which Fagerland, Lydersen and Laake (2013) recommend over the conservative exact p.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass

Z95 = 1.959963984540054  # the standard normal's 97.5th percentile


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval on k successes in n trials ((0, 1) when n is 0: nothing is known)."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= k <= n:
        raise ValueError(f"{k} successes in {n} trials")
    p = k / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # at k = 0 or n the bound is exact in theory; clip the rounding
    return max(0.0, centre - half) if k else 0.0, min(1.0, centre + half) if k < n else 1.0


def binomial_pmf(k: int, n: int, p: float = 0.5) -> float:
    return math.comb(n, k) * p**k * (1 - p) ** (n - k)


@dataclass(frozen=True)
class McNemar:
    """Paired comparison of two candidates' agreement on the same images."""

    only_first: int  # images the first agrees on and the second does not
    only_second: int
    p_exact: float  # two-sided exact conditional (binomial on the discordant pairs)
    p_mid: float  # the mid-p: the exact p less the probability of the observed split

    def describe(self, first: str = "A", second: str = "B") -> str:
        return (f"McNemar on {self.only_first + self.only_second} discordant images ({first} only {self.only_first}, "
                f"{second} only {self.only_second}): mid-p {self.p_mid:.3f}, exact p {self.p_exact:.3f}")


def mcnemar(only_first: int, only_second: int) -> McNemar:
    """The exact McNemar test from the discordant counts b (first right, second wrong) and c."""
    n = only_first + only_second
    if n == 0:
        return McNemar(0, 0, 1.0, 1.0)
    low = min(only_first, only_second)
    tail = sum(binomial_pmf(i, n) for i in range(low + 1))
    exact = min(1.0, 2 * tail)
    mid = min(1.0, 2 * tail - binomial_pmf(low, n))  # 1 when the split is even
    return McNemar(only_first, only_second, exact, max(0.0, mid))


def paired(first_wrong: Sequence[int], second_wrong: Sequence[int], n: int) -> McNemar:
    """McNemar from two candidates' sets of disagreeing image indices over the same n images."""
    a, b = set(first_wrong), set(second_wrong)
    if any(not 0 <= i < n for i in a | b):
        raise ValueError(f"image indices outside 0..{n - 1}")
    return mcnemar(len(b - a), len(a - b))


def blamed_flips(flipped: Sequence[int], margins: Sequence[float], margin: float, excused: Collection[int] = ()) -> list[int]:
    """Flipped images on which fp32 was sure (its softmax margin p1 - p2 at least `margin`), less those fp32's
    own shifted run flipped too (`excused`): the flips a candidate is to blame for."""
    return [i for i in flipped if i < len(margins) and margins[i] >= margin and i not in excused]


@dataclass(frozen=True)
class Top1Rule:
    """What the evidence rule found of one k-of-n agreement against a floor."""

    blamed: tuple[int, ...]  # confident flips fp32 did not make itself: any one excludes
    interval: tuple[float, float]  # the 95% Wilson interval of k/n
    within_noise: bool  # it disagrees on no more images than fp32 does with itself
    floor: float

    @property
    def reaches_floor(self) -> bool:
        """The Wilson upper bound reaches the floor, or the candidate is no worse than fp32 under its own shift."""
        return self.interval[1] >= self.floor or self.within_noise

    @property
    def eligible(self) -> bool:
        return not self.blamed and self.reaches_floor


def top1_rule(agreed: int, samples: int, flipped: Sequence[int], margins: Sequence[float], floor: float, margin: float, *,
              noise_flipped: Collection[int] = (), noise_disagreed: int | None = None) -> Top1Rule:
    """The evidence rule: no confident flip that fp32's own shifted run did not make too, and the Wilson upper
    bound of k/n reaches `floor`, or no more disagreement than fp32's with itself (`noise_disagreed`: None
    where no noise floor was measured on these images)."""
    within = noise_disagreed is not None and samples - agreed <= noise_disagreed
    return Top1Rule(tuple(blamed_flips(flipped, margins, margin, set(noise_flipped))), wilson(agreed, samples), within, floor)
